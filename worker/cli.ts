#!/usr/bin/env node
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { ConfigError, describeConfig, loadConfig } from "../config/index.js";
import { createWorker } from "./app.js";
import { createLogger } from "./logger.js";

/** The worker's installation folder: two levels up from worker/cli.{ts,js} (dist/worker/cli.js too). */
function installRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const up = resolve(here, "..");
  return up.endsWith("dist") ? resolve(up, "..") : up;
}

async function start(opts: { drainMs: string }): Promise<void> {
  const root = installRoot();
  let config;
  try {
    config = loadConfig(process.env, root);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`configuration error: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.log);
  logger.info({ stage: "lifecycle", config: describeConfig(config) }, "comfyui-worker starting");
  const worker = createWorker({ config, logger, root });
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
  return program;
}

await buildCli().parseAsync(process.argv);
