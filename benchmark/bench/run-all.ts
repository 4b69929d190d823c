/**
 * `npm run bench`: measures the worker against real parts started for the purpose (ComfyUI on the CPU, SeaweedFS)
 * and writes BENCHMARKS.md. Not a test: nothing here asserts; the figures are for reading.
 *   BENCH_REPEATS (3)  repetitions of each measurement; the figure is their median, the spread min–max
 *   BENCH_OVERHEAD_RUNS (200), BENCH_JOBS (20), BENCH_UPLOAD_MB (1024), BENCH_RETENTION_REQUESTS (150),
 *   BENCH_SCALING_JOBS (12)
 */
import { execFile } from "node:child_process";
import { open, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort } from "../../scripts/services/child.js";
import { repoRoot } from "../../scripts/services/paths.js";
import { measureOverhead, type OverheadResult } from "./overhead.js";
import { measureRetention, type RetentionResult } from "./retention-memory.js";
import { procMb, spawnCompiledWorker, startParts, workerEnv, s3Env, type BenchParts } from "./parts.js";
import { fmt, median, quantile, spread } from "./stats.js";
import { measureThroughput, type ThroughputResult } from "./throughput.js";
import { measureSharedCost, type SharedCostResult } from "./shared-cost.js";
import { eightRoundScore, measureSignal, signalSection, type SignalRun } from "./load-signal.js";
import { measureScaling, startScalingBackends, type ScalingRun } from "./scaling.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { coldStartSection } from "./cold-start.js";
import { coldModelSection } from "./cold-model.js";
import { hostileBodiesSection } from "./hostile-bodies.js";
import { sectionOf, withSection } from "./sections.js";
import { SOAK_HEADING } from "../soak/report.js";

const run = promisify(execFile);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
const overheadRuns = Number(process.env.BENCH_OVERHEAD_RUNS ?? 200);
const jobs = Number(process.env.BENCH_JOBS ?? 20);
const uploadMb = Number(process.env.BENCH_UPLOAD_MB ?? 1024);
const retentionRequests = Number(process.env.BENCH_RETENTION_REQUESTS ?? 150);
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
/**
 * BENCH_ONLY=memory (or overhead, retention) prints that part's raw figures and writes nothing; BENCH_ONLY=signal
 * (the load signal, BENCH_SIGNAL_REPEATS 5), shared (job documents, BENCH_SHARED_RUNS 100) or scaling (two
 * backends, BENCH_SCALING_JOBS 12) or cold (cold start beside upstream's worker, BENCH_COLD_REPEATS 3) or hostile
 * (/health and memory while hostile bodies arrive on the routed port) or models (a cold job against a warm one,
 * BENCH_MODEL_REPEATS 3, BENCH_MODEL_MBPS 100) measures that part and replaces only its section of BENCHMARKS.md.
 */
const only = process.env.BENCH_ONLY;
const signalRepeats = Number(process.env.BENCH_SIGNAL_REPEATS ?? 5);
const sharedRuns = Number(process.env.BENCH_SHARED_RUNS ?? 100);
const scalingJobs = Number(process.env.BENCH_SCALING_JOBS ?? 12);

async function loadSignal(parts: BenchParts): Promise<string> {
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  try {
    const runs: SignalRun[] = [];
    for (let i = 0; i < signalRepeats; i++) {
      log(`load signal ${i + 1}/${signalRepeats}: boot, learning burst, measured burst`);
      runs.push(await measureSignal(parts, router, i));
      log(JSON.stringify(runs.at(-1)));
    }
    log("load signal: 8-round benchmark for reference");
    return signalSection(runs, await eightRoundScore(parts));
  } finally {
    await router.close();
  }
}

