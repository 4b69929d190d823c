import type { FrozenConfig } from "../config/index.js";
import type { ComfyPool } from "../handlers/comfyui/pool.js";
import type { Logger } from "../lib/logger.js";
import type { WorkerEventEmitter } from "./events.js";
import { Fleet, logFleet, startFailureMessage } from "./launcher/fleet.js";
import type { WorkerMetrics } from "./metrics.js";
import { VramWatch } from "./vram-drift.js";

export interface ComfyOwnerDeps {
  config: FrozenConfig;
  pool: ComfyPool;
  events: WorkerEventEmitter;
  metrics: WorkerMetrics;
  logger: Logger;
  /** The environment the ComfyUIs of COMFYUI_LAUNCH=true start from. */
  launchEnv: NodeJS.ProcessEnv | undefined;
  /** Aborted when the worker stops: no VRAM reading or restart starts after it. */
  signal: AbortSignal;
}

/**
 * What the worker does to the ComfyUIs behind its pool: with COMFYUI_LAUNCH=true it starts, restarts and stops
 * them (the fleet, instance i being backend i); on every setup it reads free VRAM after each job, and restarts a
 * backend whose free VRAM drifts down where it owns that backend. Returns the fleet, undefined when it owns none.
 */
export function ownComfyUIs(deps: ComfyOwnerDeps): Fleet | undefined {
  const { config, pool, events, metrics, logger } = deps;
  if (config.launch && !deps.launchEnv) throw new Error("COMFYUI_LAUNCH=true needs launchEnv");
  const fleet =
    config.launch && deps.launchEnv ? new Fleet(config.launch, { logger, env: deps.launchEnv }) : undefined;
  if (fleet) {
    logFleet(fleet, logger);
    // A ComfyUI that cannot start until the operator acts leaves the rotation for good; with none left, that is the
    // worker's error_msg (followPool).
    fleet.on("startFailed", (e) => {
      const backend = pool.backends[e.index];
      if (backend) pool.fail(backend, `${e.name}: ${startFailureMessage(e)}`);
    });
  }
  const vram = new VramWatch({
    pool,
    jobs: config.jobs.vramDriftJobs,
    logger,
    drifted: (backend) => metrics.vramDrift.inc({ backend: String(backend.index) }),
    restarter: (index) =>
      fleet && fleet.owns(index)
        ? (reason) => {
            metrics.comfyRestarts.inc({ backend: String(index), reason: "vram_drift" });
            return fleet.restart(index, reason);
          }
        : undefined,
  });
  events.on("job.finished", (job) => {
    const backend = job.backend === undefined ? undefined : pool.backends[job.backend];
    if (backend) void vram.afterJob(backend, deps.signal);
  });
  return fleet;
}
