#!/usr/bin/env node
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { ConfigError, describeConfig, loadConfig, type FrozenConfig } from "../config/index.js";
import { benchmarkCommand } from "./commands/benchmark.js";
import { checkCommand } from "./commands/check.js";
import { submitCommand } from "./commands/submit.js";
import { createWorker } from "./app.js";
import { bootBenchmark } from "../benchmark/boot.js";
import { createLogger } from "../lib/logger.js";

/** The worker's installation folder: two levels up from worker/cli.{ts,js} (dist/worker/cli.js too). */
function installRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const up = resolve(here, "..");
  return up.endsWith("dist") ? resolve(up, "..") : up;
}

/** The config from the environment, or exit 2 with the message naming the variable. */
function configOrExit(root: string): FrozenConfig {
  try {
    return loadConfig(process.env, root);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`configuration error: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
}

async function start(opts: { drainMs: string }): Promise<void> {
  const root = installRoot();
  const config = configOrExit(root);
  const logger = createLogger(config.log);
  logger.info({ stage: "lifecycle", config: describeConfig(config) }, "comfyui-worker starting");
  const worker = createWorker({ config, logger, root, benchmark: bootBenchmark(config, root) });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn({ stage: "lifecycle" }, `second ${signal}: exiting now`);
      process.exit(130);
    }
    logger.info({ stage: "lifecycle" }, `${signal}: draining (send again to force exit)`);
    void worker.stop(Number(opts.drainMs)).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, "stop failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  try {
    await worker.start();
  } catch (err) {
    logger.error({ err }, "the worker could not start; reporting the failure to the autoscaler");
    // As upstream: stay up so that the autoscaler keeps hearing the error (the reporter beacons every 10 s).
  }
}

export function buildCli(): Command {
  const program = new Command();
  program
    .name("comfyui-worker")
    .description(
      "A Vast.ai serverless worker for ComfyUI: serves /generate/sync (and async, stream, cancel) on the routed\n" +
        "port with signature checks, reports load to the autoscaler, uploads outputs to S3. Configured by\n" +
        "environment variables (see the README).",
    );
  program
    .command("start", { isDefault: true })
    .description("Start the worker: wait for ComfyUI, fetch the router key, benchmark, serve and report.")
    .option(
      "--drain-ms <ms>",
      "on SIGTERM, how long running jobs may finish before they are interrupted",
      "60000",
    )
    .action(start);
  program
    .command("benchmark")
    .description(
      "Run the boot benchmark against ComfyUI now (a progress bar per round) and print the score (max_perf).\n" +
        "Uses misc/benchmark.json, $BENCHMARK_JSON_PATH, else SD1.5 text-to-image (BENCHMARK_TEST_*).",
    )
    .option("--force", "run even when a valid cached score exists", false)
    .action(async (opts: { force: boolean }) => {
      const root = installRoot();
      // Exit explicitly: idle keep-alive sockets must not hold the process after the answer is printed.
      process.exit(await benchmarkCommand(configOrExit(root), root, opts));
    });
  program
    .command("submit <workflow.json>")
    .description(
      'Send a workflow (a bare ComfyUI API-format graph, or a whole {"input": {...}} request) to a running\n' +
        "worker's local API, stream its progress and print the output URLs. Exit 0 when it completed.",
    )
    .option("--url <url>", "the worker's local API", "http://127.0.0.1:18288")
    .option("--request-id <id>", "request_id to use (a repeat returns the same job)")
    .option("--timeout <seconds>", "give up after this long", "900")
    .action(async (file: string, opts: { url: string; requestId?: string; timeout: string }) => {
      process.exit(await submitCommand(file, opts));
    });
  program
    .command("check")
    .description(
      "Validate the configuration and check that ComfyUI, S3 and the autoscaler answer. Exit 1 if not.",
    )
    .action(async () => {
      process.exit(await checkCommand(configOrExit(installRoot())));
    });
  return program;
}

// Production runs Node 22/24; Node 20 is still the system Node on some development machines, where the AWS SDK
// prints a 7-line "versions after January 2027 need Node 22" warning on every command. Its documented switch
// (aws/aws-sdk-js-v3#7983) turns that off, unless the user set it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
await buildCli().parseAsync(process.argv);
