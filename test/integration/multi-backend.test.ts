import { existsSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort, type Service } from "../../scripts/services/child.js";
import { pngPixelsHash } from "../../scripts/services/png.js";
import { ensureComfyUI, startComfyUI, type ComfyInstall } from "../../scripts/services/comfyui.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import type { Job } from "../../worker/jobs/job.js";
import { stack } from "../harness/stack.js";
import { firstConsoleStatus, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { fastBenchmarkFile, modelFree } from "../harness/workflows.js";
import { round3 } from "../../lib/numbers.js";

/**
 * One worker, two real ComfyUI backends (as on a machine of two GPUs): the shared test ComfyUI and one of this
 * file's own, which the tests kill and start again. Both read the same input folder; each writes its own outputs.
 */

let install: ComfyInstall;
let own: Service & { url: string };
let ownPort: number;
let ownBase: string;
let router: RouterEmulator;
let w: TestWorker;

const startOwn = () =>
  startComfyUI({
    install,
    host: "127.0.0.1",
    port: ownPort,
    baseDir: ownBase,
    inputDir: join(stack().comfyBaseDir, "input"),
    logFile: join(ownBase, "comfyui.log"),
  });

/** A blur big enough to keep a CPU backend busy for a moment, so that a burst overlaps on both. */
function slowBlur(): Record<string, any> {
  const wf = modelFree();
  delete wf["4"];
  Object.assign(wf["1"].inputs, { width: 768, height: 768, batch_size: 1 });
  Object.assign(wf["2"].inputs, { blur_radius: 15, sigma: 4 });
  return wf;
}

const statuses = () => router.reports.filter((r) => r.path === "/worker_status/");
const lastStatus = () => statuses().at(-1)?.body;
beforeAll(async () => {
  install = await ensureComfyUI();
  ownBase = await mkdtemp(join(stack().tmpRoot, "backend-1-"));
  ownPort = await freePort();
  router = new RouterEmulator({ port: 0 });
  [own] = await Promise.all([startOwn(), router.listen()]);
  const shared = stack();
  w = await startTestWorker({
    COMFYUI_URL: "", // the harness's single backend, unset
    COMFYUI_URLS: `${shared.comfyUrl},${own.url}`,
    COMFYUI_INPUT_DIR: join(shared.comfyBaseDir, "input"),
    COMFYUI_OUTPUT_DIR: `${join(shared.comfyBaseDir, "output")},${join(ownBase, "output")}`,
    BENCHMARK_SKIP: "false",
    BENCHMARK_JSON_PATH: await fastBenchmarkFile(shared.tmpRoot),
    // The score stays the benchmark's, so that the sums below are exact.
    LIVE_SCORE: "false",
    REPORT_ADDR: router.url,
    REPORT_INTERVAL_MS: "100",
  });
}, 300_000);

afterAll(async () => {
  await w?.stop();
  await router?.close();
  await own?.stop();
});

test("the benchmark scores each backend, max_perf is their sum, and the cache is keyed by every GPU", async () => {
  const result = w.worker.benchmark()!;
  expect(result.cached).toBe(false);
  expect(result.perBackend).toHaveLength(2);
  for (const perf of result.perBackend) expect(perf).toBeGreaterThan(0);
  // What each backend counts for: its measured score held to the band around the benchmark's rounds (the same as
  // measured unless the machine was noisy enough to put one backend outside it).
  const sum = round3(w.worker.capacity.scoreOf(0) + w.worker.capacity.scoreOf(1));
  expect(w.worker.admission.maxPerf).toBe(sum);
  await router.waitFor(() => lastStatus()?.max_perf === sum);
  const cache = JSON.parse(await readFile(join(w.dir, ".has_benchmark"), "utf8"));
  expect(cache.backends).toEqual(result.perBackend);
  // The cache keeps what was measured.
  expect(cache.max_perf).toBe(round3(result.perBackend[0]! + result.perBackend[1]!));

  // The same cache file with one of the two backends is other hardware: measured again, not reused.
  const single = await startTestWorker({
    BENCHMARK_SKIP: "false",
    BENCHMARK_JSON_PATH: await fastBenchmarkFile(stack().tmpRoot),
    BENCHMARK_CACHE_FILE: join(w.dir, ".has_benchmark"),
  });
  try {
    expect(single.worker.benchmark()?.cached).toBe(false);
    expect(single.worker.benchmark()?.perBackend).toHaveLength(1);
  } finally {
    await single.stop();
  }
});

test("a burst is spread over both backends, and every output, from either, is the same image", async () => {
  const ids = Array.from({ length: 6 }, (_, i) => `multi-burst-${i}-${Date.now()}`);
  const answers = await Promise.all(
    ids.map((request_id) =>
      postJson(`${w.api}/generate/sync`, { input: { request_id, workflow_json: slowBlur() } }),
    ),
  );
  for (const a of answers) {
    expect(a.status).toBe(200);
    expect(a.body.status).toBe("completed");
    expect(a.body.output[0].url).toMatch(/^http/);
  }
  const used = ids.map((id) => w.worker.jobs.get(id)!.backend);
  expect(new Set(used)).toEqual(new Set([0, 1]));
  // Each job's file came out of its own backend's folder into its own result folder: same workflow, same image.
  const hashes = await Promise.all(answers.map((a) => pngPixelsHash(a.body.output[0].local_path)));
  expect(new Set(hashes).size).toBe(1);
});

test("a backend killed mid-burst: only its running jobs fail (retryable), max_perf drops to the others', and it rejoins when back", async () => {
  const first = round3(w.worker.capacity.scoreOf(0));
  const sum = w.worker.admission.maxPerf;
  // The moment a job starts running on the backend to kill (an event, not a poll).
  const runningOnOwn = new Promise<Job>((resolve) => {
    const off = w.worker.events.on("job.created", (job) => {
      job.on("event", (e: { type: string }) => {
        if (e.type === "executing" && job.backend === 1) {
          off();
          resolve(job);
        }
      });
    });
  });
  const ids = Array.from({ length: 6 }, (_, i) => `multi-kill-${i}-${Date.now()}`);
  const answers = Promise.all(
    ids.map((request_id) =>
      postJson(`${w.api}/generate/sync`, { input: { request_id, workflow_json: slowBlur() } }),
    ),
  );
  await runningOnOwn;
  own.process.kill("SIGKILL");
  const done = await answers;
  await own.stop();

  const byBackend = (b: number) =>
    ids.flatMap((id, i) => (w.worker.jobs.get(id)!.backend === b ? [done[i]!] : []));
  // Everything on the surviving backend completed; what failed had run on the killed one, retryable.
  for (const a of byBackend(0)) expect(a.body.status).toBe("completed");
  const failed = done.filter((a) => a.body.status !== "completed");
  expect(failed.length).toBeGreaterThan(0);
  // Only the prompts it held (MAX_INFLIGHT_PROMPTS, 2): the waiting ones are not sent to a dead server.
  expect(failed.length).toBeLessThanOrEqual(2);
  for (const a of failed) {
    expect(a.status).toBe(503);
    expect(a.body.error.code).toBe("comfyui_unavailable");
    expect(w.worker.jobs.get(a.body.id)!.backend).toBe(1);
  }

  // The autoscaler hears the smaller capacity, with no error: the worker still serves.
  await router.waitFor(() => lastStatus()?.max_perf === first);
  expect(lastStatus()?.error_msg).toBe("");
  const ready = await fetch(`${w.api}/ready`, { signal: AbortSignal.timeout(10_000) });
  expect(ready.status).toBe(200);
  const alone = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(alone.body.status).toBe("completed");
  expect(w.worker.jobs.get(alone.body.id)!.backend).toBe(0);

  // Back on the same port: it rejoins, and max_perf is the sum again.
  own = await startOwn();
  await router.waitFor(() => lastStatus()?.max_perf === sum);
  const again = await Promise.all(
    Array.from({ length: 4 }, () =>
      postJson(`${w.api}/generate/sync`, { input: { workflow_json: slowBlur() } }),
    ),
  );
  for (const a of again) expect(a.body.status).toBe("completed");
  expect(new Set(again.map((a) => w.worker.jobs.get(a.body.id)!.backend))).toEqual(new Set([0, 1]));
});

test("/ready, /metrics and the operator page's status list each backend", async () => {
  const res = await fetch(`${w.api}/ready`, { signal: AbortSignal.timeout(10_000) });
  const body = (await res.json()) as { backends?: { url: string; up: boolean }[] };
  expect(body.backends?.map((b) => [b.url, b.up])).toEqual([
    [stack().comfyUrl, true],
    [own.url, true],
  ]);
  const metrics = await (await fetch(`${w.api}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  for (const [i, url] of [stack().comfyUrl, own.url].entries()) {
    expect(metrics).toContain(`comfyui_worker_backend_in_rotation{backend="${i}",url="${url}"} 1`);
    expect(metrics).toContain(`comfyui_worker_backend_prompts{backend="${i}",url="${url}"} 0`);
  }
  // The page's event stream: its first status names both backends.
  const comfyui = (await firstConsoleStatus(w.api)).comfyui as {
    up: boolean;
    backends: { url: string; up: boolean }[];
  };
  expect(comfyui.up).toBe(true);
  expect(comfyui.backends.map((b) => [b.url, b.up])).toEqual([
    [stack().comfyUrl, true],
    [own.url, true],
  ]);
});

test("disk care ages out what is left in the backends' own output folders, never a folder holding the worker's", async () => {
  const leftovers = join(ownBase, "output");
  // An odd set-up on purpose: the worker's request folders inside backend 1's output folder.
  const results = join(leftovers, `results-${randomUUID()}`);
  await mkdir(results, { recursive: true });
  const old = join(leftovers, `left-${randomUUID()}.png`);
  const fresh = join(leftovers, `fresh-${randomUUID()}.png`);
  await Promise.all([writeFile(old, "x"), writeFile(fresh, "x")]);
  const past = new Date(Date.now() - 3 * 3_600_000);
  await Promise.all([utimes(old, past, past), utimes(results, past, past)]);
  const shared = stack();
  const janitorial = await startTestWorker({
    COMFYUI_URL: "",
    COMFYUI_URLS: `${shared.comfyUrl},${own.url}`,
    COMFYUI_INPUT_DIR: join(shared.comfyBaseDir, "input"),
    COMFYUI_OUTPUT_DIR: `${join(shared.comfyBaseDir, "output")},${leftovers}`,
    OUTPUT_DIR: results,
    DISK_MIN_FREE_MB: String(1024 * 1024 * 1024),
    OUTPUT_MAX_AGE_HOURS: "1",
  });
  try {
    const removed = (await janitorial.worker.janitor.sweep()).removed.map((r) => r.path);
    expect(removed).toContain(old);
    expect(removed).not.toContain(fresh);
    expect(removed).not.toContain(results);
    expect(existsSync(old)).toBe(false);
    expect(existsSync(fresh)).toBe(true);
    expect(existsSync(results)).toBe(true);
  } finally {
    await janitorial.stop();
  }
});
