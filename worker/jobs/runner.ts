import { randomUUID } from "node:crypto";
import type { FrozenConfig } from "../../config/index.js";
import type { ComfyBackend, ComfyPool, Lease } from "../../handlers/comfyui/pool.js";
import { classifyFailure } from "../../handlers/comfyui/failures.js";
import { partialRunNote, runPrompt, type PromptEvent } from "../../handlers/comfyui/run-prompt.js";
import { PREVIEW_METHOD, PreviewThrottle, imageSize } from "../../handlers/comfyui/previews.js";
import { shrinkJpeg } from "../../handlers/comfyui/preview-image.js";
import { collectOutputs } from "../../handlers/outputs.js";
import { prepareWorkflow } from "../../handlers/preprocess/index.js";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import type { ModelFetcher, ModelProgress } from "../../handlers/preprocess/models.js";
import { s3FromRequest } from "../../handlers/storage/s3.js";
import {
  CancelledError,
  DeviceFailedError,
  ExecutionError,
  InternalError,
  JobTimeoutError,
  OutOfMemoryError,
  StalledError,
  asWorkerError,
  type WorkerError,
} from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { ResultDelivery } from "./delivery.js";
import type { JobPublisher } from "./endpoint-jobs.js";
import type { JobStage, WorkerEventEmitter } from "../events.js";
import type { Job } from "./job.js";
import { stallTimeoutMs } from "../workload.js";

export interface JobRunnerDeps {
  config: FrozenConfig;
  /** The ComfyUI backends prompts are dispatched to. */
  pool: ComfyPool;
  downloader: InputDownloader;
  /** Model references in loaders' inputs (absent without a known models folder). */
  models?: ModelFetcher;
  delivery: ResultDelivery;
  logger: Logger;
  /** The WebSocket client id all prompts are queued under. */
  clientId: string;
  now: () => number;
  /** Hears each stage's duration and the final status. */
  events: WorkerEventEmitter;
  /** Publishes the job for the endpoint's other workers (absent without the shared bucket). */
  publisher?: JobPublisher;
  /** Called last with the finished job, so that pollers of /result find it (the registry keeps it). */
  retain: (job: Job) => void;
}

/**
 * What passes a job's previews on: at most one every `everyMs` (the frames between are dropped before anything is
 * done with them); a frame within `maxPx` as ComfyUI sent it, a larger JPEG shrunk to fit and sent as PNG (ComfyUI
 * scales every preview to its `--preview-size`, 512 by default), any other frame dropped.
 */
function previewSender(
  job: Job,
  spec: { maxPx: number; everyMs: number },
  now: () => number,
): (event: Extract<PromptEvent, { type: "preview" }>) => void {
  const throttle = new PreviewThrottle(spec.everyMs);
  return (event) => {
    const size = imageSize(event.image);
    if (!size || !throttle.take(now())) return;
    let sent = { mime: event.mime, image: event.image, ...size };
    if (size.width > spec.maxPx || size.height > spec.maxPx) {
      const small = event.mime === "image/jpeg" ? shrinkJpeg(event.image, spec.maxPx) : undefined;
      if (!small) return;
      sent = { mime: "image/jpeg", image: small.jpeg, width: small.width, height: small.height };
    }
    job.preview = {
      type: "preview",
      node: event.node,
      step: event.step,
      max: event.max,
      mime: sent.mime,
      width: sent.width,
      height: sent.height,
      data: sent.image.toString("base64"),
    };
    job.emitEvent(job.preview);
  };
}

/**
 * Turns the job's model downloads into a stage of the job: its message names the model and how far it is (what
 * /result and the status shows), each step is a `download` event on its stream, and the download part of its load
 * shrinks with what is left to fetch (in proportion to what admission priced: remaining bytes at the throughput now,
 * over the seconds priced), never growing past it. A model whose source declares no size leaves the load as priced.
 */
function downloadStage(job: Job, models: ModelFetcher): (p: ModelProgress) => void {
  const heard = new Map<string, ModelProgress>();
  const priced = { seconds: job.downloadSeconds, workload: job.downloadWorkload };
  return (p) => {
    job.fetchedModels = true;
    const first = !heard.has(p.model);
    heard.set(p.model, p);
    const percent = p.total ? Math.min(100, Math.floor((p.received / p.total) * 1000) / 10) : null;
    const message = `Downloading model ${p.model}: ${percent === null ? `${(p.received / 1024 ** 2).toFixed(1)} MiB` : `${Math.floor(percent)}%`}`;
    if (first) job.setStatus("processing", message);
    else job.message = message;
    job.emitEvent({
      type: "download",
      model: p.model,
      folder: p.folder,
      received: p.received,
      total: p.total ?? null,
      percent,
    });
    const all = [...heard.values()];
    if (priced.seconds > 0 && all.every((h) => h.total !== undefined)) {
      const left = models.throughput.secondsFor(all.reduce((sum, h) => sum + (h.total! - h.received), 0));
      job.downloadWorkload = priced.workload * Math.min(1, left / priced.seconds);
    }
  };
}

