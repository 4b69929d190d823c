/**
 * One ComfyUI process: spawned in a session of its own and bound to this process by a parent-death signal, its
 * output appended to its log file (and copied, line by line, to a stream such as our stdout), ready once
 * `/system_stats` answers, stopped with SIGTERM then SIGKILL. The production launcher (fleet.ts) and the local
 * stack and tests (scripts/services/comfyui.ts) start ComfyUI through this module.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import type { Readable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import { delay } from "../../lib/backoff.js";

export interface InstanceSpec {
  /** For messages: `comfyui-1`. */
  name: string;
  /** The program (ComfyUI's python) and its arguments (main.py ...). */
  command: string;
  args: readonly string[];
  cwd: string;
  /** Its whole environment. */
  env: NodeJS.ProcessEnv;
  /** Its output is appended here. */
  logFile: string;
  /** Its base URL: it is ready once `<url>/system_stats` answers. */
  url: string;
}

export interface InstanceExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why it could not be started at all (the program is missing). */
  error?: Error;
}

export interface InstanceProcess {
  readonly spec: InstanceSpec;
  /** Undefined when it could not be started. */
  readonly pid: number | undefined;
  readonly child: ChildProcess;
  /** Resolves once it has exited; never rejects. */
  readonly exited: Promise<InstanceExit>;
  /** Resolves once its stdout and stderr have closed (all its lines were seen); never rejects. */
  readonly output: Promise<void>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited, saying whether SIGKILL was needed. */
  stop(graceMs: number): Promise<{ killed: boolean }>;
}

export interface SpawnOptions {
  /**
   * The command that binds it to this process (`setpriv --pdeathsig KILL --`, from `parentDeathBinding()`), or
   * none.
   */
  bind: readonly string[];
  /** Where its output also goes, whole lines at a time (the worker's stdout); none by default. */
  echo?: NodeJS.WritableStream;
  /** Its log file could not be written (its output still goes to `echo`). */
  onLogError?: (err: Error) => void;
  /** Each whole line of its output (stdout or stderr), without the newline, as it arrives. */
  onLine?: (line: string) => void;
}

/**
 * Starts it now. In a session of its own (detached): a signal to our process group (supervisor's stopasgroup, a
 * terminal's Ctrl-C) does not reach it, so it keeps serving while the worker drains and is stopped after. With
 * `bind`, the kernel kills it when this process dies, however it dies, so that none lives on holding a port or a
 * GPU (the parent-death signal follows the thread that spawned it: Node's main thread, which lives as long as the
 * process).
 */
export function spawnInstance(spec: InstanceSpec, opts: SpawnOptions): InstanceProcess {
  const [program, ...args] = [...opts.bind, spec.command, ...spec.args];
  const child = spawn(program!, args, {
    cwd: spec.cwd,
    env: spec.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<InstanceExit>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    // Kept on: a later error (a signal that cannot be sent) must not be an uncaught one.
    child.on("error", (error) => resolve({ code: null, signal: null, error }));
  });
  const output = copyOutput(child, spec.logFile, opts);

  let stopping: Promise<{ killed: boolean }> | undefined;
  return {
    spec,
    pid: child.pid,
    child,
    exited,
    output,
    stop(graceMs) {
      stopping ??= (async () => {
        if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
          await exited;
          return { killed: false };
        }
        let killed = false;
        child.kill("SIGTERM");
        const timer = setTimeout(() => {
          killed = true;
          child.kill("SIGKILL");
        }, graceMs);
        await exited;
        clearTimeout(timer);
        return { killed };
      })();
      return stopping;
    },
  };
}

/**
 * Its stdout and stderr appended to its log file, and copied to `echo` and `onLine` a line at a time. Resolves once
 * both have closed.
 */
