/**
 * The signal the autoscaler scales and routes on, measured on the tiny SD1.5 model: workflow runs before Ready,
 * how long until the router hears Ready, and how well cur_load / max_perf (as reported right after a burst is
 * accepted) predicts the time the burst takes to drain, next to upstream's rule (every request weighs 100).
 */
import { randomUUID } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import type { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { repoRoot } from "../../scripts/services/paths.js";
import { createLogger } from "../../lib/logger.js";
import type { Worker } from "../../worker/app.js";
import { runBenchmark, hardwareKey } from "../runner.js";
import { loadBenchmarkPayload } from "../payload.js";
import { readFileSync } from "node:fs";
import { ComfyClient } from "../../handlers/comfyui/client.js";
import type { BenchParts } from "./parts.js";
import { benchmarkingEnv, reportingEnv, workerEnv, startWorker } from "./parts.js";
import { fmt, median, spread } from "./stats.js";

export interface SignalRun {
  runsBeforeReady: number;
  /** From the worker turning ready to the router receiving a report with max_perf > 0. */
  routerHeardMs: number;
  provisionalScore: number;
  /** max_perf after the learning burst (the live score). */
  liveScore: number;
  predictedS: number;
  upstreamPredictedS: number;
  actualS: number;
}

/** The mix of the issue: 64x64x4, 128x128x4 and 64x64x12 steps, four of each, shuffled. */
function mix(): Record<string, unknown>[] {
  const base = JSON.parse(readFileSync(join(repoRoot, "misc/workflows/sd15_text2image.json"), "utf8"));
  // A prompt of its own per job, as real traffic has (a repeated prompt's text encoding would come from
  // ComfyUI's cache, and the jobs would be cheaper than the benchmark's runs, which draw theirs at random too).
  const prompts = readFileSync(join(repoRoot, "misc/test_prompts.txt"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const make = (w: number, h: number, steps: number) => {
    const wf = structuredClone(base);
    Object.assign(wf["5"].inputs, { width: w, height: h, batch_size: 1 });
    Object.assign(wf["3"].inputs, { steps, seed: Math.floor(Math.random() * 2 ** 32) });
    wf["6"].inputs.text = `${prompts[Math.floor(Math.random() * prompts.length)]}, ${randomUUID()}`;
    return wf;
  };
  const jobs = [0, 1, 2, 3].flatMap(() => [make(64, 64, 4), make(128, 128, 4), make(64, 64, 12)]);
  for (let i = jobs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [jobs[i], jobs[j]] = [jobs[j]!, jobs[i]!];
  }
  return jobs;
}

async function submitAll(api: string, workflows: Record<string, unknown>[], tag: string): Promise<string[]> {
  return Promise.all(
    workflows.map(async (wf, i) => {
      const id = `${tag}-${i}`;
      const res = await fetch(`${api}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input: { request_id: id, workflow_json: wf } }),
        signal: AbortSignal.timeout(60_000),
      });
      if (res.status !== 202) throw new Error(`submit ${id}: ${res.status} ${await res.text()}`);
      return id;
    }),
  );
}

async function drained(worker: Worker, ids: string[]): Promise<void> {
  await Promise.all(ids.map((id) => worker.jobs.get(id)!.done));
  for (const id of ids) {
    const job = worker.jobs.get(id)!;
    if (job.status !== "completed") throw new Error(`${id}: ${job.status} ${job.message}`);
  }
}

export async function measureSignal(
  parts: BenchParts,
  router: RouterEmulator,
  rep: number,
): Promise<SignalRun> {
  const dir = await mkdtemp(join(parts.dir, "signal-"));
  const containerId = 100 + rep;
  const { worker } = await startWorker(
    workerEnv(parts, {
      ...benchmarkingEnv(dir, 4),
      ...reportingEnv(router.url, containerId),
      MAX_QUEUE_TIME: "1000",
    }),
  );
  const readyAt = Date.now();
  try {
    await router.waitFor(
      () => router.reports.some((r) => r.body.id === containerId && Number(r.body.max_perf) > 0),
      30_000,
    );
    const heard = router.reports.find((r) => r.body.id === containerId && Number(r.body.max_perf) > 0)!;
    const runsBeforeReady = worker.jobs.list().filter((j) => j.id.startsWith("benchmark-")).length;
    const provisionalScore = worker.admission.maxPerf;
    const api = worker.apiUrl()!;

    await drained(worker, await submitAll(api, mix(), `learn-${rep}`));
    const liveScore = worker.admission.maxPerf;

    const burst = mix();
    const ids = await submitAll(api, burst, `burst-${rep}`);
    const accepted = performance.now();
    // What the reporter sends right now: cur_load and max_perf.
    const predictedS = worker.jobs.activeWorkload() / worker.admission.maxPerf;
    const upstreamPredictedS = (worker.jobs.active().length * 100) / worker.admission.maxPerf;
    await drained(worker, ids);
    const actualS = (performance.now() - accepted) / 1000;
    return {
      runsBeforeReady,
      routerHeardMs: heard.at - readyAt,
      provisionalScore,
      liveScore,
      predictedS,
      upstreamPredictedS,
      actualS,
    };
  } finally {
    await worker.stop(5_000);
  }
}

/** The score after 8 timed rounds (median), for the provisional score's error. */
export async function eightRoundScore(parts: BenchParts): Promise<number> {
  const dir = await mkdtemp(join(parts.dir, "eight-"));
  const { worker, config } = await startWorker(
    workerEnv(parts, {
      OUTPUT_DIR: join(dir, "output"),
      BENCHMARK_TEST_WIDTH: "64",
      BENCHMARK_TEST_HEIGHT: "64",
      BENCHMARK_TEST_STEPS: "4",
    }),
  );
  const logger = createLogger({ level: "silent", pretty: false });
  try {
    const result = await runBenchmark({
      force: true,
      jobs: worker.jobs,
      payload: await loadBenchmarkPayload(config.benchmark, repoRoot),
      logger,
      outputDir: config.outputDir,
      cacheFile: join(dir, ".has_benchmark"),
      hardwareKey: await hardwareKey(
        [new ComfyClient({ baseUrl: parts.comfyUrl, requestTimeoutMs: 10_000 })],
        "",
      ),
      backends: 1,
      minRounds: 8,
      maxRounds: 8,
      tolerance: 1,
    });
    return result.maxPerf;
  } finally {
    await worker.stop(5_000);
  }
}

const relErr = (predicted: number, actual: number) => Math.abs(predicted - actual) / actual;

export function signalSection(runs: SignalRun[], eightRound: number): string {
  const ours = runs.map((r) => relErr(r.predictedS, r.actualS) * 100);
  const upstream = runs.map((r) => relErr(r.upstreamPredictedS, r.actualS) * 100);
  const provisionalErr = runs.map((r) => relErr(r.provisionalScore, eightRound) * 100);
  const liveErr = runs.map((r) => relErr(r.liveScore, eightRound) * 100);
  const rows = runs
    .map(
      (r, i) =>
        `| ${i + 1} | ${fmt(r.actualS, 2)} | ${fmt(r.predictedS, 2)} (${fmt(ours[i]!, 0)} %) | ${fmt(r.upstreamPredictedS, 2)} (${fmt(upstream[i]!, 0)} %) | ${r.runsBeforeReady} | ${fmt(r.routerHeardMs, 0)} | ${fmt(r.provisionalScore, 1)} | ${fmt(r.liveScore, 1)} |`,
    )
    .join("\n");
  return `## Load signal

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=signal\`) on ${new Date().toISOString().slice(0, 10)}, ${runs.length} repetitions, each on a
fresh worker (empty benchmark cache) against one ComfyUI (CPU, tiny SD1.5 checkpoint).

| measurement | figure | spread | target |
| --- | --- | --- | --- |
| drain-time prediction error, cur_load / max_perf (ours), median % | ${fmt(median(ours), 1)} | ${spread(ours)} | ≤ 20 |
| drain-time prediction error, upstream's rule (100 per request), median % | ${fmt(median(upstream), 1)} | ${spread(upstream)} | |
| workflow runs before Ready | ${fmt(median(runs.map((r) => r.runsBeforeReady)), 0)} | ${spread(
    runs.map((r) => r.runsBeforeReady),
    0,
  )} | 2 |
| Ready to the router hearing it, ms | ${fmt(median(runs.map((r) => r.routerHeardMs)), 0)} | ${spread(
    runs.map((r) => r.routerHeardMs),
    0,
  )} | ≤ 100 |
| provisional score (1 timed run) vs 8-round median (${fmt(eightRound, 1)}), error % | ${fmt(median(provisionalErr), 1)} | ${spread(provisionalErr)} | |
| live score after 12 jobs vs 8-round median, error % | ${fmt(median(liveErr), 1)} | ${spread(liveErr)} | |

| run | actual drain, s | ours: predicted s (error) | upstream's rule: predicted s (error) | runs before Ready | router heard Ready, ms | provisional max_perf | live max_perf |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows}

Method: the worker boots with the default benchmark at 64×64, 4 steps (one warm-up, one timed run), reporting to
the router emulator; "router heard Ready" is the time from \`start()\` returning (phase ready) to the emulator
receiving the first \`/worker_status/\` with \`max_perf\` > 0. A learning burst of 12 jobs (4 each of 64×64×4
steps, 128×128×4 and 64×64×12, shuffled, random seeds, each with a prompt of its own) is submitted at once through \`POST /generate\` on the
local API and drained; then a second burst of the same mix. Right after its 12 submissions are accepted, the
prediction is what the reporter sends at that moment, \`cur_load / max_perf\`; upstream's rule is the same with
every request counted as 100. "Actual" is the time from that moment until the last job of the burst completed.
Error = |predicted − actual| / actual. The 8-round median comes from a separate worker running the same
benchmark with 8 timed rounds.
`;
}
