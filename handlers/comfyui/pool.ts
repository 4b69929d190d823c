import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { delay } from "../../lib/backoff.js";
import { ComfyUnavailableError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { ComfyClient } from "./client.js";
import { ComfyEvents } from "./events.js";
import { NodeCatalog } from "./node-catalog.js";
import type { ComfyCapabilities, Workflow } from "./types.js";

/** The smallest prompt ComfyUI runs without a model: proves that its executor still completes prompts. */
const PROBE_WORKFLOW: Workflow = {
  "1": { class_type: "EmptyImage", inputs: { width: 8, height: 8, batch_size: 1, color: 0 } },
  "2": { class_type: "PreviewImage", inputs: { images: ["1", 0] } },
};
const PROBE_POLL_MS = 100;

export interface ComfyBackendSpec {
  url: string;
  /** Where this ComfyUI writes its outputs on this machine. */
  outputDir: string;
}

/** One ComfyUI server (typically one GPU): its HTTP client, its event socket, its health and what it runs now. */
export class ComfyBackend {
  readonly client: ComfyClient;
  readonly events: ComfyEvents;
  /** Answered its last health check. */
  up = false;
  /** Why it left the rotation for good (an unrecoverable device error, a benchmark that never completed). */
  failed: string | undefined;
  /** Why it is out of the rotation for now (drained for a restart), until `restore`. */
  withdrawn: string | undefined;
  /** Prompts it holds now (running or queued in it), and their workload. */
  running = 0;
  workload = 0;
  /** The health probe in progress: failures that arrive together share it. */
  probing: Promise<string | undefined> | undefined;
  /** A POST /free asked after an out-of-memory failure, while it runs: the next prompt sent here waits for it. */
  freeing: Promise<void> | undefined;
  /** What it offers, once detected (see `capabilities`). */
  detected: ComfyCapabilities | undefined;
  private detecting: Promise<ComfyCapabilities> | undefined;
  /** The last detection logged, so that a backend found the same after a restart is not logged again. */
  private logged: string | undefined;
  private readonly logger: Logger;
  private readonly requestTimeoutMs: number;

  constructor(
    readonly index: number,
    readonly url: string,
    readonly outputDir: string,
    opts: { requestTimeoutMs: number; clientId: string; logger: Logger },
    private readonly score: () => number,
  ) {
    this.client = new ComfyClient({ baseUrl: url, requestTimeoutMs: opts.requestTimeoutMs });
    this.events = new ComfyEvents({ url: this.client.wsUrl(opts.clientId), logger: opts.logger });
    this.logger = opts.logger;
    this.requestTimeoutMs = opts.requestTimeoutMs;
  }

  /**
   * What this ComfyUI offers beyond the 0.3 API (the jobs API, atomic cancel, its feature flags), asked once and
   * kept until it may have restarted (`redetect`); callers that ask together share one detection. Failure
   * contract: ComfyUI not answering -> ComfyUnavailableError, and the next call asks again; `signal` only stops
   * this caller's wait.
   */
  capabilities(signal?: AbortSignal): Promise<ComfyCapabilities> {
    if (this.detected) return Promise.resolve(this.detected);
    const detecting = (this.detecting ??= this.detect());
    if (!signal) return detecting;
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason as Error);
      signal.addEventListener("abort", onAbort, { once: true });
      detecting.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
    });
  }

  /** Forgets what was detected: the next prompt asks again (a ComfyUI that came back may be another version). */
  redetect(): void {
    this.detected = undefined;
  }

  private async detect(): Promise<ComfyCapabilities> {
    const started = Date.now();
    try {
      const found = await this.client.capabilities(AbortSignal.timeout(this.requestTimeoutMs));
      this.detected = found;
      const summary = JSON.stringify(found);
      if (summary !== this.logged) {
        this.logged = summary;
        const uses = [
          found.jobsApi ? "the jobs API for prompt state" : "/history polling for prompt state (no jobs API)",
          found.atomicCancel ? "atomic cancel" : "/queue delete + /interrupt to cancel (no atomic cancel)",
        ];
        this.logger.info(
          {
            stage: "comfyui-capabilities",
            comfyui: this.url,
            capabilities: found,
            duration_ms: Date.now() - started,
          },
          `ComfyUI at ${this.url}: using ${uses.join(", ")}`,
        );
      }
      return found;
    } finally {
      this.detecting = undefined;
    }
  }

  /** Its score in benchmark runs per 100 s, as measured on it: what it adds to max_perf. 0 until measured. */
  get perf(): number {
    return this.score();
  }

  /** Takes new prompts: answering, not failed and not withdrawn. */
  get inRotation(): boolean {
    return this.up && this.failed === undefined && this.withdrawn === undefined;
  }

  /** The state an operator or a status document shows. */
  state(): { index: number; url: string; up: boolean; failed: string | null; perf: number; running: number } {
    return {
      index: this.index,
      url: this.url,
      up: this.up,
      failed: this.failed ?? null,
      perf: this.perf,
      running: this.running,
    };
  }
}

