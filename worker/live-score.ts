import { median } from "./cost-model.js";

export interface LiveScoreOptions {
  /** Newest throughput measurements kept. */
  window?: number;
  /** Measurements needed before the score moves at all. */
  minSamples?: number;
  /** Relative move of the estimate that is worth re-reporting (0.05: 5 %). */
  threshold?: number;
  /**
   * How far the score may move from the boot benchmark's, as a factor (2: between half and double). Real work
   * corrects a score within this band; callers choose that work, so it never moves the score beyond it.
   */
  band?: number;
}

/**
 * max_perf as real work measures it. The boot benchmark gives a provisional score from one timed run; after that
 * every completed job is a measurement of throughput in benchmark units per second (see LoadSignal). The estimate is the
 * median of the newest measurements after dropping outliers (beyond 3 scaled median absolute deviations: a job
 * that waited on a model load, a cache hit that took no time), and it replaces the score only when it moved by more
 * than `threshold`, so that the autoscaler is not told about noise. Callers choose the work that measures it, so the
 * estimate stays within `band` of the boot benchmark's score.
 */
export class LiveScore {
  private readonly samples: number[] = [];
  private readonly window: number;
  private readonly minSamples: number;
  private readonly threshold: number;
  private readonly band: number;
  /** The boot benchmark's score that the band is centred on; unset, nothing is bounded (no score to bound yet). */
  private anchor: number | undefined;

  constructor(opts: LiveScoreOptions = {}) {
    this.window = opts.window ?? 20;
    this.minSamples = opts.minSamples ?? 3;
    this.threshold = opts.threshold ?? 0.05;
    this.band = opts.band ?? 2;
    if (!(this.band >= 1))
      throw new Error(`a live score band must be a factor of at least 1, not ${this.band}`);
  }

  /** Centres the band on the score the boot benchmark measured. */
  setAnchor(score: number): void {
    this.anchor = score > 0 && Number.isFinite(score) ? score : undefined;
  }

  /** `score` held within the band around the benchmark's score. */
  bound(score: number): number {
    if (this.anchor === undefined) return score;
    const lo = this.anchor / this.band;
    const hi = this.anchor * this.band;
    return Math.round(Math.min(hi, Math.max(lo, score)) * 1000) / 1000;
  }

  /** Records a measurement; returns the new score when the estimate moved more than the threshold from `current`. */
  observe(perf: number, current: number): number | undefined {
    if (!(perf > 0) || !Number.isFinite(perf)) return undefined;
    this.samples.push(perf);
    if (this.samples.length > this.window) this.samples.shift();
    const estimate = this.estimate();
    if (estimate === undefined) return undefined;
    if (current > 0 && Math.abs(estimate / current - 1) <= this.threshold) return undefined;
    return estimate;
  }

  /** The robust estimate, or undefined with too few measurements. */
  estimate(): number | undefined {
    if (this.samples.length < this.minSamples) return undefined;
    const m = median(this.samples);
    const mad = median(this.samples.map((x) => Math.abs(x - m))) * 1.4826;
    const kept = mad > 0 ? this.samples.filter((x) => Math.abs(x - m) <= 3 * mad) : this.samples;
    return this.bound(Math.round(median(kept) * 1000) / 1000);
  }

  get count(): number {
    return this.samples.length;
  }
}