async function sharedCost(parts: BenchParts): Promise<string> {
  const results: SharedCostResult[] = [];
  for (let i = 0; i < repeats; i++) {
    log(`shared job documents ${i + 1}/${repeats} (${sharedRuns} interleaved pairs)`);
    results.push(await measureSharedCost(parts, sharedRuns));
  }
  const col = (f: (r: SharedCostResult) => number, digits = 2) =>
    `${fmt(median(results.map(f)), digits)} | ${spread(results.map(f), digits)}`;
  return `## Job documents in the bucket

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=shared\`) on ${new Date().toISOString().slice(0, 10)}; median of ${repeats} repetitions, spread min–max.

| measurement | figure | spread | target |
| --- | --- | --- | --- |
| latency added to /generate/sync, p50 ms | ${col((r) => r.addedP50Ms)} | < 5 |
| same, with a caller-chosen request_id (one read first), p50 ms | ${col((r) => r.addedP50WithIdMs)} | |
| S3 writes (PUT) per job | ${col((r) => r.putsPerJob)} | ≤ 3 |
| S3 reads (GET) per job | ${col((r) => r.getsPerJob)} | |
| S3 HEADs per job (cancel checks, one per running second) | ${col((r) => r.headsPerJob)} | |

Method: two workers on the same ComfyUI and SeaweedFS, one with \`SHARED_JOBS=true\` (the default with S3) and
one with \`SHARED_JOBS=false\`, each uploading its outputs. ${sharedRuns} pairs of \`/generate/sync\` of an 8×8
EmptyImage → SaveImage workflow, interleaved (alternating which goes first) after 10 warm-up pairs; every other
pair brings its own request_id. The figure is the median of the per-pair differences. Requests are counted by the
worker's job-document store over the same runs (the claim, the final document, and what the owner's once-a-second
cancel check and 5 s heartbeat add while a job runs).
`;
}

async function scaling(parts: BenchParts): Promise<string> {
  const set = await startScalingBackends(parts);
  const runs: ScalingRun[] = [];
  try {
    for (let i = 0; i < repeats; i++) {
      log(
        `scaling ${i + 1}/${repeats}: ${scalingJobs} jobs on one backend and on two, then a backend killed`,
      );
      runs.push(await measureScaling(parts, set, scalingJobs, i % 2 === 1));
      log(JSON.stringify(runs.at(-1)));
    }
  } finally {
    await set.stop();
  }
  const col = (f: (r: ScalingRun) => number, digits = 1) =>
    `${fmt(median(runs.map(f)), digits)} | ${spread(runs.map(f), digits)}`;
  return `## One worker, several GPUs (ComfyUI backends)

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=scaling\`) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}; median of ${repeats} repetitions, spread min–max.

| measurement | figure | spread | target |
| --- | --- | --- | --- |
| one backend, jobs/min | ${col((r) => r.oneRate)} | |
| two backends, jobs/min | ${col((r) => r.twoRate)} | |
| two / one | ${col((r) => r.twoRate / r.oneRate, 2)} | ≥ 1.7 |
| outputs with the same image data, whichever backend ran them | ${runs.every((r) => r.identical) ? "all" : "NOT all"} | | all |
| backend killed mid-burst: jobs completed, of ${scalingJobs} | ${col((r) => r.killed.completed, 0)} | |
| same: failed retryable (\`comfyui_unavailable\`) on the killed backend | ${col((r) => r.killed.failedOnKilled, 0)} | |
| same: failed otherwise | ${col((r) => r.killed.failedOtherwise, 0)} | | 0 |

Method: two CPU ComfyUI servers, each started with \`OMP_NUM_THREADS=1\` (one thread each, as each GPU is one
device to its ComfyUI), reading one input folder and writing their own output folders. One worker with
\`COMFYUI_URLS\` naming the first only, then one naming both (in alternating order over the repetitions), gets two
warm-up jobs per backend and then a burst of ${scalingJobs} \`/generate/sync\` requests at once, each a blur of one 1024×1024
image (about a second of one thread, no model), outputs kept local (no S3). The rate is the burst's jobs over its
wall time. Every output's PNG image data (its IDAT chunks; the metadata names each request) is hashed: one
workflow gives one image, whichever backend ran it. Then a worker on both gets the same burst, and the second
backend is killed (SIGKILL) as soon as a job starts executing on it; jobs that were running or queued in it fail
with \`comfyui_unavailable\` (503, the client retries them), the others complete on the first backend. It is
started again for the next repetition. The ratio is taken within each repetition; above 2 (the machine has two
cores) it shows the noise of the one-backend runs.
`;
}

