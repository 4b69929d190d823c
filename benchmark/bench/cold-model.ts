/**
 * A cold job (its checkpoint named by URL and fetched) against the same job warm (the checkpoint in the cache): how
 * long each takes, how admission priced each, and the load the autoscaler hears for each. The checkpoint is the tiny
 * SD1.5 one of the stack, served by a local HTTP server throttled to BENCH_MODEL_MBPS (100 MB/s unless told), so
 * that the download takes as long as it would from a source of that bandwidth.
 *
 * Part of `npm run bench` (this section alone: BENCH_ONLY=models); `tsx benchmark/bench/cold-model.ts` runs it on
 * parts of its own and prints the section. BENCH_MODEL_REPEATS (3) pairs, each on a reference never fetched before.
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, readFile, realpath, stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { SD15_CHECKPOINT } from "../../scripts/services/comfyui.js";
import { repoRoot } from "../../scripts/services/paths.js";
import type { Worker } from "../../worker/app.js";
import {
  benchmarkingEnv,
  reportingEnv,
  startParts,
  startWorker,
  workerEnv,
  type BenchParts,
} from "./parts.js";
import { fmt } from "./stats.js";

const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
const repeats = Number(process.env.BENCH_MODEL_REPEATS ?? 3);
const mbps = Number(process.env.BENCH_MODEL_MBPS ?? 100);
export const COLD_MODEL_HEADING = "## Models on demand: a cold job against a warm one";

/** A server of one file under any path ending in `.safetensors`, at `bytesPerSecond`; HEAD answers its size. */
async function throttledFileServer(
  file: string,
  bytesPerSecond: number,
): Promise<{ url: string; server: Server }> {
  const size = (await stat(file)).size;
  const server = createServer((req, res) => {
    if (!req.url?.endsWith(".safetensors")) return void res.writeHead(404).end();
    res.writeHead(200, { "content-length": size });
    if (req.method === "HEAD") return void res.end();
    // 1 MiB at a time, each sent when the bandwidth allows it: a token bucket with no burst.
    const started = performance.now();
    let sent = 0;
    const stream = createReadStream(file, { highWaterMark: 1024 * 1024 });
    stream.on("data", (chunk) => {
      stream.pause();
      sent += chunk.length;
      const due = started + (sent / bytesPerSecond) * 1000;
      setTimeout(
        () => {
          if (res.write(chunk)) stream.resume();
          else res.once("drain", () => stream.resume());
        },
        Math.max(0, due - performance.now()),
      );
    });
    stream.on("end", () =>
      setTimeout(() => res.end(), Math.max(0, started + (size / bytesPerSecond) * 1000 - performance.now())),
    );
    res.on("close", () => stream.destroy());
  });
  server.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

export interface ModelRun {
  kind: "cold" | "warm";
  /** Expected download seconds admission priced (0 when the model is there). */
  expectedS: number;
  /** The job's GPU workload and its download part, as admitted. */
  workload: number;
  downloadWorkload: number;
  /** The highest cur_load of the /worker_status/ reports received while the job ran, and max_perf then. */
  reportedLoad: number;
  reportedMaxPerf: number;
  /** The job's preprocessing (the download), its generation and its whole time, seconds. */
  preprocessS: number;
  generationS: number;
  totalS: number;
}

/** The benchmark's own graph (tiny SD1.5, 64×64, one step) with its checkpoint named by `ckpt`. */
async function jobWorkflow(ckpt: string): Promise<Record<string, { inputs: Record<string, unknown> }>> {
  const wf: Record<string, { inputs: Record<string, unknown> }> = JSON.parse(
    await readFile(join(repoRoot, "misc/workflows/sd15_text2image.json"), "utf8"),
  );
  Object.assign(wf["5"]!.inputs, { width: 64, height: 64 });
  wf["3"]!.inputs.steps = 1;
  wf["4"]!.inputs.ckpt_name = ckpt;
  return wf;
}

async function runOne(
  worker: Worker,
  router: RouterEmulator,
  containerId: number,
  kind: ModelRun["kind"],
  ckpt: string,
): Promise<ModelRun> {
  const routed = worker.routedUrl();
  const id = `model-${kind}-${randomUUID()}`;
  const before = router.reports.length;
  const res = await fetch(`${routed}/generate`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      auth_data: { request_idx: 1, url: routed },
      payload: { input: { request_id: id, workflow_json: await jobWorkflow(ckpt) } },
    }),
    signal: AbortSignal.timeout(60_000),
  });
  if (res.status >= 300) throw new Error(`/generate answered ${res.status}: ${await res.text()}`);
  const job = worker.jobs.get(id)!;
  const admitted = {
    expectedS: job.downloadSeconds,
    workload: job.workload,
    downloadWorkload: job.downloadWorkload,
  };
  await Promise.race([
    job.done,
    new Promise((_, reject) => setTimeout(() => reject(new Error("job timed out")), 600_000).unref()),
  ]);
  if (job.status !== "completed") throw new Error(`job ${job.status}: ${job.message}`);
  // The admission was reported (the tracker's change); a report computed just before it may arrive after it, so
  // the highest of those received while the job ran is the one that heard it.
  const heard = () =>
    router.reports.slice(before).filter((r) => r.path === "/worker_status/" && r.body.id === containerId);
  await router.waitFor(() => heard().length > 0, 30_000);
  const report = heard().reduce((a, b) => (Number(b.body.cur_load) > Number(a.body.cur_load) ? b : a));
  return {
    kind,
    ...admitted,
    reportedLoad: Number(report.body.cur_load),
    reportedMaxPerf: Number(report.body.max_perf),
    preprocessS: job.timings.preprocess_ms / 1000,
    generationS: job.timings.generation_ms / 1000,
    totalS: job.timings.total_ms / 1000,
  };
}