function copyOutput(child: ChildProcess, logFile: string, opts: SpawnOptions): Promise<void> {
  const streams = [child.stdout, child.stderr].filter((s): s is Readable => s !== null);
  let open = streams.length;
  let closed!: () => void;
  const allClosed = new Promise<void>((resolve) => (closed = resolve));
  if (open === 0) closed();
  // The log file once open; what it writes before that is kept until then (null: the file cannot be written).
  let log: NodeJS.WritableStream | null | undefined;
  const pending: Buffer[] = [];
  const failed = (err: Error) => {
    log = null;
    pending.length = 0;
    opts.onLogError?.(err);
  };
  void mkdir(dirname(logFile), { recursive: true }).then(() => {
    const file = createWriteStream(logFile, { flags: "a" });
    file.on("error", failed);
    for (const chunk of pending.splice(0)) file.write(chunk);
    log = file;
    if (open === 0) file.end();
  }, failed);
  for (const stream of streams) {
    let partial = "";
    const decoder = new StringDecoder("utf8");
    stream.on("data", (chunk: Buffer) => {
      if (log) log.write(chunk);
      else if (log === undefined) pending.push(chunk);
      if (!opts.echo && !opts.onLine) return;
      const text = partial + decoder.write(chunk);
      const end = text.lastIndexOf("\n") + 1;
      partial = text.slice(end);
      if (end === 0) return;
      opts.echo?.write(text.slice(0, end));
      if (opts.onLine) for (const line of text.slice(0, end - 1).split("\n")) opts.onLine(line);
    });
    stream.once("close", () => {
      if (partial !== "") {
        opts.echo?.write(`${partial}\n`);
        opts.onLine?.(partial);
      }
      if (--open === 0) {
        log?.end();
        closed();
      }
    });
  }
  return allClosed;
}

export class InstanceExitedError extends Error {
  override readonly name = "InstanceExitedError";
  constructor(
    readonly spec: InstanceSpec,
    readonly exit: InstanceExit,
  ) {
    const how = exit.error
      ? `could not start (${exit.error.message})`
      : `exited (${exit.signal ?? `code ${String(exit.code)}`})`;
    super(`${spec.name} ${how} before it answered; see ${spec.logFile}`);
  }
}

export interface ReadyOptions {
  /** Stops waiting (rejects with its reason). */
  signal?: AbortSignal;
  /** Gives up after this long (rejects naming the log file); none by default. */
  timeoutMs?: number;
  /** How often /system_stats is asked; each answer within 2 s. */
  intervalMs?: number;
}

/**
 * Resolves once `<url>/system_stats` answers (a status below 500); rejects if the process exits first
 * (InstanceExitedError), past `timeoutMs`, or when `signal` aborts.
 */
export async function waitUntilReady(instance: InstanceProcess, opts: ReadyOptions = {}): Promise<void> {
  const { spec } = instance;
  const done = new AbortController();
  const signals = [done.signal, ...(opts.signal ? [opts.signal] : [])];
  if (opts.timeoutMs !== undefined) signals.push(AbortSignal.timeout(opts.timeoutMs));
  const stop = AbortSignal.any(signals);
  let exit: InstanceExit | undefined;
  void instance.exited.then((e) => {
    exit = e;
    done.abort();
  });
  try {
    for (;;) {
      if (exit !== undefined) throw new InstanceExitedError(spec, exit);
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (stop.aborted)
        throw new Error(`${spec.name} did not answer within ${opts.timeoutMs} ms; see ${spec.logFile}`);
      if (await answers(`${spec.url}/system_stats`, AbortSignal.any([stop, AbortSignal.timeout(2_000)])))
        return;
      await delay(opts.intervalMs ?? 250, stop).catch(() => undefined);
    }
  } finally {
    done.abort();
  }
}

async function answers(url: string, signal: AbortSignal): Promise<boolean> {
  try {
    const res = await fetch(url, { signal });
    await res.arrayBuffer();
    return res.status < 500;
  } catch {
    return false;
  }
}

let binding: Promise<readonly string[] | undefined> | undefined;

/**
 * `setpriv --pdeathsig KILL --` where it works here (util-linux 2.33 or later), else undefined: asked once per
 * process.
 */
export function parentDeathBinding(): Promise<readonly string[] | undefined> {
  binding ??= new Promise((resolve) => {
    const command = ["setpriv", "--pdeathsig", "KILL", "--"] as const;
    execFile(command[0], [...command.slice(1), "true"], { timeout: 10_000 }, (err) =>
      resolve(err ? undefined : command),
    );
  });
  return binding;
}
