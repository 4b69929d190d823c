/**
 * `npm run stack`: the whole local stack in the foreground, installed on first use.
 *   ComfyUI (CPU, tiny SD1.5 checkpoint)  http://127.0.0.1:18188
 *   S3 (SeaweedFS), bucket "outputs"      http://127.0.0.1:8333
 *   router emulator                       http://127.0.0.1:8080   (REPORT_ADDR of the worker, the client's autoscaler)
 *   worker, routed port (signed)          http://127.0.0.1:3000
 *   worker, local API, page at /, /docs   http://127.0.0.1:18288
 * Each worker starts its ComfyUI itself, as in production (COMFYUI_LAUNCH=true, worker/launcher/): restarted if it
 * dies, stopped after the worker drains; its log in .stack/logs/comfyui.log.
 * STACK_WORKERS=N starts an endpoint of N workers on the same S3 and router, worker i (from 0) with its own
 * ComfyUI on 18188+i and ports 3000+i / 18288+i (logs of worker i > 0 in .stack/logs/worker-<i+1>/).
 * STACK_COMFYUI_INSTANCES=M gives each worker M ComfyUI backends as production's one per GPU does (COMFYUI_PER_GPU
 * with M GPU ids): worker i's backend j on 18188+i*M+j, each with its own output folder (output/gpu<j>), all
 * reading one input folder. STACK_COMFYUI_THREADS=T limits each CPU backend to T threads (one GPU each, as it
 * were).
 * Every variable the worker reads can be set in the environment to override the stack's defaults.
 * Ctrl-C or SIGTERM stops every child.
 */
import { join } from "node:path";
import { loadConfig } from "../config/index.js";
import { createWorker } from "../worker/app.js";
import { systemHost } from "../worker/launcher/host.js";
import { bootBenchmark } from "../benchmark/boot.js";
import { createLogger } from "../lib/logger.js";
import type { Service } from "./services/child.js";
import { comfyArgsFor, ensureComfyUI, ensureTinyCheckpoint } from "./services/comfyui.js";
import { repoRoot } from "./services/paths.js";
import { startS3 } from "./services/seaweedfs.js";
import { RouterEmulator } from "./router-emulator/emulator.js";

const env = process.env;
const num = (name: string, fallback: number) => Number(env[name] ?? fallback);
const ports = {
  comfy: num("STACK_COMFYUI_PORT", 18188),
  s3: num("STACK_S3_PORT", 8333),
  router: num("STACK_ROUTER_PORT", 8080),
  worker: num("WORKER_PORT", 3000),
  api: num("API_PORT", 18288),
};
const stackDir = env.STACK_DIR ?? join(repoRoot, ".stack");
const say = (line: string) => process.stdout.write(`[stack] ${line}\n`);

/** STACK_WORKERS=N: an endpoint of N workers, each with its own ComfyUI and ports (+i), one S3 and one router. */
const workerCount = Math.max(1, Math.floor(num("STACK_WORKERS", 1)));
/** STACK_COMFYUI_INSTANCES=M: M ComfyUI backends per worker. */
const instances = Math.max(1, Math.floor(num("STACK_COMFYUI_INSTANCES", 1)));
const threads = env.STACK_COMFYUI_THREADS === undefined ? undefined : num("STACK_COMFYUI_THREADS", 1);

const services: Service[] = [];
let stopping = false;
const stopWorkers: (() => Promise<void>)[] = [];
let router: RouterEmulator | undefined;

async function shutdown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    say("stopping...");
    await Promise.all(stopWorkers.map((stop) => stop().catch(() => undefined)));
    await router?.close().catch(() => undefined);
    await Promise.all(services.map((s) => s.stop()));
  }
  process.exit(code);
}
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

