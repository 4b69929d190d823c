import type { FrozenConfig } from "../../config/index.js";
import type { ComfyPool } from "../../handlers/comfyui/pool.js";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import type { ModelFetcher } from "../../handlers/preprocess/models.js";
import type { ObjectStorage } from "../../handlers/storage/s3.js";
import type { WebhookSender } from "../../handlers/webhook.js";
import { CancelledError, NotReadyError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { WorkerEventEmitter } from "../events.js";
import type { ParsedInput } from "../schema.js";
import { ResultDelivery } from "./delivery.js";
import { JobPublisher } from "./endpoint-jobs.js";
import { Job } from "./job.js";
import { JobRegistry } from "./registry.js";
import { JobRunner } from "./runner.js";
import type { SharedJobs } from "./shared.js";

export interface JobManagerDeps {
  config: FrozenConfig;
  /** The ComfyUI backends prompts are dispatched to. */
  pool: ComfyPool;
  downloader: InputDownloader;
  /** Model references in loaders' inputs (absent without a known models folder). */
  models?: ModelFetcher;
  storage: ObjectStorage;
  webhooks: WebhookSender;
  logger: Logger;
  /** The WebSocket client id all prompts are queued under. */
  clientId: string;
  now?: () => number;
  /** The job lifecycle's events (created, each stage, each upload, finished). */
  events: WorkerEventEmitter;
  /** Job documents in the operator's bucket, for endpoints of several workers. */
  shared?: SharedJobs;
}

/**
 * Accepts jobs and answers for them: the one object the HTTP routes, the console and the lifecycle talk to. It
 * wires the registry (which jobs exist, idempotency, retention), the runner (what a job does), the delivery of
 * results and, with a shared bucket, the publisher (what the endpoint's other workers see), and owns only what
 * spans them: whether new jobs are accepted and the drain. Observers listen to `deps.events`.
 */
export class JobManager {
  private readonly registry: JobRegistry;
  private readonly runner: JobRunner;
  private readonly delivery: ResultDelivery;
  private readonly publisher: JobPublisher | undefined;
  private readonly now: () => number;
  private accepting = true;
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: JobManagerDeps) {
    const { config, logger, shared } = deps;
    this.now = deps.now ?? Date.now;
    this.registry = new JobRegistry(config.jobs, this.now);
    this.delivery = new ResultDelivery({
      ...deps,
      onWebhookSettled: (job) => this.publisher?.webhookSettled(job),
    });
    this.publisher =
      shared &&
      new JobPublisher({
        shared,
        logger,
        now: this.now,
        find: (id) => this.registry.get(id),
        cancel: (id, reason) => void this.cancel(id, reason),
      });
    this.runner = new JobRunner({
      ...deps,
      now: this.now,
      delivery: this.delivery,
      ...(this.publisher && { publisher: this.publisher }),
      retain: (job) => this.registry.retain(job),
    });
  }

  start(): void {
    this.sweepTimer = setInterval(() => this.registry.sweep(), 60_000);
    this.sweepTimer.unref();
    this.publisher?.start();
  }

  get(id: string): Job | undefined {
    return this.registry.get(id);
  }

  /** Every job known (running, or finished within the retention window). */
  list(): Job[] {
    return this.registry.list();
  }

  /** Jobs not yet final. */
  active(): Job[] {
    return this.registry.active();
  }

  /** The load in flight: each active job's workload and what is left of its download part. */
  activeWorkload(): number {
    return this.active().reduce((sum, j) => sum + j.workload + j.downloadWorkload, 0);
  }

  /**
   * Returns the job for this request, creating and starting it unless one with the same id exists. An existing
   * job answers only the request that made it (the same hash): another request under its id is refused with 409.
   */
  submit(
    input: ParsedInput,
    workload: number,
    /** The expected download time of its missing models (LoadSignal.downloadPrice); none by default. */
    download: { seconds: number; workload: number } = { seconds: 0, workload: 0 },
  ): { job: Job; created: boolean } {
    const existing = this.registry.answering(input);
    if (existing) return { job: existing, created: false };
    if (!this.accepting) throw new NotReadyError("the worker is shutting down");
    this.delivery.checkTargets(input);
    const job = new Job(input, workload, this.now());
    job.downloadSeconds = download.seconds;
    job.downloadWorkload = download.workload;
    this.registry.add(job);
    this.deps.events.emit("job.created", job);
    this.publisher?.claim(job);
    void this.runner.run(job);
    return { job, created: true };
  }

  cancel(id: string, reason = "Cancelled by the caller"): Job | undefined {
    const job = this.registry.get(id);
    if (job && !job.final) job.abort.abort(new CancelledError(reason));
    return job;
  }

  stopAccepting(): void {
    this.accepting = false;
  }

  /** Waits for active jobs up to `timeoutMs`, then cancels the rest and waits for them to settle. */
  async drain(timeoutMs: number): Promise<void> {
    this.stopAccepting();
    const all = Promise.all(this.active().map((j) => j.done));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      for (const job of this.active()) job.abort.abort(new CancelledError("the worker is shutting down"));
      await Promise.all(this.active().map((j) => j.done));
    }
    clearInterval(this.sweepTimer);
    await this.publisher?.flush();
  }
}