/** A backend held for one prompt; release it once the prompt left ComfyUI (outputs may still be collected). */
export interface Lease {
  backend: ComfyBackend;
  /**
   * Frees the slot (again: no effect). With the prompt's failure, a ComfyUnavailableError takes the backend out of
   * the rotation at once, before the slot goes to the next prompt: else every waiting prompt would be sent to a
   * dead server and fail within the 2 s until its health check. The health check brings it back.
   */
  release(failure?: unknown): void;
}

export interface ComfyPoolOptions {
  backends: readonly ComfyBackendSpec[];
  requestTimeoutMs: number;
  /** The WebSocket client id all prompts are queued under. */
  clientId: string;
  /** Prompts kept submitted to one backend at once (the one running plus those queued behind it). */
  slotsPerBackend: number;
  logger: Logger;
  /** How long a health probe (GET /system_stats, then a tiny prompt run to its end) may take. */
  probeTimeoutMs?: number;
  /** Each backend's score, by index, read when placing prompts (the worker's Capacity owns it); 0 if unmeasured. */
  scoreOf?: (index: number) => number;
}

interface Waiter {
  workload: number;
  backend: number | undefined;
  resolve(lease: Lease): void;
  reject(err: unknown): void;
}

/**
 * The ComfyUI servers one worker drives. A prompt goes to the backend in rotation, with a free slot, that would
 * finish it first: (the workload it holds + this one) / its score; prompts wait here (in order) while every backend
 * is full, so that a backend that frees up first takes the next one. A backend that stops answering its health
 * check leaves the rotation (its running prompts fail on their own, retryable) and rejoins when it answers again;
 * with none left, waiting and new prompts fail at once (retryable) rather than wait for a timeout.
 *
 * Emits "change" (backend) when a backend leaves or rejoins the rotation, and "idle" (backend) when a backend's last
 * prompt released its slot.
 */
export class ComfyPool extends EventEmitter {
  readonly backends: ComfyBackend[];
  /** ComfyUI's node definitions, read from a backend in rotation (every backend runs the same installation). */
  readonly catalog: NodeCatalog;
  private waiters: Waiter[] = [];

  constructor(private readonly opts: ComfyPoolOptions) {
    super();
    if (opts.backends.length === 0) throw new Error("a ComfyUI pool needs at least one backend");
    this.backends = opts.backends.map(
      (b, i) =>
        new ComfyBackend(
          i,
          b.url,
          b.outputDir,
          {
            requestTimeoutMs: opts.requestTimeoutMs,
            clientId: opts.clientId,
            logger: opts.logger.child({ backend: i }),
          },
          () => opts.scoreOf?.(i) ?? 0,
        ),
    );
    this.catalog = new NodeCatalog(
      { objectInfo: (signal) => this.anyClient().objectInfo(signal) },
      opts.requestTimeoutMs,
    );
  }

  /** A backend in rotation if any, else the first (whose failure then says what is wrong). */
  private anyClient(): ComfyClient {
    return (this.backends.find((b) => b.inRotation) ?? this.backends[0]!).client;
  }

  get anyInRotation(): boolean {
    return this.backends.some((b) => b.inRotation);
  }

  /**
   * Waits for a slot on the best backend (or on `backend` only, for the benchmark), until `signal` aborts.
   * Failure contract: no backend in rotation (or the pinned one out of it) -> ComfyUnavailableError; abort -> the
   * signal's reason.
   */
  acquire(opts: { workload: number; signal: AbortSignal; backend?: number | undefined }): Promise<Lease> {
    const { signal } = opts;
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    const unavailable = this.unavailable(opts.backend);
    if (unavailable) return Promise.reject(unavailable);
    return new Promise<Lease>((resolve, reject) => {
      const onAbort = () => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(signal.reason as Error);
      };
      const waiter: Waiter = {
        workload: opts.workload,
        backend: opts.backend,
        resolve: (lease) => {
          signal.removeEventListener("abort", onAbort);
          resolve(lease);
        },
        reject: (err) => {
          signal.removeEventListener("abort", onAbort);
          reject(err as Error);
        },
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
      this.dispatch();
    });
  }

