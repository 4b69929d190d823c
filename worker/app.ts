import { mkdir, readFile } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { Express } from "express";
import type { BenchmarkResult, BootBenchmark } from "./boot-benchmark.js";
import type { FrozenConfig } from "../config/index.js";
import { resolveS3 } from "../handlers/storage/s3.js";
import { Admission } from "./admission.js";
import { ReplayGuard, SignatureVerifier } from "./auth/signature.js";
import { ConsoleFeed } from "./console/feed.js";
import { consoleRoutes } from "./http/console.js";
import { docsRoutes, loadExample } from "./http/docs.js";
import { generateRoutes } from "./http/generate-routes.js";
import { healthRoutes } from "./http/health.js";
import { createLocalApp } from "./http/local.js";
import { SessionStore, createRoutedApp, type RoutedDeps } from "./http/routed.js";
import { PLAIN_HTTP_ROUTES } from "./http/route-table.js";
import { SessionCloseNotifier } from "../handlers/session-close.js";
import type { JobManager } from "./jobs/manager.js";
import type { SharedJobs } from "./jobs/shared.js";
import { Janitor } from "./janitor.js";
import { Lifecycle, type Phase } from "./lifecycle.js";
import type { Logger } from "../lib/logger.js";
import type { WorkerMetrics } from "./metrics.js";
import { createPipeline } from "./pipeline.js";
import { validateCallbackUrl } from "../handlers/webhook.js";
import { fetchPublicKey } from "./reporter/pubkey.js";
import { AutoscalerReporter } from "./reporter/reporter.js";
import { RequestTracker } from "./reporter/tracker.js";
import { delay } from "../lib/backoff.js";
import { median } from "./cost-model.js";
import { LiveScore } from "./live-score.js";
import { LoadSignal } from "./load-signal.js";
import { debugRoutes } from "./http/debug.js";
import { installLayout, type InstallLayout } from "../lib/install.js";

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
}

export type { Phase } from "./lifecycle.js";

export interface Worker {
  start(): Promise<void>;
  /** Ordered, idempotent: stop accepting, tell the autoscaler, drain up to `drainMs`, then abort the rest. */
  stop(drainMs?: number): Promise<void>;
  readonly jobs: JobManager;
  readonly reporter: AutoscalerReporter | undefined;
  readonly metrics: WorkerMetrics;
  readonly admission: Admission;
  readonly janitor: Janitor;
  /** Job documents in the operator's bucket; undefined without S3 or with SHARED_JOBS=false. */
  readonly shared: SharedJobs | undefined;
  /** Workloads, the cost model and the live score. */
  readonly load: LoadSignal;
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
  const { pool, downloader, storage, webhooks, jobs, metrics, shared } = createPipeline(config, logger, now, {
    // That device is unusable until the process restarts (its backend left the rotation): with none left, stop
    // taking work and tell the autoscaler.
    deviceFailed: (message) => {
      if (pool.backends.every((b) => b.failed !== undefined)) life.fail(message);
    },
    finished: (job) => load.completed(job),
  });
  const comfyUrls = config.comfyui.backends.map((b) => b.url).join(", ");
  const janitor = new Janitor({
    outputDir: config.outputDir,
    inputDir: config.comfyui.inputDir,
    leftoverDirs: config.comfyui.backends.map((b) => b.outputDir).filter((d) => d !== config.outputDir),
    minFreeBytes: config.disk.minFreeBytes,
    maxAgeMs: config.disk.outputMaxAgeMs,
    intervalMs: config.disk.janitorIntervalMs,
    logger,
    activeIds: () => new Set(jobs.active().map((j) => j.id)),
    pinnedInputs: () => downloader.pinnedFiles(),
    onRemoved: (files) => metrics.janitorRemoved.inc(files),
    onFreeBytes: (bytes) => metrics.diskFreeBytes.set(bytes),
  });
  const admission = new Admission(config.autoscaler.maxQueueTimeS, () => jobs.activeWorkload());
  const tracker = new RequestTracker();
  const sessionClose = new SessionCloseNotifier({ allowPrivate: config.webhook.allowPrivate, logger });
  const sessions = new SessionStore(
    10,
    tracker,
    (s) => void sessionClose.notify(s),
    config.autoscaler.sessionMaxLifetimeS,
  );
  const replay = new ReplayGuard(config.autoscaler.replayWindow);

