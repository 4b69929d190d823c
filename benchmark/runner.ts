import { randomUUID, createHash } from "node:crypto";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { FrozenConfig } from "../config/index.js";
import type { ComfyPool } from "../handlers/comfyui/pool.js";
import type { Workflow } from "../handlers/comfyui/types.js";
import type { Logger } from "../lib/logger.js";
import type { BenchmarkResult } from "../worker/boot-benchmark.js";
import type { Job } from "../worker/jobs/job.js";
import type { JobManager } from "../worker/jobs/manager.js";
import { DEFAULT_WORKLOAD } from "../worker/workload.js";
import type { BenchmarkPayload } from "./payload.js";
import { round3 } from "../lib/numbers.js";

export type { BenchmarkResult };

export class BenchmarkFailedError extends Error {
  override readonly name = "BenchmarkFailedError";
}

export interface BenchmarkOptions {
  /** Ignore a cached score (the CLI's `benchmark` command). */
  force?: boolean;
  /** Sees every event of the round's job (progress bars); `backend` is the ComfyUI backend it runs on. */
  onJob?: (label: string, job: Job, backend: number) => void;
  jobs: JobManager;
  payload: BenchmarkPayload;
  logger: Logger;
  outputDir: string;
  cacheFile: string;
  /** What else makes a score valid: every backend's GPU (ComfyUI's device names) and BENCHMARK_GPU_KEY. */
  hardwareKey: string;
  /** How many ComfyUI backends to measure (the pool's first `backends`, 0 to n-1), each on its own and all at once. */
  backends: number;
  minRounds: number;
  maxRounds: number;
  tolerance: number;
  onRound?: (round: number, seconds: number, perf: number, backend: number) => void;
  now?: () => number;
}

interface CacheRecord {
  max_perf: number;
  key: string;
  rounds: number[];
  /** Each backend's score (absent in records written for one backend). */
  backends?: number[];
  source: string;
  at: string;
  /** True once real work replaced the benchmark's figure. */
  live?: boolean;
}

/** What makes a score valid besides the workflow: each backend's device names, and BENCHMARK_GPU_KEY. */
export async function hardwareKey(
  clients: readonly { systemStats(signal?: AbortSignal): Promise<Record<string, unknown>> }[],
  gpuKey: string,
) {
  const names = await Promise.all(
    clients.map(async (client) => {
      const stats = await client.systemStats(AbortSignal.timeout(10_000)).catch(() => ({}));
      return ((stats as { devices?: { name?: string }[] }).devices ?? []).map((d) => d.name).join(",");
    }),
  );
  return `${names.join(";")}|${gpuKey}`;
}

/** The benchmark as the config sets it, over every backend of `pool`: what the boot and the CLI both run. */
export async function configuredBenchmark(
  config: FrozenConfig,
  parts: { jobs: JobManager; pool: ComfyPool; payload: BenchmarkPayload; logger: Logger },
): Promise<BenchmarkOptions> {
  const { pool, jobs, payload, logger } = parts;
  return {
    jobs,
    payload,
    logger,
    outputDir: config.outputDir,
    cacheFile: config.benchmark.cacheFile,
    hardwareKey: await hardwareKey(
      pool.backends.map((b) => b.client),
      config.benchmark.gpuKey,
    ),
    backends: pool.backends.length,
    minRounds: config.benchmark.minRounds,
    maxRounds: config.benchmark.maxRounds,
    tolerance: config.benchmark.tolerance,
  };
}

export function cacheKey(payload: BenchmarkPayload, hardwareKey: string): string {
  return createHash("sha256").update(`${payload.fingerprint}|${hardwareKey}`).digest("hex").slice(0, 32);
}

/**
 * The boot benchmark, on every ComfyUI backend at once (each backend is one GPU, measured while the others run as
 * they will under traffic). On each: one warm-up (it loads the models), then timed rounds of one request each
 * through the same generation path as real requests; perf of a round = 100 / seconds. With `minRounds` = 1 (the
 * default) one timed round gives a provisional score and the worker is ready after two workflow runs; the score then
 * keeps improving from real work (worker/live-score.ts). With more, it stops once the last `minRounds` rounds agree
 * within `tolerance` (max/min - 1), or after `maxRounds`, and the score is their median. Upstream runs 1 + 8 rounds
 * and keeps the max. The worker's score is the sum of the backends'. A failed round is logged and skipped; a backend
 * with no successful round scores 0; no successful round at all is BenchmarkFailedError. The scores are cached with
 * a key of the workflow and the hardware, so a restart skips the benchmark but a changed one runs again; the live
 * score updates the cache (`updateCachedScore`).
 */
