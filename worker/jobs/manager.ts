import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { FrozenConfig } from "../../config/index.js";
import type { ComfyBackend, ComfyPool, Lease } from "../../handlers/comfyui/pool.js";
import { classifyFailure } from "../../handlers/comfyui/failures.js";
import { runPrompt } from "../../handlers/comfyui/run-prompt.js";
import { collectOutputs } from "../../handlers/outputs.js";
import { prepareWorkflow } from "../../handlers/preprocess/index.js";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import { resolveS3, s3FromRequest, type ObjectStorage } from "../../handlers/storage/s3.js";
import { validateCallbackUrl, type WebhookSender } from "../../handlers/webhook.js";
import {
  BadRequestError,
  ConflictError,
  CancelledError,
  ExecutionError,
  DeviceFailedError,
  JobTimeoutError,
  InternalError,
  NotReadyError,
  OutOfMemoryError,
  RequestIdReusedError,
  asWorkerError,
  type WorkerError,
} from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { ParsedInput } from "../schema.js";
import { Job, requestHash } from "./job.js";
import type { JobBinding, SharedJobs } from "./shared.js";
import { UPLOADED_MARKER } from "../janitor.js";

/** What the manager tells observers (metrics); an observer that throws is logged and ignored. */
export interface JobObserver {
  stage?(stage: "preprocess" | "queue" | "generation" | "postprocess", ms: number): void;
  finished?(job: Job): void;
  upload?(ok: boolean, bytes: number): void;
  /** An unrecoverable device error: the backend left the rotation for good. */
  deviceFailed?(message: string, backend: ComfyBackend): void;
}

export interface JobManagerDeps {
  config: FrozenConfig;
  /** The ComfyUI backends prompts are dispatched to. */
  pool: ComfyPool;
  downloader: InputDownloader;
  storage: ObjectStorage;
  webhooks: WebhookSender;
  logger: Logger;
  /** The WebSocket client id all prompts are queued under. */
  clientId: string;
  now?: () => number;
  observer?: JobObserver;
  /** Job documents in the operator's bucket, for endpoints of several workers. */
  shared?: SharedJobs;
}

/**
 * Accepts jobs and runs them: preprocess (ahead of time), ComfyUI (the pool's best backend; at most
 * `maxInFlightPrompts` prompts submitted to each, so the next prompt is already queued in ComfyUI while the previous
 * job uploads), outputs, storage, webhook.
 * A request_id seen again while its job runs or is retained returns that job (idempotency). A retryable failure is
 * retained too (pollers of /result see it), but a retry with its request_id runs again. A finished job keeps only
 * its result document, and finished jobs are capped by age, count and bytes (oldest evicted first).
 */
export class JobManager {
  private readonly jobs = new Map<string, Job>();
  /** Finished jobs in the order they finished, with the size of their result document. */
  private readonly retained = new Map<string, number>();
  private retainedBytes = 0;
  private accepting = true;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sharedTimer: NodeJS.Timeout | undefined;
  /** Claims in progress (started at submission, awaited before ComfyUI) and when each job's document was written. */
  private readonly claims = new Map<string, Promise<boolean>>();
  private readonly lastShared = new Map<string, number>();
  private readonly publishing = new Set<Promise<void>>();
  private readonly now: () => number;
  private readonly watchers = new Set<(job: Job) => void>();

  constructor(private readonly deps: JobManagerDeps) {
    this.now = deps.now ?? Date.now;
  }

  start(): void {
    this.sweepTimer = setInterval(() => this.sweep(), 60_000);
    this.sweepTimer.unref();
    if (this.deps.shared) {
      // Cancel requests from other workers are seen within a second; running jobs' documents refreshed.
      this.sharedTimer = setInterval(() => void this.syncShared(), 1_000);
      this.sharedTimer.unref();
    }
  }

  get(id: string): Job | undefined {
    return this.jobs.get(id);
  }

  /** Every job known (running, or finished within the retention window). */
  list(): Job[] {
    return [...this.jobs.values()];
  }

