import { statfs } from "node:fs/promises";
import { got, type Got } from "got";
import type { Logger } from "../../lib/logger.js";
import { retry } from "../../lib/retry.js";
import { newLoad, type IntervalCounters, type RequestTracker } from "./tracker.js";

/**
 * Vast's REPORT_ADDR may list this Redis-backed API next to the router; upstream (vastai 1.9.1) never sends
 * /delete_requests/ to it (worker_status still goes to each address in turn), and neither do we.
 */
export const NO_DELETE_REQUESTS_ADDR = "https://cloud.vast.ai/api/v0";

/** The protocol version the autoscaler sees (upstream's backend VERSION). */
export const WORKER_VERSION = "1.1.0";

/** Who sends a /worker_status/: the instance, its token, and the URL it advertises. */
export interface StatusIdentity {
  containerId: number;
  masterToken: string;
  url: string;
}

/**
 * The fields that name the sender in every /worker_status/ body: the reporter's, and the one a start-up failure
 * sends (`prepare`, as upstream's start_server.sh sends `{id, mtoken, version, error_msg, url}`).
 */
export function statusIdentity(who: StatusIdentity): {
  id: number;
  mtoken: string;
  version: string;
  url: string;
} {
  return { id: who.containerId, mtoken: who.masterToken, version: WORKER_VERSION, url: who.url };
}

export interface ReporterState {
  maxPerf(): number;
  /** Seconds from start to ready; 0 until ready. */
  loadtime(): number;
  errorMsg(): string;
  /** Workload queued and in flight on this worker. */
  currentLoad(): number;
}

/** The last /worker_status/ attempt, for the operator page (without the master token). */
export interface LastStatusReport {
  at: number;
  delivered: boolean;
  body: Record<string, unknown>;
}

export interface ReporterOptions {
  addrs: readonly string[];
  containerId: number;
  masterToken: string;
  url: string;
  tracker: RequestTracker;
  state: ReporterState;
  logger: Logger;
  intervalMs: number;
  heartbeatMs: number;
  timeoutMs?: number;
  attempts?: number;
  retryDelayMs?: number;
  diskPath?: string;
  now?: () => number;
}

/**
 * Reports to the autoscaler as upstream does: /worker_status/ every interval when something changed and at least
 * every heartbeat; /delete_requests/ every interval while finished requests wait. Each address of REPORT_ADDR in
 * order, 3 attempts 2 s apart with a 10 s deadline each; interval counters are reset only after a delivery.
 */
export class AutoscalerReporter {
  private readonly http: Got;
  private statusTimer: NodeJS.Timeout | undefined;
  private running = false;
  private lastSent = 0;
  private committedDiskGb: number | undefined;
  private readonly stopSignal = new AbortController();
  private forced = false;
  /** stop() is waiting for the tick in flight: its posts make no further attempts. */
  private cuttingTickShort = false;
  /** The tick in flight, which poke() does not interrupt and stop() waits for. */
  private inTick: Promise<void> | undefined;
  private last: LastStatusReport | undefined;

  constructor(private readonly opts: ReporterOptions) {
    this.http = got.extend({
      timeout: { request: opts.timeoutMs ?? 10_000 },
      retry: { limit: 0 },
      throwHttpErrors: true,
    });
  }

  private get now(): number {
    return (this.opts.now ?? Date.now)();
  }

  start(): void {
    if (this.running || this.opts.addrs.length === 0) return;
    this.running = true;
    this.schedule(0);
  }

  /**
   * Reports now whatever changed (ready, a new score, an error), not at the next tick: the router routes on these
   * fields, and a worker that is ready but not yet heard of is paid for and idle. A poke during a tick runs another
   * tick right after it.
   */
  poke(): void {
    this.forced = true;
    if (this.running && !this.inTick) this.schedule(0);
  }