/** The sections \`BENCH_ONLY\` can measure alone, each replacing only its own part of BENCHMARKS.md. */
const sections: Record<string, (parts: BenchParts) => Promise<string>> = {
  signal: loadSignal,
  shared: sharedCost,
  scaling,
  cold: coldStartSection,
  hostile: hostileBodiesSection,
  models: coldModelSection,
};

async function idleRss(parts: BenchParts): Promise<number> {
  const w = await spawnCompiledWorker(
    workerEnv(parts, { API_PORT: String(await freePort()), LOG_LEVEL: "info" }),
  );
  try {
    await new Promise((r) => setTimeout(r, 3_000));
    return await procMb(w.pid);
  } finally {
    await w.stop();
  }
}

async function uploadGrowth(
  parts: BenchParts,
): Promise<{ growthMb: number; baselineMb: number; seconds: number; bytes: number }> {
  const file = join(parts.dir, "big.bin");
  const fh = await open(file, "w");
  const chunk = Buffer.alloc(8 * 1024 * 1024, 7);
  for (let i = 0; i < uploadMb / 8; i++) await fh.write(chunk);
  await fh.close();
  const s3 = s3Env(parts);
  const { stdout } = await run(
    process.execPath,
    [
      join(repoRoot, "dist/benchmark/bench/upload-memory.js"),
      file,
      s3.S3_ENDPOINT_URL!,
      s3.S3_ACCESS_KEY_ID!,
      s3.S3_SECRET_ACCESS_KEY!,
      s3.S3_BUCKET_NAME!,
    ],
    { timeout: 600_000 },
  );
  await rm(file, { force: true });
  return JSON.parse(stdout) as { growthMb: number; baselineMb: number; seconds: number; bytes: number };
}

