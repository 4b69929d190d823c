import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, mkdtemp, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { freePort } from "../../scripts/services/child.js";
import { startHeldImage } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { postJson, repoRoot, stackEnv } from "../harness/worker.js";
import { loadImageWorkflow } from "../harness/workflows.js";

/**
 * The stock template's supervisor stops its `pyworker` program with stopasgroup: start_server.sh's `tee`, which
 * reads everything the worker writes, is signalled with the worker and may be gone while the worker drains. The
 * worker must drain regardless, and what it logs from then on must land in LOG_FILE.
 */

/**
 * Resolves once `path` holds text matching `pattern`, reading it every 100 ms up to `timeoutMs`. Not fs.watch: its
 * promise iterator can miss a write made between two of its events, and a missed "draining" line kept this test
 * from releasing the held input until the drain window ran out (the job then ended cancelled, in 59 s).
 */
async function fileMatches(path: string, pattern: RegExp, timeoutMs = 120_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let text = "";
  for (;;) {
    text = await readFile(path, "utf8").catch(() => "");
    if (pattern.test(text)) return text;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${path} did not match ${pattern} within ${timeoutMs} ms; it holds:\n${text.slice(-3000)}`);
}

test("SIGTERM after the reader of its output is gone (EPIPE): the job completes, the drain is logged to LOG_FILE, exit 0", async () => {
  const s = stack();
  const dir = await mkdtemp(join(s.tmpRoot, "drain-pipe-"));
  const logFile = join(dir, "logs", "comfyui-worker.log");
  await mkdir(dirname(logFile));
  const apiPort = await freePort();
  // What start_server.sh's `tee` is to the worker: the one reader of its stdout and stderr.
  const reader = spawn("cat", [], { stdio: ["pipe", "pipe", "ignore"] });
  reader.stdin.on("error", () => undefined);
  let seen = "";
  reader.stdout.on("data", (d: Buffer) => (seen += d.toString()));
  /** Resolves once the reader has passed on text matching `pattern`. */
  const readerSaw = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!pattern.test(seen)) return;
        reader.stdout.off("data", check);
        reader.off("exit", onExit);
        resolve();
      };
      const onExit = () => reject(new Error(`the reader exited before ${pattern}: ${seen}`));
      reader.stdout.on("data", check);
      reader.once("exit", onExit);
      check();
    });
  const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start"], {
    cwd: repoRoot,
    env: {
      ...process.env,
      ...stackEnv(join(dir, "output")),
      WORKER_PORT: String(await freePort()),
      WORKER_HTTP_PORT: "0",
      WORKER_HOST: "127.0.0.1",
      API_PORT: String(apiPort),
      BENCHMARK_SKIP: "true",
      BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
      INPUT_URL_ALLOW_PRIVATE: "true",
      SHARED_JOBS: "false",
      LOG_LEVEL: "info",
      // A window long enough that the drain never runs out on a slow machine: this test is about the pipe.
      STOP_WAIT_S: "60",
      LOG_FILE: logFile,
    },
    stdio: ["ignore", reader.stdin, reader.stdin],
  });
  const exited = once(child, "exit");
  const input = await startHeldImage();
  try {
    const started = await fileMatches(logFile, /"msg":"ready/);
    // Both destinations have it while the reader lives.
    await readerSaw(/"msg":"ready/);
    expect(started).toContain(
      "on SIGTERM: draining for up to 58 s (supervisor stops this program after 60 s, STOP_WAIT_S)",
    );

    const id = `drain-pipe-${randomUUID()}`;
    const answer = postJson(`http://127.0.0.1:${apiPort}/generate/sync`, {
      input: { request_id: id, workflow_json: loadImageWorkflow(input.url(`${id}.png`)) },
    });
    await input.requested();
    reader.kill("SIGKILL");
    await once(reader, "exit");
    child.kill("SIGTERM");
    await fileMatches(logFile, /"msg":"SIGTERM: draining for up to 58 s/);
    input.release();
    const { status, body } = await answer;
    expect([status, body.status]).toEqual([200, "completed"]);
    const [code] = await exited;
    expect(code).toBe(0);

    const lines = (await readFile(logFile, "utf8"))
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { level: number; msg: string });
    const msgs = lines.map((l) => l.msg);
    // What the drain said after the pipe closed is all in the file, in order, and nothing went wrong.
    const drain = msgs.findIndex((m) => m.startsWith("SIGTERM: draining"));
    const stopped = msgs.lastIndexOf("stopped");
    expect(drain).toBeGreaterThan(-1);
    expect(stopped).toBeGreaterThan(drain);
    expect(msgs.slice(drain)).toContain("worker is shutting down");
    // The reader was gone: the signal's line reached the file alone.
    expect(seen).not.toMatch(/"msg":"SIGTERM: draining/);
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    if (reader.exitCode === null) reader.kill("SIGKILL");
    await input.stop();
  }
});
