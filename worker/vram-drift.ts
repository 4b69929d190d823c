/**
 * Free VRAM that drifts down job after job: a ComfyUI that leaks device memory (a custom node holding tensors, a
 * fragmenting allocator) ends in out-of-memory failures on work it ran before. The worker reads each backend's free
 * VRAM after each of its jobs; a backend whose reading fell after each of `VRAM_DRIFT_JOBS` jobs in a row, by more
 * than VRAM_DRIFT_MIN_FRACTION of its total in all, has drifted. That is a warning and a metric; where the worker
 * started that ComfyUI (COMFYUI_LAUNCH=true), it is also drained (out of the rotation once its running jobs end) and
 * restarted, then back in the rotation once it answers.
 *
 * Loading models also lowers free VRAM (ComfyUI keeps them loaded between jobs), but only until they are all loaded
 * or ComfyUI unloads some, which raises it: a run of only decreases, as long as the rule asks, is what a leak looks
 * like. On the CPU (`--cpu`) ComfyUI reports the machine's RAM as its VRAM, which every process moves: not watched.
 */
import type { DeviceMemory } from "../handlers/comfyui/client.js";
import type { ComfyBackend, ComfyPool } from "../handlers/comfyui/pool.js";
import type { Logger } from "../lib/logger.js";

/** The drop, over the run of decreases, that counts as drift: this fraction of the device's total. */
export const VRAM_DRIFT_MIN_FRACTION = 0.1;
/** How long reading /system_stats after a job may take. */
const READ_TIMEOUT_MS = 5_000;

export interface VramDrift {
  /** Free bytes at the start of the run of decreases, and now. */
  fromBytes: number;
  toBytes: number;
  totalBytes: number;
  /** Jobs in the run. */
  jobs: number;
}

/**
 * Whether the readings (free bytes after each job, oldest first) end in drift: the last `jobs` readings each lower
 * than the one before, and the last more than `minFraction` of `totalBytes` below the first of the run. Pure.
 */
export function vramDrift(
  readings: readonly number[],
  totalBytes: number,
  jobs: number,
  minFraction = VRAM_DRIFT_MIN_FRACTION,
): VramDrift | undefined {
  if (jobs <= 0 || totalBytes <= 0 || readings.length < jobs + 1) return undefined;
  const run = readings.slice(-(jobs + 1));
  for (let i = 1; i < run.length; i++) if (!(run[i]! < run[i - 1]!)) return undefined;
  const fromBytes = run[0]!;
  const toBytes = run.at(-1)!;
  if (fromBytes - toBytes <= minFraction * totalBytes) return undefined;
  return { fromBytes, toBytes, totalBytes, jobs };
}

export interface VramWatchDeps {
  pool: ComfyPool;
  /** VRAM_DRIFT_JOBS; 0: nothing is read. */
  jobs: number;
  logger: Logger;
  /** Tells the metric. */
  drifted(backend: ComfyBackend, drift: VramDrift): void;
  /**
   * Restarts the backend's ComfyUI where the worker started it (resolves once it answers; rejects when it cannot);
   * undefined where the worker does not own that backend.
   */
  restarter(index: number): ((reason: string) => Promise<void>) | undefined;
}

/** Reads each backend's free VRAM after its jobs and acts on drift (see the module's comment). */
export class VramWatch {
  private readonly readings = new Map<number, number[]>();
  /** Backends being drained and restarted now. */
  private readonly recycling = new Set<number>();

  constructor(private readonly deps: VramWatchDeps) {}

  /** After a job on `backend`: one reading, then the rule. Never rejects. */
  async afterJob(backend: ComfyBackend, signal?: AbortSignal): Promise<void> {
    if (this.deps.jobs === 0 || this.recycling.has(backend.index) || !backend.inRotation) return;
    const timeout = AbortSignal.timeout(READ_TIMEOUT_MS);
    const memory: DeviceMemory | undefined = await backend.client
      .deviceMemory(signal ? AbortSignal.any([signal, timeout]) : timeout)
      .catch(() => undefined);
    if (memory === undefined || memory.type === "cpu" || this.recycling.has(backend.index)) return;
    const readings = this.readings.get(backend.index) ?? [];
    readings.push(memory.vramFree);
    if (readings.length > this.deps.jobs + 1) readings.splice(0, readings.length - this.deps.jobs - 1);
    this.readings.set(backend.index, readings);
    const drift = vramDrift(readings, memory.vramTotal, this.deps.jobs);
    if (drift === undefined) return;
    this.readings.delete(backend.index);
    this.deps.drifted(backend, drift);
    const restart = this.deps.restarter(backend.index);
    const mib = (b: number) => Math.round(b / 2 ** 20);
    const what =
      `ComfyUI at ${backend.url}: free VRAM fell after each of ${drift.jobs} jobs in a row, ` +
      `${mib(drift.fromBytes)} -> ${mib(drift.toBytes)} MiB of ${mib(drift.totalBytes)} MiB`;
    const log = this.deps.logger.child({ stage: "vram", backend: backend.index, comfyui: backend.url });
    if (restart === undefined) {
      log.warn({ vram: drift }, `${what}; not started by this worker: left as it is`);
      return;
    }
    log.warn({ vram: drift }, `${what}: draining it, then restarting it`);
    await this.recycle(backend, restart, "free VRAM drifted down", log, signal);
  }

  /** Out of the rotation, its running prompts end, restart, back in the rotation. */
  private async recycle(
    backend: ComfyBackend,
    restart: (reason: string) => Promise<void>,
    reason: string,
    log: Logger,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const { pool } = this.deps;
    this.recycling.add(backend.index);
    const started = Date.now();
    pool.withdraw(backend, reason);
    try {
      await pool.idle(backend, signal);
      await restart(reason);
      log.info({ duration_ms: Date.now() - started }, "restarted after VRAM drift: back in the rotation");
    } catch (err) {
      log.warn({ err, duration_ms: Date.now() - started }, "the restart after VRAM drift did not complete");
    } finally {
      this.recycling.delete(backend.index);
      this.readings.delete(backend.index);
      pool.restore(backend);
    }
  }
}