  /** Why a prompt for `backend` (or any) cannot be placed now, or undefined. */
  private unavailable(backend: number | undefined): ComfyUnavailableError | undefined {
    if (backend !== undefined) {
      const b = this.backends[backend];
      if (!b) return new ComfyUnavailableError(`there is no ComfyUI backend ${backend}`);
      if (!b.inRotation) {
        return new ComfyUnavailableError(
          `ComfyUI at ${b.url} ${b.failed ? `is out of service (${b.failed})` : "is not answering"}`,
        );
      }
      return undefined;
    }
    if (this.anyInRotation) return undefined;
    return new ComfyUnavailableError(
      this.backends.length === 1
        ? `ComfyUI at ${this.backends[0]!.url} is not answering`
        : `none of the ${this.backends.length} ComfyUI backends is answering`,
    );
  }

  /** Places waiting prompts, oldest first; a prompt pinned to a full backend does not hold up the others. */
  private dispatch(): void {
    for (const waiter of [...this.waiters]) {
      const err = this.unavailable(waiter.backend);
      if (err) {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        waiter.reject(err);
        continue;
      }
      const backend = this.best(waiter);
      if (!backend) continue;
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.resolve(this.lease(backend, waiter.workload));
    }
  }

  /** The backend with a free slot that would finish this prompt first (ties: the lower index). */
  private best(waiter: Waiter): ComfyBackend | undefined {
    let best: ComfyBackend | undefined;
    let bestFinish = Infinity;
    for (const b of this.backends) {
      if (!b.inRotation || b.running >= this.opts.slotsPerBackend) continue;
      if (waiter.backend !== undefined && b.index !== waiter.backend) continue;
      // Unmeasured backends (before the benchmark) count as equals: the one holding less goes first.
      const perf = b.perf > 0 ? b.perf : 1;
      const finish = (b.workload + Math.max(waiter.workload, 1e-9)) / perf;
      if (finish < bestFinish) {
        best = b;
        bestFinish = finish;
      }
    }
    return best;
  }

  private lease(backend: ComfyBackend, workload: number): Lease {
    backend.running++;
    backend.workload += workload;
    let released = false;
    return {
      backend,
      release: (failure?: unknown) => {
        if (released) return;
        released = true;
        backend.running--;
        backend.workload -= workload;
        if (failure instanceof ComfyUnavailableError) this.setUp(backend, false);
        if (backend.running === 0) this.emit("idle", backend);
        this.dispatch();
      },
    };
  }

  /** Records a health check's answer; a change of rotation is logged, emitted and acted on. */
  setUp(backend: ComfyBackend, up: boolean): void {
    if (backend.up === up) return;
    backend.up = up;
    const log = this.opts.logger.child({ stage: "health", backend: backend.index, comfyui: backend.url });
    if (up) {
      log.info("ComfyUI is answering");
      // It may have restarted: other custom nodes, another version, and a socket to open again.
      this.catalog.invalidate();
      backend.redetect();
      backend.events.reconnect();
    } else {
      log.warn("ComfyUI stopped answering: out of the rotation until it answers again");
    }
    this.emit("change", backend);
    this.dispatch();
  }

  /** Takes a backend out of the rotation for good (until the process restarts). */
  fail(backend: ComfyBackend, reason: string): void {
    if (backend.failed !== undefined) return;
    backend.failed = reason;
    this.opts.logger.error(
      { stage: "health", backend: backend.index, comfyui: backend.url },
      `ComfyUI at ${backend.url} is out of service: ${reason}`,
    );
    this.emit("change", backend);
    this.dispatch();
  }

  /**
   * Takes a backend out of the rotation for now (to restart it): new prompts go elsewhere, those it holds run on.
   * `restore` brings it back.
   */
  withdraw(backend: ComfyBackend, reason: string): void {
    if (backend.withdrawn !== undefined) return;
    backend.withdrawn = reason;
    this.opts.logger.warn(
      { stage: "health", backend: backend.index, comfyui: backend.url },
      `ComfyUI at ${backend.url} leaves the rotation for now: ${reason}`,
    );
    this.emit("change", backend);
    this.dispatch();
  }

  /** Ends `withdraw`: in the rotation again once it answers (at once if it does), as after a restart. */
  restore(backend: ComfyBackend): void {
    if (backend.withdrawn === undefined) return;
    backend.withdrawn = undefined;
    // It restarted: as a ComfyUI that answers again (setUp).
    this.catalog.invalidate();
    backend.redetect();
    backend.events.reconnect();
    this.opts.logger.info(
      { stage: "health", backend: backend.index, comfyui: backend.url },
      `ComfyUI at ${backend.url} is back in the rotation${backend.up ? "" : " once it answers"}`,
    );
    this.emit("change", backend);
    this.dispatch();
  }