export async function runBenchmark(opts: BenchmarkOptions): Promise<BenchmarkResult> {
  const key = cacheKey(opts.payload, opts.hardwareKey);
  const cached = await readCache(opts.cacheFile);
  if (!opts.force && cached && cached.key === key && cached.max_perf > 0) {
    opts.logger.info(
      { stage: "benchmark", max_perf: cached.max_perf },
      `benchmark score reused from ${opts.cacheFile}`,
    );
    return {
      maxPerf: cached.max_perf,
      perBackend: splitScore(cached, opts.backends),
      rounds: cached.rounds,
      cached: true,
      source: cached.source,
    };
  }
  const now = opts.now ?? performance.now.bind(performance);
  const runOnce = async (label: string, backend: number): Promise<number | undefined> => {
    const id = `benchmark-${label}-${opts.backends > 1 ? `b${backend}-` : ""}${randomUUID().slice(0, 8)}`;
    const started = now();
    const { job } = opts.jobs.submit(
      {
        requestId: id,
        workflow: opts.payload.make() as Workflow,
        s3: undefined,
        webhook: undefined,
        // The warm-up loads models: a time that says nothing about the next jobs, so the cost model skips it.
        internal: { skipStorage: true, backend, ...(label === "warmup" && { warmup: true }) },
      },
      DEFAULT_WORKLOAD,
    );
    opts.onJob?.(label, job, backend);
    await job.done;
    // ComfyUI's own execution time of the prompt when its events told it (what the live score measures too, so
    // the two agree); the round's wall time otherwise.
    const seconds = (job.executionMs() ?? now() - started) / 1000;
    await rm(join(opts.outputDir, id), { recursive: true, force: true });
    if (job.status !== "completed") {
      opts.logger.warn(
        { stage: "benchmark", round: label, backend, status: job.status },
        `benchmark ${label} failed: ${job.message}`,
      );
      return undefined;
    }
    return seconds;
  };

  const measure = async (backend: number): Promise<number[]> => {
    const log = opts.backends > 1 ? { backend } : {};
    opts.logger.info({ stage: "benchmark", source: opts.payload.source, ...log }, "benchmark: warm-up");
    await runOnce("warmup", backend);
    const perfs: number[] = [];
    for (let round = 1; round <= opts.maxRounds; round++) {
      const seconds = await runOnce(String(round), backend);
      if (seconds === undefined) continue;
      const perf = DEFAULT_WORKLOAD / seconds;
      perfs.push(perf);
      opts.onRound?.(round, seconds, perf, backend);
      opts.logger.info(
        { stage: "benchmark", round, seconds: round3(seconds), perf: round3(perf), ...log },
        `benchmark round ${round}: ${seconds.toFixed(2)} s -> ${perf.toFixed(3)}`,
      );
      const last = perfs.slice(-opts.minRounds);
      if (last.length >= opts.minRounds && agree(last, opts.tolerance)) break;
    }
    return perfs;
  };

  const measured = await Promise.all(Array.from({ length: opts.backends }, (_, b) => measure(b)));
  const perBackend = measured.map((perfs) =>
    perfs.length > 0 ? round3(median(perfs.slice(-opts.minRounds))) : 0,
  );
  const rounds = measured.flat();
  if (rounds.length === 0) throw new BenchmarkFailedError("No successful responses from benchmark");
  const record: CacheRecord = {
    max_perf: round3(perBackend.reduce((a, b) => a + b, 0)),
    key,
    rounds: rounds.map(round3),
    ...(opts.backends > 1 && { backends: perBackend }),
    source: opts.payload.source,
    at: new Date().toISOString(),
  };
  await writeCache(opts.cacheFile, record);
  opts.logger.info(
    {
      stage: "benchmark",
      max_perf: record.max_perf,
      rounds: rounds.length,
      ...(opts.backends > 1 && { backends: perBackend }),
    },
    `benchmark done: max_perf ${record.max_perf} after ${rounds.length} round(s)`,
  );
  return {
    maxPerf: record.max_perf,
    perBackend,
    rounds: record.rounds,
    cached: false,
    source: opts.payload.source,
  };
}

/** Each backend's share of a cached score (an even split when the record has none, or not as many). */
function splitScore(record: CacheRecord, backends: number): number[] {
  if (record.backends?.length === backends) return record.backends;
  return Array.from({ length: backends }, () => round3(record.max_perf / backends));
}

/**
 * Stores a score measured on real work in the cache, under the key the boot benchmark wrote, so a restart starts
 * from the better figure. Without a cache record (BENCHMARK_SKIP) there is nothing to update.
 */
export async function updateCachedScore(
  cacheFile: string,
  maxPerf: number,
  perBackend?: readonly number[],
): Promise<boolean> {
  const record = await readCache(cacheFile);
  if (!record) return false;
  await writeCache(cacheFile, {
    ...record,
    max_perf: round3(maxPerf),
    ...(perBackend && perBackend.length > 1 && { backends: perBackend.map(round3) }),
    at: new Date().toISOString(),
    live: true,
  });
  return true;
}

function agree(perfs: readonly number[], tolerance: number): boolean {
  return perfs.length <= 1 || Math.max(...perfs) / Math.min(...perfs) - 1 <= tolerance;
}

async function writeCache(path: string, record: CacheRecord): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(record)}\n`);
  await rename(tmp, path);
}

async function readCache(path: string): Promise<CacheRecord | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as CacheRecord;
    return typeof parsed.max_perf === "number" && typeof parsed.key === "string" ? parsed : undefined;
  } catch {
    return undefined; // missing, or upstream's bare float: not keyed, so not trusted
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
