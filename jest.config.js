// Two projects. `unit` (test/unit) runs against local tools only (bash, Python, esbuild) and starts nothing:
// `npm run test:unit` works on a machine where ComfyUI was never installed. `integration` (test/integration,
// test/conformance) runs against the real stack that its global setup starts. Jest runs a project's global setup
// only when at least one of its tests is selected, and each setup module once per run, so a run of both projects
// (`npm run test:jest`) starts the stack once and `npm run test:unit` never does.
const shared = {
  testEnvironment: "node",
  extensionsToTreatAsEsm: [".ts"],
  moduleNameMapper: { "^(\\.{1,2}/.*)\\.js$": "$1" },
  transform: {
    "^.+\\.ts$": ["ts-jest", { useESM: true, diagnostics: false }],
  },
};

/** @type {import('jest').Config} */
export default {
  projects: [
    {
      ...shared,
      displayName: "unit",
      testMatch: ["<rootDir>/test/unit/**/*.test.ts"],
    },
    {
      ...shared,
      displayName: "integration",
      testMatch: ["<rootDir>/test/integration/**/*.test.ts", "<rootDir>/test/conformance/**/*.test.ts"],
      globalSetup: "<rootDir>/test/harness/global-setup.mjs",
      globalTeardown: "<rootDir>/test/harness/global-teardown.mjs",
      setupFilesAfterEnv: ["<rootDir>/test/harness/comfy-idle.ts"],
    },
  ],
  // Integration tests share one ComfyUI on 2 cores; run files one at a time so timings stay sane. A run-wide
  // setting (jest has one pool of workers for all projects): `npm run test:unit` alone may use more.
  maxWorkers: 1,
  // Run-wide too (jest reads it from the top level, not from a project): explicit and generous, since on a loaded
  // 2-core machine (CI, or several runs sharing the CPUs) a CPU job or the Python client's start-up takes many
  // times longer than on an idle one. Tests still fail on a hang.
  testTimeout: 300_000,
};