  const life = new Lifecycle(logger, () => reporter?.poke());
  let verifier: SignatureVerifier | undefined;
  let benchmark: BenchmarkResult | undefined;

  const reporter =
    config.autoscaler.reportAddrs.length > 0
      ? new AutoscalerReporter({
          addrs: config.autoscaler.reportAddrs,
          containerId: config.autoscaler.containerId,
          masterToken: config.autoscaler.masterToken,
          url: config.worker.publicUrl,
          tracker,
          logger,
          intervalMs: config.autoscaler.reportIntervalMs,
          heartbeatMs: config.autoscaler.heartbeatIntervalMs,
          diskPath: config.outputDir,
          state: {
            maxPerf: () => (life.phase === "ready" ? admission.maxPerf : 0),
            loadtime: () => life.loadtime,
            errorMsg: () => life.errorMsg,
            // Upstream's cur_load also counts open sessions (at the router's cost).
            currentLoad: () => jobs.activeWorkload() + sessions.workload(),
          },
        })
      : undefined;

  let cacheWrite: Promise<void> = Promise.resolve();
  /** max_perf, the sum over the backends in rotation, follows them; a change is reported at once. */
  const refreshScore = () => {
    const capacity = Math.round(pool.capacity() * 1000) / 1000;
    if (capacity === admission.maxPerf) return;
    admission.maxPerf = capacity;
    metrics.benchmarkScore.set(capacity);
    reporter?.poke();
  };
  /**
   * Each backend's benchmark score. One that scored nothing while answering cannot run the benchmark workflow: out
   * of the rotation. One that was not answering gets the others' mean when it joins (the GPUs of a machine are
   * alike), as the live score then corrects.
   */
  const applyBenchmark = (result: BenchmarkResult) => {
    // The band is centred on what the benchmark's own rounds measured: a cached score that live work moved (its
    // max_perf) is held within it too, so no run of restarts walks the score away from the benchmark.
    load.score.setAnchor(result.rounds.length > 0 ? median(result.rounds) : pool.unitPerf());
    for (const b of pool.backends) {
      const perf = result.perBackend[b.index] ?? 0;
      b.perf = perf > 0 ? load.score.bound(perf) : 0;
    }
    const mean = pool.unitPerf();
    for (const b of pool.backends.filter((b) => b.perf === 0)) {
      if (b.up) pool.fail(b, "no benchmark round completed on it");
      else b.perf = mean;
    }
  };
  const load = new LoadSignal({
    score: new LiveScore({ band: config.benchmark.liveScoreBand }),
    // Workloads and the live score are in units of one backend's benchmark run.
    maxPerf: () => (life.phase === "ready" ? pool.unitPerf() : 0),
    onScore: (unit) => {
      if (life.phase !== "ready" || !config.benchmark.liveScore) return;
      // Bounded again where it is applied: what reaches max_perf and the cache never leaves the band.
      pool.setUnitPerf(load.score.bound(unit));
      const previous = admission.maxPerf;
      refreshScore();
      logger.info(
        { stage: "score", max_perf: admission.maxPerf, previous },
        `max_perf ${previous} -> ${admission.maxPerf} (measured on completed jobs)`,
      );
      const perBackend = pool.backends.map((b) => b.perf);
      const total = perBackend.reduce((a, b) => a + b, 0);
      // One write at a time, in order: the last score is the one a restart starts from.
      cacheWrite = cacheWrite
        .then(() => deps.benchmark.saveScore(total, perBackend))
        .then(
          () => undefined,
          (err: unknown) => logger.warn({ stage: "score", err }, "could not update the benchmark cache"),
        );
    },
  });
  const workloadOfWorkflow = (workflow: unknown): number => load.workloadOf(workflow);
  const workloadOfPayload = (payload: unknown): number =>
    workloadOfWorkflow((payload as { input?: { workflow_json?: unknown } } | null)?.input?.workflow_json);

