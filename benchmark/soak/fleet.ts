import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "../../scripts/services/child.js";
import { comfyArgsFor, ensureComfyUI, ensureTinyCheckpoint } from "../../scripts/services/comfyui.js";
import { repoRoot } from "../../scripts/services/paths.js";
import { startS3, type S3Service } from "../../scripts/services/seaweedfs.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { OutageProxy } from "./outage.js";

/** The fleet's bound of downloaded inputs per worker: low, so that the soak's URL inputs make the cache evict. */
export const INPUT_CACHE_MAX_FILES = 8;

/** One worker of the soak's fleet: its own Node process (so that SIGTERM, SIGKILL and RSS are its own). */
export interface SoakWorker {
  readonly index: number;
  /** The routed port's URL (what the router signs) and the local API's. */
  readonly routed: string;
  readonly api: string;
  readonly logFile: string;
  readonly outputDir: string;
  readonly inputDir: string;
  /** Spawns the worker and resolves once its /ready answers 200 (or rejects after `timeoutMs`). */
  start(timeoutMs?: number): Promise<void>;
  /** Sends `signal` and resolves once the process exited (SIGKILL after `graceMs`). */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
  running(): boolean;
  /** The pids of the ComfyUIs this worker's launcher started, newest last (from its JSON log). */
  comfyPids(): Promise<number[]>;
  /** Every JSON line of its log (all its runs). */
  logLines(): Promise<Record<string, unknown>[]>;
}

export interface Fleet {
  s3: S3Service;
  /** What the workers reach S3 through (the s3-outage fault takes it down). */
  s3Path: OutageProxy;
  router: RouterEmulator;
  /** The router's URL (the same across its restarts). */
  routerUrl: string;
  workers: SoakWorker[];
  bucket: string;
  prefix: string;
  stop(): Promise<void>;
}

export interface FleetOptions {
  dir: string;
  workers: number;
  /** Extra variables for every worker (they win over the fleet's). */
  env?: Record<string, string>;
  log: (line: string) => void;
}

/**
 * One S3 (SeaweedFS), the router emulator, and `workers` workers, each a `worker/cli.ts start` process that starts
 * its own ComfyUI (COMFYUI_LAUNCH=true, as production), on free ports, all under `dir`. The pieces are the local
 * stack's (scripts/services, scripts/router-emulator); the workers are processes here, not in-process as in
 * `npm run stack`, so that faults reach one worker only. The workers reach S3 through a proxy that a fault takes
 * down.
 */
