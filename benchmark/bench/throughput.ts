import { randomUUID } from "node:crypto";
import type { BenchParts } from "./parts.js";
import { generateSync, s3Env, workerEnv, startWorker, type SyncAnswer } from "./parts.js";

/** A model-free job with real work in ComfyUI (a blur over 4 images) and 4 PNGs to upload. */
function job() {
  return {
    "1": { class_type: "EmptyImage", inputs: { width: 512, height: 512, batch_size: 4, color: 3355443 } },
    "2": { class_type: "ImageBlur", inputs: { image: ["1", 0], blur_radius: 12, sigma: 4.0 } },
    "3": { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: `tp-${randomUUID()}` } },
  };
}

export interface ThroughputResult {
  jobs: number;
  seconds: number;
  jobsPerMinute: number;
  /** ComfyUI idle between one prompt's end and the next one's start, ms. */
  idleMs: number[];
}

function idleGaps(results: SyncAnswer[]): number[] {
  const spans = results
    .map((r) => {
      const m = r.comfyui_response.status?.messages ?? [];
      const start = m.find(([t]) => t === "execution_start")?.[1].timestamp;
      const end = m.find(([t]) => t === "execution_success")?.[1].timestamp;
      return start !== undefined && end !== undefined ? { start, end } : undefined;
    })
    .filter((s): s is { start: number; end: number } => s !== undefined)
    .sort((a, b) => a.start - b.start);
  return spans.slice(1).map((s, i) => s.start - spans[i]!.end);
}

/**
 * Jobs per minute with outputs uploaded to S3, and ComfyUI's idle time between jobs:
 * - pipelined: all jobs submitted at once to a worker keeping 2 prompts in ComfyUI;
 * - serial (as upstream): one request at a time, each answered (uploaded) before the next is sent.
 */
export async function measureThroughput(
  parts: BenchParts,
  jobs: number,
  mode: "pipelined" | "serial",
): Promise<ThroughputResult> {
  const { worker } = await startWorker(
    workerEnv(parts, {
      ...s3Env(parts),
      MAX_INFLIGHT_PROMPTS: mode === "pipelined" ? "2" : "1",
      MAX_QUEUE_TIME: "100000",
    }),
  );
  const api = worker.apiUrl()!;
  const send = () => generateSync(api, { workflow_json: job() }, { completed: true });
  await send(); // warm-up
  const t = performance.now();
  let results: SyncAnswer[];
  if (mode === "pipelined") {
    results = await Promise.all(Array.from({ length: jobs }, send));
  } else {
    results = [];
    for (let i = 0; i < jobs; i++) results.push(await send());
  }
  const seconds = (performance.now() - t) / 1000;
  await worker.stop(5_000);
  return { jobs, seconds, jobsPerMinute: (jobs / seconds) * 60, idleMs: idleGaps(results) };
}
