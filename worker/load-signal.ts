import type { Workflow } from "../handlers/comfyui/types.js";
import type { Logger } from "../lib/logger.js";
import {
  CostModel,
  jobFeatures,
  type JobFeatures,
  type PredictionSource,
  type ShapeState,
} from "./cost-model.js";
import type { Job } from "./jobs/job.js";
import { LiveScore } from "./live-score.js";
import { DEFAULT_WORKLOAD, estimateWorkload } from "./workload.js";

export interface LoadSignalOptions {
  /** The score the router sees now (max_perf); 0 before the worker is ready. */
  maxPerf(): number;
  /** Real work measured a score that moved by more than the threshold. */
  onScore(maxPerf: number): void;
  model?: CostModel;
  score?: LiveScore;
  /**
   * Expected seconds of download of the models a workflow names and the worker lacks (ModelFetcher's
   * expectedDownload); `probe` lets it ask a source for a size it does not know. Absent: no models folder.
   */
  downloadSeconds?: (workflow: unknown, probe: boolean) => Promise<number>;
  /** Where a failed download estimate is told (the job is then priced without it). */
  logger?: Logger;
}

/** A job's download time at admission, and the load it stands for (workload units, apart from `workload`). */
export interface DownloadPrice {
  seconds: number;
  workload: number;
}

export interface Estimate {
  workload: number;
  seconds: number;
  source: PredictionSource;
  shape: string;
  units: number;
}

/** Bounds of a request's workload: one request never counts as less than 1 or more than 100 default requests. */
const MIN_WORKLOAD = 1;
const MAX_WORKLOAD = DEFAULT_WORKLOAD * 100;

/**
 * What the autoscaler routes and scales on: each request's workload and the worker's score (max_perf), chosen so
 * that cur_load / max_perf is the expected time to drain the queue. With T = 100 / max_perf the time of one
 * benchmark request, a request weighs 100 x (its predicted seconds / T), so the sum of workloads over max_perf is
 * the sum of predicted seconds. Predictions come from the cost model (per workflow shape, learned from completed
 * jobs); a shape never seen gets the prior, the benchmark's time scaled by sampling units, which is exactly the
 * workload rule of a worker that learns nothing (and 100, upstream's constant, when the units are unknown).
 * Each completed job also measures the score (its workload / its seconds): when the predictions are off as a whole
 * (a provisional score from one round, a GPU that slowed down), max_perf follows.
 */
export class LoadSignal {
  readonly model: CostModel;
  readonly score: LiveScore;
  private benchmark: JobFeatures = { shape: "", units: 0 };

  constructor(private readonly opts: LoadSignalOptions) {
    this.model = opts.model ?? new CostModel();
    this.score = opts.score ?? new LiveScore();
  }

  /** The benchmark workflow: the unit of the prior. */
  setBenchmark(workflow: Workflow): void {
    this.benchmark = jobFeatures(workflow);
  }

  /** Runs on unvalidated input (admission comes before parsing): anything odd weighs the default. */
  estimate(workflow: unknown): Estimate {
    if (typeof workflow !== "object" || workflow === null || Array.isArray(workflow)) {
      return { workload: DEFAULT_WORKLOAD, seconds: 0, source: "prior", shape: "invalid", units: 0 };
    }
    const f = jobFeatures(workflow as Workflow);
    const maxPerf = this.opts.maxPerf();
    if (!(maxPerf > 0)) {
      // No score yet (booting): the prior alone, in benchmark units.
      const workload = estimateWorkload(workflow as Workflow, this.benchmark.units);
      return { workload, seconds: 0, source: "prior", ...f };
    }
    const benchmarkSeconds = DEFAULT_WORKLOAD / maxPerf;
    const prior = this.prior(benchmarkSeconds);
    const { seconds, source } = this.model.predict(f, prior);
    const raw = (DEFAULT_WORKLOAD * seconds) / benchmarkSeconds;
    const workload = Math.min(MAX_WORKLOAD, Math.max(MIN_WORKLOAD, Math.round(raw * 100) / 100));
    return { workload, seconds, source, ...f };
  }

  /** A shape never seen: the benchmark's time scaled by sampling units (one benchmark's worth when unknown). */
  private prior(benchmarkSeconds: number): (units: number) => number {
    return (units) =>
      benchmarkSeconds * (units > 0 && this.benchmark.units > 0 ? units / this.benchmark.units : 1);
  }

  workloadOf(workflow: unknown): number {
    return this.estimate(workflow).workload;
  }

