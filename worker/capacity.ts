import type { BenchmarkResult } from "./boot-benchmark.js";
import { median } from "./cost-model.js";
import type { LiveScore } from "./live-score.js";
import type { Logger } from "../lib/logger.js";
import { round3 } from "../lib/numbers.js";

/** What Capacity reads of the ComfyUI pool: each backend's health, and taking one out of the rotation. */
export interface CapacityBackend {
  readonly index: number;
  readonly up: boolean;
  readonly inRotation: boolean;
}
export interface CapacityPool<B extends CapacityBackend = CapacityBackend> {
  readonly backends: readonly B[];
  fail(backend: B, reason: string): void;
}

export interface CapacityDeps<B extends CapacityBackend> {
  pool: CapacityPool<B>;
  /** The live score: the band around the benchmark's score, and the measurements of real work. */
  score: LiveScore;
  /** LIVE_SCORE: whether real work may move the score. */
  liveScore: boolean;
  /** Whether the worker serves (phase ready): only then is a score reported, or moved by real work. */
  serving: () => boolean;
  /** Keeps a score measured on real work for the next start (the benchmark cache). */
  saveScore(maxPerf: number, perBackend: readonly number[]): Promise<void>;
  /** max_perf changed (a benchmark, a live score, a backend leaving or rejoining the rotation). */
  changed(maxPerf: number): void;
  logger: Logger;
}

/**
 * The worker's capacity, owned here only: each backend's score (benchmark runs per 100 s), the boot benchmark's
 * result, the live score's band, and max_perf, the sum over the backends in rotation. Nothing else writes a
 * score; readers ask.
 */
export class Capacity<B extends CapacityBackend = CapacityBackend> {
  private readonly scores: number[];
  private result: BenchmarkResult | undefined;
  private current = 0;
  private cacheWrite: Promise<void> = Promise.resolve();

  constructor(private readonly deps: CapacityDeps<B>) {
    this.scores = deps.pool.backends.map(() => 0);
  }

  /** One backend's score; 0 until measured. */
  scoreOf(index: number): number {
    return this.scores[index] ?? 0;
  }

  /** max_perf now: the sum of the scores of the backends in rotation. */
  maxPerf(): number {
    return this.current;
  }

  /** max_perf as the autoscaler hears it: 0 until the worker serves. */
  reported(): number {
    return this.deps.serving() ? this.current : 0;
  }

  /**
   * One backend's score: the mean of the measured ones (the GPUs of one machine are alike), 0 before any is. It is
   * the unit of workloads and of the live score, as a job runs on one backend.
   */
  unit(): number {
    const measured = this.scores.filter((s) => s > 0);
    return measured.length > 0 ? measured.reduce((a, b) => a + b, 0) / measured.length : 0;
  }

  /** The unit as workloads see it: 0 until the worker serves. */
  reportedUnit(): number {
    return this.deps.serving() ? this.unit() : 0;
  }

  /** The boot benchmark's outcome, once it ran (or was read from its cache). */
  benchmark(): BenchmarkResult | undefined {
    return this.result;
  }

  /** BENCHMARK_SKIP: 1 per backend, and the band centred on it (widen it with LIVE_SCORE_BAND). */
  skipBenchmark(): void {
    this.scores.fill(1);
    this.deps.score.setAnchor(1);
    this.deps.logger.warn({ stage: "benchmark" }, "BENCHMARK_SKIP=true: max_perf set to 1 per backend");
    this.refresh();
  }

  /**
   * Each backend's benchmark score. One that scored nothing while answering cannot run the benchmark workflow: out
   * of the rotation. One that was not answering gets the others' mean when it joins (the GPUs of a machine are
   * alike), as the live score then corrects.
   */
  applyBenchmark(result: BenchmarkResult): void {
    // The band is centred on what the benchmark's own rounds measured: a cached score that live work moved (its
    // max_perf) is held within it too, so no run of restarts walks the score away from the benchmark.
    this.deps.score.setAnchor(result.rounds.length > 0 ? median(result.rounds) : this.unit());
    for (const b of this.deps.pool.backends) {
      const perf = result.perBackend[b.index] ?? 0;
      this.scores[b.index] = perf > 0 ? this.deps.score.bound(perf) : 0;
    }
    const mean = this.unit();
    for (const b of this.deps.pool.backends.filter((b) => this.scores[b.index] === 0)) {
      if (b.up) this.deps.pool.fail(b, "no benchmark round completed on it");
      else this.scores[b.index] = mean;
    }
    this.result = result;
    this.refresh();
  }

  /**
   * Real work measured a unit score that moved: every backend moves by the same factor, keeping their proportions
   * (the live score measures a backend's speed, not which backend's), and the cache keeps it for the next start.
   */
  measured(unit: number): void {
    if (!this.deps.serving() || !this.deps.liveScore) return;
    // Bounded again where it is applied: what reaches max_perf and the cache never leaves the band.
    const bounded = this.deps.score.bound(unit);
    const before = this.unit();
    for (let i = 0; i < this.scores.length; i++) {
      this.scores[i] = before > 0 ? (this.scores[i]! * bounded) / before : bounded;
    }
    const previous = this.current;
    this.refresh();
    this.deps.logger.info(
      { stage: "score", max_perf: this.current, previous },
      `max_perf ${previous} -> ${this.current} (measured on completed jobs)`,
    );
    const perBackend = [...this.scores];
    const total = perBackend.reduce((a, b) => a + b, 0);
    // One write at a time, in order: the last score is the one a restart starts from.
    this.cacheWrite = this.cacheWrite
      .then(() => this.deps.saveScore(total, perBackend))
      .then(
        () => undefined,
        (err: unknown) =>
          this.deps.logger.warn({ stage: "score", err }, "could not update the benchmark cache"),
      );
  }

  /** Recomputes max_perf from the backends in rotation; a change is told at once. */
  refresh(): void {
    const sum = this.deps.pool.backends.reduce(
      (total, b) => total + (b.inRotation ? this.scoreOf(b.index) : 0),
      0,
    );
    const next = round3(sum);
    if (next === this.current) return;
    this.current = next;
    this.deps.changed(next);
  }

  /** Resolves once the benchmark cache holds the last live score. */
  saved(): Promise<void> {
    return this.cacheWrite;
  }
}
