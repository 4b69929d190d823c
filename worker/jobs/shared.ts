import type { ObjectStorage, ResolvedS3 } from "../../handlers/storage/s3.js";
import { backoffDelay, delay } from "../../lib/backoff.js";
import { OwnerLostError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { ResultDocument } from "./job.js";

/** A job's result document as it lives in the operator's bucket, with who runs it and when it was last heard of. */
export interface SharedDocument extends ResultDocument {
  /** The worker that runs the job (its advertised URL and a per-process id). */
  owner: string;
  /** When the owner last wrote the document (ms since the epoch); a running job is rewritten every heartbeat. */
  heartbeat_at: number;
  /** The HTTP status the owner answered (or would answer) with. */
  http_status: number;
  /** A final failure that another attempt may fix: a retry with the same request_id runs again. */
  retryable: boolean;
  /** The hash of the request that made the job (`requestHash`): only that request is answered with it. */
  request_hash: string;
  /** This run of the id (a fresh random id per claim): a cancel request names the run it is meant for. */
  run_id: string;
}

/** What ties a document to one job: the request it answers and the run of the id. */
export interface JobBinding {
  requestHash: string;
  runId: string;
}

export interface SharedJobsOptions {
  storage: ObjectStorage;
  /** The operator's bucket, never a caller's override. */
  target: ResolvedS3;
  /** Key prefix ("" puts documents beside the outputs: `<request_id>/job.json`). */
  prefix: string;
  owner: string;
  /** How often a running job's document is rewritten; a document silent for 3 heartbeats is the owner's loss. */
  heartbeatMs: number;
  logger: Logger;
  now?: () => number;
  /**
   * How a final document that could not be written is tried again (the bucket unreachable for a while): backoff
   * from `baseMs` doubling to `capMs`, at most `attempts` tries in all (about two minutes by default).
   */
  finalWriteRetry?: { baseMs: number; capMs: number; attempts: number };
}

const FINAL_WRITE_RETRY = { baseMs: 1_000, capMs: 30_000, attempts: 12 };

/**
 * The document of another run of the id that a write of `mine` must not replace, or undefined when it may land:
 * none there, this run's own, or an earlier run's retryable failure (what a retry replaces). Another run that is
 * live, or ended otherwise, or failed after this document was stamped, is later than this one.
 */
function overtaken(current: SharedDocument | undefined, mine: SharedDocument): SharedDocument | undefined {
  if (current === undefined || current.run_id === mine.run_id) return undefined;
  const earlierRetryable =
    current.status === "failed" && current.retryable && Number(current.heartbeat_at) < mine.heartbeat_at;
  return earlierRetryable ? undefined : current;
}

/** A run of an id, as `doubtful` keys it. */
const runKey = (id: string, runId: string): string => `${id}\n${runId}`;

/** What a claim found: the id is ours now, or another worker's live (or finished) job holds it. */
export type ClaimResult = { claimed: true } | { claimed: false; existing: SharedDocument };

/**
 * Job documents in the operator's bucket, so that any worker of an endpoint can answer for a job another worker
 * runs: `/result/{id}`, `/cancel/{id}` and a retried request land wherever the router sends them.
 *   `<prefix><id>/job.json`  the result document (written when accepted, at most every heartbeat while it runs,
 *                            and when it ends)
 *   `<prefix><id>/cancel.<run_id>`  a cancel request left by another worker for one run of the id; the owner
 *                            looks for it while that run goes on, and a later run of the id never sees it
 * Ids are claimed with a conditional create (`If-None-Match: *`), so two workers never both run one request_id.
 * Failure contract: reads and claims reject with StorageUnavailableError; background writes are logged, never thrown
 * (a job does not fail because its shared copy could not be written).
 */
export class SharedJobs {
  private readonly now: () => number;
  /** Writes in flight per id, chained so that a later document never lands before an earlier one. */
  private readonly writes = new Map<string, Promise<void>>();
  /**
   * Runs (`runKey`) whose document this worker could not write (or claim) when it meant to: while the bucket was
   * unreachable, another worker may have run the id (a caller's retry, or a reader that saw this run's heartbeats
   * stop), so the run's next write looks first (`overtaken`). Per run: a later run of the id here is doubtful on
   * its own account.
   */
  private readonly doubtful = new Set<string>();
  /**
   * Per id, the latest write's run and the backoff it may wait in (a final document tried again): a later write of
   * the id ends the wait.
   */
  private readonly backoffs = new Map<string, { run: string; wait: AbortController }>();
  /** Aborted by `flush`: the final documents waiting to be tried again stop waiting (one last try each). */
  private stopping = new AbortController();
  /** S3 requests made, by kind (for the benchmark and /metrics). */
  readonly requests = { put: 0, get: 0, head: 0 };

  constructor(private readonly opts: SharedJobsOptions) {
    this.now = opts.now ?? Date.now;
  }

  get owner(): string {
    return this.opts.owner;
  }

  get heartbeatMs(): number {
    return this.opts.heartbeatMs;
  }

  private docKey(id: string): string {
    return `${this.opts.prefix}${id}/job.json`;
  }

  private cancelKey(id: string, runId: string): string {
    return `${this.opts.prefix}${id}/cancel.${runId}`;
  }

  private stamp(
    doc: ResultDocument,
    binding: JobBinding,
    httpStatus: number,
    retryable: boolean,
  ): SharedDocument {
    return {
      ...doc,
      owner: this.opts.owner,
      heartbeat_at: this.now(),
      http_status: httpStatus,
      retryable,
      request_hash: binding.requestHash,
      run_id: binding.runId,
    };
  }

  /**
   * Claims `doc.id` for this worker by creating its document. An existing document that a retry may replace (a
   * retryable failure, or a job whose owner went silent) is overwritten; any other means the job is another's.
   */
  async claim(doc: ResultDocument, binding: JobBinding, signal?: AbortSignal): Promise<ClaimResult> {
    try {
      return await this.claimOnce(doc, binding, signal);
    } catch (err) {
      // The run goes on unclaimed: what it writes later must not land over a run another worker made meanwhile.
      this.doubtful.add(runKey(doc.id, binding.runId));
      throw err;
    }
  }

  private async claimOnce(
    doc: ResultDocument,
    binding: JobBinding,
    signal?: AbortSignal,
  ): Promise<ClaimResult> {
    const body = JSON.stringify(this.stamp(doc, binding, 202, false));
    this.requests.put++;
    if (
      await this.opts.storage.putDocument(this.opts.target, this.docKey(doc.id), body, {
        ifAbsent: true,
        signal,
      })
    ) {
      return { claimed: true };
    }
    const existing = await this.read(doc.id, signal);
    if (existing && !(existing.status === "failed" && existing.retryable))
      return { claimed: false, existing };
    this.requests.put++;
    await this.opts.storage.putDocument(this.opts.target, this.docKey(doc.id), body, { signal });
    return { claimed: true };
  }

  /**
   * Writes the document in the background, in order per id; a failure is logged. A final document is tried again
   * with backoff while the bucket cannot be reached (else a job that ended during an outage would be known only to
   * this worker's memory, and lost with it), until a later write of the id supersedes it (its wait ends at once,
   * so the later document is not held behind it) or `flush` (shutdown: one last try). Resolves (never rejects) once
   * its first try settled, written or not: the retries go on behind it.
   */
  write(doc: ResultDocument, binding: JobBinding, httpStatus: number, retryable: boolean): Promise<void> {
    const stamped = this.stamp(doc, binding, httpStatus, retryable);
    const body = JSON.stringify(stamped);
    const key = this.docKey(doc.id);
    const final = doc.status === "completed" || doc.status === "failed" || doc.status === "cancelled";
    const retry = this.opts.finalWriteRetry ?? FINAL_WRITE_RETRY;
    // A flush after this write was made ends its retries (one made later has retries of its own).
    const stopping = this.stopping.signal;
    const run = runKey(doc.id, binding.runId);
    this.backoffs.get(doc.id)?.wait.abort();
    const backoff = { run, wait: new AbortController() };
    this.backoffs.set(doc.id, backoff);
    const previous = this.writes.get(doc.id) ?? Promise.resolve();
    let firstTried!: () => void;
    const firstTry = new Promise<void>((resolve) => (firstTried = resolve));
    const next: Promise<void> = previous.then(async () => {
      let last = false;
      for (let attempt = 1; ; attempt++) {
        // Superseded while it waited: the later write of the id carries the newer document (another run's: nothing
        // of this one is written any more).
        if (attempt > 1 && this.writes.get(doc.id) !== next) {
          if (final && this.backoffs.get(doc.id)?.run !== run) this.doubtful.delete(run);
          return;
        }
        try {
          if (attempt > 1 || this.doubtful.has(run)) {
            const later = overtaken(await this.read(doc.id), stamped);
            if (later !== undefined) {
              if (final) this.doubtful.delete(run);
              this.opts.logger.info(
                { request_id: doc.id, stage: "shared", attempt, later_run_status: later.status },
                "a later run of this request_id holds its shared document: this run's is not written over it",
              );
              return;
            }
          }
          this.requests.put++;
          await this.opts.storage.putDocument(this.opts.target, key, body);
          this.doubtful.delete(run);
          if (attempt > 1)
            this.opts.logger.info(
              { request_id: doc.id, stage: "shared", attempt },
              "wrote the shared job document once the bucket answered again",
            );
          return;
        } catch (err) {
          this.doubtful.add(run);
          const again = final && !last && attempt < retry.attempts && this.writes.get(doc.id) === next;
          this.opts.logger.warn(
            { request_id: doc.id, stage: "shared", err, attempt },
            `could not write the shared job document${again ? "; trying again" : ""}`,
          );
          // Whoever waits on the first try goes on; the retries are this worker's to finish.
          firstTried();
          if (!again) {
            // Given up: nothing of this run is written after a final document.
            if (final) this.doubtful.delete(run);
            return;
          }
          // Shutdown (flush) does not wait out the backoff: one last try, now.
          if (stopping.aborted) last = true;
          else
            await delay(
              backoffDelay(attempt - 1, retry.baseMs, retry.capMs),
              AbortSignal.any([stopping, backoff.wait.signal]),
            ).catch(() => (last = !backoff.wait.signal.aborted));
        }
      }
    });
    this.writes.set(doc.id, next);
    void next.then(() => {
      firstTried();
      if (this.writes.get(doc.id) === next) this.writes.delete(doc.id);
      if (this.backoffs.get(doc.id) === backoff) this.backoffs.delete(doc.id);
    });
    return firstTry;
  }

  /**
   * Waits for the background writes (shutdown, tests): a final document waiting to be tried again is tried once
   * more at once, then given up.
   */
  async flush(): Promise<void> {
    const stopping = this.stopping;
    this.stopping = new AbortController();
    stopping.abort();
    await Promise.all([...this.writes.values()]);
  }

  /**
   * The document of a job, as a reader should see it: a job that is not final and whose owner has not written for
   * 3 heartbeats is shown as failed (retryable: the owner stopped, a retry may run it), so nobody waits forever.
   */
  async read(id: string, signal?: AbortSignal): Promise<SharedDocument | undefined> {
    this.requests.get++;
    const text = await this.opts.storage.getDocument(this.opts.target, this.docKey(id), signal);
    if (text === undefined) return undefined;
    let doc: SharedDocument;
    try {
      doc = JSON.parse(text) as SharedDocument;
    } catch {
      return undefined; // not ours (an output that happened to be called job.json)
    }
    if (typeof doc !== "object" || doc === null || doc.id !== id) return undefined;
    const final = doc.status === "completed" || doc.status === "failed" || doc.status === "cancelled";
    const silentMs = this.now() - Number(doc.heartbeat_at);
    if (!final && !(silentMs <= 3 * this.opts.heartbeatMs)) {
      return {
        ...doc,
        status: "failed",
        message: `the worker running this job stopped answering (no heartbeat for ${Math.round(silentMs / 1000)} s)`,
        error: new OwnerLostError("the worker running this job stopped answering").toJSON(),
        http_status: 503,
        retryable: true,
      };
    }
    return doc;
  }

  /**
   * Leaves a cancel request for the run the document shows. A document without a run id (written before runs were
   * named) cannot be cancelled from here: resolves false, writing nothing.
   */
  async requestCancel(doc: SharedDocument, signal?: AbortSignal): Promise<boolean> {
    if (typeof doc.run_id !== "string" || doc.run_id === "") return false;
    this.requests.put++;
    await this.opts.storage.putDocument(this.opts.target, this.cancelKey(doc.id, doc.run_id), "{}", {
      signal,
    });
    return true;
  }

  /** Whether another worker asked to cancel this run of the job. */
  async cancelRequested(id: string, runId: string, signal?: AbortSignal): Promise<boolean> {
    this.requests.head++;
    return this.opts.storage.exists(this.opts.target, this.cancelKey(id, runId), signal);
  }
}
