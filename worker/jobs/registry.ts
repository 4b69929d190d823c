import { RequestIdReusedError } from "../../lib/errors.js";
import type { ParsedInput } from "../schema.js";
import { requestHash, type Job } from "./job.js";

/** The retention caps on finished jobs (RESULT_RETENTION_MS, RESULT_RETENTION_MAX, RESULT_RETENTION_MAX_BYTES). */
export interface RetentionLimits {
  resultRetentionMs: number;
  resultRetentionMax: number;
  resultRetentionMaxBytes: number;
}

/**
 * The jobs this worker knows: running ones, and finished ones kept for pollers of /result. A request_id seen again
 * while its job runs or is retained returns that job (idempotency); a retryable failure is retained too, but a retry
 * under its id runs again. A finished job keeps only its result document, and finished jobs are capped by age, count
 * and bytes (oldest evicted first), so a busy worker's memory stays bounded.
 */
export class JobRegistry {
  private readonly jobs = new Map<string, Job>();
  /** Finished jobs in the order they finished, with the size of their result document. */
  private readonly retained = new Map<string, number>();
  private retainedBytes = 0;

  constructor(
    private readonly limits: RetentionLimits,
    private readonly now: () => number,
  ) {}

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

  /**
   * The job that already answers this request, if any. A retryable failure answers nothing (the retry runs again);
   * another request under a held id is refused with 409, since a request_id answers only the request that made it.
   */
  answering(input: ParsedInput): Job | undefined {
    const existing = this.jobs.get(input.requestId);
    if (!existing || (existing.final && existing.error?.retryable)) return undefined;
    if (existing.requestHash !== requestHash(input)) throw reusedId(input.requestId);
    return existing;
  }

  /** Registers a new job; a retained retryable failure under its id makes room for it. */
  add(job: Job): void {
    this.forget(job.id);
    this.jobs.set(job.id, job);
  }

  /** Keeps a finished job's result document (its input is dropped), evicting the oldest past the caps. */
  retain(job: Job): void {
    const bytes = job.compact();
    this.retained.set(job.id, bytes);
    this.retainedBytes += bytes;
    const { resultRetentionMax, resultRetentionMaxBytes } = this.limits;
    for (const id of this.retained.keys()) {
      if (this.retained.size <= resultRetentionMax && this.retainedBytes <= resultRetentionMaxBytes) break;
      this.forget(id);
    }
  }

  /** Forgets finished jobs older than the retention window (oldest first, so the scan stops at the first kept). */
  sweep(): void {
    const cutoff = this.now() - this.limits.resultRetentionMs;
    for (const id of this.retained.keys()) {
      if ((this.jobs.get(id)?.finishedAt ?? 0) >= cutoff) break;
      this.forget(id);
    }
  }

  /** Drops a finished job; a running one is never forgotten (it is not in `retained`). */
  private forget(id: string): void {
    const bytes = this.retained.get(id);
    if (bytes === undefined) return;
    this.retained.delete(id);
    this.retainedBytes -= bytes;
    this.jobs.delete(id);
  }
}

/** A request under an id that another request's job holds (here or on another worker of the endpoint). */
export function reusedId(id: string): RequestIdReusedError {
  return new RequestIdReusedError(
    `request_id ${id} belongs to another request (a different workflow, storage or webhook): a request_id answers ` +
      "only the request that made it; send this one under a new id",
  );
}
