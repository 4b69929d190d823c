import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { runInstallScript } from "../../scripts/services/install.js";
import { repoRoot } from "../../scripts/services/paths.js";

/** What vast_caller.py answers for one request (see its docstring). */
export interface VastAnswer {
  n: number;
  status?: number;
  ok?: boolean;
  response?: unknown;
  /** The worker the client sent the request to (its routed URL). */
  url?: string;
  /** The client gave up (it raised): no answer from a worker. */
  error?: string;
  session?: { id: string; url: string; closed: boolean; close_error?: string };
}

export interface VastRequest {
  route: string;
  payload: unknown;
  /** Seconds the client may take, its retries included. */
  timeout: number;
  stream?: boolean;
  session?: { lifetime: number; on_close_route: string; on_close_payload: Record<string, unknown> };
}

/**
 * The official `vastai` client (PyPI, in the tools venv) as a caller of the fleet's /route/: one long-lived Python
 * process (its start-up takes seconds on a small machine) that runs every request sent to it concurrently. Failure
 * contract: a request never rejects; the process dying answers every pending request with an error.
 */
export class VastCaller {
  private child: ChildProcess | undefined;
  private readonly pending = new Map<number, (a: VastAnswer) => void>();
  private next = 0;

  constructor(private readonly opts: { autoscalerUrl: string; apiKey: string; logFile: string }) {}

  async start(timeoutMs = 120_000): Promise<this> {
    const bin = await runInstallScript("install-tools.sh");
    await mkdir(dirname(this.opts.logFile), { recursive: true });
    const log = createWriteStream(this.opts.logFile, { flags: "a" });
    const child = spawn(
      join(bin, "python"),
      [
        join(repoRoot, "benchmark/soak/vast_caller.py"),
        "--autoscaler",
        this.opts.autoscalerUrl,
        "--api-key",
        this.opts.apiKey,
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    this.child = child;
    child.stderr!.pipe(log);
    // A write to a process that just died fails with EPIPE: its pending requests are answered by the exit handler.
    child.stdin!.on("error", (err) => log.write(`stdin: ${err.message}\n`));
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`vast_caller.py not ready in ${timeoutMs} ms`)),
        timeoutMs,
      );
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`vast_caller.py exited (${String(code)}); see ${this.opts.logFile}`));
      });
      createInterface({ input: child.stdout! }).on("line", (line) => {
        let msg: VastAnswer & { ready?: boolean };
        try {
          msg = JSON.parse(line) as VastAnswer & { ready?: boolean };
        } catch {
          log.write(`unparsed stdout: ${line.slice(0, 200)}\n`);
          return;
        }
        if (msg.ready) {
          clearTimeout(timer);
          return resolve();
        }
        const done = this.pending.get(msg.n);
        this.pending.delete(msg.n);
        done?.(msg);
      });
    });
    child.once("exit", (code, signal) => {
      for (const [n, done] of this.pending) done({ n, error: `vast_caller.py exited (${code ?? signal})` });
      this.pending.clear();
    });
    try {
      await ready;
    } catch (err) {
      child.kill("SIGKILL");
      throw err;
    }
    return this;
  }

  /** Sends one request through the client; resolves with its answer (bounded by the request's own timeout). */
  request(req: VastRequest): Promise<VastAnswer> {
    const n = this.next++;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null)
      return Promise.resolve({ n, error: "vast_caller.py is not running" });
    return new Promise<VastAnswer>((resolve) => {
      // The client's own timeout bounds the request; this one bounds a client that hangs past it.
      const timer = setTimeout(
        () => {
          this.pending.delete(n);
          resolve({ n, error: `no answer from vast_caller.py in ${req.timeout + 60} s` });
        },
        (req.timeout + 60) * 1000,
      );
      this.pending.set(n, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      child.stdin!.write(`${JSON.stringify({ n, ...req })}\n`);
    });
  }

  /** Closes its stdin (it ends once its requests answered); SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.stdin!.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(timer);
  }
}