export async function startFleet(opts: FleetOptions): Promise<Fleet> {
  const install = await ensureComfyUI();
  const s3 = await startS3({
    host: "127.0.0.1",
    port: await freePort(),
    dataDir: join(opts.dir, "s3"),
    accessKeyId: "soak-access-key",
    secretAccessKey: "soak-secret-key",
    buckets: ["outputs"],
    logFile: join(opts.dir, "logs", "seaweedfs.log"),
  });
  const s3Path = await new OutageProxy(new URL(s3.endpoint)).start();
  const router = new RouterEmulator({ port: await freePort(), log: (l) => opts.log(`router: ${l}`) });
  await router.listen();
  const prefix = "jobs/";
  const workers: SoakWorker[] = [];
  try {
    for (let i = 0; i < opts.workers; i++) {
      const base = join(opts.dir, `comfyui-${i + 1}`);
      await ensureTinyCheckpoint(install, base);
      const port = await freePort();
      const apiPort = await freePort();
      const env: Record<string, string> = {
        COMFYUI_LAUNCH: "true",
        COMFYUI_DIR: install.comfyDir,
        COMFYUI_PYTHON: install.python,
        COMFYUI_PORT: String(await freePort()),
        COMFYUI_ARGS: comfyArgsFor(install, base).join(" "),
        LOG_DIR: join(opts.dir, "logs", `worker-${i + 1}`),
        OUTPUT_DIR: join(opts.dir, `output-${i + 1}`),
        WORKER_PORT: String(port),
        WORKER_HOST: "127.0.0.1",
        WORKER_HTTP_PORT: String(await freePort()),
        API_PORT: String(apiPort),
        [`VAST_TCP_PORT_${port}`]: String(port),
        PUBLIC_IPADDR: "127.0.0.1",
        S3_ACCESS_KEY_ID: s3.accessKeyId,
        S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
        S3_ENDPOINT_URL: s3Path.url,
        S3_BUCKET_NAME: "outputs",
        S3_REGION: s3.region,
        SHARED_JOBS_PREFIX: prefix,
        REPORT_ADDR: router.url,
        CONTAINER_ID: String(i + 1),
        MASTER_TOKEN: "soak-master-token",
        INPUT_URL_ALLOW_PRIVATE: "true",
        INPUT_CACHE_MAX_FILES: String(INPUT_CACHE_MAX_FILES),
        WEBHOOK_ALLOW_PRIVATE: "true",
        BENCHMARK_SKIP: "true",
        BENCHMARK_CACHE_FILE: join(opts.dir, `.has_benchmark-${i + 1}`),
        PYWORKER_UPDATE_FLAG_FILE: join(opts.dir, `.force_update-${i + 1}`),
        COMFYUI_HISTORY_POLL_MS: "250",
        LOG_PRETTY: "false",
        LOG_LEVEL: "info",
        DRAIN_MS: "20000",
        ...opts.env,
      };
      workers.push(
        soakWorker(i, env, {
          routed: `http://127.0.0.1:${port}`,
          api: `http://127.0.0.1:${apiPort}`,
          logFile: join(opts.dir, "logs", `worker-${i + 1}.jsonl`),
          outputDir: env.OUTPUT_DIR!,
          inputDir: join(base, "input"),
        }),
      );
    }
    await Promise.all(workers.map((w) => w.start()));
  } catch (err) {
    await Promise.all(workers.map((w) => w.stop("SIGTERM", 5_000)));
    await router.close();
    await s3Path.stop();
    await s3.stop();
    throw err;
  }
  return {
    s3,
    s3Path,
    router,
    routerUrl: router.url,
    workers,
    bucket: "outputs",
    prefix,
    async stop() {
      await Promise.all(workers.map((w) => w.stop("SIGTERM", 30_000)));
      await router.close().catch(() => undefined);
      await s3Path.stop();
      await s3.stop();
    },
  };
}

function soakWorker(
  index: number,
  env: Record<string, string>,
  where: { routed: string; api: string; logFile: string; outputDir: string; inputDir: string },
): SoakWorker {
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const alive = () => child !== undefined && child.exitCode === null && child.signalCode === null;
  const self: SoakWorker = {
    index,
    ...where,
    async start(timeoutMs = 240_000) {
      if (alive()) return;
      await mkdir(join(where.logFile, ".."), { recursive: true });
      const log = createWriteStream(where.logFile, { flags: "a" });
      const proc = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "worker", "cli.ts"), "start"], {
        cwd: repoRoot,
        env: { ...process.env, ...env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      child = proc;
      proc.stdout.pipe(log, { end: false });
      proc.stderr.pipe(log, { end: false });
      exited = once(proc, "exit").then(() => void log.end());
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (!alive()) throw new Error(`worker ${index + 1} exited before it was ready; see ${where.logFile}`);
        const ok = await fetch(`${where.api}/ready`, { signal: AbortSignal.timeout(2_000) })
          .then((r) => r.arrayBuffer().then(() => r.status === 200))
          .catch(() => false);
        if (ok) return;
        await new Promise((r) => setTimeout(r, 500));
      }
      await self.stop("SIGKILL");
      throw new Error(`worker ${index + 1} was not ready within ${timeoutMs} ms; see ${where.logFile}`);
    },
    async stop(signal = "SIGTERM", graceMs = 30_000) {
      if (!alive()) return exited;
      child!.kill(signal);
      const timer = setTimeout(() => child?.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
    running: alive,
    async logLines() {
      const text = await readFile(where.logFile, "utf8").catch(() => "");
      const lines: Record<string, unknown>[] = [];
      for (const line of text.split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          lines.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // a line cut by a SIGKILL
        }
      }
      return lines;
    },
    async comfyPids() {
      return (await self.logLines())
        .filter((l) => typeof l.comfyui_pid === "number" && /started/.test(String(l.msg)))
        .map((l) => l.comfyui_pid as number);
    },
  };
  return self;
}
