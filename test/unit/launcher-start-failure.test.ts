import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { freePort } from "../../scripts/services/child.js";

/**
 * The worker's CLI with COMFYUI_LAUNCH=true on a FAKE ComfyUI: a main.py that exits at start the way ComfyUI 0.4x does
 * when its assets database (sqlite) is locked or cannot be written (`ASSETS_STARTUP_FAILED:<kind>`), a fault no
 * ComfyUI here produces. The worker must say so in its error_msg (GET /ready shows it) and in its log, not wait
 * for that ComfyUI, and not start it again and again.
 */

const FAKE_MAIN = `
import sys
sys.stderr.write("Traceback: sqlite3.OperationalError: attempt to write a readonly database\\n")
sys.stderr.write("ASSETS_STARTUP_FAILED:unwritable\\n")
sys.exit(1)
`;
const repoRoot = resolve(import.meta.dirname, "..", "..");

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "launcher-start-failure-"));
  await writeFile(join(dir, "main.py"), FAKE_MAIN);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("ASSETS_STARTUP_FAILED from the ComfyUI it starts: error_msg and an error in the log, no restart, SIGTERM still stops it", async () => {
  const apiPort = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start"], {
    cwd: repoRoot,
    env: {
      ...process.env,
      COMFYUI_LAUNCH: "true",
      COMFYUI_DIR: dir,
      COMFYUI_PYTHON: "python3",
      COMFYUI_PORT: String(await freePort()),
      LOG_DIR: join(dir, "logs"),
      OUTPUT_DIR: join(dir, "output"),
      UNSECURED: "true",
      BENCHMARK_SKIP: "true",
      BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
      WORKER_HOST: "127.0.0.1",
      WORKER_PORT: String(await freePort()),
      WORKER_HTTP_PORT: "0",
      API_PORT: String(apiPort),
      LOG_LEVEL: "info",
      LOG_PRETTY: "false",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  const wake = new Set<() => void>();
  for (const stream of [child.stdout, child.stderr]) {
    stream.on("data", (d: Buffer) => {
      text += d.toString();
      for (const w of [...wake]) w();
    });
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once("exit", (code, signal) => r({ code, signal })),
  );
  const logged = () =>
    text
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { level: number; stage?: string; msg: string });
  const until = (match: (l: { level: number; stage?: string; msg: string }) => boolean, ms: number) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (logged().some(match)) {
          wake.delete(check);
          clearTimeout(timer);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        wake.delete(check);
        reject(new Error(`no such log line within ${ms} ms:\n${text.slice(-4000)}`));
      }, ms);
      wake.add(check);
      check();
    });
  try {
    // The worker's error_msg is set (Startup logs it as it sets it, stage lifecycle, level error).
    await until(
      (l) => l.stage === "lifecycle" && l.level === 50 && /ASSETS_STARTUP_FAILED:unwritable/.test(l.msg),
      120_000,
    );
    const ready = (await (await fetch(`http://127.0.0.1:${apiPort}/ready`)).json()) as Record<
      string,
      unknown
    >;
    expect(ready).toMatchObject({ ready: false, phase: "error" });
    expect(String(ready.error_msg)).toMatch(
      /^comfyui: ComfyUI stopped at start with ASSETS_STARTUP_FAILED:unwritable: its assets database/,
    );
    // The fleet's own error line, then the exit, and no restart.
    const msgs = logged().map((l) => l.msg);
    expect(msgs.some((m) => m.startsWith("comfyui: ComfyUI stopped at start"))).toBe(true);
    await until((l) => /^comfyui: exited \(code 1\)/.test(l.msg), 30_000);
    expect(logged().some((l) => /starting it again/.test(l.msg))).toBe(false);
    child.kill("SIGTERM");
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(logged().filter((l) => /^comfyui: started/.test(l.msg))).toHaveLength(1);
  } finally {
    child.kill("SIGKILL");
  }
}, 180_000);
