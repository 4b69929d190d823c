import { delay } from "../../lib/backoff.js";
import { ConflictError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { ParsedInput } from "../schema.js";
import { FINAL_STATUSES, requestHash, type Job, type ResultDocument } from "./job.js";
import { reusedId } from "./registry.js";
import type { JobBinding, SharedDocument, SharedJobs } from "./shared.js";

/*
 * The jobs of an endpoint's several workers, seen through the operator's bucket (`SharedJobs`). A caller's retry,
 * poll or cancel lands on whichever worker the router picks, so each worker publishes its own jobs for the others
 * (`JobPublisher`) and answers for theirs from the bucket (`RemoteJobs`).
 */

/** What ties a job's document in the bucket to it: the request it answers and this run of its id. */
function bindingOf(job: Job): JobBinding {
  return { requestHash: job.requestHash, runId: job.runId };
}

export const isFinal = (doc: SharedDocument): boolean => FINAL_STATUSES.includes(doc.status);

/** What a reader of the bucket is shown: the result document, without the bookkeeping fields. */
export function publicDocument(doc: SharedDocument): ResultDocument {
  const {
    owner: _o,
    heartbeat_at: _h,
    http_status: _s,
    retryable: _r,
    request_hash: _q,
    run_id: _u,
    ...rest
  } = doc;
  return rest;
}

export interface JobPublisherDeps {
  shared: SharedJobs;
  logger: Logger;
  now: () => number;
  /** This worker's job under an id (a later run of the id replaces an earlier one). */
  find: (id: string) => Job | undefined;
  /** Cancels this worker's job: how a cancel request another worker left is carried out. */
  cancel: (id: string, reason: string) => void;
}

/**
 * Publishes this worker's jobs in the bucket so that the other workers can answer for them: the claim of the id
 * when accepted, a heartbeat while it runs, the final document when it ends; and carries out the cancel requests
 * they leave for it.
 */
export class JobPublisher {
  private syncTimer: NodeJS.Timeout | undefined;
  /** Claims in progress (started at submission, awaited before ComfyUI's outputs are collected). */
  private readonly claims = new Map<string, Promise<boolean>>();
  /** When each claimed running job's document was last written (its heartbeat). */
  private readonly lastWritten = new Map<string, number>();
  private readonly publishing = new Set<Promise<void>>();
  private syncing = false;

  constructor(private readonly deps: JobPublisherDeps) {}

  start(): void {
    // Cancel requests from other workers are seen within a second; running jobs' documents refreshed.
    this.syncTimer = setInterval(() => void this.sync(), 1_000);
    this.syncTimer.unref();
  }

  /**
   * Claims the job's id in the bucket, in the background: the claim runs while the job preprocesses and generates,
   * so it costs the answer nothing. Resolves false when another worker's live job holds the id: this one is then
   * aborted with 409 (the caller polls `/result/{id}`), and its document is never written over the other's. A
   * bucket that cannot be reached leaves the job local (logged), not failed. `job.recorded` settles with it.
   */
  claim(job: Job): void {
    if (job.input.internal) return;
    const claimed = this.deps.shared.claim(job.result(), bindingOf(job)).then(
      (r) => {
        if (r.claimed) {
          // A job that ended before its claim came back has no heartbeat left to send.
          if (!job.final) this.lastWritten.set(job.id, this.deps.now());
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
    job.recorded = claimed.then(() => undefined);
  }

  /** Whether the job holds its id (false: another worker's job does); undefined when it was never claimed. */
  claimed(job: Job): Promise<boolean> | undefined {
    return this.claims.get(job.id);
  }

  /**
   * Writes the final document once the claim settled (never over another worker's job); heartbeats stop.
   * `job.published` settles with the write's first try.
   */
  settled(job: Job): void {
    this.lastWritten.delete(job.id);
    const claimed = this.claims.get(job.id);
    this.claims.delete(job.id);
    if (!claimed) return;
    const doc = job.result();
    const status = job.httpStatus();
    const retryable = job.error?.retryable ?? false;
    const published = claimed.then((ours) =>
      ours ? this.deps.shared.write(doc, bindingOf(job), status, retryable) : undefined,
    );
    job.published = published;
    this.publishing.add(published);
    void published.then(() => this.publishing.delete(published));
  }

  /**
   * Writes the final document again once its webhook delivery settled, so that the outcome (a failure with its
   * cause) outlives this worker and every worker shows it. Only over this run's own document: a retryable failure
   * may have been run again elsewhere since, so it is left as it was.
   */
  webhookSettled(job: Job): void {
    if (job.input.internal || (job.status === "failed" && job.error?.retryable)) return;
    const published = this.deps.shared
      .read(job.id, AbortSignal.timeout(10_000))
      .then((doc) => {
        if (doc?.run_id === job.runId)
          void this.deps.shared.write(job.result(), bindingOf(job), job.httpStatus(), false);
      })
      .catch((err: unknown) =>
        this.deps.logger.warn(
          { request_id: job.id, stage: "shared", err },
          "could not add the webhook's outcome to the shared job document",
        ),
      );
    this.publishing.add(published);
    void published.then(() => this.publishing.delete(published));
  }

  /** Stops the heartbeats and waits for the documents still being written (shutdown). */
  async flush(): Promise<void> {
    clearInterval(this.syncTimer);
    await Promise.all(this.publishing);
    await this.deps.shared.flush();
  }

  /**
   * Looks for other workers' cancel requests and refreshes the documents of running jobs (their heartbeat). A
   * sync still reading a slow bucket makes the next tick skip, so reads never pile up.
   */
  private async sync(): Promise<void> {
    if (this.syncing) return;
    this.syncing = true;
    try {
      await this.syncOnce();
    } finally {
      this.syncing = false;
    }
  }

  private async syncOnce(): Promise<void> {
    const { shared, logger, now } = this.deps;
    await Promise.all(
      [...this.lastWritten.entries()].map(async ([id, writtenAt]) => {
        const job = this.deps.find(id);
        if (!job || job.final) {
          this.lastWritten.delete(id);
          return;
        }
        try {
          if (await shared.cancelRequested(id, job.runId, AbortSignal.timeout(5_000))) {
            this.deps.cancel(id, "Cancelled by the caller (through another worker)");
            return;
          }
        } catch (err) {
          logger.warn({ request_id: id, stage: "shared", err }, "could not check for a cancel request");
        }
        if (now() - writtenAt >= shared.heartbeatMs) {
          this.lastWritten.set(id, now());
          void shared.write(job.result(), bindingOf(job), 202, false);
        }
      }),
    );
  }
}

export interface RemoteJobsDeps {
  shared: SharedJobs;
  /** This worker's job under an id: such a request is answered here, never from the bucket. */
  local: (id: string) => Job | undefined;
  /** How long a caller waiting on another worker's job is kept waiting at most (the job deadline). */
  waitMs?: number;
  logger?: Logger;
}

/**
 * Whether this worker's job may have been overtaken by another worker's run of its id: a retryable failure (the
 * caller's retry may land elsewhere) or a run refused because another worker's run held the id.
 */
function superseded(job: Job): boolean {
  return (
    job.final && job.status === "failed" && (job.error?.retryable === true || job.error?.code === "conflict")
  );
}

/** Other workers' jobs, read from the bucket for the callers who land on this worker. */
export class RemoteJobs {
  constructor(private readonly deps: RemoteJobsDeps) {}

  /**
   * The job another worker holds under a request's caller-chosen request_id (running, or finished and not
   * retryable), so that it is not run twice; undefined when this worker should run it. Only the request that made
   * the job gets it: another request under its id is refused (409).
   */
  async holding(input: ParsedInput, payload: unknown): Promise<SharedDocument | undefined> {
    const given = (payload as { input?: { request_id?: unknown } } | undefined)?.input?.request_id;
    if (typeof given !== "string" || given.trim() === "") return undefined;
    // This worker's own job answers, unless it is superseded: a retry of its failure may have run elsewhere.
    const mine = this.deps.local(input.requestId);
    if (mine && !superseded(mine)) return undefined;
    // A bucket that cannot be read does not refuse work: the job runs here (its claim logs the problem).
    const doc = await this.deps.shared
      .read(input.requestId, AbortSignal.timeout(10_000))
      .catch(() => undefined);
    if (!doc || (doc.status === "failed" && doc.retryable)) return undefined;
    if (doc.request_hash !== requestHash(input)) throw reusedId(input.requestId);
    return doc;
  }

  /**
   * The bucket's document of a later run of this worker's job's id: only a retryable failure is run again (by a
   * retry that may land on another worker), and a run refused because another worker's run held the id defers to
   * it, so only then is the bucket read. Undefined when there is none, or
   * the bucket cannot be read (this worker's own document is the answer then).
   */
  async laterRun(job: Job): Promise<SharedDocument | undefined> {
    if (!superseded(job)) return undefined;
    const doc = await this.read(job.id).catch(() => undefined);
    return doc && doc.run_id !== job.runId ? doc : undefined;
  }

  /** Another worker's job, as the bucket shows it; undefined when there is none. */
  read(id: string): Promise<SharedDocument | undefined> {
    return this.deps.shared.read(id, AbortSignal.timeout(10_000));
  }

  /** Polls the bucket until another worker's job is final, the caller left (`gone`), or the wait ran out. */
  async follow(doc: SharedDocument, gone: () => boolean): Promise<SharedDocument> {
    const until = Date.now() + (this.deps.waitMs ?? 3_600_000);
    if (!isFinal(doc)) {
      this.deps.logger?.info(
        { stage: "shared", request_id: doc.id, remote_status: doc.status },
        "this request_id is another worker's running job: waiting for its result",
      );
    }
    let current = doc;
    let unreadable = false;
    while (!isFinal(current) && !gone() && Date.now() < until) {
      await delay(500);
      // A bucket that cannot be read (an outage) tells nothing of the job yet: keep waiting, as for a running
      // job; answering 503 would turn the other run's end (a 400 for a bad request, say) into a retry.
      const read = await this.read(doc.id).then(
        (d) => ({ doc: d }),
        (err: unknown) => ({ err }),
      );
      if ("err" in read) {
        if (!unreadable)
          this.deps.logger?.warn(
            { stage: "shared", request_id: doc.id, err: read.err },
            "cannot read another worker's job from the bucket: waiting until it answers again",
          );
        unreadable = true;
        continue;
      }
      unreadable = false;
      current = read.doc ?? current;
    }
    return current;
  }

  /** Leaves the owner a cancel request (it looks every second) unless the job is already final. */
  async cancel(doc: SharedDocument): Promise<void> {
    if (!isFinal(doc)) await this.deps.shared.requestCancel(doc, AbortSignal.timeout(10_000));
  }
}
