import type { FrozenConfig } from "../config/index.js";
import type { ComfyPool } from "../handlers/comfyui/pool.js";
import { resolveS3, type ObjectStorage } from "../handlers/storage/s3.js";
import type { Admission } from "./admission.js";
import type { Capacity } from "./capacity.js";
import { ConsoleFeed, type ConsoleSources } from "./console/feed.js";
import type { HealthState } from "./http/health.js";
import type { Janitor } from "./janitor.js";
import type { JobManager } from "./jobs/manager.js";
import type { LoadSignal } from "./load-signal.js";
import type { WorkerMetrics } from "./metrics.js";
import { AutoscalerReporter } from "./reporter/reporter.js";
import type { RequestTracker } from "./reporter/tracker.js";
import type { SessionStore } from "./http/routed.js";
import type { Logger } from "../lib/logger.js";
import type { Startup } from "./startup.js";

/** The parts the status documents read; each document reads them through their read-only accessors. */
export interface ReadSources {
  config: FrozenConfig;
  startup: Startup;
  capacity: Capacity;
  pool: ComfyPool;
  jobs: JobManager;
  admission: Admission;
}

/** GET /ready (and /health's details): whether the worker takes work now, and why not. */
export function readiness(src: ReadSources): HealthState["readiness"] {
  const { startup, pool, admission, jobs } = src;
  return () => {
    const reasons: string[] = [];
    if (!startup.comfyUp) {
      reasons.push(
        pool.backends.length === 1 ? "ComfyUI is not answering" : "no ComfyUI backend is answering",
      );
    }
    if (startup.phase !== "ready") reasons.push(`phase is ${startup.phase}`);
    if (!admission.admits()) reasons.push("overloaded: expected wait above MAX_QUEUE_TIME");
    return {
      ready: reasons.length === 0,
      reasons,
      details: {
        phase: startup.phase,
        comfyui_up: startup.comfyUp,
        ...(pool.backends.length > 1 && { backends: pool.backends.map((b) => b.state()) }),
        max_perf: src.capacity.maxPerf(),
        expected_wait_s: admission.expectedWaitS(),
        active_jobs: jobs.active().length,
        ...(startup.errorMsg && { error_msg: startup.errorMsg }),
      },
    };
  };
}

/** The operator page's feed. */
export function consoleFeed(
  src: ReadSources & {
    janitor: Janitor;
    reporter: AutoscalerReporter | undefined;
    storage: ObjectStorage;
    events: ConsoleSources["events"];
    startedAt: number;
    now: () => number;
  },
): ConsoleFeed {
  const { config } = src;
  const s3 = resolveS3(config.s3, undefined);
  return new ConsoleFeed({
    jobs: src.jobs,
    events: src.events,
    admission: src.admission,
    janitor: src.janitor,
    reporter: src.reporter,
    phase: () => src.startup.phase,
    errorMsg: () => src.startup.errorMsg,
    backends: () => src.pool.backends.map((b) => b.state()),
    benchmark: () => src.capacity.benchmark(),
    probeS3: s3 && ((signal) => src.storage.probe(s3, signal)),
    settings: {
      maxQueueTimeS: config.autoscaler.maxQueueTimeS,
      benchmarkSkip: config.benchmark.skip,
      benchmarkMaxRounds: config.benchmark.maxRounds,
      reportAddrs: config.autoscaler.reportAddrs,
      outputDir: config.outputDir,
      minFreeBytes: config.disk.minFreeBytes,
      s3Target: s3 ? `${s3.bucketName} at ${s3.endpointUrl ?? "AWS"}` : null,
    },
    startedAt: src.startedAt,
    now: src.now,
  });
}

/** GET /metrics: the gauges read at scrape time. */
export function refreshMetrics(src: ReadSources & { metrics: WorkerMetrics; load: LoadSignal }): () => void {
  const { metrics, pool } = src;
  return () => {
    const state = src.load.state();
    metrics.loadModel(state.shapes, state.liveScore);
    metrics.queueDepth.set(src.jobs.active().length);
    const wait = src.admission.expectedWaitS();
    metrics.expectedWait.set(Number.isFinite(wait) ? wait : -1);
    metrics.comfyUp.set(src.startup.comfyUp ? 1 : 0);
    for (const b of pool.backends) {
      const labels = { backend: String(b.index), url: b.url };
      metrics.backendUp.set(labels, b.inRotation ? 1 : 0);
      metrics.backendRunning.set(labels, b.running);
    }
  };
}

/** The autoscaler's reporter (with REPORT_ADDR) and what its /worker_status/ document reads. */
export function autoscalerReporter(src: {
  config: FrozenConfig;
  logger: Logger;
  tracker: RequestTracker;
  startup: Startup;
  capacity: Capacity;
  jobs: JobManager;
  sessions: SessionStore;
}): AutoscalerReporter | undefined {
  const { config, startup } = src;
  if (config.autoscaler.reportAddrs.length === 0) return undefined;
  return new AutoscalerReporter({
    addrs: config.autoscaler.reportAddrs,
    containerId: config.autoscaler.containerId,
    masterToken: config.autoscaler.masterToken,
    url: config.worker.publicUrl,
    tracker: src.tracker,
    logger: src.logger,
    intervalMs: config.autoscaler.reportIntervalMs,
    heartbeatMs: config.autoscaler.heartbeatIntervalMs,
    diskPath: config.outputDir,
    state: {
      maxPerf: () => src.capacity.reported(),
      loadtime: () => startup.loadtime,
      errorMsg: () => startup.errorMsg,
      // Upstream's cur_load also counts open sessions (at the router's cost).
      currentLoad: () => src.jobs.activeWorkload() + src.sessions.workload(),
    },
  });
}