  /** Resolves once the backend holds no prompt (at once if it holds none); rejects when `signal` aborts. */
  idle(backend: ComfyBackend, signal?: AbortSignal): Promise<void> {
    if (backend.running === 0) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    return new Promise((resolve, reject) => {
      const done = () => {
        this.off("idle", onIdle);
        signal?.removeEventListener("abort", onAbort);
      };
      const onIdle = (b: ComfyBackend) => {
        if (b !== backend) return;
        done();
        resolve();
      };
      const onAbort = () => {
        done();
        reject(signal!.reason as Error);
      };
      this.on("idle", onIdle);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Checks a backend that a failure suspects, from what no caller writes: GET /system_stats (ComfyUI reads the
   * device's memory there, which a broken CUDA context refuses) and a tiny model-free prompt queued ahead of the
   * others, which must complete. Resolves with why it failed, or undefined when the backend is healthy.
   */
  probe(backend: ComfyBackend): Promise<string | undefined> {
    backend.probing ??= this.runProbe(backend).finally(() => {
      backend.probing = undefined;
    });
    return backend.probing;
  }

  private async runProbe(backend: ComfyBackend): Promise<string | undefined> {
    const signal = AbortSignal.timeout(this.opts.probeTimeoutMs ?? 30_000);
    // A bare UUID: newer ComfyUIs (0.33.0 does) refuse any other prompt_id with 400 invalid_prompt_id.
    const promptId = randomUUID();
    let statsAnswered = false;
    try {
      await backend.client.systemStats(signal);
      statsAnswered = true;
      await backend.client.queuePrompt(PROBE_WORKFLOW, {
        clientId: this.opts.clientId,
        promptId,
        signal,
        front: true,
      });
      for (;;) {
        const entry = await backend.client.history(promptId, signal);
        if (entry !== undefined) void this.forget(backend, promptId);
        if (entry?.status?.status_str === "success") return undefined;
        if (entry !== undefined)
          return `the health probe prompt ended ${entry.status?.status_str ?? "without status"}`;
        await delay(PROBE_POLL_MS, signal).catch(() => undefined);
        if (signal.aborted) return this.probeInconclusive(backend, promptId);
      }
    } catch (err) {
      // /system_stats answered: a prompt that could not finish in time waited behind another (front only jumps
      // the queue, not the prompt running), which says nothing about the device.
      if (signal.aborted && statsAnswered) return this.probeInconclusive(backend, promptId);
      if (signal.aborted) return "the health probe did not complete in time";
      return `the health probe failed: ${err instanceof Error ? err.message : String(err)}`;
    }
  }

  /** Drops a finished prompt's history entry in ComfyUI; a failure is logged, nothing else depends on it. */
  forget(backend: ComfyBackend, promptId: string): Promise<void> {
    return backend.client.deleteHistory([promptId], AbortSignal.timeout(5_000)).catch((err: unknown) => {
      this.opts.logger.warn(
        { stage: "history", backend: backend.index, comfyui: backend.url, prompt_id: promptId, err },
        "could not delete the prompt's entry from ComfyUI's history (it stays there)",
      );
    });
  }

  /** A probe prompt still waiting at the deadline: withdrawn, and the backend kept (undefined: not a failure). */
  private probeInconclusive(backend: ComfyBackend, promptId: string): undefined {
    void backend.client.deleteFromQueue([promptId], AbortSignal.timeout(5_000)).catch(() => undefined);
    this.opts.logger.warn(
      { stage: "health", backend: backend.index, comfyui: backend.url },
      "the health probe prompt did not finish in time behind the running prompt; /system_stats answered: kept",
    );
    return undefined;
  }

  /** Asks every backend once (in parallel) and records the answers. */
  async checkAll(timeoutMs = 5_000): Promise<void> {
    await Promise.all(
      this.backends.map(async (b) => {
        const up = await b.client.systemStats(AbortSignal.timeout(timeoutMs)).then(
          () => true,
          () => false,
        );
        this.setUp(b, up);
      }),
    );
  }

  startEvents(): void {
    for (const b of this.backends) b.events.start();
  }

  stop(): void {
    for (const b of this.backends) b.events.stop();
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w.reject(new ComfyUnavailableError("the worker is shutting down"));
  }
}
