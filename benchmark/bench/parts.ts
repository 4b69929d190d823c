import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, type Service } from "../../scripts/services/child.js";
import { ensureComfyUI, ensureTinyCheckpoint, startComfyUI } from "../../scripts/services/comfyui.js";
import { startS3, type S3Service } from "../../scripts/services/seaweedfs.js";
import { loadConfig, type FrozenConfig } from "../../config/index.js";
import { createLogger } from "../../lib/logger.js";
import { repoRoot } from "../../scripts/services/paths.js";
import { createWorker, type Worker } from "../../worker/app.js";
import { bootBenchmark } from "../boot.js";

export interface BenchParts {
  dir: string;
  comfyUrl: string;
  comfyBaseDir: string;
  s3: S3Service;
  stop(): Promise<void>;
}

/** A fresh ComfyUI and S3 on free ports, as the tests use them. */
export async function startParts(): Promise<BenchParts> {
  const dir = await mkdtemp(join(tmpdir(), "comfyui-worker-bench-"));
  const install = await ensureComfyUI();
  const comfyBaseDir = join(dir, "comfyui");
  await ensureTinyCheckpoint(install, comfyBaseDir);
  const services: Service[] = [];
  const [comfy, s3] = await Promise.all([
    startComfyUI({
      install,
      host: "127.0.0.1",
      port: await freePort(),
      baseDir: comfyBaseDir,
      logFile: join(dir, "comfyui.log"),
    }),
    startS3({
      host: "127.0.0.1",
      port: await freePort(),
      dataDir: join(dir, "s3"),
      accessKeyId: "bench",
      secretAccessKey: "bench-secret",
      buckets: ["bench"],
      logFile: join(dir, "s3.log"),
    }),
  ]);
  services.push(comfy, s3);
  return {
    dir,
    comfyUrl: comfy.url,
    comfyBaseDir,
    s3,
    stop: async () => void (await Promise.all(services.map((s) => s.stop()))),
  };
}

export function workerEnv(parts: BenchParts, extra: Record<string, string> = {}): Record<string, string> {
  return {
    WORKER_PORT: "0",
    WORKER_HOST: "127.0.0.1",
    API_PORT: "0",
    COMFYUI_URL: parts.comfyUrl,
    COMFYUI_BASE_DIR: parts.comfyBaseDir,
    OUTPUT_DIR: join(parts.dir, "output"),
    UNSECURED: "true",
    BENCHMARK_SKIP: "true",
    LOG_LEVEL: "silent",
    ...extra,
  };
}

/** A worker of its own under `dir` that runs its boot benchmark on the tiny graph (64x64, `steps` steps). */
export function benchmarkingEnv(dir: string, steps: number): Record<string, string> {
  return {
    OUTPUT_DIR: join(dir, "output"),
    BENCHMARK_SKIP: "false",
    BENCHMARK_TEST_WIDTH: "64",
    BENCHMARK_TEST_HEIGHT: "64",
    BENCHMARK_TEST_STEPS: String(steps),
    BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
  };
}

/** A worker that reports to the router emulator at `reportAddr` as instance `containerId`. */
export function reportingEnv(reportAddr: string, containerId: number): Record<string, string> {
  return { REPORT_ADDR: reportAddr, CONTAINER_ID: String(containerId), MASTER_TOKEN: "bench" };
}

export function s3Env(parts: BenchParts): Record<string, string> {
  return {
    S3_ACCESS_KEY_ID: parts.s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: parts.s3.secretAccessKey,
    S3_ENDPOINT_URL: parts.s3.endpoint,
    S3_BUCKET_NAME: "bench",
  };
}

/** A worker built in this process from `env` (silent logs) and started; the caller stops it. */
export async function startWorker(
  env: Record<string, string>,
): Promise<{ worker: Worker; config: FrozenConfig }> {
  const config = loadConfig(env, repoRoot);
  const worker = createWorker({
    config,
    logger: createLogger({ level: "silent", pretty: false }),
    root: repoRoot,
    benchmark: bootBenchmark(config, repoRoot),
  });
  await worker.start();
  return { worker, config };
}

export interface CompiledWorker {
  child: ChildProcess;
  pid: number;
  /** SIGTERM, then SIGKILL after 30 s; resolves once it exited (at once if it had). */
  stop(): Promise<void>;
}

/**
 * The compiled worker (`node dist/worker/cli.js start`, as production runs it: `npm run build` first) with `env`
 * over this process's environment, once it logged that it is ready (it must log at info level or more). A worker
 * that exits or is not ready within `readyTimeoutMs` is stopped and an error with its last output thrown.
 */
export async function spawnCompiledWorker(
  env: Record<string, string>,
  readyTimeoutMs = 120_000,
): Promise<CompiledWorker> {
  const child = spawn(process.execPath, [join(repoRoot, "dist/worker/cli.js"), "start"], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill("SIGTERM");
    const kill = setTimeout(() => child.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(kill);
  };
  let out = "";
  const onData = (d: Buffer) => {
    if (out.length < 1_000_000) out += d.toString();
  };
  child.stdout.on("data", onData);
  try {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        child.stdout.off("data", check);
        child.off("exit", exited);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(
        () => done(new Error(`worker not ready within ${readyTimeoutMs} ms: ${out.slice(-2_000)}`)),
        readyTimeoutMs,
      );
      const check = () => void (out.includes('"msg":"ready') && done());
      const exited = () => done(new Error(`worker exited: ${out.slice(-2_000)}`));
      child.stdout.on("data", check);
      child.once("exit", exited);
    });
  } catch (err) {
    await stop();
    throw err;
  } finally {
    child.stdout.off("data", onData);
  }
  // Its later output is not kept, but read, so that the pipe never fills.
  child.stdout.resume();
  return { child, pid: child.pid!, stop };
}

/** A figure of /proc/<pid>/status in MB: the resident set (VmRSS) or its high-water mark (VmHWM). */
export async function procMb(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
}

/** What /generate/sync answers, as far as the benchmarks read it. */
export interface SyncAnswer {
  id: string;
  status: string;
  message: string;
  error?: { code?: string };
  output: { local_path: string }[];
  comfyui_response: { status?: { messages?: [string, { timestamp?: number }][] } };
}

/**
 * POSTs `{input}` to the local API's /generate/sync and returns its answer, under a deadline. With `completed`,
 * an answer that is not `completed` is an error (the figure would count a failure as work).
 */
export async function generateSync(
  api: string,
  input: Record<string, unknown>,
  opts: { timeoutMs?: number; completed?: boolean } = {},
): Promise<SyncAnswer> {
  const res = await fetch(`${api}/generate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input }),
    signal: AbortSignal.timeout(opts.timeoutMs ?? 600_000),
  });
  const body = (await res.json()) as SyncAnswer;
  if (opts.completed && body.status !== "completed") throw new Error(`job ${body.status}: ${body.message}`);
  return body;
}
