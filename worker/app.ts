import { mkdir } from "node:fs/promises";
import type { FrozenConfig } from "../config/index.js";
import { ModelPrefetch } from "../handlers/preprocess/model-prefetch.js";
import type { ComfyBackend } from "../handlers/comfyui/pool.js";
import type { InstallLayout } from "../lib/install.js";
import type { Logger } from "../lib/logger.js";
import { Admission } from "./admission.js";
import type { SignatureVerifier } from "./auth/signature.js";
import type { BenchmarkResult, BootBenchmark } from "./boot-benchmark.js";
import { boot, followPool } from "./boot-sequence.js";
import { Capacity } from "./capacity.js";
import type { WorkerEventEmitter } from "./events.js";
import { createApps } from "./http-apps.js";
import { createSessions } from "./sessions.js";
import { Janitor, janitorOptions } from "./janitor.js";
import type { Fleet } from "./launcher/fleet.js";
import { ownComfyUIs } from "./comfyui-owner.js";
import type { JobManager } from "./jobs/manager.js";
import type { SharedJobs } from "./jobs/shared.js";
import { LiveScore } from "./live-score.js";
import { LoadSignal } from "./load-signal.js";
import type { WorkerMetrics } from "./metrics.js";
import { createPipeline } from "./pipeline.js";
import { autoscalerReporter } from "./read-models.js";
import type { AutoscalerReporter } from "./reporter/reporter.js";
import { RequestTracker } from "./reporter/tracker.js";
import { Startup, type Phase } from "./startup.js";

export interface WorkerDeps {
  config: FrozenConfig;
  logger: Logger;
  /** The worker's installation folder (misc/). */
  root: string;
  /** Where the operator page's and the /docs page's files are; by default where this code was loaded from. */
  assets?: Pick<InstallLayout, "console" | "swaggerUi">;
  /** The boot benchmark (benchmark/boot.ts `bootBenchmark(config, root)`). */
  benchmark: BootBenchmark;
  /** Public key PEM to use instead of fetching it (tests). */
  publicKeyPem?: string;
  now?: () => number;
  /** The environment the ComfyUIs of COMFYUI_LAUNCH=true start from (the CLI hands over the process's). */
  launchEnv?: NodeJS.ProcessEnv;
}

export type { Phase } from "./startup.js";

export interface Worker {
  start(): Promise<void>;
  /** Ordered, idempotent: stop accepting, tell the autoscaler, drain up to `drainMs`, then abort the rest. */
  stop(drainMs?: number): Promise<void>;
  readonly jobs: JobManager;
  /** The jobs' lifecycle (created, stages, uploads, finished), for observers. */
  readonly events: WorkerEventEmitter;
  readonly reporter: AutoscalerReporter | undefined;
  readonly metrics: WorkerMetrics;
  readonly admission: Admission;
  readonly janitor: Janitor;
  /** Job documents in the operator's bucket; undefined without S3 or with SHARED_JOBS=false. */
  readonly shared: SharedJobs | undefined;
  /** Workloads, the cost model and the live score. */
  readonly load: LoadSignal;
  /** Each backend's score, the benchmark's result and max_perf. */
  readonly capacity: Capacity;
  /** The ComfyUIs this worker starts (COMFYUI_LAUNCH=true), instance i being backend i; else undefined. */
  readonly fleet: Fleet | undefined;
  routedUrl(): string;
  apiUrl(): string | undefined;
  /** The plain-HTTP port's URL (POST /session/end only), once it listens. */
  plainHttpUrl(): string | undefined;
  phase(): Phase;
  errorMsg(): string;
  /** The boot benchmark's outcome, once it ran (or was read from its cache). */
  benchmark(): BenchmarkResult | undefined;
}

