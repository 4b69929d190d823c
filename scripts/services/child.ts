import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname } from "node:path";
import { once } from "node:events";

/** A long-running child process of the local stack or the test harness. */
export interface Service {
  readonly name: string;
  readonly process: ChildProcess;
  readonly logFile: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  name: string;
  command: string;
  args: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  logFile: string;
  /** Resolves true once the service answers. Polled until `timeoutMs`. */
  ready: (signal: AbortSignal) => Promise<boolean>;
  timeoutMs: number;
}

export async function freePort(host = "127.0.0.1"): Promise<number> {
  const server = createServer();
  server.listen(0, host);
  await once(server, "listening");
  const address = server.address();
  server.close();
  await once(server, "close");
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/**
 * Starts a child, sends its output to `logFile`, and waits until `ready` says yes. A child that exits first, or
 * that is not ready in time, is an error that names the log file (and is killed).
 */
export async function startService(opts: StartOptions): Promise<Service> {
  await mkdir(dirname(opts.logFile), { recursive: true });
  const log = createWriteStream(opts.logFile, { flags: "a" });
  const child = spawn(opts.command, opts.args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: false,
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.once("error", (err) => log.write(`spawn error: ${String(err)}\n`));

  let stopping: Promise<void> | undefined;
  const service: Service = {
    name: opts.name,
    process: child,
    logFile: opts.logFile,
    stop(graceMs = 10_000) {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
          await exited;
          clearTimeout(timer);
        }
        log.end();
      })();
      return stopping;
    },
  };

  const deadline = Date.now() + opts.timeoutMs;
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code));
  while (Date.now() < deadline) {
    if (exitCode !== undefined || child.exitCode !== null) {
      await service.stop();
      throw new Error(
        `${opts.name} exited (code ${String(child.exitCode)}) before it was ready; see ${opts.logFile}`,
      );
    }
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), 2_000);
    const ok = await opts.ready(ac.signal).catch(() => false);
    clearTimeout(t);
    if (ok) return service;
    await new Promise((r) => setTimeout(r, 200));
  }
  await service.stop();
  throw new Error(`${opts.name} was not ready within ${opts.timeoutMs} ms; see ${opts.logFile}`);
}

/** True when `url` answers with a status below 500. */
export async function answers(url: string, signal: AbortSignal): Promise<boolean> {
  const res = await fetch(url, { signal });
  await res.arrayBuffer();
  return res.status < 500;
}
