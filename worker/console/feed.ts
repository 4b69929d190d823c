import { statfs } from "node:fs/promises";
import { extname } from "node:path";
import type { BenchmarkResult } from "../boot-benchmark.js";
import type { BackendState, ConsoleJob, ConsoleOutput, ConsoleStatus } from "../../web/console/wire.js";
import type { Admission } from "../admission.js";
import type { WorkerEventEmitter } from "../events.js";
import type { Janitor } from "../janitor.js";
import type { Job } from "../jobs/job.js";
import type { JobManager } from "../jobs/manager.js";
import type { AutoscalerReporter } from "../reporter/reporter.js";

/** What the operator page shows, read through the parts' own read-only accessors. */
export interface ConsoleSources {
  jobs: JobManager;
  /** Where the feed hears of each new job. */
  events: Pick<WorkerEventEmitter, "on">;
  admission: Admission;
  janitor: Janitor;
  reporter: AutoscalerReporter | undefined;
  phase(): string;
  errorMsg(): string;
  /** Each ComfyUI backend's state (one per GPU). */
  backends(): BackendState[];
  benchmark(): BenchmarkResult | undefined;
  /** HEAD of the default bucket; undefined when no default S3 is configured. */
  probeS3: ((signal: AbortSignal) => Promise<void>) | undefined;
  settings: {
    maxQueueTimeS: number;
    benchmarkSkip: boolean;
    benchmarkMaxRounds: number;
    reportAddrs: readonly string[];
    outputDir: string;
    minFreeBytes: number;
    s3Target: string | null;
  };
  startedAt: number;
  now?: () => number;
  /** How many finished jobs the page lists. */
  recent?: number;
}

export interface ConsoleClient {
  send(event: string, data: unknown): void;
}

const STATUS_EVERY_MS = 1_000;
const PROBE_EVERY_MS = 15_000;
const JOB_FLUSH_MS = 150;

/**
 * The operator page's live feed: the worker's status (pushed when it changes, checked every second while a page
 * is open) and each job's summary (pushed at most every 150 ms while it changes). Nothing runs while no page is
 * open but the list of recent jobs; a client that throws is dropped, never the worker.
 */
export class ConsoleFeed {
  private readonly clients = new Set<ConsoleClient>();
  /**
   * The jobs the page lists, newest first. A finished one is kept as its summary and output paths only, not the
   * Job (whose input may hold megabytes of workflow and inline images).
   */
  private readonly recent: RecentJob[] = [];
  private readonly dirty = new Set<Job>();
  private flushTimer: NodeJS.Timeout | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private lastStatus = "";
  private probeAt = 0;
  private probing = false;
  private s3: ConsoleStatus["s3"];
  private diskFree: number | null = null;

  constructor(private readonly src: ConsoleSources) {
    this.s3 = { target: src.settings.s3Target, reachable: null, checked_at: null, error: null };
    src.events.on("job.created", (job) => this.track(job));
  }

  private get now(): number {
    return (this.src.now ?? Date.now)();
  }

  /** Adds a page; it gets the status and the jobs at once. Returns the function that removes it. */
  attach(client: ConsoleClient): () => void {
    this.clients.add(client);
    this.lastStatus = "";
    this.safeSend(client, "jobs", this.jobs());
    this.tickStatus();
    return () => {
      this.clients.delete(client);
      if (this.clients.size === 0) {
        clearTimeout(this.statusTimer);
        this.statusTimer = undefined;
      }
    };
  }

  /** The local path of a job's output by its index: only files the worker listed as that job's outputs. */
  outputPath(id: string, index: number): string | undefined {
    const r = this.recent.find((j) => j.id === id);
    const paths = r
      ? (r.job?.output ?? r.outputs).map((o) => o.local_path)
      : this.src.jobs.get(id)?.output.map((o) => o.local_path);
    return paths?.[index] || undefined;
  }

  jobs(): ConsoleJob[] {
    return this.recent.map((r) => (r.job ? summarize(r.job) : r.summary!));
  }