  /** Jobs not yet final. */
  active(): Job[] {
    return [...this.jobs.values()].filter((j) => !j.final);
  }

  /** Calls `fn` with each job created from now on (read-only observers: the operator page); returns the unsubscribe. */
  onJob(fn: (job: Job) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  activeWorkload(): number {
    return this.active().reduce((sum, j) => sum + j.workload, 0);
  }

  /**
   * Returns the job for this request, creating and starting it unless one with the same id exists. An existing
   * job answers only the request that made it (the same hash): another request under its id is refused with 409.
   */
  submit(input: ParsedInput, workload: number): { job: Job; created: boolean } {
    const existing = this.jobs.get(input.requestId);
    if (existing && !(existing.final && existing.error?.retryable)) {
      if (existing.requestHash !== requestHash(input)) throw reusedId(input.requestId);
      return { job: existing, created: false };
    }
    if (!this.accepting) throw new NotReadyError("the worker is shutting down");
    const webhookUrl = this.webhookUrl(input);
    if (webhookUrl !== undefined && !/^https?:\/\//i.test(webhookUrl)) {
      throw new BadRequestError("webhook.url must be an http(s) URL");
    }
    // Security checks on caller-chosen targets (issue 9): refused here with 400, before anything runs.
    const callerWebhook = input.webhook?.url?.trim();
    if (callerWebhook) validateCallbackUrl(callerWebhook, this.deps.config.webhook.allowPrivate);
    if (!input.internal?.skipStorage) {
      resolveS3(this.deps.config.s3, s3FromRequest(input.s3), {
        allowPrivate: this.deps.config.webhook.allowPrivate,
      });
    }
    const job = new Job(input, workload, this.now());
    if (existing) this.forget(existing.id);
    this.jobs.set(job.id, job);
    for (const fn of this.watchers) this.observe(() => fn(job));
    this.claim(job);
    void this.run(job);
    return { job, created: true };
  }

  cancel(id: string, reason = "Cancelled by the caller"): Job | undefined {
    const job = this.jobs.get(id);
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
    clearInterval(this.sharedTimer);
    await Promise.all(this.publishing);
    await this.deps.shared?.flush();
  }

  /**
   * Claims the job's id in the shared bucket, in the background: the claim runs while the job preprocesses and
   * generates, so it costs the answer nothing. Resolves false when another worker's live job holds the id: this
   * one is then aborted with 409 (the caller polls `/result/{id}`), and its document is never written over the
   * other's. A bucket that cannot be reached leaves the job local (logged), not failed.
   */
  private claim(job: Job): void {
    const shared = this.deps.shared;
    if (!shared || job.input.internal) return;
    const claimed = shared.claim(job.result(), bindingOf(job)).then(
      (r) => {
        if (r.claimed) {
          this.lastShared.set(job.id, this.now());
          return true;
        }
        job.abort.abort(
          r.existing.request_hash === job.requestHash
            ? new ConflictError(
                `request_id ${job.id} is already ${r.existing.status} on another worker; poll /result/${job.id}`,
              )
            : reusedId(job.id),
        );
        return false;
      },
      (err: unknown) => {
        this.deps.logger.warn(
          { request_id: job.id, stage: "shared", err },
          "could not claim the job in the bucket: it runs, but other workers will not see it",
        );
        return true;
      },
    );
    this.claims.set(job.id, claimed);
  }

  /** Writes the final document once the claim settled (never over another worker's job). */
  private publish(job: Job): void {
    const shared = this.deps.shared;
    const claimed = this.claims.get(job.id);
    this.claims.delete(job.id);
    if (!shared || !claimed) return;
    const doc = job.result();
    const status = job.httpStatus();
    const retryable = job.error?.retryable ?? false;
    const published = claimed.then((ours) => {
      if (ours) shared.write(doc, bindingOf(job), status, retryable);
    });
    this.publishing.add(published);
    void published.then(() => this.publishing.delete(published));
  }

  /** Looks for other workers' cancel requests and refreshes the documents of running jobs (their heartbeat). */
  private async syncShared(): Promise<void> {
    const shared = this.deps.shared!;
    await Promise.all(
      [...this.lastShared.entries()].map(async ([id, writtenAt]) => {
        const job = this.jobs.get(id);
        if (!job || job.final) return;
        try {
          if (await shared.cancelRequested(id, job.runId, AbortSignal.timeout(5_000))) {
            this.cancel(id, "Cancelled by the caller (through another worker)");
            return;
          }
        } catch (err) {
          this.deps.logger.warn(
            { request_id: id, stage: "shared", err },
            "could not check for a cancel request",
          );
        }
        if (this.now() - writtenAt >= shared.heartbeatMs) {
          this.lastShared.set(id, this.now());
          shared.write(job.result(), bindingOf(job), 202, false);
        }
      }),
    );
  }

  private sweep(): void {
    const cutoff = this.now() - this.deps.config.jobs.resultRetentionMs;
    for (const id of this.retained.keys()) {
      if ((this.jobs.get(id)?.finishedAt ?? 0) >= cutoff) break;
      this.forget(id);
    }
  }

  /** Keeps a finished job's result document (its input is dropped), evicting the oldest past the caps. */
  private retain(job: Job): void {
    const bytes = job.compact();
    this.retained.set(job.id, bytes);
    this.retainedBytes += bytes;
    const { resultRetentionMax, resultRetentionMaxBytes } = this.deps.config.jobs;
    for (const id of this.retained.keys()) {
      if (this.retained.size <= resultRetentionMax && this.retainedBytes <= resultRetentionMaxBytes) break;
      this.forget(id);
    }
  }

  private forget(id: string): void {
    const bytes = this.retained.get(id);
    if (bytes === undefined) return;
    this.retained.delete(id);
    this.retainedBytes -= bytes;
    this.jobs.delete(id);
  }

  private observe(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.deps.logger.error({ err }, "a job observer failed");
    }
  }

