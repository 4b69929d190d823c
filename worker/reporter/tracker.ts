import type { Response } from "express";
import type { AuthData } from "../auth/signature.js";
import { numeric } from "../../lib/numbers.js";

declare const verifiedBrand: unique symbol;

/**
 * auth_data of a caller the routed port authenticated: the router's signature for this worker verified (or the
 * worker runs UNSECURED). Only such callers are counted and reported: an anonymous caller must move neither
 * rej_load nor the `request_idx` entries of /delete_requests/ (upstream counts 401s in both; see
 * test/conformance/deliberate.ts, `unsigned-not-reported`).
 */
export type VerifiedAuth = AuthData & { readonly [verifiedBrand]: true };

/** Marks auth_data as authenticated; called only where the check that makes it so has passed. */
export function asVerified(auth: AuthData): VerifiedAuth {
  return auth as VerifiedAuth;
}

export type FinishedStatus = "Success" | "Error" | "Cancelled" | "Rejected";

export interface FinishedRequest {
  request_idx: number;
  success: boolean;
  status: FinishedStatus;
  entered_queue_at: number;
  work_started_at: number;
  work_completed_at: number;
}

interface Working {
  requestIdx: number;
  workload: number;
  enteredAt: number;
}

/**
 * Interval counters, reset only after a report was delivered. As upstream, new_load is what was received minus
 * what was cancelled in the same interval, floored at 0 (a request received in one interval and cancelled in the
 * next takes its workload off the next interval's arrivals).
 */
export interface IntervalCounters {
  received: number;
  cancelled: number;
  rej_load: number;
  cur_perf: number;
}

export function newLoad(c: IntervalCounters): number {
  return Math.max(0, c.received - c.cancelled);
}

/**
 * Finished requests kept for /delete_requests/ at most: while the autoscaler cannot be reached they would grow
 * with traffic. The oldest go first (the autoscaler forgets requests on its own after a while).
 */
export const MAX_FINISHED = 10_000;

/**
 * What the autoscaler is told about routed requests: those in flight, interval counters, and finished requests
 * for /delete_requests/. In-flight requests are keyed by a counter of our own (upstream keys them by reqnum, so
 * duplicates overwrite each other). As upstream: an open session is one request in flight (its workload is the
 * router's cost) until it ends or expires, then a success; a request inside a session counts in the load counters
 * only (it is neither in flight nor deleted on its own); a rejected request counts as received. Every entry point
 * takes a VerifiedAuth: what anonymous callers send never reaches the reports.
 */
export class RequestTracker {
  private readonly working = new Map<number, Working>();
  private nextKey = 0;
  private received = 0;
  counters: IntervalCounters = { received: 0, cancelled: 0, rej_load: 0, cur_perf: 0 };
  finished: FinishedRequest[] = [];
  /** Set when something changed since the last delivered report. */
  pending = false;

  /** Finished requests dropped because MAX_FINISHED was reached. */
  droppedFinished = 0;

  constructor(
    private readonly now: () => number = () => Date.now() / 1000,
    private readonly maxFinished = MAX_FINISHED,
  ) {}

  private addFinished(entry: FinishedRequest): void {
    this.finished.push(entry);
    const excess = this.finished.length - this.maxFinished;
    if (excess > 0) {
      this.finished.splice(0, excess);
      this.droppedFinished += excess;
    }
  }

  track(auth: VerifiedAuth, workload: number, res: Response, inSession = false): void {
    if (inSession) return this.trackInSession(workload, res);
    const key = this.nextKey++;
    const entry: Working = { requestIdx: numeric(auth.request_idx) || 0, workload, enteredAt: this.now() };
    this.working.set(key, entry);
    this.received++;
    this.counters.received += workload;
    this.pending = true;
    res.once("close", () => {
      this.working.delete(key);
      const disconnected = !res.writableFinished;
      const status: FinishedStatus = disconnected ? "Cancelled" : res.statusCode >= 500 ? "Error" : "Success";
      if (status === "Success") this.counters.cur_perf += workload;
      if (status === "Cancelled") this.counters.cancelled += workload;
      this.addFinished({
        request_idx: entry.requestIdx,
        success: status !== "Error",
        status,
        entered_queue_at: entry.enteredAt,
        work_started_at: entry.enteredAt,
        work_completed_at: status === "Cancelled" ? 0 : this.now(),
      });
      this.pending = true;
    });
  }

  private trackInSession(workload: number, res: Response): void {
    this.counters.received += workload;
    this.pending = true;
    res.once("close", () => {
      if (!res.writableFinished) this.counters.cancelled += workload;
      else if (res.statusCode < 500) this.counters.cur_perf += workload;
      this.pending = true;
    });
  }

  /** A session opened: in flight until `closeSession` with the returned key. */
  openSession(auth: VerifiedAuth, workload: number): number {
    const key = this.nextKey++;
    this.working.set(key, { requestIdx: numeric(auth.request_idx) || 0, workload, enteredAt: this.now() });
    this.received++;
    this.counters.received += workload;
    this.pending = true;
    return key;
  }

  /** A session ended or expired: upstream reports it as a successful request. */
  closeSession(key: number): void {
    const entry = this.working.get(key);
    if (!entry) return;
    this.working.delete(key);
    this.counters.cur_perf += entry.workload;
    this.addFinished({
      request_idx: entry.requestIdx,
      success: true,
      status: "Success",
      entered_queue_at: entry.enteredAt,
      work_started_at: entry.enteredAt,
      work_completed_at: this.now(),
    });
    this.pending = true;
  }

  /** Workload of the open sessions (part of cur_load upstream). */
  sessionWorkload(keys: Iterable<number>): number {
    let total = 0;
    for (const k of keys) total += this.working.get(k)?.workload ?? 0;
    return total;
  }

  /**
   * An authenticated request refused for overload (429); one inside a session only counts in rej_load (upstream
   * neither receives nor deletes it).
   */
  rejected(auth: VerifiedAuth, workload: number, inSession = false): void {
    this.counters.rej_load += workload;
    this.pending = true;
    if (inSession) return;
    this.received++;
    this.addFinished({
      request_idx: numeric(auth.request_idx) || 0,
      success: false,
      status: "Rejected",
      entered_queue_at: this.now(),
      work_started_at: 0,
      work_completed_at: 0,
    });
    this.pending = true;
  }

  workingRequestIdxs(): number[] {
    return [...this.working.values()].map((w) => w.requestIdx);
  }

  get numWorking(): number {
    return this.working.size;
  }

  get numReceived(): number {
    return this.received;
  }

  /** Called once a worker_status report carrying `sent` was delivered. */
  commit(sent: IntervalCounters): void {
    this.counters = {
      received: Math.max(0, this.counters.received - sent.received),
      cancelled: Math.max(0, this.counters.cancelled - sent.cancelled),
      rej_load: Math.max(0, this.counters.rej_load - sent.rej_load),
      cur_perf: Math.max(0, this.counters.cur_perf - sent.cur_perf),
    };
    this.pending = false;
  }

  takeFinished(): FinishedRequest[] {
    return this.finished.slice();
  }

  /** Removes entries once /delete_requests/ delivered them. */
  dropFinished(sent: FinishedRequest[]): void {
    const set = new Set(sent);
    this.finished = this.finished.filter((f) => !set.has(f));
  }
}