  status(): ConsoleStatus {
    const { src } = this;
    const s = src.settings;
    const wait = src.admission.expectedWaitS();
    const last = src.reporter?.lastStatus();
    const sweep = src.janitor.lastSweep();
    return {
      started_at: src.startedAt,
      phase: src.phase(),
      error_msg: src.errorMsg(),
      benchmark_round: src.phase() === "benchmarking" ? this.benchmarkRound() : null,
      score: { max_perf: src.admission.maxPerf, how: this.scoreHow() },
      comfyui: comfyuiStatus(src.backends()),
      queue: {
        active: src.jobs.active().length,
        workload: src.jobs.activeWorkload(),
        expected_wait_s: Number.isFinite(wait) ? Math.round(wait * 10) / 10 : null,
        max_queue_time_s: s.maxQueueTimeS,
      },
      autoscaler: {
        addrs: [...s.reportAddrs],
        last: last
          ? {
              at: last.at,
              delivered: last.delivered,
              fields: pick(last.body, [
                "max_perf",
                "cur_load",
                "num_requests_working",
                "loadtime",
                "error_msg",
              ]),
            }
          : null,
      },
      disk: {
        path: s.outputDir,
        free_bytes: this.diskFree,
        min_free_bytes: s.minFreeBytes,
        janitor_last: sweep
          ? {
              at: sweep.at,
              removed: sweep.report.removed.length,
              bytes: sweep.report.removed.reduce((a, r) => a + r.bytes, 0),
              free_after: sweep.report.freeAfter,
            }
          : null,
      },
      s3: { ...this.s3 },
    };
  }

  private scoreHow(): string {
    const b = this.src.benchmark();
    if (this.src.settings.benchmarkSkip) return "BENCHMARK_SKIP: fixed at 1, not measured";
    if (b?.cached) return `reused from the benchmark cache (${b.source})`;
    if (b) return `measured: median of the last rounds of ${b.rounds.length} (${b.source})`;
    return "not measured yet";
  }

  /** The benchmark's round, read from its jobs' ids (benchmark-<label>-<n>). */
  private benchmarkRound(): ConsoleStatus["benchmark_round"] {
    const running = this.recent.find((r) => r.job?.input.internal && !r.job.final);
    const label = running?.id.split("-")[1];
    return label ? { label, max_rounds: this.src.settings.benchmarkMaxRounds } : null;
  }

  private track(job: Job): void {
    const entry: RecentJob = { id: job.id, job, outputs: [] };
    this.recent.unshift(entry);
    const keep = this.src.recent ?? 25;
    if (this.recent.length > keep) this.recent.length = keep;
    const changed = () => this.markDirty(job);
    job.on("event", changed);
    job.once("done", () => {
      job.off("event", changed);
      entry.summary = summarize(job);
      entry.outputs = job.output.map((o) => ({ local_path: o.local_path }));
      entry.job = undefined;
      this.markDirty(job);
    });
    this.markDirty(job);
    // A benchmark round is told now, not with the next batch: on a fast GPU (or a tiny benchmark) a round can start
    // and end within one batch, and the page would never see it.
    if (job.input.internal && this.clients.size > 0) this.pushStatus();
  }

  private markDirty(job: Job): void {
    if (this.clients.size === 0) return;
    this.dirty.add(job);
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = undefined;
      const jobs = [...this.dirty];
      this.dirty.clear();
      for (const j of jobs) this.broadcast("job", summarize(j));
      // The queue changed with the job: the status follows without waiting for its tick.
      this.pushStatus();
    }, JOB_FLUSH_MS);
  }

  private tickStatus(): void {
    clearTimeout(this.statusTimer);
    if (this.clients.size === 0) return;
    if (this.now - this.probeAt >= PROBE_EVERY_MS) void this.probe();
    this.pushStatus();
    this.statusTimer = setTimeout(() => this.tickStatus(), STATUS_EVERY_MS);
    this.statusTimer.unref();
  }

  private pushStatus(): void {
    const status = this.status();
    const text = JSON.stringify(status);
    if (text === this.lastStatus) return;
    this.lastStatus = text;
    this.broadcast("status", status);
  }

  /** Disk free space and S3 reachability: slow checks, every 15 s while a page is open. */
  private async probe(): Promise<void> {
    if (this.probing) return;
    this.probing = true;
    this.probeAt = this.now;
    try {
      const s = await statfs(this.src.settings.outputDir).catch(() => undefined);
      this.diskFree = s ? s.bavail * s.bsize : null;
      if (this.src.probeS3) {
        try {
          await this.src.probeS3(AbortSignal.timeout(5_000));
          this.s3 = { ...this.s3, reachable: true, error: null, checked_at: this.now };
        } catch (err) {
          const error = err instanceof Error ? err.message : String(err);
          this.s3 = { ...this.s3, reachable: false, error, checked_at: this.now };
        }
      }
    } finally {
      this.probing = false;
    }
    this.pushStatus();
  }

  private broadcast(event: string, data: unknown): void {
    for (const c of this.clients) this.safeSend(c, event, data);
  }

  private safeSend(client: ConsoleClient, event: string, data: unknown): void {
    try {
      client.send(event, data);
    } catch {
      this.clients.delete(client);
    }
  }
}