function histogramSvg(values: number[], title: string): string {
  const lo = Math.floor(quantile(values, 0.0));
  const hi = Math.ceil(quantile(values, 0.99));
  const bins = 30;
  const width = Math.max(1, (hi - lo) / bins);
  const counts = new Array<number>(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / width)))]!++;
  const max = Math.max(...counts);
  const bars = counts
    .map(
      (c, i) =>
        `<rect x="${40 + i * 18}" y="${210 - (c / max) * 180}" width="16" height="${(c / max) * 180}" fill="#4a7"/>`,
    )
    .join("");
  const labels = [0, bins / 2, bins]
    .map((i) => `<text x="${40 + i * 18}" y="228" font-size="11">${fmt(lo + i * width)}</text>`)
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="600" height="250" font-family="sans-serif">
<text x="40" y="18" font-size="13">${title}</text>${bars}<line x1="40" y1="210" x2="580" y2="210" stroke="#333"/>${labels}
<text x="500" y="245" font-size="11">ms</text></svg>\n`;
}

async function main() {
  log("building dist/ (memory figures use the compiled worker)");
  await run("npm", ["run", "build"], { cwd: repoRoot });
  log("starting ComfyUI and S3");
  const parts = await startParts();
  try {
    if (only === "overhead") {
      for (let i = 0; i < repeats; i++) {
        const o = await measureOverhead(parts, overheadRuns);
        const top = [...o.diffMs]
          .sort((a, b) => b - a)
          .slice(0, 5)
          .map((d) => fmt(d));
        process.stdout.write(
          `p50 ${fmt(o.p50, 2)} p99 ${fmt(o.p99, 2)} ratio ${fmt(o.ratio, 3)} worst ${top.join(" ")}\n`,
        );
      }
      return;
    }
    if (only === "retention") {
      for (let i = 0; i < repeats; i++)
        process.stdout.write(`${JSON.stringify(await measureRetention(parts, retentionRequests))}\n`);
      return;
    }
    const alone = only === undefined ? undefined : sections[only];
    if (alone) {
      const section = await alone(parts);
      const path = join(repoRoot, "BENCHMARKS.md");
      await writeFile(path, withSection(await readFile(path, "utf8"), section));
      process.stdout.write(section);
      return;
    }
    if (only === "memory") {
      for (let i = 0; i < repeats; i++)
        process.stdout.write(`${JSON.stringify(await uploadGrowth(parts))}\n`);
      return;
    }
    const overhead: OverheadResult[] = [];
    for (let i = 0; i < repeats; i++) {
      log(`overhead ${i + 1}/${repeats} (${overheadRuns} interleaved pairs)`);
      overhead.push(await measureOverhead(parts, overheadRuns));
    }
    const pipelined: ThroughputResult[] = [];
    const serial: ThroughputResult[] = [];
    for (let i = 0; i < repeats; i++) {
      log(`throughput ${i + 1}/${repeats}: serial then pipelined, ${jobs} jobs each`);
      serial.push(await measureThroughput(parts, jobs, "serial"));
      pipelined.push(await measureThroughput(parts, jobs, "pipelined"));
    }
    const idle: number[] = [];
    const growth: { growthMb: number; baselineMb: number; seconds: number; bytes: number }[] = [];
    for (let i = 0; i < repeats; i++) {
      log(`memory ${i + 1}/${repeats}`);
      idle.push(await idleRss(parts));
      growth.push(await uploadGrowth(parts));
    }
    const retention: RetentionResult[] = [];
    for (let i = 0; i < repeats; i++) {
      log(`retention ${i + 1}/${repeats}: ${retentionRequests} requests with a 1 MB data: image each`);
      retention.push(await measureRetention(parts, retentionRequests));
    }
    const retained = retention.map((r) => r.growthMb);
    const retainedPeak = retention.map((r) => r.peakMb - r.startMb);
    await writeFile(
      join(repoRoot, "benchmark", "overhead-histogram.svg"),
      histogramSvg(
        overhead.flatMap((o) => o.diffMs),
        "Worker overhead per job (worker − direct ComfyUI), all runs",
      ),
    );
    const p50s = overhead.map((o) => o.p50);
    const p99s = overhead.map((o) => o.p99);
    const ratios = overhead.map((o) => o.ratio);
    const direct = overhead.map((o) => median(o.directMs));
    const tpP = pipelined.map((t) => t.jobsPerMinute);
    const tpS = serial.map((t) => t.jobsPerMinute);
    const idleP = pipelined.map((t) => median(t.idleMs));
    const idleP95 = pipelined.map((t) => quantile(t.idleMs, 0.95));
    const idleS = serial.map((t) => median(t.idleMs));
    const cpu = cpus()[0]?.model ?? "unknown CPU";
    const doc = `# Benchmarks

Written by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpu}, ${fmt(totalmem() / 2 ** 30, 0)} GiB,
Node ${process.version}, ComfyUI 0.3.75 on the CPU, SeaweedFS S3 on loopback. Each figure is the median of
${repeats} repetitions; the spread (min–max over the repetitions) follows it.

