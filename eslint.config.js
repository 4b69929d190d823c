// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  {
    ignores: [
      "dist/**",
      "node_modules/**",
      "coverage/**",
      "web/console/build/**",
      "test-artifacts/**",
      "bundle/**",
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: "readonly", console: "readonly" } },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "no-restricted-properties": [
        "error",
        { object: "process", property: "env", message: "Read the environment only in config/." },
      ],
    },
  },
  {
    // The CLI (entry point and program) hands process.env to config/; scripts, tests and benchmarks set up
    // environments.
    files: [
      "config/**",
      "worker/{cli,program}.ts",
      "scripts/**",
      "test/**",
      "benchmark/bench/**",
      "benchmark/soak/**",
      "jest.config.js",
    ],
    rules: { "no-restricted-properties": "off" },
  },
  {
    // Folders depend downwards only: lib <- config <- handlers <- worker <- benchmark/CLI.
    files: ["lib/**", "config/**", "handlers/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/worker/*", "**/benchmark/*"],
              message: "lib/, config/ and handlers/ never import worker/ or benchmark/.",
            },
          ],
        },
      ],
    },
  },
  {
    // The worker gets its boot benchmark from whoever composes it (BootBenchmark); only the CLI, at the top, builds it.
    files: ["worker/**"],
    ignores: ["worker/{cli,program}.ts", "worker/commands/**"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/benchmark/*"],
              message: "worker/ never imports benchmark/ (the CLI composes them).",
            },
          ],
        },
      ],
    },
  },
  {
    // Tests read JSON answers whose shape is what they assert.
    files: ["test/**"],
    rules: { "@typescript-eslint/no-explicit-any": "off" },
  },
);