  const health = healthRoutes({
    live: () => life.phase !== "stopped",
    readiness: () => {
      const reasons: string[] = [];
      if (!life.comfyUp) {
        reasons.push(
          pool.backends.length === 1 ? "ComfyUI is not answering" : "no ComfyUI backend is answering",
        );
      }
      if (life.phase !== "ready") reasons.push(`phase is ${life.phase}`);
      if (!admission.admits()) reasons.push("overloaded: expected wait above MAX_QUEUE_TIME");
      return {
        ready: reasons.length === 0,
        reasons,
        details: {
          phase: life.phase,
          comfyui_up: life.comfyUp,
          ...(pool.backends.length > 1 && { backends: pool.backends.map((b) => b.state()) }),
          max_perf: admission.maxPerf,
          expected_wait_s: admission.expectedWaitS(),
          active_jobs: jobs.active().length,
          ...(life.errorMsg && { error_msg: life.errorMsg }),
        },
      };
    },
  });

  // One router for both ports: a job is the same job whichever port its callers came through.
  const generate = generateRoutes({
    jobs,
    ...(shared && { shared }),
    remoteWaitMs: config.jobs.timeoutMs,
    logger,
    maxWorkflowNodes: config.limits.maxWorkflowNodes,
    workloadOf: (input) => workloadOfWorkflow(input.workflow),
  });

  const routedDeps: RoutedDeps = {
    logger,
    maxBodyBytes: config.limits.routedMaxBodyBytes,
    jsonShape: config.limits.jsonShape,
    unsecured: config.autoscaler.unsecured,
    legacySignatures: config.autoscaler.legacySignatures,
    advertisedUrl: config.worker.publicUrl,
    checkUrl: config.autoscaler.checkUrl,
    checkCallbackUrl: (url) => validateCallbackUrl(url, config.webhook.allowPrivate, "on_close_route"),
    verifier: () => verifier,
    replay,
    admission,
    tracker,
    sessions,
    sessionMaxLifetimeS: config.autoscaler.sessionMaxLifetimeS,
    masterToken: config.autoscaler.masterToken,
    updateFlagFile: config.autoscaler.updateFlagFile,
    generate,
    health,
    workloadOf: workloadOfPayload,
  };
  const routedApp: Express = createRoutedApp(routedDeps);
  // Upstream's second listener: /session/end without TLS on WORKER_HTTP_PORT, for internal calls.
  const plainHttpApp: Express = createRoutedApp(routedDeps, PLAIN_HTTP_ROUTES);
  // The operator page's feed reads the parts through their read-only accessors.
  const consoleFeed = () => {
    const s3 = resolveS3(config.s3, undefined);
    return new ConsoleFeed({
      jobs,
      admission,
      janitor,
      reporter,
      phase: () => life.phase,
      errorMsg: () => life.errorMsg,
      backends: () => pool.backends.map((b) => b.state()),
      benchmark: () => benchmark,
      probeS3: s3 && ((signal) => storage.probe(s3, signal)),
      settings: {
        maxQueueTimeS: config.autoscaler.maxQueueTimeS,
        benchmarkSkip: config.benchmark.skip,
        benchmarkMaxRounds: config.benchmark.maxRounds,
        reportAddrs: config.autoscaler.reportAddrs,
        outputDir: config.outputDir,
        minFreeBytes: config.disk.minFreeBytes,
        s3Target: s3 ? `${s3.bucketName} at ${s3.endpointUrl ?? "AWS"}` : null,
      },
      startedAt,
      now,
    });
  };
  const assets = deps.assets ?? installLayout();
  const localApp = config.api.enabled
    ? createLocalApp({
        maxBodyBytes: config.limits.maxBodyBytes,
        jsonShape: config.limits.jsonShape,
        allowedHosts: config.api.allowedHosts,
        generate,
        health,
        docs: docsRoutes(loadExample(deps.root), assets.swaggerUi),
        debug: debugRoutes({ load: () => load.state(), maxPerf: () => admission.maxPerf }),
        console: consoleRoutes({ feed: consoleFeed(), root: deps.root, page: assets.console }),
        metrics: metrics.routes(() => {
          const state = load.state();
          metrics.loadModel(state.shapes, state.liveScore);
          metrics.queueDepth.set(jobs.active().length);
          const wait = admission.expectedWaitS();
          metrics.expectedWait.set(Number.isFinite(wait) ? wait : -1);
          metrics.comfyUp.set(life.comfyUp ? 1 : 0);
          for (const b of pool.backends) {
            const labels = { backend: String(b.index), url: b.url };
            metrics.backendUp.set(labels, b.inRotation ? 1 : 0);
            metrics.backendRunning.set(labels, b.running);
          }
        }),
      })
    : undefined;