  private async run(job: Job): Promise<void> {
    const { config, logger } = this.deps;
    const log = logger.child({ request_id: job.id });
    const deadline = AbortSignal.timeout(config.jobs.timeoutMs);
    const signal = AbortSignal.any([job.abort.signal, deadline]);
    const stage = (name: "preprocess" | "queue" | "generation" | "postprocess", ms: number) =>
      this.observe(() => this.deps.observer?.stage?.(name, ms));
    let inputFiles: string[] = [];
    let lease: Lease | undefined;
    let outcome: { status: "completed" | "failed" | "cancelled"; message: string } = {
      status: "failed",
      message: "the job ended unexpectedly",
    };
    let t = this.now();
    try {
      // 1. Preprocess: seeds, URL inputs, output-node nonce.
      job.setStatus("processing", "Preparing inputs");
      const nodes = await this.deps.pool.catalog.get(signal);
      const prepared = await prepareWorkflow(job.input.workflow, {
        requestId: job.id,
        nodes,
        downloader: this.deps.downloader,
        signal,
      });
      inputFiles = prepared.inputFiles;
      job.timings.preprocess_ms = this.now() - t;
      stage("preprocess", job.timings.preprocess_ms);

      // 2. Wait for a slot on a ComfyUI backend, then run the prompt there.
      t = this.now();
      job.setStatus("queued", "Waiting for ComfyUI");
      lease = await this.deps.pool.acquire({
        workload: job.workload,
        signal,
        backend: job.input.internal?.backend,
      });
      const { backend } = lease;
      job.backend = backend.index;
      job.timings.queue_ms = this.now() - t;
      stage("queue", job.timings.queue_ms);
      t = this.now();
      job.setStatus("generating", "Submitted to ComfyUI");
      const run = await runPrompt({
        client: backend.client,
        events: backend.events,
        clientId: this.deps.clientId,
        promptId: randomUUID(),
        workflow: prepared.workflow,
        signal,
        pollMs: config.comfyui.historyPollMs,
        onEvent: (event, details) => {
          job.details = details;
          job.emitEvent(
            event.type === "progress"
              ? { ...event, percent: event.max > 0 ? Math.round((event.value / event.max) * 1000) / 10 : 0 }
              : event,
          );
        },
      });
      lease.release();
      job.history = run.history;
      job.details = run.details;
      job.timings.generation_ms = this.now() - t;
      stage("generation", job.timings.generation_ms);

      // 3. Outputs and storage (the ComfyUI slot is already free for the next job). The claim of the id in the
      // bucket ran meanwhile: a job another worker holds goes no further (a conflict aborted it already).
      if ((await this.claims.get(job.id)) === false) throw job.abort.signal.reason;
      t = this.now();
      job.setStatus("processing", "Collecting outputs");
      job.output = await collectOutputs(run.history, {
        requestId: job.id,
        comfyOutputDir: backend.outputDir,
        comfyInputDir: config.comfyui.inputDir,
        outputDir: config.outputDir,
        client: backend.client,
        signal,
      });
      const failedUploads = await this.upload(job, signal);
      job.timings.postprocess_ms = this.now() - t;
      stage("postprocess", job.timings.postprocess_ms);
      outcome =
        failedUploads > 0
          ? {
              status: "failed",
              message: `Generated ${job.output.length} output(s) but ${failedUploads} upload(s) failed`,
            }
          : { status: "completed", message: `Completed with ${job.output.length} output(s)` };
    } catch (raw) {
      lease?.release(raw);
      const err = await this.classify(raw, job, deadline, lease?.backend);
      job.error = err;
      outcome = { status: err instanceof CancelledError ? "cancelled" : "failed", message: err.message };
      if (err instanceof InternalError) {
        log.error({ stage: "job", err: raw }, `unexpected failure: ${err.message}`);
      }
    } finally {
      for (const f of inputFiles) this.deps.downloader.unpin(f);
      // Timings first: whoever listens for the final status reads them.
      job.finishedAt = this.now();
      job.timings.completed_at_ms = job.finishedAt;
      job.timings.total_ms = job.finishedAt - job.createdAt;
      job.setStatus(outcome.status, outcome.message);
      this.observe(() => this.deps.observer?.finished?.(job));
      this.lastShared.delete(job.id);
      this.publish(job);
      const level = job.status === "completed" ? "info" : "warn";
      log[level](
        {
          status: job.status,
          outputs: job.output.length,
          ...(job.backend !== undefined && { backend: job.backend }),
          timings: job.timings,
          ...(job.error && { code: job.error.code }),
        },
        `job ${job.status}: ${job.message}`,
      );
      this.notify(job);
      this.retain(job);
    }
  }

