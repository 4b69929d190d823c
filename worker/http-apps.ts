import type { ModelPrefetch } from "../handlers/preprocess/model-prefetch.js";
import type { ObjectStorage } from "../handlers/storage/s3.js";
import { validateCallbackUrl } from "../handlers/webhook.js";
import type { Logger } from "../lib/logger.js";
import { installLayout, type InstallLayout } from "../lib/install.js";
import { ReplayGuard, type SignatureVerifier } from "./auth/signature.js";
import { consoleRoutes } from "./http/console.js";
import { debugRoutes } from "./http/debug.js";
import { docsRoutes, loadExample } from "./http/docs.js";
import { generateRoutes } from "./http/generate-routes.js";
import { healthRoutes } from "./http/health.js";
import { modelRoutes } from "./http/models-routes.js";
import { createLocalApp } from "./http/local.js";
import { PLAIN_HTTP_ROUTES } from "./http/route-table.js";
import { createRoutedApp, type SessionStore } from "./http/routed.js";
import type { WorkerEventEmitter } from "./events.js";
import type { Janitor } from "./janitor.js";
import type { SharedJobs } from "./jobs/shared.js";
import { createListeners, type Listeners } from "./listeners.js";
import type { LoadSignal } from "./load-signal.js";
import type { WorkerMetrics } from "./metrics.js";
import { consoleFeed, readiness, refreshMetrics, type ReadSources } from "./read-models.js";
import type { AutoscalerReporter } from "./reporter/reporter.js";
import type { RequestTracker } from "./reporter/tracker.js";

export interface AppsDeps extends ReadSources {
  logger: Logger;
  root: string;
  assets: Pick<InstallLayout, "console" | "swaggerUi"> | undefined;
  shared: SharedJobs | undefined;
  events: WorkerEventEmitter;
  load: LoadSignal;
  tracker: RequestTracker;
  sessions: SessionStore;
  reporter: AutoscalerReporter | undefined;
  janitor: Janitor;
  metrics: WorkerMetrics;
  storage: ObjectStorage;
  /** POST /models/prefetch on both ports. */
  prefetch: ModelPrefetch;
  /** The router's key, once loaded. */
  verifier(): SignatureVerifier | undefined;
  startedAt: number;
  now: () => number;
}

/** The routed app (on the routed and the plain-HTTP port) and the local API, on their listeners. */
export function createApps(d: AppsDeps): Listeners {
  const { config, logger, load, startup } = d;
  const workloadOfWorkflow = (workflow: unknown): number => load.workloadOf(workflow);
  const health = healthRoutes({ live: () => startup.phase !== "stopped", readiness: readiness(d) });
  // One set of handlers for both ports: a job is the same job whichever port its callers came through.
  const generate = generateRoutes({
    jobs: d.jobs,
    ...(d.shared && { shared: d.shared }),
    remoteWaitMs: config.jobs.timeoutMs,
    logger,
    maxWorkflowNodes: config.limits.maxWorkflowNodes,
    workloadOf: (input) => workloadOfWorkflow(input.workflow),
    // The local API admits everything: no HEAD to delay the job (its first answer gives the size).
    downloadOf: (input) => load.downloadPrice(input.workflow, false),
  });
  const models = modelRoutes({ prefetch: d.prefetch });
  const routedDeps = {
    logger,
    maxBodyBytes: config.limits.routedMaxBodyBytes,
    jsonShape: config.limits.jsonShape,
    unsecured: config.autoscaler.unsecured,
    legacySignatures: config.autoscaler.legacySignatures,
    advertisedUrl: config.worker.publicUrl,
    checkUrl: config.autoscaler.checkUrl,
    checkCallbackUrl: (url: string) =>
      validateCallbackUrl(url, config.webhook.allowPrivate, "on_close_route"),
    verifier: d.verifier,
    replay: new ReplayGuard(config.autoscaler.replayWindow),
    admission: d.admission,
    tracker: d.tracker,
    sessions: d.sessions,
    sessionMaxLifetimeS: config.autoscaler.sessionMaxLifetimeS,
    masterToken: config.autoscaler.masterToken,
    updateFlagFile: config.autoscaler.updateFlagFile,
    generate,
    health,
    models,
    workloadOf: (payload: unknown) =>
      workloadOfWorkflow((payload as { input?: { workflow_json?: unknown } } | null)?.input?.workflow_json),
    downloadOf: (payload: unknown) =>
      load.downloadPrice(
        (payload as { input?: { workflow_json?: unknown } } | null)?.input?.workflow_json,
        true,
      ),
  };
  const assets = d.assets ?? installLayout();
  const local = config.api.enabled
    ? createLocalApp({
        maxBodyBytes: config.limits.maxBodyBytes,
        jsonShape: config.limits.jsonShape,
        allowedHosts: config.api.allowedHosts,
        handlers: {
          ...generate,
          ...health,
          ...models,
          ...docsRoutes(loadExample(d.root), assets.swaggerUi),
          ...debugRoutes({ load: () => load.state(), maxPerf: () => d.capacity.maxPerf() }),
          ...consoleRoutes({ feed: consoleFeed(d), root: d.root, page: assets.console }),
          ...d.metrics.routes(refreshMetrics(d)),
        },
      })
    : undefined;
  return createListeners(config, {
    routed: createRoutedApp(routedDeps),
    // Upstream's second listener: /session/end without TLS on WORKER_HTTP_PORT, for internal calls.
    plainHttp: createRoutedApp(routedDeps, PLAIN_HTTP_ROUTES),
    local,
  });
}
