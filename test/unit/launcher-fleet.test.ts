import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import type { LaunchConfig, LaunchedInstance } from "../../config/index.js";
import { createLogger } from "../../lib/logger.js";
import { Fleet, logFleet } from "../../worker/launcher/fleet.js";
import { recordFleet } from "../harness/fleet-events.js";
import { captureLog } from "../harness/log-capture.js";
import { freePort } from "../../scripts/services/child.js";

/**
 * The fleet's process handling on a FAKE ComfyUI (a few lines of Python answering /system_stats), so that it runs
 * without ComfyUI: restarts and their delays, the stop and its SIGKILL for one that ignores SIGTERM (a fault the
 * real ComfyUI does not produce on demand). test/integration/launcher.test.ts does the same on the real ComfyUI.
 */

const FAKE_COMFYUI = `
import http.server, os, signal, sys
# ComfyUI 0.4x's start with its assets database locked or unwritable: the marker on stderr, then exit 1.
if os.path.exists(os.environ.get("FAKE_ASSETS_FAILED_FILE", "/nonexistent")):
    sys.stderr.write("Exception: database is locked\\nASSETS_STARTUP_FAILED:locked\\n")
    sys.exit(1)
if os.environ.get("FAKE_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"{}"
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
sys.stdout.write("fake ComfyUI line one\\nfake ComfyUI listening")
sys.stdout.flush()
sys.stderr.write(" (stderr)\\n")
server.serve_forever()
`;

let dir: string;
const logger = createLogger({ level: "silent", pretty: false });

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "launcher-fleet-"));
  await writeFile(join(dir, "fake_comfyui.py"), FAKE_COMFYUI);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function launchOf(count: number, over: Partial<LaunchConfig> = {}): Promise<LaunchConfig> {
  const instances: LaunchedInstance[] = [];
  for (let i = 0; i < count; i++) {
    const port = await freePort();
    instances.push({
      index: i,
      name: `comfyui-${i}`,
      port,
      url: `http://127.0.0.1:${port}`,
      args: [join(dir, "fake_comfyui.py"), String(port)],
      logFile: join(dir, "logs", `comfyui-${i}.log`),
    });
  }
  return {
    comfyDir: dir,
    python: "python3",
    logDir: join(dir, "logs"),
    folders: [join(dir, "out", "gpu0")],
    restartMaxDelayS: 60,
    stopTimeoutS: 30,
    instances,
    notes: ["a note"],
    ...over,
  };
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  // A zombie nobody reaped yet has ended too.
  return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
}

/** Its process group and session, from /proc/<pid>/stat. */
async function groupAndSession(pid: number): Promise<{ pgid: number; sid: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { pgid: Number(fields[2]), sid: Number(fields[3]) };
}

test("starts each instance in a session of its own, its output in its log file and on `echo` in whole lines; stop ends them", async () => {
  const echo = new PassThrough();
  let echoed = "";
  echo.on("data", (d: Buffer) => (echoed += d.toString()));
  const fleet = new Fleet(await launchOf(2), { logger, env: process.env, echo });
  const events = recordFleet(fleet);
  await fleet.start();
  expect((await events.next("planned")).notes).toEqual(["a note"]);
  const started = [await events.next("started"), await events.next("started")];
  const ready = [await events.next("ready"), await events.next("ready")];
  expect(ready.map((r) => r.index).sort()).toEqual([0, 1]);
  for (const s of started) {
    expect(s.pid).toBeGreaterThan(0);
    expect(await groupAndSession(s.pid!)).toEqual({ pgid: s.pid, sid: s.pid });
    expect(fleet.process(s.index)!.pid).toBe(s.pid);
  }
  await fleet.stop();
  const stopped = [await events.next("stopped"), await events.next("stopped")];
  expect(stopped.map((s) => [s.index, s.killed]).sort()).toEqual([
    [0, false],
    [1, false],
  ]);
  for (const s of started) expect(gone(s.pid!)).toBe(true);
  expect(events.seen.filter((e) => e.name === "exited" || e.name === "restarting")).toEqual([]);
  for (const i of [0, 1]) {
    const log = await readFile(join(dir, "logs", `comfyui-${i}.log`), "utf8");
    expect(log).toContain("fake ComfyUI line one\nfake ComfyUI listening");
  }
  // Whole lines only: the partial "listening" line was held back, never cut by another's output.
  for (const line of echoed.split("\n").filter(Boolean)) {
    expect(["fake ComfyUI line one", "fake ComfyUI listening", " (stderr)"]).toContain(line);
  }
});

