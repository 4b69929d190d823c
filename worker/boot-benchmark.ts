import type { ComfyPool } from "../handlers/comfyui/pool.js";
import type { Workflow } from "../handlers/comfyui/types.js";
import type { Logger } from "../lib/logger.js";
import type { JobManager } from "./jobs/manager.js";

export interface BenchmarkResult {
  /** The worker's score: the sum of the backends' scores. */
  maxPerf: number;
  /** Each backend's score; 0 for one whose every round failed. */
  perBackend: number[];
  /** Every backend's timed rounds (perf), in the order they finished. */
  rounds: number[];
  cached: boolean;
  source: string;
}

/**
 * The boot benchmark as the worker uses it. benchmark/boot.ts implements it, and whoever composes the worker (the
 * CLI, the local stack, the tests) passes it to createWorker: of worker/, only the CLI imports benchmark/, which
 * sits above it (benchmark/ drives jobs through worker/'s JobManager).
 */
export interface BootBenchmark {
  /** One round's workflow: the unit of the load signal's prior. */
  workflow(): Promise<Workflow>;
  /** Measures every backend of the pool at once, or reuses the score cached for this workflow and hardware. */
  run(parts: { jobs: JobManager; pool: ComfyPool; logger: Logger }): Promise<BenchmarkResult>;
  /** Keeps a score measured on real work for the next start (the benchmark cache). */
  saveScore(maxPerf: number, perBackend: readonly number[]): Promise<void>;
}
