import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { randomUUID } from "node:crypto";
import { runInstallScript } from "../../scripts/services/install.js";
import { repoRoot } from "./worker.js";
import { stack } from "./stack.js";

const run = promisify(execFile);

export interface ClientResult {
  status: number;
  ok: boolean;
  response: any;
  session?: { id: string; open_before_close: boolean; open_after_close: boolean };
}

/** Runs the official vastai client (PyPI, in the tools venv) for one request; finite timeout. */
export async function vastClientRequest(opts: {
  autoscalerUrl?: string;
  route: string;
  payload: unknown;
  stream?: boolean;
  /** Through a session opened with the client's API (Endpoint.session), then closed. */
  session?: boolean;
  timeoutS?: number;
  env?: Record<string, string>;
}): Promise<ClientResult> {
  const bin = await runInstallScript("install-tools.sh");
  const file = join(stack().tmpRoot, `payload-${randomUUID()}.json`);
  await writeFile(file, JSON.stringify(opts.payload));
  const args = [join(repoRoot, "test/harness/vast_client.py"), "--route", opts.route, "--payload", file];
  if (opts.autoscalerUrl) args.push("--autoscaler", opts.autoscalerUrl);
  if (opts.stream) args.push("--stream");
  if (opts.session) args.push("--session");
  args.push("--timeout", String(opts.timeoutS ?? 120));
  const { stdout } = await run(join(bin, "python"), args, {
    timeout: ((opts.timeoutS ?? 120) + 30) * 1000,
    env: { ...process.env, ...opts.env },
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(stdout) as ClientResult;
}