test("an instance that exits while the worker runs starts again after 1 s, then 2 s; after a minute's run, 1 s again", async () => {
  let clock = 0;
  const launch = await launchOf(1, { restartMaxDelayS: 3 });
  const fleet = new Fleet(launch, { logger, env: process.env, echo: null, now: () => clock });
  const events = recordFleet(fleet);
  try {
    await fleet.start();
    const delays: number[] = [];
    // Runs of 1 s, 1 s, 1 s, then one past a minute.
    for (const ran of [1_000, 1_000, 1_000, 61_000]) {
      const { pid } = await events.next("started");
      await events.next("ready");
      clock += ran;
      process.kill(pid!, "SIGKILL");
      const exited = await events.next("exited");
      expect({ pid: exited.pid, signal: exited.signal, ranMs: exited.ranMs }).toEqual({
        pid,
        signal: "SIGKILL",
        ranMs: ran,
      });
      delays.push((await events.next("restarting")).delayMs);
    }
    expect(delays).toEqual([1_000, 2_000, 3_000, 1_000]);
    await events.next("ready");
    // The same instance each time, on its port.
    expect((await fetch(`${launch.instances[0]!.url}/system_stats`)).status).toBe(200);
  } finally {
    await fleet.stop();
  }
}, 60_000);

test("COMFYUI_RESTART_MAX_DELAY=0: an instance that exits stays down; a stop meanwhile starts none", async () => {
  const fleet = new Fleet(await launchOf(1, { restartMaxDelayS: 0 }), {
    logger,
    env: process.env,
    echo: null,
  });
  const events = recordFleet(fleet);
  await fleet.start();
  const { pid } = await events.next("started");
  process.kill(pid!, "SIGKILL");
  expect((await events.next("exited")).signal).toBe("SIGKILL");
  await fleet.stop();
  expect(events.seen.map((e) => e.name)).toEqual(["planned", "started", "exited"]);
});

test("no restart once stopping: an instance killed while the fleet stops stays down", async () => {
  const fleet = new Fleet(await launchOf(1), { logger, env: process.env, echo: null });
  const events = recordFleet(fleet);
  await fleet.start();
  const { pid } = await events.next("started");
  await events.next("ready");
  const stopping = fleet.stop();
  process.kill(pid!, "SIGKILL");
  await stopping;
  expect(events.seen.map((e) => e.name)).not.toContain("restarting");
  expect(fleet.process(0)!.pid).toBe(pid);
});

test("one that ignores SIGTERM gets SIGKILL after COMFYUI_STOP_TIMEOUT", async () => {
  const launch = await launchOf(1, { stopTimeoutS: 1 });
  const fleet = new Fleet(launch, { logger, echo: null, env: { ...process.env, FAKE_IGNORE_TERM: "1" } });
  const events = recordFleet(fleet);
  await fleet.start();
  const { pid } = await events.next("started");
  await events.next("ready");
  await fleet.stop();
  const stopped = await events.next("stopped");
  expect(stopped.killed).toBe(true);
  expect(stopped.durationMs).toBeGreaterThanOrEqual(1_000);
  expect(gone(pid!)).toBe(true);
});

