import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, type Service } from "../../scripts/services/child.js";
import { ensureComfyUI, ensureTinyCheckpoint, startComfyUI } from "../../scripts/services/comfyui.js";
import { startS3 } from "../../scripts/services/seaweedfs.js";
import { retry } from "../../lib/retry.js";

declare global {
  var __TEST_SERVICES__: Service[] | undefined;
}

/**
 * Starts the real parts once for the whole run. A part that cannot start fails the run with the reason (no test
 * is skipped silently). Set TEST_COMFYUI_URL + TEST_COMFYUI_BASE_DIR (and TEST_S3_*) to reuse a running stack.
 */
export default async function globalSetup(): Promise<void> {
  const started = Date.now();
  const root = await mkdtemp(join(tmpdir(), "comfyui-worker-test-"));
  process.env.TEST_TMP_ROOT = root;
  // The AWS SDK's "Node 20 support ends" warning, once per test file under Node 20, buried CI's log tail; the test
  // files inherit this (the CLI's own switch for users is tested without it).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const services: Service[] = [];
  globalThis.__TEST_SERVICES__ = services;
  const log = (msg: string) => process.stderr.write(`[test stack] ${msg}\n`);

  const tasks: Promise<void>[] = [];
  if (!process.env.TEST_COMFYUI_URL) {
    tasks.push(
      (async () => {
        const install = await ensureComfyUI();
        const baseDir = join(root, "comfyui");
        await ensureTinyCheckpoint(install, baseDir);
        const comfy = await onFreePorts("ComfyUI", async (attempt) =>
          startComfyUI({
            install,
            host: "127.0.0.1",
            port: await freePort(),
            baseDir,
            logFile: join(root, "logs", `comfyui-${attempt}.log`),
          }),
        );
        services.push(comfy);
        process.env.TEST_COMFYUI_URL = comfy.url;
        process.env.TEST_COMFYUI_BASE_DIR = baseDir;
        log(`ComfyUI at ${comfy.url} (log ${comfy.logFile})`);
      })(),
    );
  }
  if (!process.env.TEST_S3_ENDPOINT) {
    tasks.push(
      (async () => {
        const s3 = await onFreePorts("SeaweedFS", async (attempt) =>
          startS3({
            host: "127.0.0.1",
            port: await freePort(),
            dataDir: join(root, `s3-${attempt}`),
            accessKeyId: "test-access-key",
            secretAccessKey: "test-secret-key",
            buckets: ["outputs", "second-bucket"],
            logFile: join(root, "logs", `seaweedfs-${attempt}.log`),
          }),
        );
        services.push(s3);
        Object.assign(process.env, {
          TEST_S3_ENDPOINT: s3.endpoint,
          TEST_S3_ACCESS_KEY_ID: s3.accessKeyId,
          TEST_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
          TEST_S3_BUCKET: "outputs",
          TEST_S3_SECOND_BUCKET: "second-bucket",
        });
        log(`S3 at ${s3.endpoint}`);
      })(),
    );
  }
  const results = await Promise.allSettled(tasks);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    await Promise.all(services.map((s) => s.stop()));
    throw new Error(`the test stack could not start: ${String(failed.reason?.message ?? failed.reason)}`);
  }
  log(`ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/**
 * Starts a service on ports found free a moment before; another process may take one of them first on a busy
 * machine (SeaweedFS alone binds five), so a start that fails is tried again on new ports, three times at most.
 */
function onFreePorts<T>(name: string, start: (attempt: number) => Promise<T>): Promise<T> {
  return retry(start, {
    attempts: 3,
    delayMs: () => 0,
    onFailure: (err, _attempt, willRetry) => {
      if (willRetry) {
        const why = err instanceof Error ? err.message : String(err);
        process.stderr.write(`[test stack] ${name} did not start (${why}); trying other ports\n`);
      }
    },
  });
}
