/**
 * The ComfyUIs the worker starts (COMFYUI_LAUNCH=true): all of the plan's instances at start, each one started
 * again after 1, 2, 4 ... up to COMFYUI_RESTART_MAX_DELAY s when it exits while the worker runs (back to 1 s after a
 * minute's run), and all stopped together at the very end of the worker's stop, after the drain, so that they serve
 * the jobs that drain. What happens is told through typed events, which the worker logs (`logFleet`).
 */
import { mkdir } from "node:fs/promises";
import type { LaunchConfig, LaunchedInstance } from "../../config/index.js";
import { doublingDelay } from "../../lib/backoff.js";
import { Emitter, type Listener } from "../../lib/events.js";
import type { Logger } from "../../lib/logger.js";
import {
  parentDeathBinding,
  spawnInstance,
  waitUntilReady,
  type InstanceProcess,
  type InstanceSpec,
} from "./instance.js";

/** A run this long counts as healthy: the next exit starts the backoff over. */
const HEALTHY_RUN_MS = 60_000;
const FIRST_RESTART_DELAY_MS = 1_000;
/** After it exits, how long its last lines may take to arrive before the fleet decides whether to restart it. */
const OUTPUT_GRACE_MS = 2_000;
/**
 * What ComfyUI 0.4x prints as it exits at start when its assets database (sqlite) is locked or cannot be written:
 * `ASSETS_STARTUP_FAILED:<kind>`. Starting it again would fail the same way until the operator acts.
 */
const ASSETS_STARTUP_FAILED = /ASSETS_STARTUP_FAILED:([\w.-]+)/;

interface Instance {
  /** Its backend in the pool. */
  index: number;
  /** `comfyui-1`. */
  name: string;
}

export interface FleetEvents {
  /** start() begins: what the plan decided, in words, and how many instances start here. */
  planned: { notes: readonly string[]; instances: number };
  started: Instance & { pid: number | undefined; url: string; gpu: string | undefined; logFile: string };
  /** Its /system_stats answers, `durationMs` after it was started. */
  ready: Instance & { pid: number | undefined; url: string; durationMs: number };
  /** It exited while the worker runs (not by our stop), after running `ranMs`. */
  exited: Instance & {
    pid: number | undefined;
    code: number | null;
    signal: NodeJS.Signals | null;
    error?: Error;
    ranMs: number;
  };
  /** It starts again in `delayMs`. */
  restarting: Instance & { delayMs: number };
  /**
   * It cannot start until the operator acts: its output said `ASSETS_STARTUP_FAILED:<kind>` (its assets database is
   * locked or cannot be written). Told once per start, as the line arrives; it is not started again when it exits.
   */
  startFailed: Instance & { code: "ASSETS_STARTUP_FAILED"; kind: string; line: string; logFile: string };
  /** restart(index) stopped it (`durationMs`, `killed` as `stopped`) to start it again now, for `reason`. */
  recycled: Instance & { pid: number | undefined; reason: string; durationMs: number; killed: boolean };
  /** Stopped by stop() after `durationMs`; `killed`: SIGTERM was not enough within COMFYUI_STOP_TIMEOUT. */
  stopped: Instance & { pid: number | undefined; durationMs: number; killed: boolean };
  /** Something the operator should know that stops nothing (no parent-death signal, a log file not written). */
  warning: { index?: number; message: string; err?: unknown };
}

export interface FleetOptions {
  /** Where a listener that throws is reported. */
  logger: Pick<Logger, "error">;
  /** The environment every instance starts from (the worker's own: the CLI hands it over). */
  env: NodeJS.ProcessEnv;
  /** Where their output also goes (default: this process's stdout); null: their log files only. */
  echo?: NodeJS.WritableStream | null;
  now?: () => number;
}

