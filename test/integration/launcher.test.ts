import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { loadConfig } from "../../config/index.js";
import { createLogger } from "../../lib/logger.js";
import { freePort } from "../../scripts/services/child.js";
import { comfyArgsFor, ensureComfyUI, type ComfyInstall } from "../../scripts/services/comfyui.js";
import { Fleet } from "../../worker/launcher/fleet.js";
import { systemHost } from "../../worker/launcher/host.js";
import { parentDeathBinding } from "../../worker/launcher/instance.js";
import { recordFleet } from "../harness/fleet-events.js";
import { stack } from "../harness/stack.js";
import { pollUntil, repoRoot } from "../harness/worker.js";

/**
 * The launcher of COMFYUI_LAUNCH=true on the real ComfyUI (CPU): a fleet that restarts an instance killed under it,
 * and the worker's CLI that starts its ComfyUI, stops it after the drain, and takes it down when killed.
 */

/** A ComfyUI start on a loaded 2-core machine. */
const START_MS = 240_000;

let install: ComfyInstall;
beforeAll(async () => {
  install = await ensureComfyUI();
});

/** The variables of a worker that starts its own CPU ComfyUI on a free port, with its folders in `dir`. */
async function launchEnv(dir: string): Promise<Record<string, string>> {
  return {
    COMFYUI_LAUNCH: "true",
    COMFYUI_DIR: install.comfyDir,
    COMFYUI_PYTHON: install.python,
    COMFYUI_PORT: String(await freePort()),
    COMFYUI_ARGS: comfyArgsFor(install, dir).join(" "),
    LOG_DIR: join(dir, "logs"),
  };
}

