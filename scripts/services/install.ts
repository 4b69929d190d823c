import { spawn } from "node:child_process";
import { join } from "node:path";
import { repoRoot } from "./paths.js";

/**
 * Runs one of the idempotent install scripts, its progress shown on stderr, and returns the path it prints on its
 * last stdout line. Concurrent callers of the same script share one run.
 */
const running = new Map<string, Promise<string>>();

export function runInstallScript(script: string): Promise<string> {
  let pending = running.get(script);
  if (!pending) {
    pending = run(script);
    running.set(script, pending);
    pending.catch(() => running.delete(script));
  }
  return pending;
}

function run(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [join(repoRoot, "scripts", script)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    const timer = setTimeout(() => child.kill("SIGTERM"), 45 * 60_000);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`scripts/${script} could not start: ${err.message}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (code !== 0)
        return reject(
          new Error(`scripts/${script} failed (${signal ?? `exit ${code}`}); see its output above`),
        );
      const lines = stdout.trim().split("\n");
      resolve(lines[lines.length - 1] ?? "");
    });
  });
}