  /**
   * The error a failed job reports. Out of memory (by the exception's type) frees memory and is retryable; a
   * suspected device failure takes the backend out of the rotation only when a health probe of it fails too, else
   * the job failed on its own (an ExecutionError, as any node raising).
   */
  private async classify(
    raw: unknown,
    job: Job,
    deadline: AbortSignal,
    backend: ComfyBackend | undefined,
  ): Promise<WorkerError> {
    if (job.abort.signal.aborted) return asWorkerError(job.abort.signal.reason);
    if (deadline.aborted) {
      return new JobTimeoutError(`the job ran longer than JOB_TIMEOUT_MS=${this.deps.config.jobs.timeoutMs}`);
    }
    const err = asWorkerError(raw);
    if (err instanceof ExecutionError && err.details && backend) {
      const { execution_details, comfyui_response } = err.details as Record<string, never>;
      if (execution_details) job.details = execution_details;
      if (comfyui_response) job.history = comfyui_response;
      const kind = classifyFailure(job.details?.error ?? null);
      if (kind === "out_of_memory") {
        void backend.client.free(AbortSignal.timeout(10_000)).then(
          () =>
            this.deps.logger.warn(
              { request_id: job.id, stage: "generation" },
              "out of memory: asked ComfyUI to free memory",
            ),
          (e: unknown) =>
            this.deps.logger.error({ request_id: job.id, err: e }, "out of memory, and POST /free failed"),
        );
        return new OutOfMemoryError(`ComfyUI ran out of memory (${err.message}); memory was freed, retry`);
      }
      if (kind === "device_suspected") {
        const probeFailure = await this.deps.pool.probe(backend);
        if (probeFailure === undefined) {
          this.deps.logger.info(
            { request_id: job.id, stage: "health", backend: backend.index },
            "a device error was reported, and the backend passed its health probe: it stays in service",
          );
          return err;
        }
        const failed = new DeviceFailedError(`unrecoverable device error: ${err.message} (${probeFailure})`);
        this.deps.pool.fail(backend, failed.message);
        this.observe(() => this.deps.observer?.deviceFailed?.(failed.message, backend));
        return failed;
      }
    }
    return err;
  }

