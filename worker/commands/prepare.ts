import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { Option, type Command } from "commander";
import { got, type Got } from "got";
import { pino } from "pino";
import { ConfigError } from "../../config/env.js";
import {
  loadPrepareConfig,
  loadPrepareReport,
  type PrepareReport,
  type PrepareTarget,
} from "../../config/prepare.js";
import type { InstallLayout } from "../../lib/install.js";
import { redactText } from "../../lib/redact.js";
import {
  createPrepareLog,
  errorText,
  since,
  type PrepareContext,
  type PrepareLog,
} from "../prepare/context.js";
import { prepareImage, prepareStockTemplate, type Prepared } from "../prepare/prepare.js";
import { reportStartFailure } from "../reporter/start-failure.js";

export interface PrepareRun {
  target: PrepareTarget;
  env: Readonly<Record<string, string | undefined>>;
  /** The installation this code runs from: the stock template's clone, and where this worker's name is read. */
  root: string;
  /** Gets the answer: the program, then NAME=value lines. */
  stdout: Writable;
  /** Gets the log (JSON lines) and what child programs print. */
  stderr: Writable & { fd?: number };
  http?: Got;
}

/**
 * `prepare --for image|stock-template`: everything that must happen before the worker starts, for the caller
 * (scripts/docker-entrypoint.sh, worker.py) to then run `node <program> start`. Exit 0: stdout holds the program's
 * absolute path, then `NAME=value` lines (one line each) for the worker's environment, and nothing else. Exit 1: the
 * failure was logged and reported to the autoscaler (/worker_status/ with error_msg) already.
 */
export async function runPrepare(run: PrepareRun): Promise<number> {
  const started = Date.now();
  const log = createPrepareLog(
    run.stderr.fd === 2
      ? pino.destination({ dest: 2, sync: true })
      : { write: (line: string) => run.stderr.write(line) },
  );
  const http = run.http ?? got;
  let report: PrepareReport;
  try {
    report = loadPrepareReport(run.env);
  } catch (err) {
    log.error(
      "prepare",
      `configuration error: ${errorText(err)} (the autoscaler cannot be told: it names the worker)`,
    );
    return 1;
  }
  // worker.py reported its own failures with this prefix; the autoscaler's operators search for it.
  const prefix = run.target === "stock-template" ? "worker bootstrap failed: " : "";
  const fail = async (message: string): Promise<number> => {
    log.error("prepare", `${prefix}${message}`, { duration_s: since(started) });
    const delivered = await reportStartFailure({
      addrs: report.addrs,
      identity: report.identity,
      message: `${prefix}${message}`,
      http,
      log: (line, ok) => (ok ? log.info("report", line) : log.warn("report", line)),
    });
    if (!delivered) {
      log.warn("report", `the autoscaler was not told (REPORT_ADDR: ${report.addrs.length} address(es))`);
    }
    return 1;
  };
  const ctx: PrepareContext = { env: run.env, log, childOutput: run.stderr, http };
  let prepared: Prepared;
  try {
    const config = loadPrepareConfig(run.env, run.target);
    prepared =
      config.target === "image"
        ? await prepareImage(config, ctx, ownPackageName(run.root))
        : await prepareStockTemplate(config, ctx, run.root);
  } catch (err) {
    return fail(err instanceof ConfigError ? `configuration error: ${err.message}` : errorText(err));
  }
  const lines = [
    prepared.program,
    ...Object.entries(prepared.env).map(([name, value]) => `${name}=${value}`),
  ];
  const broken = lines.find((line) => /[\r\n]/.test(line));
  if (broken !== undefined) return fail(`a value holds a line break: ${broken.split(/[\r\n]/)[0]}`);
  logOutcome(log, prepared, started);
  await new Promise<void>((resolve, reject) =>
    run.stdout.write(`${lines.join("\n")}\n`, (err) => (err ? reject(err) : resolve())),
  );
  return 0;
}

function logOutcome(log: PrepareLog, prepared: Prepared, started: number): void {
  const names = Object.keys(prepared.env);
  log.info(
    "prepare",
    `ready: ${prepared.program}${names.length ? ` with ${names.map((n) => `${n}=${redactText(prepared.env[n]!)}`).join(" ")}` : ""}`,
    { duration_s: since(started) },
  );
}

/** This worker's package name (a PYWORKER_REPO is honoured only for a repository that is this worker). */
function ownPackageName(root: string): string {
  return (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { name: string }).name;
}

export function registerPrepareCommand(
  program: Command,
  layout: InstallLayout,
  env: Readonly<Record<string, string | undefined>>,
): void {
  program
    .command("prepare")
    .summary("do what must happen before the worker starts, and say how to start it")
    .description(
      "Run the steps before the worker starts, for scripts/docker-entrypoint.sh (--for image: the PYWORKER_REPO " +
        "install, the USE_SSL certificate, provisioning) or worker.py (--for stock-template: the bundle or a build " +
        "of the sources, ComfyUI's folders, the stock API wrapper's port, the stop window). Prints the program to " +
        "start, then NAME=value lines for its environment; exit 1 when it failed (logged and reported to the " +
        "autoscaler).",
    )
    .addOption(
      new Option("--for <target>", "whose start this prepares")
        .choices(["image", "stock-template"])
        .makeOptionMandatory(),
    )
    .action(async (opts: { for: PrepareTarget }) => {
      const code = await runPrepare({
        target: opts.for,
        env,
        root: layout.root,
        stdout: process.stdout,
        stderr: process.stderr,
      });
      // Idle keep-alive sockets (the failure report's) must not hold the process after the answer.
      process.exit(code);
    });
}