try {
  say("installing what is missing (the first run takes a few minutes)...");
  const install = await ensureComfyUI();
  const suffix = (i: number) => (i === 0 ? "" : `-${i + 1}`);
  const baseDirs = Array.from({ length: workerCount }, (_, i) => join(stackDir, `comfyui${suffix(i)}`));
  for (const dir of baseDirs) await ensureTinyCheckpoint(install, dir);
  const s3 = await startS3({
    host: "127.0.0.1",
    port: ports.s3,
    dataDir: join(stackDir, "s3"),
    accessKeyId: "local-access-key",
    secretAccessKey: "local-secret-key",
    buckets: ["outputs"],
    logFile: join(stackDir, "logs", "seaweedfs.log"),
  });
  services.push(s3);
  say(`S3             ${s3.endpoint}   bucket outputs, key local-access-key / local-secret-key`);

  router = new RouterEmulator({ port: ports.router, log: (l) => say(`router: ${l}`) });
  say(`router         ${await router.listen()}   (REPORT_ADDR, /route/, GET /workers)`);

  for (let i = 0; i < workerCount; i++) {
    const workerPort = ports.worker + i;
    // What production's image sets, pointed at the cached install and this worker's folders.
    const launch = {
      COMFYUI_LAUNCH: "true",
      COMFYUI_DIR: install.comfyDir,
      COMFYUI_PYTHON: install.python,
      COMFYUI_PORT: String(ports.comfy + i * instances),
      COMFYUI_ARGS: comfyArgsFor(install, baseDirs[i]!).join(" "),
      LOG_DIR: i === 0 ? join(stackDir, "logs") : join(stackDir, "logs", `worker-${i + 1}`),
    };
    const config = loadConfig(
      {
        WORKER_PORT: String(workerPort),
        WORKER_HOST: "127.0.0.1",
        API_PORT: String(ports.api + i),
        ...launch,
        S3_ACCESS_KEY_ID: s3.accessKeyId,
        S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
        S3_ENDPOINT_URL: s3.endpoint,
        S3_BUCKET_NAME: "outputs",
        S3_REGION: s3.region,
        REPORT_ADDR: router.url,
        CONTAINER_ID: String(i + 1),
        MASTER_TOKEN: "local-master-token",
        PUBLIC_IPADDR: "127.0.0.1",
        [`VAST_TCP_PORT_${workerPort}`]: String(workerPort),
        INPUT_URL_ALLOW_PRIVATE: "true",
        // The local stack's webhook receivers are on loopback; an explicit WEBHOOK_ALLOW_PRIVATE wins.
        WEBHOOK_ALLOW_PRIVATE: "true",
        // SD1.5 at 512x512 takes minutes per image on a CPU: the stack benchmarks a 64x64, 4-step image unless told.
        BENCHMARK_TEST_WIDTH: "64",
        BENCHMARK_TEST_HEIGHT: "64",
        BENCHMARK_TEST_STEPS: "4",
        BENCHMARK_CACHE_FILE: join(stackDir, `.has_benchmark${suffix(i)}`),
        LOG_PRETTY: "true",
        ...env,
        // Per-worker values win over the environment when there are several.
        // Their plain-HTTP ports follow the routed ones (WORKER_PORT + 1 is the next worker's).
        ...(workerCount > 1 && {
          ...launch,
          WORKER_PORT: String(workerPort),
          WORKER_HTTP_PORT: String(ports.worker + workerCount + i),
          API_PORT: String(ports.api + i),
        }),
        // M backends: one ComfyUI per "GPU" (each CPU ComfyUI ignores its id).
        ...(instances > 1 && {
          COMFYUI_PER_GPU: "true",
          CUDA_VISIBLE_DEVICES: Array.from({ length: instances }, (_, j) => String(j)).join(","),
        }),
      },
      repoRoot,
      systemHost(env),
    );
    const logger = createLogger(config.log).child({ worker: i + 1 });
    const worker = createWorker({
      config,
      logger,
      root: repoRoot,
      benchmark: bootBenchmark(config, repoRoot),
      launchEnv: {
        ...env,
        ...(threads !== undefined && { OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) }),
      },
    });
    stopWorkers.push(() => worker.stop(10_000));
    const name = workerCount > 1 ? ` ${i + 1}` : "";
    for (const [j, backend] of config.comfyui.backends.entries()) {
      say(`worker${name} ComfyUI ${backend.url}   (log ${config.launch?.instances[j]?.logFile ?? "?"})`);
    }
    await worker.start();
    say(`worker${name} routed  ${worker.routedUrl()}   (signed by the router)`);
    say(
      `worker${name} API     ${worker.apiUrl() ?? "disabled"}   (the operator page at /, /generate/sync, /docs, /metrics)`,
    );
    say(`worker${name} state: ${worker.phase()}${worker.errorMsg() ? ` (${worker.errorMsg()})` : ""}.`);
  }
  say("Ctrl-C stops everything.");
} catch (err) {
  process.stderr.write(`[stack] failed: ${err instanceof Error ? err.message : String(err)}\n`);
  await shutdown(1);
}