/** Ended: no such process, or a zombie that its new parent has not reaped yet. */
function ended(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

async function systemStats(url: string): Promise<number> {
  const res = await fetch(`${url}/system_stats`, { signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return res.status;
}

test("a ComfyUI killed under the fleet is started again on its port; restart() recycles it (SIGTERM, answers again); stop() ends it", async () => {
  const dir = await mkdtemp(join(stack().tmpRoot, "launcher-"));
  const config = loadConfig(
    { UNSECURED: "true", ...(await launchEnv(dir)) },
    repoRoot,
    systemHost(process.env),
  );
  const fleet = new Fleet(config.launch!, {
    logger: createLogger({ level: "silent", pretty: false }),
    env: process.env,
    echo: null,
  });
  const events = recordFleet(fleet);
  const url = config.comfyui.backends[0]!.url;
  try {
    await fleet.start();
    const first = await events.next("started");
    expect(first).toMatchObject({ index: 0, name: "comfyui", url });
    await events.next("ready", START_MS);
    expect(await systemStats(url)).toBe(200);

    process.kill(first.pid!, "SIGKILL");
    expect(await events.next("exited")).toMatchObject({ index: 0, pid: first.pid, signal: "SIGKILL" });
    expect((await events.next("restarting")).delayMs).toBe(1_000);
    const again = await events.next("started", 10_000);
    expect(again.pid).not.toBe(first.pid);
    expect(again.url).toBe(url);
    await events.next("ready", START_MS);
    expect(await systemStats(url)).toBe(200);
    expect(ended(first.pid!)).toBe(true);

    // What the worker does to a ComfyUI whose free VRAM drifted: stopped and started again, answering once it
    // resolves, with no crash of its own told.
    await fleet.restart(0, "a test's reason");
    expect(await events.next("recycled")).toMatchObject({ index: 0, pid: again.pid, killed: false });
    const third = await events.next("started");
    await events.next("ready");
    expect(await systemStats(url)).toBe(200);
    expect(ended(again.pid!)).toBe(true);
    expect(events.seen.filter((e) => e.name === "exited")).toHaveLength(1);

    await fleet.stop();
    expect(await events.next("stopped")).toMatchObject({ index: 0, pid: third.pid, killed: false });
    expect(ended(third.pid!)).toBe(true);
    await expect(systemStats(url)).rejects.toThrow();
    // Its output went to its log file, all three runs.
    const log = await readFile(join(dir, "logs", "comfyui.log"), "utf8");
    expect(log.match(/To see the GUI go to/g)?.length).toBe(3);
  } finally {
    await fleet.stop();
  }
});

/** The worker's CLI (`start`) as a process, its JSON log lines parsed as they come. */
function startCli(env: Record<string, string>) {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start"],
    {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const lines: Record<string, any>[] = [];
  let text = "";
  const wake = new Set<() => void>();
  // Each stream's partial line apart: a chunk of one must not end the other's line.
  const reader = () => {
    let partial = "";
    return (chunk: Buffer) => {
      text += chunk.toString();
      const all = partial + chunk.toString();
      const end = all.lastIndexOf("\n") + 1;
      partial = all.slice(end);
      for (const line of all.slice(0, end).split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          lines.push(JSON.parse(line));
        } catch {
          // A ComfyUI line that starts with a brace.
        }
      }
      for (const w of [...wake]) w();
    };
  };
  child.stdout!.on("data", reader());
  child.stderr!.on("data", reader());
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    exited,
    output: () => text,
    /** The worker's JSON log lines, in the order each was written. */
    logLines: () => lines,
    /** The first log line that `match` accepts, within `timeoutMs`. */
    async line(match: (l: Record<string, any>) => boolean, timeoutMs: number): Promise<Record<string, any>> {
      let timer: NodeJS.Timeout | undefined;
      let listener: (() => void) | undefined;
      try {
        return await new Promise((resolve, reject) => {
          listener = () => {
            const found = lines.find(match);
            if (found) resolve(found);
          };
          wake.add(listener);
          listener();
          timer = setTimeout(
            () => reject(new Error(`no such log line within ${timeoutMs} ms:\n${text.slice(-4000)}`)),
            timeoutMs,
          );
          void exited.then(() => {
            listener!();
            reject(new Error(`the worker exited first:\n${text.slice(-4000)}`));
          });
        });
      } finally {
        clearTimeout(timer);
        wake.delete(listener!);
      }
    },
  };
}

async function cliEnv(): Promise<Record<string, string>> {
  const dir = await mkdtemp(join(stack().tmpRoot, "launcher-cli-"));
  return {
    ...(await launchEnv(dir)),
    UNSECURED: "true",
    BENCHMARK_SKIP: "true",
    BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
    WORKER_HOST: "127.0.0.1",
    WORKER_PORT: String(await freePort()),
    WORKER_HTTP_PORT: "0",
    API_PORT: "0",
    LOG_LEVEL: "info",
    LOG_PRETTY: "false",
  };
}

const started = (l: Record<string, any>) => l.stage === "comfyui" && /^comfyui: started/.test(l.msg);
const ready = (l: Record<string, any>) => l.stage === "lifecycle" && /^ready/.test(l.msg);

test("the worker's CLI with COMFYUI_LAUNCH=true starts its ComfyUI, gets ready on it; SIGTERM drains, then stops it", async () => {
  const worker = startCli(await cliEnv());
  try {
    const pid = (await worker.line(started, 60_000)).comfyui_pid as number;
    await worker.line(ready, START_MS);
    expect(ended(pid)).toBe(false);
    worker.child.kill("SIGTERM");
    expect(await worker.exited).toEqual({ code: 0, signal: null });
    expect(ended(pid)).toBe(true);
    // Stopped after the drain began: it served while the worker drained.
    const order = worker.logLines().map((l) => l.msg as string);
    const at = (prefix: string) => order.findIndex((m) => m?.startsWith(prefix));
    expect(at("stopping: no new jobs")).toBeGreaterThan(-1);
    expect(at("comfyui: stopped")).toBeGreaterThan(at("stopping: no new jobs"));
  } finally {
    worker.child.kill("SIGKILL");
  }
});

const bound = await parentDeathBinding();
(bound ? test : test.skip)(
  `a worker that is SIGKILLed takes its ComfyUI down with it (parent-death signal${bound ? "" : ": SKIPPED, setpriv --pdeathsig does not work here"})`,
  async () => {
    const worker = startCli(await cliEnv());
    let pid: number | undefined;
    try {
      pid = (await worker.line(started, 60_000)).comfyui_pid as number;
      await worker.line(ready, START_MS);
      worker.child.kill("SIGKILL");
      expect((await worker.exited).signal).toBe("SIGKILL");
      expect(
        await pollUntil(
          async () => ended(pid!),
          (gone) => gone,
          30_000,
        ),
      ).toBe(true);
    } finally {
      worker.child.kill("SIGKILL");
      if (pid !== undefined && !ended(pid)) process.kill(pid, "SIGKILL");
    }
  },
);