interface Slot {
  instance: LaunchedInstance;
  spec: InstanceSpec;
  proc?: InstanceProcess;
  since: number;
  /** Restarts since its last healthy run. */
  attempt: number;
  timer?: NodeJS.Timeout;
  /** Its current process said it cannot start (ASSETS_STARTUP_FAILED): not started again when it exits. */
  startFailed?: boolean;
}

export class Fleet {
  private readonly events: Emitter<FleetEvents>;
  private readonly slots: Slot[];
  private state: "idle" | "running" | "stopping" = "idle";
  private bind: readonly string[] = [];
  /** Ends the readiness checks at stop. */
  private readonly lifetime = new AbortController();
  private stopping: Promise<void> | undefined;
  private readonly now: () => number;

  constructor(
    private readonly launch: LaunchConfig,
    private readonly opts: FleetOptions,
  ) {
    this.events = new Emitter(opts.logger);
    this.now = opts.now ?? Date.now;
    this.slots = launch.instances.map((instance) => ({
      instance,
      spec: instanceSpec(launch, instance, opts.env),
      since: 0,
      attempt: 0,
    }));
  }

  /** Subscribes; returns the unsubscribe. A listener that throws is logged, never reaches the fleet. */
  on<K extends keyof FleetEvents>(name: K, listener: Listener<FleetEvents[K]>): () => void {
    return this.events.on(name, listener);
  }

  /** Whether instance `index` (backend `index`) is one this fleet starts. */
  owns(index: number): boolean {
    return this.slots.some((s) => s.instance.index === index);
  }

  /** Instance `index`'s process now (undefined while it is down or not ours). */
  process(index: number): InstanceProcess | undefined {
    return this.slots.find((s) => s.instance.index === index)?.proc;
  }

  /** Starts every instance (it does not wait for them to answer: the worker's start-up does). Once. */
  async start(): Promise<void> {
    if (this.state !== "idle") return;
    this.state = "running";
    this.emit("planned", { notes: this.launch.notes, instances: this.slots.length });
    if (this.slots.length === 0) return;
    const bind = await parentDeathBinding();
    if (bind) this.bind = bind;
    else {
      this.emit("warning", {
        message:
          "`setpriv --pdeathsig` does not work here (util-linux 2.33 or later has it): a ComfyUI started here " +
          "outlives a worker that is killed",
      });
    }
    for (const folder of [this.launch.logDir, ...this.launch.folders]) {
      await mkdir(folder, { recursive: true }).catch((err: unknown) =>
        this.emit("warning", { message: `cannot make ${folder}`, err }),
      );
    }
    for (const slot of this.slots) void this.run(slot).catch(() => undefined);
  }

  /**
   * Stops instance `index` (SIGTERM, then SIGKILL after COMFYUI_STOP_TIMEOUT) and starts it again at once, whatever
   * its state (down between restarts, or failed to start). Resolves once it answers; rejects if it exits before
   * (the usual restarts then follow), if the fleet stops meanwhile, or for an index the fleet does not start.
   */
  async restart(index: number, reason: string): Promise<void> {
    const slot = this.slots.find((s) => s.instance.index === index);
    if (slot === undefined) throw new Error(`instance ${index} is not one this worker starts`);
    if (this.state !== "running")
      throw new Error(`the ComfyUIs are ${this.state}: ${slot.instance.name} stays`);
    clearTimeout(slot.timer);
    slot.timer = undefined;
    const old = slot.proc;
    // Its exit is ours: no `exited`, no restart of its own.
    slot.proc = undefined;
    if (old !== undefined && running(old)) {
      const from = this.now();
      const { killed } = await old.stop(this.launch.stopTimeoutS * 1000);
      this.emit("recycled", {
        ...this.id(slot),
        pid: old.pid,
        reason,
        durationMs: this.now() - from,
        killed,
      });
    }
    if (this.state !== "running")
      throw new Error(`the ComfyUIs are ${this.state}: ${slot.instance.name} stays`);
    slot.attempt = 0;
    await this.run(slot);
  }

