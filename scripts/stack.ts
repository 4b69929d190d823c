/**
 * `npm run stack`: the whole local stack in the foreground, installed on first use.
 *   ComfyUI (CPU, tiny SD1.5 checkpoint)  http://127.0.0.1:18188
 *   S3 (SeaweedFS), bucket "outputs"      http://127.0.0.1:8333
 *   router emulator                       http://127.0.0.1:8080   (REPORT_ADDR of the worker, the client's autoscaler)
 *   worker, routed port (signed)          http://127.0.0.1:3000
 *   worker, local API, page at /, /docs   http://127.0.0.1:18288
 * Every variable the worker reads can be set in the environment to override the stack's defaults.
 * Ctrl-C or SIGTERM stops every child.
 */
import { join } from "node:path";
import { loadConfig } from "../config/index.js";
import { createWorker } from "../worker/app.js";
import { createLogger } from "../lib/logger.js";
import type { Service } from "./services/child.js";
import { ensureComfyUI, ensureTinyCheckpoint, startComfyUI } from "./services/comfyui.js";
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

const services: Service[] = [];
let stopping = false;
let stopWorker: (() => Promise<void>) | undefined;
let router: RouterEmulator | undefined;

async function shutdown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    say("stopping...");
    await stopWorker?.().catch(() => undefined);
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
  const baseDir = join(stackDir, "comfyui");
  await ensureTinyCheckpoint(install, baseDir);
  const [comfy, s3] = await Promise.all([
    startComfyUI({
      install,
      host: "127.0.0.1",
      port: ports.comfy,
      baseDir,
      logFile: join(stackDir, "logs", "comfyui.log"),
    }),
    startS3({
      host: "127.0.0.1",
      port: ports.s3,
      dataDir: join(stackDir, "s3"),
      accessKeyId: "local-access-key",
      secretAccessKey: "local-secret-key",
      buckets: ["outputs"],
      logFile: join(stackDir, "logs", "seaweedfs.log"),
    }),
  ]);
  services.push(comfy, s3);
  say(`ComfyUI        ${comfy.url}   (log ${comfy.logFile})`);
  say(`S3             ${s3.endpoint}   bucket outputs, key local-access-key / local-secret-key`);

  router = new RouterEmulator({ port: ports.router, log: (l) => say(`router: ${l}`) });
  say(`router         ${await router.listen()}   (REPORT_ADDR, /route/, GET /workers)`);

  const config = loadConfig(
    {
      WORKER_PORT: String(ports.worker),
      WORKER_HOST: "127.0.0.1",
      API_PORT: String(ports.api),
      COMFYUI_URL: comfy.url,
      COMFYUI_BASE_DIR: baseDir,
      S3_ACCESS_KEY_ID: s3.accessKeyId,
      S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      S3_ENDPOINT_URL: s3.endpoint,
      S3_BUCKET_NAME: "outputs",
      S3_REGION: s3.region,
      REPORT_ADDR: router.url,
      CONTAINER_ID: "1",
      MASTER_TOKEN: "local-master-token",
      PUBLIC_IPADDR: "127.0.0.1",
      [`VAST_TCP_PORT_${ports.worker}`]: String(ports.worker),
      INPUT_URL_ALLOW_PRIVATE: "true",
      // The local stack's webhook receivers are on loopback; an explicit WEBHOOK_ALLOW_PRIVATE wins.
      WEBHOOK_ALLOW_PRIVATE: "true",
      // SD1.5 at 512x512 takes minutes per image on a CPU: the stack benchmarks a 64x64, 4-step image unless told.
      BENCHMARK_TEST_WIDTH: "64",
      BENCHMARK_TEST_HEIGHT: "64",
      BENCHMARK_TEST_STEPS: "4",
      BENCHMARK_CACHE_FILE: join(stackDir, ".has_benchmark"),
      LOG_PRETTY: "true",
      ...env,
    },
    repoRoot,
  );
  const logger = createLogger(config.log);
  const worker = createWorker({ config, logger, root: repoRoot });
  stopWorker = () => worker.stop(10_000);
  await worker.start();
  say(`worker routed  ${worker.routedUrl()}   (signed by the router)`);
  say(
    `worker API     ${worker.apiUrl() ?? "disabled"}   (the operator page at /, /generate/sync, /docs, /metrics)`,
  );
  say(
    `state: ${worker.phase()}${worker.errorMsg() ? ` (${worker.errorMsg()})` : ""}. Ctrl-C stops everything.`,
  );
} catch (err) {
  process.stderr.write(`[stack] failed: ${err instanceof Error ? err.message : String(err)}\n`);
  await shutdown(1);
}