| measurement | figure | spread | target |
| --- | --- | --- | --- |
| overhead p50 (worker − direct), ms | ${fmt(median(p50s), 2)} | ${spread(p50s)} | ≤ 5 |
| overhead p99, ms | ${fmt(median(p99s), 2)} | ${spread(p99s)} | ≤ 20 |
| overhead ratio (median worker / median direct) | ${fmt(median(ratios), 3)} | ${spread(ratios, 3)} | |
| direct ComfyUI round trip p50, ms | ${fmt(median(direct), 2)} | ${spread(direct)} | |
| throughput, pipelined, jobs/min | ${fmt(median(tpP))} | ${spread(tpP)} | |
| throughput, serial (upstream), jobs/min | ${fmt(median(tpS))} | ${spread(tpS)} | |
| ComfyUI idle between jobs, pipelined, median ms | ${fmt(median(idleP), 1)} | ${spread(idleP)} | ≤ 5 |
| ComfyUI idle between jobs, pipelined, p95 ms | ${fmt(median(idleP95), 1)} | ${spread(idleP95)} | |
| ComfyUI idle between jobs, serial, median ms | ${fmt(median(idleS), 1)} | ${spread(idleS)} | |
| worker RSS idle, MB | ${fmt(median(idle))} | ${spread(idle)} | ≤ 100 |
| RSS growth while ${fmt(growth[0]!.bytes / 2 ** 30, 2)} GiB uploads, MB | ${fmt(median(growth.map((g) => g.growthMb)))} | ${spread(growth.map((g) => g.growthMb))} | ≤ 64 |
| upload time of that file, s | ${fmt(median(growth.map((g) => g.seconds)))} | ${spread(growth.map((g) => g.seconds))} | |
| RSS after ${retentionRequests} requests with a 1 MB data: image each, minus RSS before, MB | ${fmt(median(retained))} | ${spread(retained)} | ≤ 100 |
| peak RSS during them, minus RSS before, MB | ${fmt(median(retainedPeak))} | ${spread(retainedPeak)} | |

![overhead histogram](benchmark/overhead-histogram.svg)

## Method

- **Overhead**: one worker (local API port, no storage configured, so uploads are not counted) and one direct
  client of ComfyUI that does what a bare caller must: \`POST /prompt\`, wait on a WebSocket for the prompt's end,
  \`GET /history\`. The same model-free workflow (an 8×8 EmptyImage saved as PNG, a unique prefix per run so
  ComfyUI's cache never short-cuts it) is sent ${overheadRuns} times each way, interleaved (alternating which
  goes first), after 10 warm-up pairs. The difference of each pair is the worker's cost: HTTP in and out,
  validation, seeding, the output-node nonce, queueing, event-driven completion, moving the output under
  \`output/<request_id>/\`, and the result document.
- **Throughput**: ${jobs} jobs of a model-free workflow with real work (a blur over four 512×512 images) and four
  PNGs to upload each. *Serial* is upstream's way: one request at a time, each answered (uploaded) before the
  next is sent. *Pipelined* submits all jobs at once to a worker that keeps 2 prompts in ComfyUI, so the next
  prompt runs while the previous job uploads. ComfyUI's idle time is the gap between one prompt's
  \`execution_success\` and the next one's \`execution_start\`, read from ComfyUI's own history timestamps.
- **Memory**: idle RSS of the compiled worker (\`node dist/worker/cli.js start\`), read from /proc 3 s after it
  reported ready. Upload growth: a separate process uploads a ${uploadMb} MiB file through the worker's storage
  module (streamed, multipart, 8 MiB parts read by range, 3 at a time) while sampling its RSS every 20 ms; growth = peak − baseline.
- **Retention**: the compiled worker (default \`RESULT_RETENTION_*\` limits, S3 not configured) serves
  ${retentionRequests} \`/generate/sync\` requests, 4 at a time, each carrying its own PNG of random pixels
  (${fmt((retention[0]?.imageBytes ?? 0) / 2 ** 20, 2)} MiB, about 1.3 MiB as base64) as a data: URI into
  LoadImage → ImageScale 8×8 → SaveImage. RSS is read from /proc after one warm-up request and 2 s of rest
  ("before"), sampled every 50 ms during the run ("peak"), and read again 3 s after the last answer. Every
  finished job stays retained (1 h), so what is left is what retention costs.
`;
    let all = doc;
    for (const measure of Object.values(sections)) all = withSection(all, await measure(parts));
    // The soak's section is written by `npm run soak -- --benchmarks`: kept as it is.
    const soak = sectionOf(await readFile(join(repoRoot, "BENCHMARKS.md"), "utf8"), SOAK_HEADING);
    if (soak !== undefined) all = withSection(all, soak);
    await writeFile(join(repoRoot, "BENCHMARKS.md"), all);
    process.stdout.write(doc);
  } finally {
    await parts.stop();
  }
}

await main();