  /** Uploads every file output in parallel; returns how many failed (each carries its upload_error). */
  private async upload(job: Job, signal: AbortSignal): Promise<number> {
    if (job.input.internal?.skipStorage) return 0;
    const s3 = job.input.s3;
    const target = resolveS3(this.deps.config.s3, {
      accessKeyId: s3?.access_key_id,
      secretAccessKey: s3?.secret_access_key,
      endpointUrl: s3?.endpoint_url,
      bucketName: s3?.bucket_name,
      region: s3?.region,
    });
    if (!target) return 0;
    if (job.output.length === 0) return 0;
    const results = await Promise.all(
      job.output.map(async (entry) => {
        try {
          const stored = await this.deps.storage.put(
            target,
            `${job.id}/${entry.filename}`,
            entry.local_path,
            signal,
          );
          entry.url = stored.url;
          this.observe(() => this.deps.observer?.upload?.(true, stored.bytes));
          return true;
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          entry.upload_error = asWorkerError(err).message;
          this.observe(() => this.deps.observer?.upload?.(false, 0));
          return false;
        }
      }),
    );
    const failed = results.filter((ok) => !ok).length;
    // Every file is in storage: the janitor may remove this folder when the disk stays full (its second rule).
    if (failed === 0) {
      await writeFile(join(this.deps.config.outputDir, job.id, UPLOADED_MARKER), "").catch((err: unknown) =>
        this.deps.logger.warn(
          { request_id: job.id, stage: "postprocess", err },
          "could not mark as uploaded",
        ),
      );
    }
    return failed;
  }

  /** The request's webhook, else WEBHOOK_URL (an empty string means not given). */
  private webhookUrl(input: ParsedInput): string | undefined {
    return input.webhook?.url?.trim() || this.deps.config.webhook.url;
  }

  private notify(job: Job): void {
    const callerUrl = job.input.webhook?.url?.trim();
    const operatorUrl = this.deps.config.webhook.url;
    if ((!callerUrl && !operatorUrl) || job.input.internal) return;
    const callerSecret = job.input.webhook?.secret?.trim() || undefined;
    const doc = job.result();
    job.webhook = { status: "pending", attempts: 0 };
    void this.deps.webhooks
      .send({
        // The operator's keys go only with the operator's URL (the destination type allows nothing else).
        to: callerUrl
          ? { kind: "caller", url: callerUrl, secret: callerSecret }
          : {
              kind: "operator",
              url: operatorUrl!,
              signing: {
                secret: callerSecret ?? this.deps.config.webhook.secret,
                signingKey: this.deps.config.webhook.signingKey,
              },
            },
        requestId: job.id,
        body: {
          id: doc.id,
          status: doc.status,
          message: doc.message,
          output: doc.output,
          timings: doc.timings,
          extra: job.input.webhook?.extra_params ?? {},
        },
      })
      .then((record) => (job.webhook = record));
  }
}

/** What ties a job's document in the bucket to it: the request it answers and this run of its id. */
function bindingOf(job: Job): JobBinding {
  return { requestHash: job.requestHash, runId: job.runId };
}

/** A request under an id that another request's job holds (here or on another worker of the endpoint). */
export function reusedId(id: string): RequestIdReusedError {
  return new RequestIdReusedError(
    `request_id ${id} belongs to another request (a different workflow, storage or webhook): a request_id answers ` +
      "only the request that made it; send this one under a new id",
  );
}