  /**
   * The download part of a job's price: the expected download time of the models it names that the worker lacks,
   * in the same units as workloads (seconds x the unit score: cur_load / max_perf stays the time to drain), so that
   * a worker fetching a cold 6 GB file reports itself busy and admission refuses what would wait behind it.
   *
   * It is kept apart from the job's workload, on purpose: the workload is what the router counts as the request's
   * work (new_load on arrival, cur_perf when it completes), what places and times the prompt on a backend (the stall
   * watchdog reads it as predicted GPU seconds) and what the live score measures GPU speed against; download time
   * in any of them would make a worker whose GPU idles on a download look as productive as one computing, and
   * price the same job's warm runs as if they downloaded too. So the download part counts only in the load in flight (cur_load and
   * admission's expected wait), shrinks as the bytes arrive and is gone once the job's models are on disk. The new
   * job's own download is not part of its own admission (nor is its workload, as upstream): every worker lacks a
   * model nobody asked for yet, and refusing it everywhere would run it nowhere. Before the worker has a score
   * there is no unit to count in: 0.
   */
  async downloadPrice(workflow: unknown, probe: boolean): Promise<DownloadPrice> {
    const seconds = this.opts.downloadSeconds
      ? await this.opts.downloadSeconds(workflow, probe).catch((err: unknown) => {
          this.opts.logger?.warn(
            { stage: "admission", err },
            "could not estimate a job's model downloads: priced without them",
          );
          return 0;
        })
      : 0;
    const unit = this.opts.maxPerf();
    const workload = unit > 0 ? Math.round(seconds * unit * 100) / 100 : 0;
    return { seconds, workload };
  }

  /**
   * A finished job teaches the model and the score; only completed jobs count, and never the warm-up. The score's
   * measurement is the job's time turned into benchmark runs by the model's own proportions, predicted before the
   * job is learned: 100 x predicted(job) / predicted(benchmark) / seconds. For a benchmark run that is 100 /
   * seconds, its definition; for other jobs it stays right as the model learns their cost, where their workload
   * (fixed when they were accepted, from what the model knew then) would carry the model's early errors into the
   * score for good.
   */
  completed(job: Job): void {
    if (job.status !== "completed" || job.input.internal?.warmup) return;
    // A job that waited on a model download ran that model for the first time: its execution includes ComfyUI
    // loading it from disk, a cost of the download (as the boot benchmark's warm-up run is discarded), not of the
    // graph. Learned from, it would price the same job warm as if every run loaded the model, and move the score.
    if (job.fetchedModels) return;
    const seconds = executionSeconds(job);
    if (seconds === undefined) return;
    const f = jobFeatures(job.input.workflow);
    const maxPerf = this.opts.maxPerf();
    if (f.shape === this.benchmark.shape && f.units === this.benchmark.units) {
      // A run of the benchmark itself (the boot's timed round, or traffic like it): 100 / seconds, by definition.
      this.measure(DEFAULT_WORKLOAD / seconds, maxPerf);
      this.model.observe(f, seconds);
      return;
    }
    // The benchmark's time as the model knows it; a shape never seen is that time scaled by units, so that the
    // ratio of the two is the model's own (not the current score's, which this measurement is meant to correct).
    const benchmark = this.model.predict(
      this.benchmark,
      this.prior(maxPerf > 0 ? DEFAULT_WORKLOAD / maxPerf : seconds),
    );
    const predicted = this.model.predict(f, this.prior(benchmark.seconds));
    // Only predictions that rest on measured jobs: the prior's proportions (pixels x steps, no fixed part) would
    // carry their error into the score.
    if (predicted.measured && benchmark.measured && predicted.seconds > 0 && benchmark.seconds > 0) {
      this.measure((DEFAULT_WORKLOAD * predicted.seconds) / (benchmark.seconds * seconds), maxPerf);
    }
    this.model.observe(f, seconds);
  }

  private measure(perf: number, current: number): void {
    const next = this.score.observe(perf, current);
    if (next !== undefined) this.opts.onScore(next);
  }

  state(): {
    benchmark: JobFeatures;
    liveScore: number | undefined;
    measurements: number;
    shapes: ShapeState[];
  } {
    return {
      benchmark: this.benchmark,
      liveScore: this.score.estimate(),
      measurements: this.score.count,
      shapes: this.model.state(),
    };
  }
}

/**
 * ComfyUI's own execution time for the prompt (execution_start to success, as the event stream told it), which
 * excludes the wait behind the previous prompt that the worker keeps queued; the generation stage otherwise.
 */
function executionSeconds(job: Job): number | undefined {
  const ms = job.executionMs() ?? job.timings.generation_ms;
  return ms > 0 ? ms / 1000 : undefined;
}
