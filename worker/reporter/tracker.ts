import type { Response } from "express";
import type { AuthData } from "../auth/signature.js";
import { numeric } from "../../lib/numbers.js";

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

/** Interval counters, reset only after a report was delivered. */
export interface IntervalCounters {
  new_load: number;
  rej_load: number;
  cur_perf: number;
}

/**
 * Finished requests kept for /delete_requests/ at most: while the autoscaler cannot be reached they would grow
 * with traffic. The oldest go first (the autoscaler forgets requests on its own after a while).
 */
export const MAX_FINISHED = 10_000;

/**
 * What the autoscaler is told about routed requests: those in flight, interval counters, and finished requests
 * for /delete_requests/. In-flight requests are keyed by a counter of our own (upstream keys them by reqnum, so
 * duplicates overwrite each other).
 */
export class RequestTracker {
  private readonly working = new Map<number, Working>();
  private nextKey = 0;
  private received = 0;
  counters: IntervalCounters = { new_load: 0, rej_load: 0, cur_perf: 0 };
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

  track(auth: AuthData, workload: number, res: Response): void {
    const key = this.nextKey++;
    const entry: Working = { requestIdx: numeric(auth.request_idx) || 0, workload, enteredAt: this.now() };
    this.working.set(key, entry);
    this.received++;
    this.counters.new_load += workload;
    this.pending = true;
    res.once("close", () => {
      this.working.delete(key);
      const disconnected = !res.writableFinished;
      const status: FinishedStatus = disconnected ? "Cancelled" : res.statusCode >= 500 ? "Error" : "Success";
      if (status === "Success") this.counters.cur_perf += workload;
      if (status === "Cancelled") this.counters.new_load = Math.max(0, this.counters.new_load - workload);
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

  rejected(auth: AuthData, workload: number): void {
    this.counters.rej_load += workload;
    this.addFinished({
      request_idx: numeric(auth.request_idx) || 0,
      success: false,
      status: "Rejected",
      entered_queue_at: 0,
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
      new_load: Math.max(0, this.counters.new_load - sent.new_load),
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