interface RecentJob {
  id: string;
  /** Until it is final. */
  job: Job | undefined;
  summary?: ConsoleJob;
  outputs: { local_path: string }[];
}

function pick(obj: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => k in obj).map((k) => [k, obj[k]]));
}

const KINDS: Record<string, ConsoleOutput["kind"]> = {
  ".png": "image",
  ".jpg": "image",
  ".jpeg": "image",
  ".webp": "image",
  ".gif": "image",
  ".mp4": "video",
  ".webm": "video",
  ".wav": "audio",
  ".mp3": "audio",
  ".flac": "audio",
};

/** A job as the page shows it: never its input (it may carry S3 keys and webhook secrets). */
export function summarize(job: Job): ConsoleJob {
  const d = job.details;
  const workflow = job.input.workflow as Record<string, { class_type?: unknown } | undefined>;
  const total = Object.keys(workflow).length;
  const doneNodes = new Set([...(d?.cached_nodes ?? []), ...(d?.nodes_executed ?? [])]);
  const node = job.final ? null : (d?.current_node ?? null);
  if (node) doneNodes.delete(node);
  const last = d?.progress_updates.at(-1);
  const steps = last && last.node === node && last.max > 0 ? last : undefined;
  const fraction =
    job.status === "completed" ? 1 : (doneNodes.size + (steps ? steps.value / steps.max : 0)) / total;
  const nodeType = node ? workflow[node]?.class_type : undefined;
  const error = job.error
    ? {
        code: job.error.code,
        message: job.error.message,
        node_type: str(d?.error?.node_type),
        exception: str(d?.error?.exception_message) ?? nodeErrors(job.error.details?.node_errors),
      }
    : null;
  return {
    id: job.id,
    status: job.status,
    message: job.message,
    internal: job.input.internal !== undefined,
    created_at: job.createdAt,
    finished_at: job.finishedAt ?? null,
    timings: {
      preprocess_ms: job.timings.preprocess_ms,
      queue_ms: job.timings.queue_ms,
      generation_ms: job.timings.generation_ms,
      postprocess_ms: job.timings.postprocess_ms,
      total_ms: job.timings.total_ms,
    },
    progress: {
      nodes_done: Math.min(doneNodes.size, total),
      nodes_total: total,
      node,
      node_type: typeof nodeType === "string" ? nodeType : null,
      step: steps ? steps.value : null,
      steps: steps ? steps.max : null,
      percent: Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 10,
    },
    preview:
      job.preview && !job.final
        ? {
            src: `data:${job.preview.mime};base64,${job.preview.data}`,
            node: job.preview.node,
            step: job.preview.step,
          }
        : null,
    outputs: job.output.map((o, i) => ({
      filename: o.filename,
      local: o.local_path ? `/console/output/${encodeURIComponent(job.id)}/${i}` : null,
      url: o.url ?? null,
      kind: o.output_type === "text" ? "text" : (KINDS[extname(o.filename).toLowerCase()] ?? "other"),
      text: o.text ?? null,
      upload_error: o.upload_error ?? null,
    })),
    error,
  };
}

/** ComfyUI's validation errors (node_errors of a refused prompt) in one line: which node, what is wrong. */
function nodeErrors(raw: unknown): string | null {
  if (!raw || typeof raw !== "object") return null;
  const lines = Object.entries(raw as Record<string, { class_type?: unknown; errors?: unknown }>)
    .slice(0, 3)
    .map(([id, e]) => {
      const first = (Array.isArray(e?.errors) ? e.errors[0] : undefined) as
        { message?: unknown; details?: unknown } | undefined;
      const what = [str(first?.message), str(first?.details)].filter(Boolean).join(": ");
      return `${str(e?.class_type) ?? "node"} (node ${id})${what ? `: ${what}` : ""}`;
    });
  return lines.length > 0 ? lines.join("; ") : null;
}

const str = (v: unknown): string | null => (typeof v === "string" && v ? v : null);

/** Answering when any backend takes prompts; the detail names them and, with several, how many do. */
function comfyuiStatus(backends: BackendState[]): ConsoleStatus["comfyui"] {
  const serving = backends.filter((b) => b.up && b.failed === null);
  return {
    url: backends.map((b) => b.url).join(", "),
    up: serving.length > 0,
    backends,
  };
}
