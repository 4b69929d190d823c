import type { FrozenConfig } from "../../config/index.js";
import { ComfyClient } from "../../handlers/comfyui/client.js";
import { ObjectStorage, resolveS3 } from "../../handlers/storage/s3.js";
import { createLogger } from "../../lib/logger.js";
import { fetchPublicKey } from "../reporter/pubkey.js";

/** `comfyui-worker check`: the config is valid (it parsed), and ComfyUI, S3 and the autoscaler answer. */
export async function checkCommand(config: FrozenConfig): Promise<number> {
  const out = process.stdout;
  let failures = 0;
  const report = async (name: string, fn: () => Promise<string>) => {
    try {
      out.write(`ok    ${name}: ${await fn()}\n`);
    } catch (err) {
      failures++;
      out.write(`FAIL  ${name}: ${err instanceof Error ? err.message : String(err)}\n`);
    }
  };
  out.write("ok    config: every variable parsed\n");
  for (const [i, backend] of config.comfyui.backends.entries()) {
    await report(config.comfyui.backends.length > 1 ? `ComfyUI backend ${i}` : "ComfyUI", async () => {
      const client = new ComfyClient({ baseUrl: backend.url, requestTimeoutMs: 5_000 });
      const stats = (await client.systemStats(AbortSignal.timeout(5_000))) as {
        system?: { comfyui_version?: string };
        devices?: { name?: string }[];
      };
      return `${backend.url}, ComfyUI ${stats.system?.comfyui_version ?? "?"} on ${(stats.devices ?? []).map((d) => d.name).join(", ")}`;
    });
  }
  await report("S3", async () => {
    const target = resolveS3(config.s3, undefined);
    if (!target) return "not configured (outputs stay local unless a request names its bucket)";
    const storage = new ObjectStorage({
      forcePathStyle: config.s3.forcePathStyle,
      partSizeBytes: config.s3.partSizeBytes,
      presignExpirySeconds: config.s3.presignExpirySeconds,
      uploadTimeoutMs: 10_000,
    });
    try {
      await storage.probe(target);
      return `bucket ${target.bucketName} at ${target.endpointUrl ?? "AWS"} is reachable`;
    } finally {
      storage.close();
    }
  });
  await report("autoscaler", async () => {
    if (config.autoscaler.reportAddrs.length === 0) return "REPORT_ADDR not set (UNSECURED, no reports)";
    const logger = createLogger({ level: "silent", pretty: false });
    await fetchPublicKey(config.autoscaler.reportAddrs, { logger, attempts: 1, timeoutMs: 5_000 });
    return `public key served by ${config.autoscaler.reportAddrs.join(", ")}`;
  });
  return failures === 0 ? 0 : 1;
}
