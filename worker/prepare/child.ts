import { spawn } from "node:child_process";
import type { Writable } from "node:stream";
import { redactText } from "../../lib/redact.js";

export interface ChildOptions {
  cwd?: string;
  env: Readonly<Record<string, string | undefined>>;
  timeoutMs: number;
  /** Each line the child writes, redacted; omitted: its output is only kept for the result. */
  echo?: Writable;
}

export interface ChildResult {
  /** True when it exited with code 0. */
  ok: boolean;
  /** What went wrong in words ("exit 3", "timed out after 60 s", "could not start: spawn git ENOENT"). */
  outcome: string;
  /** Its stdout and stderr as written (not redacted: for parsing, never to be logged as is). */
  output: string;
}

/** After the deadline's SIGTERM, how long a child has before SIGKILL. */
const KILL_GRACE_MS = 5_000;

/**
 * Runs a program to its end within a deadline (SIGTERM at the deadline, SIGKILL a little later). Its stdin is
 * closed; its output goes to `echo` line by line with URLs redacted, never to prepare's stdout.
 */
export function runChild(command: string, args: readonly string[], opts: ChildOptions): Promise<ChildResult> {
  return new Promise((resolve) => {
    let output = "";
    const child = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env as NodeJS.ProcessEnv,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const pending = { stdout: "", stderr: "" };
    const take = (which: "stdout" | "stderr") => (chunk: Buffer) => {
      const text = chunk.toString();
      output += text;
      if (!opts.echo) return;
      const lines = (pending[which] + text).split("\n");
      pending[which] = lines.pop()!;
      for (const line of lines) opts.echo.write(`${redactText(line)}\n`);
    };
    child.stdout.on("data", take("stdout"));
    child.stderr.on("data", take("stderr"));
    let timedOut = false;
    let killer: NodeJS.Timeout | undefined;
    const deadline = setTimeout(() => {
      timedOut = true;
      child.kill("SIGTERM");
      killer = setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS);
    }, opts.timeoutMs);
    const finish = (result: Omit<ChildResult, "output">) => {
      clearTimeout(deadline);
      clearTimeout(killer);
      for (const rest of [pending.stdout, pending.stderr]) {
        if (rest && opts.echo) opts.echo.write(`${redactText(rest)}\n`);
      }
      resolve({ ...result, output });
    };
    child.once("error", (err) => finish({ ok: false, outcome: `could not start: ${err.message}` }));
    child.once("close", (code, signal) => {
      if (timedOut) finish({ ok: false, outcome: `timed out after ${Math.round(opts.timeoutMs / 1000)} s` });
      else if (code === 0) finish({ ok: true, outcome: "exit 0" });
      else finish({ ok: false, outcome: code === null ? `killed by ${signal}` : `exit ${code}` });
    });
  });
}