/**
 * Runs a job: preprocess, a slot on the pool's best backend (at most `maxInFlightPrompts` prompts submitted to
 * each, so the next prompt is already queued in ComfyUI while the previous job uploads), the prompt, outputs,
 * storage, webhook. It never throws: every failure becomes the job's error (see `classify`).
 */
export class JobRunner {
  constructor(private readonly deps: JobRunnerDeps) {}

  async run(job: Job): Promise<void> {
    const { config, logger, pool, now, publisher, delivery, events } = this.deps;
    const log = logger.child({ request_id: job.id });
    const deadline = AbortSignal.timeout(config.jobs.timeoutMs);
    const signal = AbortSignal.any([job.abort.signal, deadline]);
    const stage = (name: JobStage, ms: number) => events.emit("job.stage", { job, stage: name, ms });
    let inputFiles: string[] = [];
    let modelFiles: string[] = [];
    let lease: Lease | undefined;
    let outcome: { status: "completed" | "failed" | "cancelled"; message: string } = {
      status: "failed",
      message: "the job ended unexpectedly",
    };
    let t = now();
    try {
      // 1. Preprocess: seeds, URL inputs, output-node nonce.
      job.setStatus("processing", "Preparing inputs");
      const nodes = await pool.catalog.get(signal);
      const prepared = await prepareWorkflow(job.input.workflow, {
        nonce: `${job.id}:${job.runId}`,
        nodes,
        downloader: this.deps.downloader,
        models: this.deps.models,
        signal,
        onModelProgress: this.deps.models && downloadStage(job, this.deps.models),
        s3: s3FromRequest(job.input.s3),
      });
      // The job's models are on disk: what is left of it is GPU work.
      job.downloadWorkload = 0;
      inputFiles = prepared.inputFiles;
      modelFiles = prepared.modelFiles;
      job.timings.preprocess_ms = now() - t;
      stage("preprocess", job.timings.preprocess_ms);

      // 2. Wait for a slot on a ComfyUI backend, then run the prompt there.
      t = now();
      job.setStatus("queued", "Waiting for ComfyUI");
      lease = await pool.acquire({ workload: job.workload, signal, backend: job.input.internal?.backend });
      const { backend } = lease;
      job.backend = backend.index;
      job.timings.queue_ms = now() - t;
      stage("queue", job.timings.queue_ms);
      // Memory that an out-of-memory failure here asked ComfyUI to free is freed before this prompt is sent.
      await backend.freeing;
      t = now();
      job.setStatus("generating", "Submitted to ComfyUI");
      const preview = job.input.preview && previewSender(job, job.input.preview, now);
      const run = await runPrompt({
        client: backend.client,
        events: backend.events,
        clientId: this.deps.clientId,
        promptId: randomUUID(),
        workflow: prepared.workflow,
        signal,
        pollMs: config.comfyui.historyPollMs,
        capabilities: await backend.capabilities(signal),
        // Workloads are in the backend's benchmark runs (seconds x its score): back to the predicted seconds.
        stallMs: stallTimeoutMs(
          backend.perf > 0 ? job.workload / backend.perf : undefined,
          config.jobs.stallTimeoutMs,
        ),
        previewMethod: preview && PREVIEW_METHOD,
        onEvent: (event, details) => {
          if (event.type === "preview") return preview?.(event);
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
      job.timings.generation_ms = now() - t;
      stage("generation", job.timings.generation_ms);

      // 3. Outputs and storage (the ComfyUI slot is already free for the next job). The claim of the id in the
      // bucket ran meanwhile: a job another worker holds goes no further (a conflict aborted it already).
      if ((await publisher?.claimed(job)) === false) throw job.abort.signal.reason;
      t = now();
      job.setStatus("processing", "Collecting outputs");
      job.output = await collectOutputs(run.history, {
        requestId: job.id,
        comfyOutputDir: backend.outputDir,
        comfyInputDir: config.comfyui.inputDir,
        outputDir: config.outputDir,
        client: backend.client,
        signal,
      });
      const uploads = await delivery.upload(job, signal);
      job.timings.postprocess_ms = now() - t;
      stage("postprocess", job.timings.postprocess_ms);
      // The first failed upload's error is the job's: its code, and its status (502 retryable, or a refusal's 424).
      if (uploads.error) job.error = uploads.error;
      outcome =
        uploads.failed > 0
          ? {
              status: "failed",
              message: `Generated ${job.output.length} output(s) but ${uploads.failed} upload(s) failed`,
            }
          : {
              status: "completed",
              message: `Completed with ${job.output.length} output(s)${partialRunNote(job.details)}`,
            };
    } catch (raw) {
      lease?.release(raw);
      const err = await this.classify(raw, job, deadline, lease?.backend);
      job.error = err;
      outcome = { status: err instanceof CancelledError ? "cancelled" : "failed", message: err.message };
      if (err instanceof InternalError) {
        log.error({ stage: "job", err: raw }, `unexpected failure: ${err.message}`);
      }
    } finally {
      // The prompt's entry in ComfyUI's history was read (outputs collected, or the failure taken from it): ComfyUI
      // would keep it, and up to 10,000 others, in memory. A failure to delete is logged and changes nothing here.
      if (lease && job.history && job.details) await pool.forget(lease.backend, job.details.prompt_id);
      for (const f of inputFiles) this.deps.downloader.unpin(f);
      for (const f of modelFiles) this.deps.models?.unpin(f);
      // Timings first: whoever listens for the final status reads them.
      job.finishedAt = now();
      job.timings.completed_at_ms = job.finishedAt;
      job.timings.total_ms = job.finishedAt - job.createdAt;
      job.setStatus(outcome.status, outcome.message);
      events.emit("job.finished", job);
      // Order matters: the bucket's copy is taken before the webhook adds its (this worker's) delivery record, and
      // both before `retain` compacts the job; and in the same tick as the final status, so that whoever awaited
      // `done` finds `published` set.
      publisher?.settled(job);
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
      delivery.notify(job);
      this.deps.retain(job);
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
    const { config, logger, pool } = this.deps;
    if (job.abort.signal.aborted) return asWorkerError(job.abort.signal.reason);
    if (deadline.aborted) {
      return new JobTimeoutError(`the job ran longer than JOB_TIMEOUT_MS=${config.jobs.timeoutMs}`);
    }
    const err = asWorkerError(raw);
    if (err instanceof StalledError && backend) return this.stalled(err, job, backend);
    if (!(err instanceof ExecutionError && err.details && backend)) return err;
    const { execution_details, comfyui_response } = err.details as Record<string, never>;
    if (execution_details) job.details = execution_details;
    if (comfyui_response) job.history = comfyui_response;
    const kind = classifyFailure(job.details?.error ?? null);
    if (kind === "out_of_memory") {
      // Set before this method first awaits: the slot was released, and the next prompt for this backend waits
      // for it (see `run`).
      backend.freeing ??= backend.client
        .free(AbortSignal.timeout(10_000))
        .then(
          () =>
            logger.warn(
              { request_id: job.id, stage: "generation", backend: backend.index },
              "out of memory: ComfyUI unloaded its models and freed memory",
            ),
          (e: unknown) =>
            logger.error(
              { request_id: job.id, stage: "generation", backend: backend.index, err: e },
              "out of memory, and POST /free failed: the next prompt runs without it",
            ),
        )
        .finally(() => {
          backend.freeing = undefined;
        });
      return new OutOfMemoryError(`ComfyUI ran out of memory (${err.message}); memory was freed, retry`);
    }
    if (kind === "device_suspected") {
      const probeFailure = await pool.probe(backend);
      if (probeFailure === undefined) {
        logger.info(
          { request_id: job.id, stage: "health", backend: backend.index },
          "a device error was reported, and the backend passed its health probe: it stays in service",
        );
        return err;
      }
      const failed = new DeviceFailedError(`unrecoverable device error: ${err.message} (${probeFailure})`);
      pool.fail(backend, failed.message);
      return failed;
    }
    return err;
  }
  /**
   * A prompt that stalled was interrupted (runPrompt did): its backend is probed, as a suspected device failure
   * is. One that fails the probe leaves the rotation; the job stays `stalled` (retryable) either way.
   */
  private async stalled(err: StalledError, job: Job, backend: ComfyBackend): Promise<WorkerError> {
    const { logger, pool } = this.deps;
    const log = logger.child({
      request_id: job.id,
      stage: "health",
      backend: backend.index,
      comfyui: backend.url,
    });
    const started = Date.now();
    const probeFailure = await pool.probe(backend);
    const duration_ms = Date.now() - started;
    if (probeFailure === undefined) {
      log.warn(
        { duration_ms, probe: "passed" },
        `${err.message}; the backend passed its health probe: it stays in service`,
      );
      return err;
    }
    log.warn(
      { duration_ms, probe: "failed" },
      `${err.message}; the backend failed its health probe: ${probeFailure}`,
    );
    pool.fail(backend, `a prompt stalled, and then ${probeFailure}`);
    return new StalledError(
      `${err.message}; the backend failed its health probe and left the rotation`,
      err.details,
    );
  }
}
