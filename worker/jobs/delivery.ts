import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { FrozenConfig } from "../../config/index.js";
import { resolveS3, s3FromRequest, type ObjectStorage } from "../../handlers/storage/s3.js";
import { validateCallbackUrl, type WebhookSender } from "../../handlers/webhook.js";
import { BadRequestError, asWorkerError, type WorkerError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { ParsedInput } from "../schema.js";
import { UPLOADED_MARKER } from "../janitor.js";
import type { WorkerEventEmitter } from "../events.js";
import type { Job } from "./job.js";

export interface ResultDeliveryDeps {
  config: FrozenConfig;
  storage: ObjectStorage;
  webhooks: WebhookSender;
  logger: Logger;
  /** Hears each file's upload. */
  events: WorkerEventEmitter;
  /** Told once a job's webhook delivery settled (delivered, or failed with its cause on `job.webhook`). */
  onWebhookSettled?: (job: Job) => void;
}

/**
 * Where a job's results go: its files to object storage, its final document to a webhook. The caller chooses both
 * targets, so they are checked when the job is submitted (refused with 400 before anything runs), not when it ends.
 */
export class ResultDelivery {
  constructor(private readonly deps: ResultDeliveryDeps) {}

  /** Refuses a request whose webhook or storage target is malformed or not allowed (a private address). */
  checkTargets(input: ParsedInput): void {
    const { config } = this.deps;
    const webhookUrl = input.webhook?.url?.trim() || config.webhook.url;
    if (webhookUrl !== undefined && !/^https?:\/\//i.test(webhookUrl)) {
      throw new BadRequestError("webhook.url must be an http(s) URL");
    }
    const callerWebhook = input.webhook?.url?.trim();
    if (callerWebhook) validateCallbackUrl(callerWebhook, config.webhook.allowPrivate);
    if (!input.internal?.skipStorage) {
      resolveS3(config.s3, s3FromRequest(input.s3), { allowPrivate: config.webhook.allowPrivate });
    }
  }

  /**
   * Uploads every file output in parallel; returns how many failed (each carries its upload_error) and the first
   * failure's error, the job's error then.
   */
  async upload(job: Job, signal: AbortSignal): Promise<{ failed: number; error?: WorkerError }> {
    const none = { failed: 0 };
    if (job.input.internal?.skipStorage) return none;
    const target = resolveS3(this.deps.config.s3, s3FromRequest(job.input.s3));
    if (!target) return none;
    if (job.output.length === 0) return none;
    let error: WorkerError | undefined;
    const uploaded = (ok: boolean, bytes: number) => this.deps.events.emit("job.upload", { job, ok, bytes });
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
          uploaded(true, stored.bytes);
          return true;
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          const failure = asWorkerError(err);
          error ??= failure;
          entry.upload_error = failure.message;
          uploaded(false, 0);
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
    return error ? { failed, error } : { failed };
  }

  /**
   * Sends the final document to the request's webhook, else WEBHOOK_URL, in the background, once the bucket was
   * given it (Job.published): a worker killed after sending leaves /result saying what the receiver was told
   * (unless the bucket could not be reached either).
   */
  notify(job: Job): void {
    const { config } = this.deps;
    const callerUrl = job.input.webhook?.url?.trim();
    const operatorUrl = config.webhook.url;
    if ((!callerUrl && !operatorUrl) || job.input.internal) return;
    const callerSecret = job.input.webhook?.secret?.trim() || undefined;
    const doc = job.result();
    job.webhook = { status: "pending", attempts: 0 };
    const message: Parameters<WebhookSender["send"]>[0] = {
      // The operator's keys go only with the operator's URL (the destination type allows nothing else).
      to: callerUrl
        ? { kind: "caller", url: callerUrl, secret: callerSecret }
        : {
            kind: "operator",
            url: operatorUrl!,
            signing: {
              secret: callerSecret ?? config.webhook.secret,
              signingKey: config.webhook.signingKey,
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
    };
    void job.published
      .then(() => this.deps.webhooks.send(message))
      .then((record) => {
        job.webhook = record;
        this.deps.onWebhookSettled?.(job);
      });
  }
}
