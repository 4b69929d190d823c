/**
 * Issue 12's device check: the seed's SD1.5 text-to-image at 512x512, 20 steps, sent `runs` times straight to
 * ComfyUI and `runs` times through the worker's local API, interleaved (alternating which goes first), after one
 * warm-up each. Prints one JSON object: the medians, their ratio and every time. Needs a ComfyUI already running
 * with the SD1.5 checkpoint (scripts/gpu-check.sh sets one up on a GPU).
 *   node dist/benchmark/gpu/worker-vs-direct.js <comfyui url> <comfyui base dir> [runs]
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../../scripts/services/paths.js";
import { DirectComfy } from "../bench/overhead.js";
import { generateSync, startWorker } from "../bench/parts.js";
import { median } from "../bench/stats.js";

const [comfyUrl, baseDir, runsArg] = process.argv.slice(2);
if (!comfyUrl || !baseDir)
  throw new Error("usage: worker-vs-direct.js <comfyui url> <comfyui base dir> [runs]");
const runs = Number(runsArg ?? 20);

function workflow(): Record<string, { inputs: Record<string, unknown> }> {
  const wf = JSON.parse(readFileSync(join(repoRoot, "misc/workflows/sd15_text2image.json"), "utf8"));
  wf["3"].inputs.seed = Math.floor(Math.random() * 2 ** 32); // a new seed each run: ComfyUI's cache never helps
  return wf;
}

const { worker } = await startWorker({
  WORKER_PORT: "0",
  WORKER_HOST: "127.0.0.1",
  API_PORT: "0",
  COMFYUI_URL: comfyUrl,
  COMFYUI_BASE_DIR: baseDir,
  OUTPUT_DIR: join(baseDir, "worker-output"),
  UNSECURED: "true",
  BENCHMARK_SKIP: "true",
  LOG_LEVEL: "silent",
});
const direct = new DirectComfy(comfyUrl);
await direct.open();
const viaWorker = async () => {
  await generateSync(worker.apiUrl()!, { workflow_json: workflow() }, { completed: true });
};
const timed = async (fn: () => Promise<void>) => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};
try {
  await direct.run(workflow());
  await viaWorker();
  const directMs: number[] = [];
  const workerMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    if (i % 2 === 0) {
      directMs.push(await timed(() => direct.run(workflow())));
      workerMs.push(await timed(viaWorker));
    } else {
      workerMs.push(await timed(viaWorker));
      directMs.push(await timed(() => direct.run(workflow())));
    }
  }
  const result = {
    runs,
    direct_median_ms: median(directMs),
    worker_median_ms: median(workerMs),
    worker_over_direct: median(workerMs) / median(directMs),
    direct_ms: directMs,
    worker_ms: workerMs,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  direct.close();
  await worker.stop(5_000);
}