export async function measureColdModel(parts: BenchParts): Promise<{ runs: ModelRun[]; bytes: number }> {
  const checkpoint = await realpath(join(parts.comfyBaseDir, "models", "checkpoints", SD15_CHECKPOINT));
  const bytes = (await stat(checkpoint)).size;
  const files = await throttledFileServer(checkpoint, mbps * 1e6);
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const dir = await mkdtemp(join(parts.dir, "models-"));
  const containerId = 300;
  const { worker } = await startWorker(
    workerEnv(parts, {
      ...benchmarkingEnv(dir, 1),
      ...reportingEnv(router.url, containerId),
      REPORT_INTERVAL_MS: "100",
      MAX_QUEUE_TIME: "1000",
      INPUT_URL_ALLOW_PRIVATE: "true",
      MODEL_MAX_BYTES: String(1024 ** 3),
    }),
  );
  try {
    const runs: ModelRun[] = [];
    for (let i = 0; i < repeats; i++) {
      const ckpt = `${files.url}/pair-${i}-${randomUUID().slice(0, 8)}/tiny.safetensors`;
      for (const kind of ["cold", "warm"] as const) {
        log(`models ${i + 1}/${repeats}: ${kind} job`);
        runs.push(await runOne(worker, router, containerId, kind, ckpt));
        log(JSON.stringify(runs.at(-1)));
      }
    }
    return { runs, bytes };
  } finally {
    await worker.stop(5_000);
    await router.close();
    files.server.closeAllConnections();
    await new Promise((r) => files.server.close(r));
  }
}

export async function coldModelSection(parts: BenchParts): Promise<string> {
  const { runs, bytes } = await measureColdModel(parts);
  const rows = runs.map((r, i) => {
    const pair = Math.floor(i / 2) + 1;
    return `| ${pair} | ${r.kind} | ${fmt(r.expectedS, 2)} | ${fmt(r.preprocessS, 2)} | ${fmt(r.generationS, 2)} | ${fmt(r.totalS, 2)} | ${fmt(r.workload, 1)} | ${fmt(r.downloadWorkload, 1)} | ${fmt(r.reportedLoad, 1)} | ${fmt(r.reportedLoad / r.reportedMaxPerf, 2)} |`;
  });
  return `${COLD_MODEL_HEADING}

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=models npm run bench\`, or
\`npx tsx benchmark/bench/cold-model.ts\`, which prints it) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}; ComfyUI on the CPU; the checkpoint (${fmt(bytes / 1e6, 0)} MB) served at ${mbps} MB/s (\`BENCH_MODEL_MBPS\`).

| pair | job | expected download, s | preprocess (download), s | generation, s | total, s | GPU workload | download workload | cur_load reported | cur_load / max_perf, s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join("\n")}

Method: one worker (its boot benchmark the tiny SD1.5 graph, 64×64, one step, with the image's checkpoint: one
benchmark run is a workload of 100) reporting to the router emulator every 100 ms. ${repeats} pairs, each on a URL
never fetched before: the tiny checkpoint, served by a local HTTP server that sends it 1 MiB at a time at
${mbps} MB/s and answers HEAD with its size. Each job is the same graph with \`ckpt_name\` set to the URL, sent as
the router's client sends it (\`POST /generate\` on the routed port); first cold (downloaded), then the same job
warm (found in the cache). The expected download, the GPU workload and the download workload are what admission
gave the job (the size from the HEAD, over the throughput measured on the earlier downloads: 50 MB/s assumed
before the first); \`cur_load\` is the highest of the reports the router received while the job ran (the one
sent when it was admitted: the download part then shrinks as the bytes arrive, and nothing else runs), and
\`cur_load / max_perf\` the drain time it tells the autoscaler. The timings are the job's own (\`timings\` of its
result). The cold job's generation includes ComfyUI loading a checkpoint it has not loaded before; a job that
waited on a download teaches the cost model nothing (that load is the download's cost, not the graph's), so the
warm job after it is priced as the cold one was, from the prior (the model name is part of a graph's shape: each
pair's graph is new, one benchmark run's worth).
`;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const parts = await startParts();
  try {
    process.stdout.write(await coldModelSection(parts));
  } finally {
    await parts.stop();
  }
}
