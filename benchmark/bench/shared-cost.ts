/**
 * What job documents in the bucket cost (SHARED_JOBS): the S3 requests they add per job, and the latency they add
 * to /generate/sync, measured against a worker with SHARED_JOBS=false on the same ComfyUI and S3.
 */
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { Worker } from "../../worker/app.js";
import { generateSync, s3Env, workerEnv, type BenchParts, startWorker } from "./parts.js";
import { median } from "./stats.js";

export interface SharedCostResult {
  /** p50 of (shared − not shared) over interleaved pairs, ms. */
  addedP50Ms: number;
  /** Same, for requests that bring their own request_id (one read before running). */
  addedP50WithIdMs: number;
  putsPerJob: number;
  getsPerJob: number;
  headsPerJob: number;
}

function tinyWorkflow() {
  return {
    "1": { class_type: "EmptyImage", inputs: { width: 8, height: 8, batch_size: 1, color: 0 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "shared-cost" } },
  };
}

async function start(parts: BenchParts, shared: boolean, dir: string): Promise<Worker> {
  const { worker } = await startWorker(
    workerEnv(parts, { ...s3Env(parts), OUTPUT_DIR: join(dir, "output"), SHARED_JOBS: String(shared) }),
  );
  return worker;
}

async function sync(worker: Worker, requestId: string | undefined): Promise<number> {
  const started = performance.now();
  await generateSync(
    worker.apiUrl()!,
    { ...(requestId && { request_id: requestId }), workflow_json: tinyWorkflow() },
    { timeoutMs: 60_000, completed: true },
  );
  return performance.now() - started;
}

export async function measureSharedCost(parts: BenchParts, runs: number): Promise<SharedCostResult> {
  const shared = await start(parts, true, join(parts.dir, `shared-${randomUUID()}`));
  const plain = await start(parts, false, join(parts.dir, `plain-${randomUUID()}`));
  try {
    for (let i = 0; i < 10; i++) await Promise.all([sync(shared, undefined), sync(plain, undefined)]);
    const before = { ...shared.shared!.requests };
    const diffs: number[] = [];
    const diffsWithId: number[] = [];
    for (let i = 0; i < runs; i++) {
      // Alternate which goes first, so that neither always finds ComfyUI warmer.
      const withId = i % 2 === 1;
      const id = () => (withId ? `cost-${randomUUID()}` : undefined);
      let a: number;
      let b: number;
      if (i % 4 < 2) {
        a = await sync(shared, id());
        b = await sync(plain, id());
      } else {
        b = await sync(plain, id());
        a = await sync(shared, id());
      }
      (withId ? diffsWithId : diffs).push(a - b);
    }
    await shared.shared!.flush();
    const after = shared.shared!.requests;
    return {
      addedP50Ms: median(diffs),
      addedP50WithIdMs: median(diffsWithId),
      putsPerJob: (after.put - before.put) / runs,
      getsPerJob: (after.get - before.get) / runs,
      headsPerJob: (after.head - before.head) / runs,
    };
  } finally {
    await Promise.all([shared.stop(5_000), plain.stop(5_000)]);
  }
}
