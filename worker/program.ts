import { Command } from "commander";
import { ConfigError, describeConfig, loadConfig, type FrozenConfig } from "../config/index.js";
import { benchmarkCommand } from "./commands/benchmark.js";
import { checkCommand } from "./commands/check.js";
import { registerPrepareCommand } from "./commands/prepare.js";
import { submitCommand } from "./commands/submit.js";
import { createWorker } from "./app.js";
import { systemHost } from "./launcher/host.js";
import { bootBenchmark } from "../benchmark/boot.js";
import { createLogger } from "../lib/logger.js";
import { checkBundleSources } from "../lib/bundle-fingerprint.js";
import { installLayout, type InstallLayout } from "../lib/install.js";

/** The config from the environment, or exit 2 with the message naming the variable. */
function configOrExit(layout: InstallLayout): FrozenConfig {
  try {
    // COMFYUI_LAUNCH=true plans the ComfyUIs from what this machine has (its GPUs, ComfyUI's venv).
    const config = loadConfig(process.env, layout.root, systemHost(process.env));
    // pino-pretty runs in a worker thread that pino loads from node_modules by name: the bundle has neither.
    if (config.log.pretty && layout.bundled) {
      throw new ConfigError(
        "LOG_PRETTY",
        "true needs pino-pretty, a development dependency that bundle/worker.mjs does not carry: " +
          "unset it (and pipe the JSON lines through `npx pino-pretty` to read them), or run from the sources",
      );
    }
    return config;
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`configuration error: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
}

/**
 * What SIGTERM will do, in the log's words: "draining for up to 8 s (supervisor stops this program after 10 s,
 * STOP_WAIT_S)".
 */
function drainPlan(drainMs: number, stopWaitS: number | undefined): string {
  const drain = `draining for up to ${drainMs / 1000} s`;
  if (stopWaitS === undefined) return drain;
  return `${drain} (supervisor stops this program after ${stopWaitS} s, STOP_WAIT_S)`;
}

async function start(layout: InstallLayout, opts: { drainMs?: string }): Promise<void> {
  const root = layout.root;
  const config = configOrExit(layout);
  const logger = createLogger(config.log);
  // Whoever reads our output may be gone before we are (supervisor's stopasgroup signals start_server.sh's `tee`
  // with us): a write to the closed pipe is dropped (the log goes on in LOG_FILE), never an uncaught error.
  for (const out of [process.stdout, process.stderr]) {
    out.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EPIPE") throw err;
    });
  }
  logger.info({ stage: "lifecycle", config: describeConfig(config) }, "comfyui-worker starting");
  const drainMs = opts.drainMs === undefined ? config.shutdown.drainMs : Number(opts.drainMs);
  const { stopWaitS } = config.shutdown;
  logger.info(
    { stage: "lifecycle", drain_ms: drainMs, stop_wait_s: stopWaitS, log_file: config.log.file },
    `on SIGTERM: ${drainPlan(drainMs, stopWaitS)}`,
  );
  if (stopWaitS !== undefined && drainMs > stopWaitS * 1000) {
    logger.warn(
      { stage: "lifecycle" },
      `a drain of ${drainMs / 1000} s is longer than the ${stopWaitS} s supervisor waits (STOP_WAIT_S): ` +
        "jobs still running then are killed with the worker",
    );
  }
  const worker = createWorker({
    config,
    logger,
    root,
    assets: layout,
    benchmark: bootBenchmark(config, root),
    launchEnv: process.env,
  });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn({ stage: "lifecycle" }, `second ${signal}: exiting now`);
      process.exit(130);
    }
    logger.info(
      { stage: "lifecycle" },
      `${signal}: ${drainPlan(drainMs, stopWaitS)} (send again to force exit)`,
    );
    void worker.stop(drainMs).then(
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

/**
 * The comfyui-worker program: its commands, options and help. Building it does nothing else; the entry point
 * (cli.ts) parses the arguments, and each command reads the configuration when it runs.
 */
export function buildProgram(): Command {
  const layout = installLayout();
  const program = new Command();
  program
    .name("comfyui-worker")
    .description(
      "A Vast.ai serverless worker for ComfyUI: serves /generate/sync (and async, stream, cancel) on the routed " +
        "port with signature checks, reports load to the autoscaler, uploads outputs to S3. Configured by " +
        "environment variables (every one is in docs/configuration.md).",
    );
  program
    .command("start", { isDefault: true })
    .summary("start the worker (the default command)")
    .description("Start the worker: wait for ComfyUI, fetch the router key, benchmark, serve and report.")
    .option(
      "--drain-ms <ms>",
      "on SIGTERM, how long running jobs may finish before they are interrupted (default: DRAIN_MS)",
    )
    .action((opts: { drainMs?: string }) => start(layout, opts));
  program
    .command("benchmark")
    .summary("run the boot benchmark now and print the score (max_perf)")
    .description(
      "Run the boot benchmark against ComfyUI now (a progress bar per round) and print the score (max_perf). " +
        "Uses misc/benchmark.json, $BENCHMARK_JSON_PATH, else SD1.5 text-to-image (BENCHMARK_TEST_*).",
    )
    .option("--force", "run even when a valid cached score exists", false)
    .action(async (opts: { force: boolean }) => {
      const root = layout.root;
      // Exit explicitly: idle keep-alive sockets must not hold the process after the answer is printed.
      process.exit(await benchmarkCommand(configOrExit(layout), root, opts));
    });
  program
    .command("submit <workflow.json>")
    .summary("send a workflow to a running worker and print the output URLs")
    .description(
      'Send a workflow (a bare ComfyUI API-format graph, or a whole {"input": {...}} request) to a running ' +
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
    .summary("check the configuration and that ComfyUI, S3 and the autoscaler answer")
    .description(
      "Validate the configuration and check that ComfyUI, S3 and the autoscaler answer. Exit 1 if not.",
    )
    .action(async () => {
      process.exit(await checkCommand(configOrExit(layout)));
    });
  program
    .command("bundle-check")
    .summary("say whether bundle/worker.mjs was built from these sources")
    .description(
      "Exit 0 when bundle/worker.mjs was built from the sources now in the installation, else 1 (naming what " +
        "changed): worker.py runs the bundle only then, and builds from the sources otherwise.",
    )
    .action(() => {
      const result = checkBundleSources(layout.root);
      console.log(result.ok ? "bundle: built from these sources" : `bundle: ${result.reason}`);
      process.exit(result.ok ? 0 : 1);
    });
  registerPrepareCommand(program, layout, process.env);
  return program;
}