/** Builds the whole worker from its config; nothing listens or connects until `start()`. */
export function createWorker(deps: WorkerDeps): Worker {
  const { config, logger } = deps;
  const now = deps.now ?? Date.now;
  const startedAt = now();
  const { pool, downloader, models, storage, webhooks, jobs, events, metrics, shared } = createPipeline(
    config,
    logger,
    now,
    { scoreOf: (index) => capacity.scoreOf(index) },
  );
  const comfyUrls = config.comfyui.backends.map((b) => b.url).join(", ");
  const prefetch = new ModelPrefetch({
    fetcher: models,
    modelsDir: config.models.dir,
    hfEndpoint: config.models.hfEndpoint,
    logger,
  });
  const janitor = new Janitor(
    janitorOptions(config, {
      logger,
      activeIds: () => new Set(jobs.active().map((j) => j.id)),
      pinnedInputs: () => downloader.pinnedFiles(),
      onRemoved: (files) => metrics.janitorRemoved.inc(files),
      onFreeBytes: (bytes) => metrics.diskFreeBytes.set(bytes),
      ...(models && { evictModel: () => models.evictOne() }),
    }),
  );
  const startup = new Startup(logger, () => reporter?.poke());
  const score = new LiveScore({ band: config.benchmark.liveScoreBand });
  const capacity = new Capacity<ComfyBackend>({
    pool,
    score,
    liveScore: config.benchmark.liveScore,
    serving: () => startup.phase === "ready",
    saveScore: (total, perBackend) => deps.benchmark.saveScore(total, perBackend),
    changed: (maxPerf) => {
      metrics.benchmarkScore.set(maxPerf);
      reporter?.poke();
    },
    logger,
  });
  // Workloads and the live score are in units of one backend's benchmark run.
  const load = new LoadSignal({
    logger,
    score,
    maxPerf: () => capacity.reportedUnit(),
    onScore: (unit) => capacity.measured(unit),
    ...(models && {
      downloadSeconds: async (workflow: unknown, probe: boolean) =>
        (await models.expectedDownload(workflow, { probe })).seconds,
    }),
  });
  events.on("job.finished", (job) => load.completed(job));
  const admission = new Admission(
    config.autoscaler.maxQueueTimeS,
    () => jobs.activeWorkload(),
    () => capacity.maxPerf(),
  );
  const tracker = new RequestTracker();
  const { store: sessions, ...sessionSweep } = createSessions({ config, tracker, logger, now });
  let verifier: SignatureVerifier | undefined;

  const lifecycle = new AbortController();
  const fleet = ownComfyUIs({
    config,
    pool,
    events,
    metrics,
    logger,
    launchEnv: deps.launchEnv,
    signal: lifecycle.signal,
  });

  const reporter = autoscalerReporter({ config, logger, tracker, startup, capacity, jobs, sessions });

  const listeners = createApps({
    config,
    logger,
    root: deps.root,
    assets: deps.assets,
    startup,
    capacity,
    pool,
    jobs,
    events,
    admission,
    shared,
    load,
    tracker,
    sessions,
    reporter,
    janitor,
    metrics,
    storage,
    prefetch,
    verifier: () => verifier,
    startedAt,
    now,
  });

  followPool(pool, startup, capacity);

  const worker: Worker = {
    jobs,
    events,
    reporter,
    metrics,
    admission,
    janitor,
    shared,
    load,
    capacity,
    fleet,
    phase: () => startup.phase,
    errorMsg: () => startup.errorMsg,
    benchmark: () => capacity.benchmark(),
    routedUrl: () => listeners.routedUrl(),
    plainHttpUrl: () => listeners.plainHttpUrl(),
    apiUrl: () => listeners.apiUrl(),

    async start() {
      logger.info({ stage: "lifecycle", comfyui: comfyUrls }, "starting");
      // Before anything waits for them; they come up while the ports open.
      await fleet?.start();
      reporter?.start();
      try {
        await listeners.listen(logger);
      } catch (err) {
        startup.fail(`Worker Server failed to launch: ${err instanceof Error ? err.message : String(err)}`);
        throw err;
      }
      await mkdir(config.outputDir, { recursive: true });
      janitor.start();
      sessionSweep.startSweeping();

      await boot({
        config,
        logger,
        startup,
        capacity,
        pool,
        jobs,
        load,
        benchmark: deps.benchmark,
        warmModels: () => prefetch.warm(config.models.warm),
        publicKeyPem: deps.publicKeyPem,
        verified: (v) => (verifier = v),
        signal: lifecycle.signal,
        now,
        startedAt,
      });
    },

    stop: (() => {
      let stopping: Promise<void> | undefined;
      return (drainMs = 30_000) => {
        stopping ??= (async () => {
          const stopStarted = now();
          logger.info({ stage: "lifecycle", active_jobs: jobs.active().length }, "stopping: no new jobs");
          startup.drain();
          lifecycle.abort();
          sessionSweep.stopSweeping();
          jobs.stopAccepting();
          await jobs.drain(drainMs);
          // Deliveries in flight get 5 s, or what is left of the process manager's stop window (STOP_WAIT_S) less a
          // second for the servers and the last report to the autoscaler.
          const windowLeftMs =
            config.shutdown.stopWaitS === undefined
              ? Infinity
              : config.shutdown.stopWaitS * 1000 - (now() - stopStarted) - 1_000;
          await webhooks.drain(Math.max(0, Math.min(5_000, windowLeftMs)));
          await listeners.close();
          // After the servers closed, so that every request that ended is in the last /delete_requests/.
          await reporter?.stop(() => reporter.flush());
          pool.stop();
          janitor.stop();
          storage.close();
          // Last: they served the jobs that drained.
          await fleet?.stop();
          startup.stopped();
          logger.info({ stage: "lifecycle" }, "stopped");
        })();
        return stopping;
      };
    })(),
  };
  return worker;
}
