import { randomUUID, createHash } from "node:crypto";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Workflow } from "../handlers/comfyui/types.js";
import type { Logger } from "../lib/logger.js";
import type { Job } from "../worker/jobs/job.js";
import type { JobManager } from "../worker/jobs/manager.js";
import { DEFAULT_WORKLOAD } from "../worker/workload.js";
import type { BenchmarkPayload } from "./payload.js";

export class BenchmarkFailedError extends Error {
  override readonly name = "BenchmarkFailedError";
}

export interface BenchmarkOptions {
  /** Ignore a cached score (the CLI's `benchmark` command). */
  force?: boolean;
  /** Sees every event of the round's job (progress bars). */
  onJob?: (label: string, job: Job) => void;
  jobs: JobManager;
  payload: BenchmarkPayload;
  logger: Logger;
  outputDir: string;
  cacheFile: string;
  /** What else makes a score valid: the GPU (ComfyUI's device names) and BENCHMARK_GPU_KEY. */
  hardwareKey: string;
  minRounds: number;
  maxRounds: number;
  tolerance: number;
  onRound?: (round: number, seconds: number, perf: number) => void;
  now?: () => number;
}

export interface BenchmarkResult {
  maxPerf: number;
  rounds: number[];
  cached: boolean;
  /** Sampling cost of the benchmark workflow (for workload estimates). */
  source: string;
}

interface CacheRecord {
  max_perf: number;
  key: string;
  rounds: number[];
  source: string;
  at: string;
  /** True once real work replaced the benchmark's figure. */
  live?: boolean;
}

/** What makes a score valid besides the workflow: ComfyUI's device names and BENCHMARK_GPU_KEY. */
export async function hardwareKey(
  client: { systemStats(): Promise<Record<string, unknown>> },
  gpuKey: string,
) {
  const stats = await client.systemStats().catch(() => ({}));
  const devices = ((stats as { devices?: { name?: string }[] }).devices ?? []).map((d) => d.name).join(",");
  return `${devices}|${gpuKey}`;
}

export function cacheKey(payload: BenchmarkPayload, hardwareKey: string): string {
  return createHash("sha256").update(`${payload.fingerprint}|${hardwareKey}`).digest("hex").slice(0, 32);
}

/**
 * The boot benchmark. One warm-up (it loads the models), then timed rounds of one request each through the same
 * generation path as real requests; perf of a round = 100 / seconds. With `minRounds` = 1 (the default) one timed
 * round gives a provisional score and the worker is ready after two workflow runs; the score then keeps improving
 * from real work (worker/live-score.ts). With more, it stops once the last `minRounds` rounds agree within
 * `tolerance` (max/min - 1), or after `maxRounds`, and the score is their median. Upstream runs 1 + 8 rounds and
 * keeps the max. A failed round is logged and skipped; no successful round is BenchmarkFailedError. The score is
 * cached with a key of the workflow and the hardware, so a restart skips the benchmark but a changed one runs
 * again; the live score updates the cache (`updateCachedScore`).
 */
export async function runBenchmark(opts: BenchmarkOptions): Promise<BenchmarkResult> {
  const key = cacheKey(opts.payload, opts.hardwareKey);
  const cached = await readCache(opts.cacheFile);
  if (!opts.force && cached && cached.key === key && cached.max_perf > 0) {
    opts.logger.info(
      { stage: "benchmark", max_perf: cached.max_perf },
      `benchmark score reused from ${opts.cacheFile}`,
    );
    return { maxPerf: cached.max_perf, rounds: cached.rounds, cached: true, source: cached.source };
  }
  const now = opts.now ?? performance.now.bind(performance);
  const runOnce = async (label: string): Promise<number | undefined> => {
    const id = `benchmark-${label}-${randomUUID().slice(0, 8)}`;
    const started = now();
    const { job } = opts.jobs.submit(
      {
        requestId: id,
        workflow: opts.payload.make() as Workflow,
        s3: undefined,
        webhook: undefined,
        // The warm-up loads models: a time that says nothing about the next jobs, so the cost model skips it.
        internal: { skipStorage: true, ...(label === "warmup" && { warmup: true }) },
      },
      DEFAULT_WORKLOAD,
    );
    opts.onJob?.(label, job);
    await job.done;
    // ComfyUI's own execution time of the prompt when its events told it (what the live score measures too, so
    // the two agree); the round's wall time otherwise.
    const seconds = (job.executionMs() ?? now() - started) / 1000;
    await rm(join(opts.outputDir, id), { recursive: true, force: true });
    if (job.status !== "completed") {
      opts.logger.warn(
        { stage: "benchmark", round: label, status: job.status },
        `benchmark ${label} failed: ${job.message}`,
      );
      return undefined;
    }
    return seconds;
  };

  opts.logger.info({ stage: "benchmark", source: opts.payload.source }, "benchmark: warm-up");
  await runOnce("warmup");
  const perfs: number[] = [];
  let failures = 0;
  for (let round = 1; round <= opts.maxRounds; round++) {
    const seconds = await runOnce(String(round));
    if (seconds === undefined) {
      failures++;
      continue;
    }
    const perf = DEFAULT_WORKLOAD / seconds;
    perfs.push(perf);
    opts.onRound?.(round, seconds, perf);
    opts.logger.info(
      { stage: "benchmark", round, seconds: round3(seconds), perf: round3(perf) },
      `benchmark round ${round}: ${seconds.toFixed(2)} s -> ${perf.toFixed(3)}`,
    );
    const last = perfs.slice(-opts.minRounds);
    if (last.length >= opts.minRounds && agree(last, opts.tolerance)) break;
  }
  if (perfs.length === 0) throw new BenchmarkFailedError("No successful responses from benchmark");
  const maxPerf = median(perfs.slice(-opts.minRounds));
  const record: CacheRecord = {
    max_perf: round3(maxPerf),
    key,
    rounds: perfs.map(round3),
    source: opts.payload.source,
    at: new Date().toISOString(),
  };
  await writeCache(opts.cacheFile, record);
  opts.logger.info(
    { stage: "benchmark", max_perf: record.max_perf, rounds: perfs.length, failures },
    `benchmark done: max_perf ${record.max_perf} after ${perfs.length} round(s)`,
  );
  return { maxPerf: record.max_perf, rounds: record.rounds, cached: false, source: opts.payload.source };
}

/**
 * Stores a score measured on real work in the cache, under the key the boot benchmark wrote, so a restart starts
 * from the better figure. Without a cache record (BENCHMARK_SKIP) there is nothing to update.
 */
export async function updateCachedScore(cacheFile: string, maxPerf: number): Promise<boolean> {
  const record = await readCache(cacheFile);
  if (!record) return false;
  await writeCache(cacheFile, {
    ...record,
    max_perf: round3(maxPerf),
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

const round3 = (n: number) => Math.round(n * 1000) / 1000;