  /** Stops every instance: SIGTERM, then SIGKILL to those left after COMFYUI_STOP_TIMEOUT. Starts none again. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.state = "stopping";
      this.lifetime.abort();
      const graceMs = this.launch.stopTimeoutS * 1000;
      await Promise.all(
        this.slots.map(async (slot) => {
          clearTimeout(slot.timer);
          const proc = slot.proc;
          if (proc === undefined || !running(proc)) return;
          const from = this.now();
          const { killed } = await proc.stop(graceMs);
          this.emit("stopped", { ...this.id(slot), pid: proc.pid, durationMs: this.now() - from, killed });
        }),
      );
    })();
    return this.stopping;
  }

  /** Starts the slot's process; resolves once it answers, rejects if it exits first or the fleet stops. */
  private run(slot: Slot): Promise<void> {
    slot.timer = undefined;
    if (this.state !== "running") return Promise.reject(new Error(`the ComfyUIs are ${this.state}`));
    const index = slot.instance.index;
    const { url, logFile } = slot.spec;
    slot.startFailed = false;
    const proc = spawnInstance(slot.spec, {
      bind: this.bind,
      ...(this.opts.echo !== null && { echo: this.opts.echo ?? process.stdout }),
      onLogError: (err) => this.emit("warning", { index, message: `cannot write ${slot.spec.logFile}`, err }),
      onLine: (line) => {
        const marker = ASSETS_STARTUP_FAILED.exec(line);
        if (marker === null || slot.proc !== proc || slot.startFailed) return;
        slot.startFailed = true;
        this.emit("startFailed", {
          ...this.id(slot),
          code: "ASSETS_STARTUP_FAILED",
          kind: marker[1]!,
          line: line.trim(),
          logFile,
        });
      },
    });
    slot.proc = proc;
    slot.since = this.now();
    this.emit("started", { ...this.id(slot), pid: proc.pid, url, gpu: slot.instance.gpu, logFile });
    const ready = waitUntilReady(proc, { signal: this.lifetime.signal }).then(() =>
      this.emit("ready", { ...this.id(slot), pid: proc.pid, url, durationMs: this.now() - slot.since }),
    );
    // It exited first (told below), or the fleet stops: the caller of restart() hears it, no one else.
    ready.catch(() => undefined);
    void proc.exited.then(async (exit) => {
      if (this.state !== "running" || slot.proc !== proc) return;
      const ranMs = this.now() - slot.since;
      // Its last lines (the start-up failure's marker) before deciding.
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([proc.output, new Promise((r) => (grace = setTimeout(r, OUTPUT_GRACE_MS)))]);
      clearTimeout(grace);
      if (this.state !== "running" || slot.proc !== proc) return;
      this.emit("exited", { ...this.id(slot), pid: proc.pid, ...exit, ranMs });
      if (this.launch.restartMaxDelayS === 0 || slot.startFailed) return;
      if (ranMs >= HEALTHY_RUN_MS) slot.attempt = 0;
      const delayMs = doublingDelay(
        slot.attempt++,
        FIRST_RESTART_DELAY_MS,
        this.launch.restartMaxDelayS * 1000,
      );
      this.emit("restarting", { ...this.id(slot), delayMs });
      slot.timer = setTimeout(() => void this.run(slot).catch(() => undefined), delayMs);
    });
    return ready;
  }

  private id(slot: Slot): Instance {
    return { index: slot.instance.index, name: slot.instance.name };
  }

  private emit<K extends keyof FleetEvents>(name: K, event: FleetEvents[K]): void {
    this.events.emit(name, event);
  }
}

function running(proc: InstanceProcess): boolean {
  return proc.pid !== undefined && proc.child.exitCode === null && proc.child.signalCode === null;
}

