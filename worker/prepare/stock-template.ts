import { accessSync, constants, existsSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { delimiter, join } from "node:path";
import type { StockTemplatePrepare } from "../../config/prepare.js";
import { delay } from "../../lib/backoff.js";
import { runChild } from "./child.js";
import { PrepareError, since, type PrepareContext } from "./context.js";

const SUPERVISORCTL_TIMEOUT_MS = 60_000;
/** After `supervisorctl stop api-wrapper`, how long its port may take to be free. */
const PORT_RELEASE_MS = 15_000;
/** How many ports after API_PORT are tried when it stays taken. */
const PORT_SEARCH = 99;

/**
 * The stock image's ComfyUI, unless the operator said where it is: the first of $WORKSPACE/ComfyUI (WORKSPACE_DIR),
 * /workspace/ComfyUI, /opt/workspace-internal/ComfyUI. The worker reads COMFYUI_ARGS' port and moved folders itself;
 * this only supplies the base folder (COMFYUI_BASE_DIR).
 */
export function findComfyui(config: StockTemplatePrepare, ctx: PrepareContext): Record<string, string> {
  if (config.comfyui.foldersGiven) return {};
  const found = config.comfyui.candidates.find((path) => existsSync(path) && statSync(path).isDirectory());
  if (found === undefined) {
    throw new PrepareError(
      "comfyui_not_found",
      `ComfyUI not found in ${config.comfyui.candidates.join(", ")}; set COMFYUI_BASE_DIR`,
    );
  }
  ctx.log.info("comfyui", `folders below ${found}`);
  return { COMFYUI_BASE_DIR: found };
}

/** Whether nothing listens on host:port (a bind succeeds), as a server would find it. */
export function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(false));
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve(true)));
  });
}