test("a listener that throws is logged and reaches neither the fleet nor the other listeners", async () => {
  const errors: unknown[] = [];
  const fleet = new Fleet(await launchOf(1), {
    logger: { error: (o: unknown) => errors.push(o) },
    env: process.env,
    echo: null,
  });
  fleet.on("started", () => {
    throw new Error("a listener's bug");
  });
  const events = recordFleet(fleet);
  await fleet.start();
  await events.next("started");
  await events.next("ready");
  await fleet.stop();
  expect((await events.next("stopped")).killed).toBe(false);
  expect(errors).toHaveLength(1);
});

test("a program that cannot start is an exit like any other (and started again)", async () => {
  const fleet = new Fleet(await launchOf(1, { python: join(dir, "no-such-python") }), {
    logger,
    env: process.env,
    echo: null,
  });
  const events = recordFleet(fleet);
  await fleet.start();
  await events.next("started");
  const exited = await events.next("exited");
  // Through setpriv, the missing program is setpriv's failure to exec it; without, spawn's ENOENT.
  expect(exited.error !== undefined || exited.code !== 0).toBe(true);
  expect((await events.next("restarting")).delayMs).toBe(1_000);
  await fleet.stop();
});

test("ASSETS_STARTUP_FAILED on its output: startFailed (logged as an error), its exit, and no restart; restart() starts it once fixed", async () => {
  const marker = join(dir, "assets-fail");
  await writeFile(marker, "");
  const { logger: log, lines } = captureLog("info");
  const fleet = new Fleet(await launchOf(1), {
    logger,
    echo: null,
    env: { ...process.env, FAKE_ASSETS_FAILED_FILE: marker },
  });
  logFleet(fleet, log);
  const events = recordFleet(fleet);
  try {
    await fleet.start();
    const failed = await events.next("startFailed");
    expect(failed).toMatchObject({ index: 0, code: "ASSETS_STARTUP_FAILED", kind: "locked" });
    expect(failed.line).toBe("ASSETS_STARTUP_FAILED:locked");
    expect((await events.next("exited")).code).toBe(1);
    const logged = lines.map((l) => JSON.parse(l) as { level: number; msg: string; code?: string });
    expect(logged.find((l) => l.code === "ASSETS_STARTUP_FAILED")).toMatchObject({ level: 50 });
    // The operator fixed the database: restart() starts it, with no crash of its own told.
    await rm(marker);
    await fleet.restart(0, "the operator fixed it");
    expect(events.seen.map((e) => e.name)).toEqual([
      "planned",
      "started",
      "startFailed",
      "exited",
      "started",
      "ready",
    ]);
  } finally {
    await fleet.stop();
  }
});

test("restart(index): a running instance is stopped (recycled, not exited) and started again on its port; resolves once it answers", async () => {
  const launch = await launchOf(2);
  const fleet = new Fleet(launch, { logger, env: process.env, echo: null });
  const events = recordFleet(fleet);
  try {
    await fleet.start();
    await events.next("ready");
    await events.next("ready");
    const before = fleet.process(1)!.pid!;
    const other = fleet.process(0)!.pid!;
    await fleet.restart(1, "free VRAM drifted down");
    const recycled = await events.next("recycled");
    expect(recycled).toMatchObject({
      index: 1,
      pid: before,
      killed: false,
      reason: "free VRAM drifted down",
    });
    expect(gone(before)).toBe(true);
    expect(fleet.process(1)!.pid).not.toBe(before);
    expect(fleet.process(0)!.pid).toBe(other);
    expect((await fetch(`${launch.instances[1]!.url}/system_stats`)).status).toBe(200);
    expect(events.seen.map((e) => e.name)).not.toContain("exited");
    await expect(fleet.restart(5, "none")).rejects.toThrow("instance 5 is not one this worker starts");
  } finally {
    await fleet.stop();
  }
  await expect(fleet.restart(0, "late")).rejects.toThrow("stopping");
});
