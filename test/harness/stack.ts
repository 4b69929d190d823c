/**
 * The real parts every integration test talks to: one ComfyUI (CPU, tiny SD1.5 checkpoint) and one SeaweedFS S3,
 * started by the jest global setup on free ports with isolated folders, or reused when TEST_COMFYUI_URL and
 * friends point at a running stack. Tests read where they are from this module.
 */
export interface StackInfo {
  comfyUrl: string;
  comfyBaseDir: string;
  s3Endpoint: string;
  s3AccessKeyId: string;
  s3SecretAccessKey: string;
  s3Bucket: string;
  s3SecondBucket: string;
  s3Region: string;
  /** Folder for per-test scratch space. */
  tmpRoot: string;
}

export function stack(): StackInfo {
  const env = process.env;
  const need = (name: string): string => {
    const v = env[name];
    if (!v) throw new Error(`${name} is not set: the jest global setup did not run (use npm test)`);
    return v;
  };
  return {
    comfyUrl: need("TEST_COMFYUI_URL"),
    comfyBaseDir: need("TEST_COMFYUI_BASE_DIR"),
    s3Endpoint: need("TEST_S3_ENDPOINT"),
    s3AccessKeyId: need("TEST_S3_ACCESS_KEY_ID"),
    s3SecretAccessKey: need("TEST_S3_SECRET_ACCESS_KEY"),
    s3Bucket: need("TEST_S3_BUCKET"),
    s3SecondBucket: need("TEST_S3_SECOND_BUCKET"),
    s3Region: "us-east-1",
    tmpRoot: need("TEST_TMP_ROOT"),
  };
}

/**
 * Resolves once ComfyUI runs no prompt, polling its /queue (an interrupt lands between two steps, so the queue
 * changes a moment after the worker answered). Rejects after `timeoutMs`.
 */
export async function waitForComfyIdle(comfyUrl: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const queue = (await (
      await fetch(`${comfyUrl}/queue`, { signal: AbortSignal.timeout(10_000) })
    ).json()) as {
      queue_running: unknown[];
    };
    if (queue.queue_running.length === 0) return;
    if (Date.now() > deadline) throw new Error(`ComfyUI still runs a prompt after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