  let routedServer: Server | undefined;
  let localServer: Server | undefined;
  let plainHttpServer: Server | undefined;
  let watcher: NodeJS.Timeout | undefined;
  // Expired sessions go every 5 s, as upstream's GC loop.
  let sessionSweep: NodeJS.Timeout | undefined;
  const lifecycle = new AbortController();

  const listen = (server: Server, port: number, host: string) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });

  // A backend leaving or rejoining the rotation: readiness, error_msg and max_perf follow, and the autoscaler hears
  // it now. Only when none is left is it an error: the others still serve.
  pool.on("change", () => {
    const up = pool.anyInRotation;
    if (up !== life.comfyUp) {
      life.comfyUp = up;
      if (up && life.errorMsg.startsWith("ComfyUI")) life.setError("");
      if (!up && life.serving) life.setError("ComfyUI stopped answering");
    }
    refreshScore();
  });

  /** Asks every backend every 2 s. */
  const watchComfy = () => {
    const tick = async () => {
      await pool.checkAll();
      if (life.serving) watcher = setTimeout(tick, 2_000);
    };
    watcher = setTimeout(tick, 2_000);
  };

  const worker: Worker = {
    jobs,
    reporter,
    metrics,
    admission,
    janitor,
    shared,
    load,
    phase: () => life.phase,
    errorMsg: () => life.errorMsg,
    benchmark: () => benchmark,
    routedUrl() {
      const a = routedServer?.address() as AddressInfo | null;
      return `${config.worker.useSsl ? "https" : "http"}://127.0.0.1:${a?.port ?? config.worker.port}`;
    },
    plainHttpUrl() {
      const a = plainHttpServer?.address() as AddressInfo | null;
      return a ? `http://127.0.0.1:${a.port}` : undefined;
    },
    apiUrl() {
      const a = localServer?.address() as AddressInfo | null;
      return a ? `http://127.0.0.1:${a.port}` : undefined;
    },

    async start() {
      logger.info({ stage: "lifecycle", comfyui: comfyUrls }, "starting");
      reporter?.start();
      try {
        routedServer = config.worker.useSsl
          ? createHttpsServer(
              { cert: await readFile(config.worker.sslCert), key: await readFile(config.worker.sslKey) },
              routedApp,
            )
          : createHttpServer(routedApp);
        await listen(routedServer, config.worker.port, config.worker.host);
        // On the routed port's host, as upstream binds both of its listeners alike.
        plainHttpServer = createHttpServer(plainHttpApp);
        await listen(plainHttpServer, config.plainHttp.port, config.worker.host);
        if (localApp) {
          localServer = createHttpServer(localApp);
          await listen(localServer, config.api.port, config.api.host);
        }
      } catch (err) {
        life.fail(`Worker Server failed to launch: ${err instanceof Error ? err.message : String(err)}`);
        throw err;
      }
      logger.info(
        {
          stage: "lifecycle",
          routed: worker.routedUrl(),
          session_end_http: worker.plainHttpUrl(),
          api: worker.apiUrl() ?? "disabled",
          // Signed requests must name this URL (AUTH_CHECK_URL=false turns the check off).
          signed_url_expected: config.autoscaler.checkUrl
            ? config.worker.publicUrl
            : "any (AUTH_CHECK_URL=false)",
        },
        "listening",
      );
      await mkdir(config.outputDir, { recursive: true });
      janitor.start();
      sessionSweep = setInterval(() => {
        for (const gone of sessions.expire(now() / 1000)) {
          logger.info({ stage: "session", session_id: gone.id }, "session expired");
        }
      }, 5_000);
      sessionSweep.unref();

      life.enter("waiting-for-comfyui");
      const deadline = now() + config.comfyui.startupTimeoutMs;
      // Every backend, or past the deadline those that answer (the others join when they do). With none past the
      // deadline the autoscaler hears the error, but the worker keeps waiting: a ComfyUI that comes up late (a
      // slow provisioning script) still gets served.
      for (;;) {
        await pool.checkAll();
        life.comfyUp = pool.anyInRotation;
        const missing = pool.backends.filter((b) => !b.up);
        if (missing.length === 0 || (life.comfyUp && now() >= deadline)) break;
        if (now() >= deadline && !life.errorMsg) {
          life.setError(
            `ComfyUI did not answer at ${comfyUrls} within ${config.comfyui.startupTimeoutMs} ms`,
          );
        }
        await delay(500, lifecycle.signal).catch(() => undefined);
        if (lifecycle.signal.aborted) return;
      }
      if (life.errorMsg.startsWith("ComfyUI did not answer")) life.setError("");
      const answering = pool.backends.filter((b) => b.up).map((b) => b.url);
      logger.info({ stage: "lifecycle" }, `ComfyUI answers at ${answering.join(", ")}`);
      for (const b of pool.backends.filter((b) => !b.up)) {
        logger.warn(
          { stage: "lifecycle", comfyui: b.url },
          `ComfyUI at ${b.url} did not answer within COMFYUI_STARTUP_TIMEOUT_MS: starting without it`,
        );
      }
      pool.startEvents();
      jobs.start();
      watchComfy();

      if (!config.autoscaler.unsecured) {
        try {
          const pem =
            deps.publicKeyPem ??
            (await fetchPublicKey(config.autoscaler.reportAddrs, { logger, signal: lifecycle.signal }));
          verifier = new SignatureVerifier(pem);
          logger.info({ stage: "lifecycle" }, "router public key loaded");
        } catch (err) {
          life.fail(err instanceof Error ? err.message : String(err));
          return;
        }
      }

      life.enter("benchmarking");
      try {
        load.setBenchmark(await deps.benchmark.workflow());
        if (config.benchmark.skip) {
          for (const b of pool.backends) b.perf = 1;
          // Without a benchmark the band is centred on this nominal score (widen it with LIVE_SCORE_BAND).
          load.score.setAnchor(1);
          logger.warn({ stage: "benchmark" }, "BENCHMARK_SKIP=true: max_perf set to 1 per backend");
        } else {
          const result = await deps.benchmark.run({ jobs, pool, logger });
          applyBenchmark(result);
          benchmark = result;
        }
        refreshScore();
      } catch (err) {
        life.fail(err instanceof Error ? err.message : String(err));
        return;
      }
      if (lifecycle.signal.aborted) return;
      life.ready((now() - startedAt) / 1000);
      logger.info(
        { stage: "lifecycle", max_perf: admission.maxPerf, loadtime_s: life.loadtime },
        `ready: max_perf ${admission.maxPerf}`,
      );
    },

    stop: (() => {
      let stopping: Promise<void> | undefined;
      return (drainMs = 30_000) => {
        stopping ??= (async () => {
          const stopStarted = now();
          logger.info({ stage: "lifecycle", active_jobs: jobs.active().length }, "stopping: no new jobs");
          const previous = life.enter("draining");
          lifecycle.abort();
          clearTimeout(watcher);
          clearInterval(sessionSweep);
          jobs.stopAccepting();
          // A normal shutdown: the autoscaler hears it as error_msg, but it is no error in our log.
          if (previous === "ready") life.setError("worker is shutting down", "info");
          await jobs.drain(drainMs);
          // Deliveries in flight get 5 s, or what is left of the process manager's stop window (STOP_WAIT_S) less a
          // second for the servers and the last report to the autoscaler.
          const windowLeftMs =
            config.shutdown.stopWaitS === undefined
              ? Infinity
              : config.shutdown.stopWaitS * 1000 - (now() - stopStarted) - 1_000;
          await webhooks.drain(Math.max(0, Math.min(5_000, windowLeftMs)));
          await Promise.all(
            [routedServer, plainHttpServer, localServer].map(
              (s) =>
                new Promise<void>((resolve) => {
                  if (!s?.listening) return resolve();
                  s.close(() => resolve());
                  s.closeAllConnections();
                }),
            ),
          );
          // After the servers closed, so that every request that ended is in the last /delete_requests/.
          await reporter?.stop(() => reporter.flush());
          pool.stop();
          janitor.stop();
          storage.close();
          life.enter("stopped");
          logger.info({ stage: "lifecycle" }, "stopped");
        })();
        return stopping;
      };
    })(),
  };
  return worker;
}
