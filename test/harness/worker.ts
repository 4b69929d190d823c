import { once } from "node:events";
import { mkdtemp } from "node:fs/promises";
import { got } from "got";
import { createServer, type AddressInfo } from "node:net";
import { basename, join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../../config/index.js";
import { createWorker, type Worker } from "../../worker/app.js";
import { bootBenchmark } from "../../benchmark/boot.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { stack } from "./stack.js";

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The variables that point a worker (or the CLI) at the shared test ComfyUI and S3. */
export function stackEnv(outputDir: string): Record<string, string> {
  const s = stack();
  return {
    COMFYUI_URL: s.comfyUrl,
    COMFYUI_BASE_DIR: s.comfyBaseDir,
    OUTPUT_DIR: outputDir,
    S3_ACCESS_KEY_ID: s.s3AccessKeyId,
    S3_SECRET_ACCESS_KEY: s.s3SecretAccessKey,
    S3_ENDPOINT_URL: s.s3Endpoint,
    S3_BUCKET_NAME: s.s3Bucket,
    S3_REGION: s.s3Region,
    UNSECURED: "true",
    // Webhook receivers in tests listen on 127.0.0.1; tests of the address policy turn this off.
    WEBHOOK_ALLOW_PRIVATE: "true",
  };
}

export interface TestWorker {
  worker: Worker;
  routed: string;
  api: string;
  outputDir: string;
  /** The worker's own scratch folder (its output folder and flag files are inside). */
  dir: string;
  stop(): Promise<void>;
}

/**
 * A worker against the shared test ComfyUI and S3, on free ports, with its own output folder and benchmark cache.
 * Unsecured and without a benchmark unless `env` says otherwise.
 */
export async function startTestWorker(
  env: Record<string, string> = {},
  opts: { publicKeyPem?: string; configRoot?: string; logger?: Logger } = {},
): Promise<TestWorker> {
  const s = stack();
  const dir = await mkdtemp(join(s.tmpRoot, "worker-"));
  // A real port, so that the URL the worker advertises (and signed requests must name) is the one it listens on.
  const port = env.WORKER_PORT ?? String(await freePort());
  const config = loadConfig(
    {
      WORKER_PORT: port,
      [`VAST_TCP_PORT_${port}`]: port,
      WORKER_HOST: "127.0.0.1",
      // Any free port: WORKER_PORT + 1 may be another test's.
      WORKER_HTTP_PORT: "0",
      API_PORT: "0",
      ...stackEnv(join(dir, "output")),
      BENCHMARK_SKIP: "true",
      BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
      PYWORKER_UPDATE_FLAG_FILE: join(dir, ".force_update"),
      // Each test worker is an endpoint of its own unless a test puts several under one prefix.
      SHARED_JOBS_PREFIX: `${basename(dir)}/`,
      INPUT_URL_ALLOW_PRIVATE: "true",
      COMFYUI_HISTORY_POLL_MS: "250",
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
      ...env,
    },
    opts.configRoot ?? repoRoot,
  );
  const logger = opts.logger ?? createLogger({ level: config.log.level, pretty: false });
  const worker = createWorker({
    config,
    logger,
    root: repoRoot,
    benchmark: bootBenchmark(config, repoRoot),
    ...(opts.publicKeyPem !== undefined && { publicKeyPem: opts.publicKeyPem }),
  });
  try {
    await worker.start();
  } catch (err) {
    // The caller may look at what it reported, then must stop it: it is attached to the error.
    throw Object.assign(err as Error, { worker });
  }
  return {
    worker,
    routed: worker.routedUrl(),
    api: worker.apiUrl() ?? "",
    outputDir: config.outputDir,
    dir,
    stop: () => worker.stop(5_000),
  };
}

export async function freePort(): Promise<number> {
  const probe = createServer().listen(0, "127.0.0.1");
  await once(probe, "listening");
  const port = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
  return port;
}

/**
 * POSTs JSON and returns status and parsed body (undefined when empty). The deadline is explicit (`timeoutMs`,
 * 5 minutes unless told): got has no default timeouts, where fetch's undici would stop waiting for headers after
 * 300 s, which a long job on a loaded machine reaches.
 */
export async function postJson(
  url: string,
  body: unknown,
  opts: { timeoutMs?: number; signal?: AbortSignal; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: any }> {
  const res = await got.post(url, {
    body: typeof body === "string" ? body : JSON.stringify(body),
    headers: { "content-type": "application/json", ...opts.headers },
    timeout: { request: opts.timeoutMs ?? 300_000 },
    retry: { limit: 0 },
    throwHttpErrors: false,
    ...(opts.signal && { signal: opts.signal }),
  });
  const text = res.body;
  return { status: res.statusCode, body: text ? JSON.parse(text) : undefined };
}

/** GETs JSON and returns status and parsed body (undefined when empty), with a 30 s deadline. */
export async function getJson(url: string): Promise<{ status: number; body: any }> {
  const res = await got(url, { timeout: { request: 30_000 }, retry: { limit: 0 }, throwHttpErrors: false });
  return { status: res.statusCode, body: res.body ? JSON.parse(res.body) : undefined };
}

/**
 * Calls `fn` every 100 ms until `test` holds for its answer or `timeoutMs` passed, and returns the last answer: for
 * state another process moves on (another worker's job in the bucket), where there is no event to await.
 */
export async function pollUntil<T>(
  fn: () => Promise<T>,
  test: (v: T) => boolean,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (test(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The first status the operator page's event stream (`/console/events`) sends, parsed; 30 s deadline. */
export async function firstConsoleStatus(api: string): Promise<any> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 30_000);
  try {
    const events = await fetch(`${api}/console/events`, { signal: ac.signal });
    const reader = events.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    let status: RegExpExecArray | null = null;
    while (!(status = /event: status\ndata: (.*)\n\n/.exec(text))) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the event stream ended");
      text += value;
    }
    return JSON.parse(status[1]!);
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
}