/** How instance `instance` of the plan runs: ComfyUI's python on main.py, from the ComfyUI folder. */
export function instanceSpec(
  launch: LaunchConfig,
  instance: LaunchedInstance,
  base: NodeJS.ProcessEnv,
): InstanceSpec {
  const env: NodeJS.ProcessEnv = { ...base, PYTHONUNBUFFERED: "1" };
  if (launch.pathPrefix !== undefined) env.PATH = [launch.pathPrefix, base.PATH].filter(Boolean).join(":");
  if (instance.gpu !== undefined) env.CUDA_VISIBLE_DEVICES = instance.gpu;
  if (launch.ldPreload) env.LD_PRELOAD = [launch.ldPreload, base.LD_PRELOAD].filter(Boolean).join(":");
  return {
    name: instance.name,
    command: launch.python,
    args: instance.args,
    cwd: launch.comfyDir,
    env,
    logFile: instance.logFile,
    url: instance.url,
  };
}

/** The fleet's events in the worker's log (stage "comfyui"). */
export function logFleet(fleet: Fleet, logger: Logger): void {
  const log = logger.child({ stage: "comfyui" });
  const s = (ms: number) => (ms < 1_000 ? `${ms} ms` : `${Math.round(ms / 100) / 10} s`);
  fleet.on("planned", ({ notes }) => {
    for (const note of notes) log.info(note);
  });
  fleet.on("started", (e) =>
    log.info(
      { instance: e.index, comfyui_pid: e.pid, url: e.url, gpu: e.gpu, log_file: e.logFile },
      `${e.name}: started (pid ${e.pid ?? "none"}) for ${e.url}${e.gpu === undefined ? "" : ` on GPU ${e.gpu}`}, ` +
        `log in ${e.logFile}`,
    ),
  );
  fleet.on("ready", (e) =>
    log.info(
      { instance: e.index, comfyui_pid: e.pid, duration_ms: e.durationMs },
      `${e.name}: answers after ${s(e.durationMs)}`,
    ),
  );
  fleet.on("exited", (e) =>
    log.warn(
      {
        instance: e.index,
        comfyui_pid: e.pid,
        code: e.code,
        signal: e.signal,
        err: e.error,
        duration_ms: e.ranMs,
      },
      `${e.name}: ${e.error ? `could not start (${e.error.message})` : `exited (${e.signal ?? `code ${e.code}`})`} ` +
        `after ${s(e.ranMs)} while the worker runs`,
    ),
  );
  fleet.on("restarting", (e) =>
    log.info({ instance: e.index, delay_ms: e.delayMs }, `${e.name}: starting it again in ${s(e.delayMs)}`),
  );
  fleet.on("stopped", (e) =>
    log.info(
      { instance: e.index, comfyui_pid: e.pid, duration_ms: e.durationMs, killed: e.killed },
      `${e.name}: stopped after ${s(e.durationMs)}${e.killed ? " (SIGKILL: SIGTERM was not enough)" : ""}`,
    ),
  );
  fleet.on("startFailed", (e) =>
    log.error(
      { instance: e.index, code: e.code, kind: e.kind, log_file: e.logFile },
      `${e.name}: ${startFailureMessage(e)}`,
    ),
  );
  fleet.on("recycled", (e) =>
    log.warn(
      { instance: e.index, comfyui_pid: e.pid, duration_ms: e.durationMs, killed: e.killed },
      `${e.name}: stopped after ${s(e.durationMs)}${e.killed ? " (SIGKILL)" : ""} to start it again: ${e.reason}`,
    ),
  );
  fleet.on("warning", (e) => log.warn({ instance: e.index, err: e.err }, e.message));
}

/** What a `startFailed` means, for the log and the worker's error_msg. */
export function startFailureMessage(e: FleetEvents["startFailed"]): string {
  return (
    `ComfyUI stopped at start with ${e.code}:${e.kind}: its assets database (sqlite) is locked by another ` +
    `process or cannot be written; not started again until the worker restarts (see ${e.logFile})`
  );
}
