import { rm } from "node:fs/promises";
import { Command, InvalidArgumentError } from "commander";
import { codeVersion } from "../bench/sections.js";
import { soakSection, writeSoakSection } from "./report.js";
import { runSoak } from "./run.js";

const positive = (what: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive number`);
  return n;
};

const program = new Command()
  .name("soak")
  .description(
    "A two-worker fleet on the local stack (one S3, the router emulator, each worker with its own ComfyUI) under\n" +
      "seeded traffic while seeded faults happen; then a checker proves the invariants from the ledger, the\n" +
      "workers' answers and logs, and S3. Exits 1 naming the requests of any violation.",
  )
  .option("--minutes <n>", "how long the traffic runs", positive("--minutes"), 3)
  .option("--seed <n>", "the seed of the traffic and the fault plan", (v) => Number.parseInt(v, 10), 1)
  .option("--concurrency <n>", "requests in flight at once", positive("--concurrency"), 3)
  .option(
    "--dir <path>",
    "where the fleet's folders, logs and ledger.json go (default: a new temporary folder)",
  )
  .option(
    "--benchmarks",
    'write the tables into BENCHMARKS.md, as its section "Soak" (the other sections stay as they are)',
  )
  .action(
    async (opts: {
      minutes: number;
      seed: number;
      concurrency: number;
      dir?: string;
      benchmarks?: boolean;
    }) => {
      const started = Date.now();
      // Read before the run: the code it measures is what was loaded at its start.
      const code = await codeVersion();
      const report = await runSoak(opts);
      const seconds = (Date.now() - started) / 1000;
      const took = `${seconds.toFixed(0)} s in all`;
      process.stdout.write(`\n${report.table}\n\n`);
      if (opts.benchmarks) {
        const path = await writeSoakSection(soakSection(report, { ...opts, seconds, code }));
        process.stdout.write(`wrote the section "Soak" of ${path}\n`);
      }
      if (report.violations > 0) {
        process.stdout.write(
          `${report.violations} violation(s) (${took}); ledger.json and logs in ${report.dir}\n`,
        );
        process.exitCode = 1;
      } else if (opts.dir === undefined) {
        // A passing run in a temporary folder leaves nothing behind (its fleet's S3 data, outputs, logs).
        await rm(report.dir, { recursive: true, force: true });
        process.stdout.write(`no violations (${took})\n`);
      } else process.stdout.write(`no violations (${took}); ledger.json and logs in ${report.dir}\n`);
    },
  );

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
await program.parseAsync(process.argv);
