import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { repoRoot } from "./paths.js";

const run = promisify(execFile);

/** Runs one of the idempotent install scripts and returns the path it prints on its last line. */
export async function runInstallScript(script: string): Promise<string> {
  const { stdout } = await run("bash", [join(repoRoot, "scripts", script)], {
    maxBuffer: 64 * 1024 * 1024,
    timeout: 45 * 60_000,
  }).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`scripts/${script} failed: ${err.stderr?.slice(-4000) ?? err.message}`);
  });
  const lines = stdout.trim().split("\n");
  return lines[lines.length - 1] ?? "";
}
