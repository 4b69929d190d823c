import { mkdtemp } from "node:fs/promises";
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