  private schedule(ms: number): void {
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => void this.loop(), ms);
  }

  private async loop(): Promise<void> {
    if (!this.running) return;
    this.inTick = this.tick().catch((err: unknown) => {
      this.opts.logger.error({ stage: "report", err }, "report loop failed");
    });
    await this.inTick;
    this.inTick = undefined;
    if (this.running) this.schedule(this.forced ? 0 : this.opts.intervalMs);
  }

  private async tick(): Promise<void> {
    const elapsed = this.now - this.lastSent;
    const t = this.opts.tracker;
    if (this.forced || t.pending || elapsed >= this.opts.heartbeatMs) {
      this.forced = false;
      await this.sendStatus();
    }
    await this.sendFinished();
  }

  /** Sends the finished requests waiting for /delete_requests/, if any. */
  private async sendFinished(): Promise<void> {
    const t = this.opts.tracker;
    const finished = t.takeFinished();
    if (finished.length === 0) return;
    const ok = await this.post("/delete_requests/", {
      worker_id: this.opts.containerId,
      mtoken: this.opts.masterToken,
      requests: finished,
    });
    if (ok) t.dropFinished(finished);
  }

  /** The last reports at shutdown: a status, then the requests that finished while draining. */
  async flush(): Promise<void> {
    await this.sendStatus();
    await this.sendFinished();
  }

  /** Builds and sends one /worker_status/; returns whether an address accepted it. */
  async sendStatus(): Promise<boolean> {
    const t = this.opts.tracker;
    const s = this.opts.state;
    const sent: IntervalCounters = { ...t.counters };
    const diskGb = await this.diskUsedGb();
    const body = {
      ...statusIdentity(this.opts),
      loadtime: s.loadtime(),
      cur_load: s.currentLoad(),
      rej_load: sent.rej_load,
      new_load: newLoad(sent),
      error_msg: s.errorMsg(),
      max_perf: s.maxPerf(),
      cur_perf: sent.cur_perf,
      cur_capacity: 0,
      max_capacity: 0,
      num_requests_working: t.numWorking,
      num_requests_recieved: t.numReceived,
      additional_disk_usage: diskGb - (this.committedDiskGb ?? diskGb),
      disk_usage: diskGb,
      working_request_idxs: t.workingRequestIdxs(),
    };
    const ok = await this.post("/worker_status/", body);
    const { mtoken: _secret, ...shown } = body;
    this.last = { at: this.now, delivered: ok, body: shown };
    if (ok) {
      t.commit(sent);
      this.committedDiskGb = diskGb;
      this.lastSent = this.now;
    }
    return ok;
  }

  lastStatus(): LastStatusReport | undefined {
    return this.last;
  }

  private async diskUsedGb(): Promise<number> {
    try {
      const s = await statfs(this.opts.diskPath ?? "/");
      return ((s.blocks - s.bfree) * s.bsize) / 2 ** 30;
    } catch {
      return 0;
    }
  }

  private async post(path: string, body: Record<string, unknown>): Promise<boolean> {
    const attempts = this.opts.attempts ?? 3;
    // Once stopping, only the last reports are still worth the wait: a tick cut short by stop() tries no more.
    const stopping = () =>
      this.cuttingTickShort || (this.stopSignal.signal.aborted && path !== "/worker_status/");
    for (const addr of this.opts.addrs) {
      if (path === "/delete_requests/" && addr === NO_DELETE_REQUESTS_ADDR) continue;
      if (stopping()) return false;
      const ok = await retry(async () => void (await this.http.post(`${addr}${path}`, { json: body })), {
        attempts,
        delayMs: () => this.opts.retryDelayMs ?? 2_000,
        retryable: () => !stopping(),
        onFailure: (err, attempt) =>
          this.opts.logger.warn(
            { stage: "report", path, addr, attempt },
            `report failed: ${err instanceof Error ? err.message : String(err)}`,
          ),
      }).then(
        () => true,
        () => false,
      );
      if (ok) return true;
    }
    return false;
  }

  /** Stops the loop; a last status report (for example "shutting down") may be sent with `final`. */
  async stop(final?: () => Promise<void>): Promise<void> {
    this.running = false;
    clearTimeout(this.statusTimer);
    // A tick in flight ends first: its /delete_requests/ and the final one would otherwise both send the requests
    // that finished (neither has dropped them yet), and the autoscaler would hear each twice. It ends after its
    // current attempt, not its retries, so that the final reports keep the time the stop window leaves.
    this.cuttingTickShort = true;
    await this.inTick;
    this.cuttingTickShort = false;
    if (final) await final().catch(() => undefined);
    this.stopSignal.abort();
  }
}
