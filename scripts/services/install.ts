import { spawn } from "node:child_process";
import { join } from "node:path";
import { repoRoot } from "./paths.js";

/**
 * Runs one of the idempotent install scripts, its progress shown on stderr, and returns the path it prints on its
 * last stdout line. Concurrent callers of the same script (with the same `env`) share one run.
 */
export async function runInstallScript(script: string, env: Record<string, string> = {}): Promise<string> {
  const lines = await runInstallScriptLines(script, env);
  return lines[lines.length - 1] ?? "";
}

const running = new Map<string, Promise<string[]>>();

/** As runInstallScript, returning every line the script printed on stdout (for scripts that print several paths). */
export function runInstallScriptLines(script: string, env: Record<string, string> = {}): Promise<string[]> {
  const key = JSON.stringify([script, env]);
  let pending = running.get(key);
  if (!pending) {
    pending = run(script, env);
    running.set(key, pending);
    pending.catch(() => running.delete(key));
  }
  return pending;
}

function run(script: string, env: Record<string, string>): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [join(repoRoot, "scripts", script)], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, ...env },
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
      resolve(stdout.trim().split("\n"));
    });
  });
}
