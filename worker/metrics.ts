import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { ModelObserver } from "../handlers/preprocess/models.js";
import type { ShapeState } from "./cost-model.js";
import type { WorkerEventEmitter } from "./events.js";
import type { RouteHandlers } from "./http/route-table.js";
import type { Job } from "./jobs/job.js";

/** The worker's Prometheus metrics, on a registry of its own (no global state). */
export class WorkerMetrics {
  readonly registry = new Registry();
  readonly jobs = new Counter({
    name: "comfyui_worker_jobs_total",
    help: "Jobs by final status",
    labelNames: ["status"],
    registers: [this.registry],
  });
  readonly stageSeconds = new Histogram({
    name: "comfyui_worker_stage_seconds",
    help: "Duration of each job stage",
    labelNames: ["stage"],
    buckets: [0.005, 0.02, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "comfyui_worker_active_jobs",
    help: "Jobs accepted and not finished",
    registers: [this.registry],
  });
  readonly expectedWait = new Gauge({
    name: "comfyui_worker_expected_wait_seconds",
    help: "Admission's expected wait",
    registers: [this.registry],
  });
  readonly comfyUp = new Gauge({
    name: "comfyui_worker_comfyui_up",
    help: "1 when ComfyUI answers",
    registers: [this.registry],
  });
  readonly s3Bytes = new Counter({
    name: "comfyui_worker_s3_uploaded_bytes_total",
    help: "Bytes uploaded",
    registers: [this.registry],
  });
  readonly jobErrors = new Counter({
    name: "comfyui_worker_job_errors_total",
    help: "Jobs that did not complete, by error code (internal_error: a failure the worker did not anticipate)",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly s3Failures = new Counter({
    name: "comfyui_worker_s3_upload_failures_total",
    help: "Failed uploads",
    registers: [this.registry],
  });
  readonly webhookAttempts = new Counter({
    name: "comfyui_worker_webhook_attempts_total",
    help: "Webhook delivery attempts by outcome",
    labelNames: ["outcome"],
    registers: [this.registry],
  });
  readonly backendUp = new Gauge({
    name: "comfyui_worker_backend_in_rotation",
    help: "1 when this ComfyUI backend takes prompts (answering, not out of service)",
    labelNames: ["backend", "url"],
    registers: [this.registry],
  });
  readonly backendRunning = new Gauge({
    name: "comfyui_worker_backend_prompts",
    help: "Prompts this ComfyUI backend holds (running or queued in it)",
    labelNames: ["backend", "url"],
    registers: [this.registry],
  });
  readonly benchmarkScore = new Gauge({
    name: "comfyui_worker_benchmark_max_perf",
    help: "Benchmark score (max_perf)",
    registers: [this.registry],
  });
  readonly diskFreeBytes = new Gauge({
    name: "comfyui_worker_disk_free_bytes",
    help: "Free space on the output file system",
    registers: [this.registry],
  });
  readonly janitorRemoved = new Counter({
    name: "comfyui_worker_janitor_removed_files_total",
    help: "Files removed by disk care",
    registers: [this.registry],
  });
  readonly vramDrift = new Counter({
    name: "comfyui_worker_vram_drift_total",
    help: "Times a backend's free VRAM, read after each job, drifted down job after job (VRAM_DRIFT_JOBS)",
    labelNames: ["backend"],
    registers: [this.registry],
  });
  readonly comfyRestarts = new Counter({
    name: "comfyui_worker_comfyui_restarts_total",
    help: "ComfyUIs the worker started restarted on purpose (drained first), by reason",
    labelNames: ["backend", "reason"],
    registers: [this.registry],
  });

  readonly costFixedSeconds = new Gauge({
    name: "comfyui_worker_cost_model_fixed_seconds",
    help: "Learned fixed cost of a workflow shape (seconds of ComfyUI execution)",
    labelNames: ["shape", "source"],
    registers: [this.registry],
  });
  readonly costPerMegaUnitSeconds = new Gauge({
    name: "comfyui_worker_cost_model_seconds_per_megaunit",
    help: "Learned cost per million sampling units (width x height x batch x steps) of a workflow shape",
    labelNames: ["shape", "source"],
    registers: [this.registry],
  });
  readonly costSamples = new Gauge({
    name: "comfyui_worker_cost_model_samples",
    help: "Completed jobs the cost model keeps for a workflow shape",
    labelNames: ["shape"],
    registers: [this.registry],
  });
  readonly liveScore = new Gauge({
    name: "comfyui_worker_live_max_perf",
    help: "Score measured on real work (robust median); max_perf follows it when it moves by more than 5 %",
    registers: [this.registry],
  });

  readonly modelBytes = new Counter({
    name: "comfyui_worker_model_download_bytes_total",
    help: "Bytes of model references downloaded (resumed attempts and failed downloads included)",
    registers: [this.registry],
  });
  readonly modelDownloadSeconds = new Histogram({
    name: "comfyui_worker_model_download_seconds",
    help: "Time of each model download that ended with the file in place",
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    registers: [this.registry],
  });
  readonly modelCache = new Counter({
    name: "comfyui_worker_model_cache_lookups_total",
    help: "Model references a job asked for: found downloaded (hit) or waited for a download (miss)",
    labelNames: ["result"],
    registers: [this.registry],
  });

  constructor(opts: { collectDefault?: boolean } = {}) {
    if (opts.collectDefault ?? true)
      collectDefaultMetrics({ register: this.registry, prefix: "comfyui_worker_" });
  }

  /** Counts the jobs' stages, uploads and final statuses from now on; returns the function that stops it. */
  listen(events: Pick<WorkerEventEmitter, "on">): () => void {
    const offs = [
      events.on("job.stage", ({ stage, ms }) => this.stage(stage, ms)),
      events.on("job.upload", ({ ok, bytes }) => this.upload(ok, bytes)),
      events.on("job.finished", (job) => this.finished(job)),
    ];
    return () => offs.forEach((off) => off());
  }

  private stage(stage: string, ms: number): void {
    this.stageSeconds.observe({ stage }, ms / 1000);
  }

  private finished(job: Job): void {
    this.jobs.inc({ status: job.status });
    if (job.error) this.jobErrors.inc({ code: job.error.code });
  }

  private upload(ok: boolean, bytes: number): void {
    if (ok) this.s3Bytes.inc(bytes);
    else this.s3Failures.inc();
  }

  /** What the model fetcher tells, counted. */
  modelObserver(): ModelObserver {
    return {
      lookup: (hit) => this.modelCache.inc({ result: hit ? "hit" : "miss" }),
      bytes: (n) => this.modelBytes.inc(n),
      downloaded: (_bytes, seconds) => this.modelDownloadSeconds.observe(seconds),
    };
  }

  /** The cost model's state, replaced as a whole (forgotten shapes disappear). */
  loadModel(shapes: readonly ShapeState[], liveScore: number | undefined): void {
    this.costFixedSeconds.reset();
    this.costPerMegaUnitSeconds.reset();
    this.costSamples.reset();
    for (const s of shapes) {
      this.costFixedSeconds.set({ shape: s.shape, source: s.source }, s.fixedS);
      this.costPerMegaUnitSeconds.set({ shape: s.shape, source: s.source }, s.perUnitS * 1e6);
      this.costSamples.set({ shape: s.shape }, s.samples);
    }
    if (liveScore !== undefined) this.liveScore.set(liveScore);
  }

  /** GET /metrics: `refresh` first sets the gauges read at scrape time. */
  routes(refresh: () => void): RouteHandlers<"GET /metrics"> {
    return {
      "GET /metrics": async (_req, res) => {
        refresh();
        res.type(this.registry.contentType).send(await this.registry.metrics());
      },
    };
  }
}
