/** @type {import('jest').Config} */
export default {
  testEnvironment: "node",
  extensionsToTreatAsEsm: [".ts"],
  moduleNameMapper: { "^(\\.{1,2}/.*)\\.js$": "$1" },
  transform: {
    "^.+\\.ts$": ["ts-jest", { useESM: true, diagnostics: false }],
  },
  testMatch: ["<rootDir>/test/**/*.test.ts"],
  globalSetup: "<rootDir>/test/harness/global-setup.mjs",
  globalTeardown: "<rootDir>/test/harness/global-teardown.mjs",
  // Explicit and generous: on a loaded 2-core machine (CI, or several runs sharing the CPUs) a CPU job or the
  // Python client's start-up takes many times longer than on an idle one. Tests still fail on a hang.
  testTimeout: 300_000,
  // Integration tests share one ComfyUI on 2 cores; run files one at a time so timings stay sane.
  maxWorkers: 1,
};