function onPath(name: string, path: string | undefined): string | undefined {
  for (const dir of (path ?? "").split(delimiter).filter(Boolean)) {
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

/**
 * The stock image's API wrapper as supervisor runs it: its state (RUNNING, STARTING, STOPPED ...), undefined
 * without supervisor or without that program.
 */
async function apiWrapperState(ctx: PrepareContext): Promise<string | undefined> {
  const ctl = onPath("supervisorctl", ctx.env.PATH);
  if (ctl === undefined) return undefined;
  // Its exit code says whether the program runs; its first line says how it is.
  const status = await runChild(ctl, ["status", "api-wrapper"], {
    env: ctx.env,
    timeoutMs: SUPERVISORCTL_TIMEOUT_MS,
  });
  const words = status.output.split(/\s+/).filter(Boolean);
  return words[0] === "api-wrapper" && words[1] !== undefined ? words[1] : undefined;
}

const RUNS = new Set(["STARTING", "RUNNING"]);

/**
 * The stock image's api-wrapper program first runs convert-workflows.sh (it waits for ComfyUI, converts the
 * provisioned workflows and links the first as the custom benchmark, pyworker_benchmark.json), and only then binds
 * its port. Stopping it before that kills the conversion, and the benchmark would fall back to SD1.5: while the
 * program runs and its port is not bound yet, wait (COMFYUI_READY_TIMEOUT and a margin at most). Which benchmark
 * file the worker takes is the worker's choice (benchmark/payload.ts); this only lets the image's conversion finish.
 */
export async function awaitWorkflowConversion(
  config: StockTemplatePrepare,
  ctx: PrepareContext,
): Promise<void> {
  const { host, port, enabled } = config.api;
  if (!enabled) return;
  if (!RUNS.has((await apiWrapperState(ctx)) ?? "") || !(await portFree(host, port))) return;
  const waitS = Math.round(config.conversionWaitMs / 1000);
  ctx.log.info(
    "benchmark",
    `the stock API wrapper is still converting the provisioned workflows (${host}:${port} not bound yet); waiting up to ${waitS} s for it before stopping it, so that the custom benchmark it links is there`,
  );
  const started = Date.now();
  // Another program's bind sends no event: look twice a second.
  while (await portFree(host, port)) {
    if (!RUNS.has((await apiWrapperState(ctx)) ?? "")) {
      ctx.log.info(
        "benchmark",
        "the stock API wrapper stopped before binding its port; not waiting for it any longer",
      );
      return;
    }
    if (Date.now() - started >= config.conversionWaitMs) {
      ctx.log.warn("benchmark", `the stock API wrapper did not finish in ${waitS} s; stopping it anyway`);
      return;
    }
    await delay(500);
  }
  ctx.log.info("benchmark", "the stock API wrapper finished converting", { waited_s: since(started) });
}

/** Stops the stock image's API wrapper if supervisor runs one; true when it was stopped. */
async function stopApiWrapper(ctx: PrepareContext): Promise<boolean> {
  const state = await apiWrapperState(ctx);
  if (state === undefined || ["STOPPED", "EXITED", "FATAL"].includes(state)) return false;
  const ctl = onPath("supervisorctl", ctx.env.PATH)!;
  const stop = await runChild(ctl, ["stop", "api-wrapper"], {
    env: ctx.env,
    timeoutMs: SUPERVISORCTL_TIMEOUT_MS,
  });
  if (!stop.ok) {
    ctx.log.warn("api", `supervisorctl stop api-wrapper failed (${stop.outcome}): ${stop.output.trim()}`);
    return false;
  }
  ctx.log.info(
    "api",
    "stopped the stock API wrapper (supervisorctl stop api-wrapper); this worker's local API replaces it",
  );
  return true;
}

/**
 * The local API's port: the stock API wrapper holds API_PORT (18288) under supervisor, and is stopped so that our
 * local API takes its place; when that port stays taken, the next free one (the log says which).
 */
export async function chooseApiPort(
  config: StockTemplatePrepare,
  ctx: PrepareContext,
): Promise<Record<string, string>> {
  const { host, port: wanted, enabled } = config.api;
  if (!enabled) return {};
  const stopped = await stopApiWrapper(ctx);
  const deadline = Date.now() + (stopped ? PORT_RELEASE_MS : 0);
  for (;;) {
    if (await portFree(host, wanted)) {
      ctx.log.info("api", `local API on ${host}:${wanted}`);
      return { API_PORT: String(wanted) };
    }
    if (Date.now() >= deadline) break;
    await delay(250);
  }
  for (let port = wanted + 1; port <= Math.min(wanted + PORT_SEARCH, 65535); port++) {
    if (await portFree(host, port)) {
      ctx.log.info(
        "api",
        `${host}:${wanted} is taken (the stock API wrapper?) and was not freed; local API on ${host}:${port}`,
      );
      return { API_PORT: String(port) };
    }
  }
  throw new PrepareError(
    "no_api_port",
    `no free port for the local API from ${wanted} to ${wanted + PORT_SEARCH}`,
  );
}

/**
 * USE_SSL on the stock template: start_server.sh has signed the pair before it ran us; without it the routed
 * port cannot serve.
 */
export function checkCertificateFiles(config: StockTemplatePrepare): Record<string, string> {
  if (!config.ssl.use) return {};
  for (const path of [config.ssl.cert, config.ssl.key]) {
    if (!(existsSync(path) && statSync(path).isFile() && statSync(path).size > 0)) {
      throw new PrepareError(
        "certificate_unavailable",
        `USE_SSL=true but ${path} is missing or empty (start_server.sh signs it)`,
      );
    }
  }
  return { WORKER_SSL_CERT_FILE: config.ssl.cert, WORKER_SSL_KEY_FILE: config.ssl.key };
}

/**
 * The stock template's supervisor program (pyworker) waits 10 s after its SIGTERM (stopwaitsecs=10), then kills the
 * group, and its SIGTERM reaches the whole group (stopasgroup), start_server.sh's `tee` into pyworker.log included:
 * the worker drains within that window (STOP_WAIT_S), and also logs to a file of its own beside pyworker.log,
 * where what it says after the tee is gone is kept.
 */
export function stockProgramDefaults(config: StockTemplatePrepare): Record<string, string> {
  return {
    ...(config.stopWaitS === undefined && { STOP_WAIT_S: "10" }),
    ...(config.logFile === undefined && { LOG_FILE: join(config.logDir, "comfyui-worker.log") }),
  };
}
