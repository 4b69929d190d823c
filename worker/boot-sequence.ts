import type { FrozenConfig } from "../config/index.js";
import type { ComfyBackend, ComfyPool } from "../handlers/comfyui/pool.js";
import { delay, untilAborted } from "../lib/backoff.js";
import type { Logger } from "../lib/logger.js";
import { SignatureVerifier } from "./auth/signature.js";
import type { BootBenchmark } from "./boot-benchmark.js";
import type { Capacity } from "./capacity.js";
import type { JobManager } from "./jobs/manager.js";
import type { LoadSignal } from "./load-signal.js";
import { fetchPublicKey } from "./reporter/pubkey.js";
import type { Startup } from "./startup.js";

export interface BootDeps {
  config: FrozenConfig;
  logger: Logger;
  startup: Startup;
  capacity: Capacity<ComfyBackend>;
  pool: ComfyPool;
  jobs: JobManager;
  load: LoadSignal;
  benchmark: BootBenchmark;
  /** Fetches MODELS (never throws): the error_msg when a model could not be had, else undefined. */
  warmModels?: () => Promise<string | undefined>;
  /** Public key PEM to use instead of fetching it (tests). */
  publicKeyPem: string | undefined;
  /** The router's key, once loaded. */
  verified(verifier: SignatureVerifier): void;
  /** Aborts at shutdown. */
  signal: AbortSignal;
  now: () => number;
  startedAt: number;
}

/**
 * What happens after the ports listen: wait for ComfyUI, load the router's key, fetch MODELS, benchmark, then
 * ready; each step moves the start-up state machine, and a failure ends in its error phase. MODELS' downloads start
 * at once (they need no ComfyUI) and are waited for before the benchmark, which may use them: a model the operator
 * listed that cannot be had is the worker's error (error_msg), as a failed benchmark is, rather than jobs failing
 * one by one on a worker that says it is ready.
 */
export async function boot(d: BootDeps): Promise<void> {
  const { config, logger, startup, pool } = d;
  const warming = d.warmModels?.();
  // The key needs no ComfyUI: fetched meanwhile, so that a restarted worker the router still routes to checks
  // signatures from its first seconds (until then routed requests get 503, retried by the caller).
  const keying = config.autoscaler.unsecured ? Promise.resolve(undefined) : loadRouterKey(d);
  if (!startup.waitForComfy() || !(await waitForComfy(d))) return;
  const answering = pool.backends.filter((b) => b.up).map((b) => b.url);
  logger.info({ stage: "lifecycle" }, `ComfyUI answers at ${answering.join(", ")}`);
  for (const b of pool.backends.filter((b) => !b.up)) {
    logger.warn(
      { stage: "lifecycle", comfyui: b.url },
      `ComfyUI at ${b.url} did not answer within COMFYUI_STARTUP_TIMEOUT_MS: starting without it`,
    );
  }
  pool.startEvents();
  d.jobs.start();
  watch(pool, startup, d.signal);

  const keyError = await keying;
  if (keyError !== undefined) {
    startup.fail(keyError);
    return;
  }

  if (!startup.benchmarking()) return;
  // A shutdown stops the waiting, not the downloads (they are the cache's).
  const warmError = await untilAborted(warming ?? Promise.resolve(undefined), d.signal).catch(
    () => undefined,
  );
  if (d.signal.aborted) return;
  if (warmError !== undefined) {
    startup.fail(warmError);
    return;
  }
  try {
    d.load.setBenchmark(await d.benchmark.workflow());
    if (config.benchmark.skip) d.capacity.skipBenchmark();
    else d.capacity.applyBenchmark(await d.benchmark.run({ jobs: d.jobs, pool, logger }));
  } catch (err) {
    startup.fail(err instanceof Error ? err.message : String(err));
    return;
  }
  if (d.signal.aborted || !startup.ready((d.now() - d.startedAt) / 1000)) return;
  const maxPerf = d.capacity.maxPerf();
  logger.info(
    { stage: "lifecycle", max_perf: maxPerf, loadtime_s: startup.loadtime },
    `ready: max_perf ${maxPerf}`,
  );
}

/** Loads the router's key (never throws): the error_msg when it could not be had, else undefined. */
async function loadRouterKey(d: BootDeps): Promise<string | undefined> {
  const { config, logger } = d;
  try {
    const pem =
      d.publicKeyPem ?? (await fetchPublicKey(config.autoscaler.reportAddrs, { logger, signal: d.signal }));
    d.verified(new SignatureVerifier(pem));
    logger.info({ stage: "lifecycle" }, "router public key loaded");
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * Every backend, or past the deadline those that answer (the others join when they do). With none past the
 * deadline the autoscaler hears the error, but the worker keeps waiting: a ComfyUI that comes up late (a slow
 * provisioning script) still gets served. False when shut down meanwhile.
 */
async function waitForComfy(d: BootDeps): Promise<boolean> {
  const { config, startup, pool } = d;
  const deadline = d.now() + config.comfyui.startupTimeoutMs;
  const urls = config.comfyui.backends.map((b) => b.url).join(", ");
  for (;;) {
    await pool.checkAll();
    startup.comfyui(pool.anyInRotation);
    // Every backend out of service for good (a ComfyUI the worker starts that cannot start): followPool told why.
    if (pool.backends.every((b) => b.failed !== undefined)) return false;
    const missing = pool.backends.filter((b) => !b.up);
    if (missing.length === 0 || (startup.comfyUp && d.now() >= deadline)) return true;
    if (d.now() >= deadline) {
      startup.comfyLate(`ComfyUI did not answer at ${urls} within ${config.comfyui.startupTimeoutMs} ms`);
    }
    await delay(500, d.signal).catch(() => undefined);
    if (d.signal.aborted) return false;
  }
}

/**
 * A backend leaving or rejoining the rotation: readiness, error_msg and max_perf follow, and the autoscaler hears
 * it now. Only with none left is it an error (the others still serve); with every backend out of service for good
 * (an unrecoverable device error), that failure is the error, told once.
 */
export function followPool(pool: ComfyPool, startup: Startup, capacity: Capacity<ComfyBackend>): void {
  pool.on("change", (backend: ComfyBackend) => {
    if (backend.failed !== undefined && pool.backends.every((b) => b.failed !== undefined)) {
      startup.fail(backend.failed);
    }
    startup.comfyui(pool.anyInRotation);
    capacity.refresh();
  });
}

/** Asks every backend every 2 s, until shutdown. */
function watch(pool: ComfyPool, startup: Startup, signal: AbortSignal): void {
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    await pool.checkAll();
    if (startup.serving && !signal.aborted) timer = setTimeout(tick, 2_000);
  };
  timer = setTimeout(tick, 2_000);
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
}
