import { randomUUID } from "node:crypto";
import type { FrozenConfig } from "../config/index.js";
import { ComfyPool } from "../handlers/comfyui/pool.js";
import { InputDownloader } from "../handlers/preprocess/downloads.js";
import { MODEL_DIRS } from "../handlers/preprocess/model-folders.js";
import { ModelFetcher } from "../handlers/preprocess/models.js";
import { ObjectStorage, resolveS3 } from "../handlers/storage/s3.js";
import { WebhookSender } from "../handlers/webhook.js";
import { Emitter } from "../lib/events.js";
import type { Logger } from "../lib/logger.js";
import type { WorkerEventEmitter, WorkerEvents } from "./events.js";
import { JobManager } from "./jobs/manager.js";
import { SharedJobs } from "./jobs/shared.js";
import { WorkerMetrics } from "./metrics.js";

/** The job pipeline and its clients of external systems, without any listener: the worker and the CLI share it. */
export interface Pipeline {
  /** The ComfyUI backends (COMFYUI_URLS), their clients, event sockets and health. */
  pool: ComfyPool;
  downloader: InputDownloader;
  /** Model references in loaders' inputs (absent without a known models folder). */
  models: ModelFetcher | undefined;
  storage: ObjectStorage;
  webhooks: WebhookSender;
  jobs: JobManager;
  /** The jobs' lifecycle: metrics listen first; the worker's load signal, the operator page and tests after. */
  events: WorkerEventEmitter;
  metrics: WorkerMetrics;
  /** Job documents in the operator's bucket (SHARED_JOBS, with S3 configured). */
  shared: SharedJobs | undefined;
}

/** What the pipeline asks of the worker around it. */
export interface PipelineQueries {
  /** Each backend's score, by index, for placing prompts (the worker's Capacity); 0 for all without it. */
  scoreOf?(index: number): number;
}

export function createPipeline(
  config: FrozenConfig,
  logger: Logger,
  now: () => number = Date.now,
  queries: PipelineQueries = {},
): Pipeline {
  const clientId = `comfyui-worker-${randomUUID()}`;
  const pool = new ComfyPool({
    backends: config.comfyui.backends,
    requestTimeoutMs: config.comfyui.requestTimeoutMs,
    clientId,
    slotsPerBackend: config.jobs.maxInFlightPrompts,
    logger,
    ...(queries.scoreOf && { scoreOf: queries.scoreOf }),
  });
  const metrics = new WorkerMetrics();
  const events = new Emitter<WorkerEvents>(logger);
  metrics.listen(events);
  const downloader = new InputDownloader({ inputDir: config.comfyui.inputDir, ...config.inputs });
  const storage = new ObjectStorage({
    forcePathStyle: config.s3.forcePathStyle,
    partSizeBytes: config.s3.partSizeBytes,
    presignExpirySeconds: config.s3.presignExpirySeconds,
    uploadTimeoutMs: Math.max(60_000, config.jobs.timeoutMs),
    allowPrivateEndpoints: config.webhook.allowPrivate,
  });
  const webhooks = new WebhookSender({
    timeoutMs: config.webhook.timeoutMs,
    maxAttempts: config.webhook.maxAttempts,
    allowPrivate: config.webhook.allowPrivate,
    logger,
    onAttempt: (outcome) => metrics.webhookAttempts.inc({ outcome }),
  });
  const operatorBucket = resolveS3(config.s3, undefined);
  const models =
    config.models.dir === undefined
      ? undefined
      : new ModelFetcher({
          ...config.models,
          modelsDir: config.models.dir,
          dirs: MODEL_DIRS,
          allowPrivate: config.inputs.allowPrivate,
          logger,
          observer: metrics.modelObserver(),
          // s3:// reads the storage the fetcher resolves (the request's s3 settings, else the operator's bucket). The
          // URL outlives the download, resumed ranges included (S3 allows 7 days).
          s3: {
            env: config.s3,
            presignGet: (target, key) =>
              storage.presignGet(
                target,
                key,
                Math.min(604_800, Math.ceil(config.models.timeoutMs / 1000) + 60),
              ),
          },
        });
  const shared =
    config.jobs.shared && operatorBucket
      ? new SharedJobs({
          storage,
          target: operatorBucket,
          prefix: config.jobs.sharedPrefix,
          owner: `${config.worker.publicUrl} ${clientId}`,
          heartbeatMs: config.jobs.heartbeatMs,
          logger,
          now,
        })
      : undefined;
  const jobs = new JobManager({
    ...(shared && { shared }),
    config,
    pool,
    downloader,
    ...(models && { models }),
    storage,
    webhooks,
    logger,
    clientId,
    now,
    events,
  });
  return { pool, downloader, models, storage, webhooks, jobs, events, metrics, shared };
}
