import { mkdtemp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { stack } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree, fastBenchmarkFile } from "../harness/workflows.js";

/**
 * The signal the autoscaler routes on, on the real stack: ready after two workflow runs and heard at once, a score
 * that follows real work (re-reported, cached), and the cost model's state on /metrics and /debug/load.
 */

let router: RouterEmulator;
const workers: TestWorker[] = [];

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
});

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await router.close();
});

async function start(extra: Record<string, string> = {}): Promise<{ w: TestWorker; dir: string }> {
  const dir = await mkdtemp(join(stack().tmpRoot, "load-"));
  const w = await startTestWorker({
    REPORT_ADDR: router.url,
    CONTAINER_ID: "12",
    MASTER_TOKEN: "token-12",
    BENCHMARK_SKIP: "false",
    BENCHMARK_JSON_PATH: await fastBenchmarkFile(dir),
    BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
    // Far longer than any wait below: a report that arrives was sent because something changed, not by the timer.
    REPORT_INTERVAL_MS: "600000",
    REPORT_HEARTBEAT_MS: "600000",
    ...extra,
  });
  workers.push(w);
  return { w, dir };
}

async function completedJobs(w: TestWorker): Promise<number> {
  const text = await (await fetch(`${w.api}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  return Number(/comfyui_worker_jobs_total\{status="completed"\} (\d+)/.exec(text)?.[1] ?? 0);
}

const statusReports = (id: number) =>
  router.reports.filter((r) => r.path === "/worker_status/" && r.body.id === id).map((r) => r.body);

test("ready after one warm-up and one timed run, and the router hears it at once", async () => {
  const { w } = await start();
  expect(w.worker.phase()).toBe("ready");
  expect(w.worker.benchmark()!.rounds).toHaveLength(1);
  expect(await completedJobs(w)).toBe(2);
  // The report interval is 10 minutes: only the ready event itself can have sent this.
  await router.waitFor(() => statusReports(12).some((b) => Number(b.max_perf) > 0), 10_000);
  const ready = statusReports(12).find((b) => Number(b.max_perf) > 0)!;
  expect(ready.max_perf).toBeCloseTo(w.worker.admission.maxPerf, 3);
});

test("BENCHMARK_MIN_ROUNDS still insists on more rounds before ready", async () => {
  // At most 3 rounds too: millisecond rounds, timed by ComfyUI's millisecond clock, rarely agree within 5 %.
  const { w } = await start({ BENCHMARK_MIN_ROUNDS: "3", BENCHMARK_MAX_ROUNDS: "3" });
  expect(w.worker.benchmark()!.rounds).toHaveLength(3);
  expect(await completedJobs(w)).toBe(4);
});

/** The benchmark's own graph (a shape the score was measured on) on a far larger image: much slower. */
function slowJob(id: string) {
  const wf = modelFree();
  delete wf["4"];
  Object.assign(wf["1"].inputs, { width: 1536, height: 1536, batch_size: 1 });
  Object.assign(wf["2"].inputs, { blur_radius: 15, sigma: 4 });
  return { request_id: id, workflow_json: wf };
}

test("runs slower than the score says lower max_perf, which is re-reported and cached; the model is on /debug/load and /metrics", async () => {
  // A band wide enough for the slowdown below (the default holds the score within 2x of the benchmark's).
  const { w, dir } = await start({ CONTAINER_ID: "13", LIVE_SCORE_BAND: "100" });
  const before = w.worker.admission.maxPerf;
  expect(before).toBeGreaterThan(0);
  // Three runs of the benchmark's graph (sizes are not part of a shape, and it has no sampler to count), each far
  // slower than the benchmark's run: as a GPU that slowed down would look.
  for (let i = 0; i < 3; i++) {
    const r = await postJson(`${w.api}/generate/sync`, { input: slowJob(`slow-${i}`) });
    expect([r.status, r.body.status]).toEqual([200, "completed"]);
  }
  const after = w.worker.admission.maxPerf;
  expect(after).toBeLessThan(before / 2);
  await router.waitFor(() => statusReports(13).some((b) => b.max_perf === after), 10_000);
  // The cache is written off the job's path: wait (bounded) for the last write.
  const cached = async () => JSON.parse(await readFile(join(dir, ".has_benchmark"), "utf8"));
  const deadline = Date.now() + 10_000;
  while ((await cached()).max_perf !== after && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  expect(await cached()).toMatchObject({ max_perf: after, live: true });

  const debug: any = await (
    await fetch(`${w.api}/debug/load`, { signal: AbortSignal.timeout(10_000) })
  ).json();
  expect(debug.max_perf).toBe(after);
  expect(debug.measurements).toBe(4); // the timed benchmark round and the three jobs
  expect(debug.shapes).toEqual([
    expect.objectContaining({ shape: debug.benchmark.shape, samples: 4, source: "scaled" }),
  ]);
  const metrics = await (await fetch(`${w.api}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  expect(metrics).toMatch(/comfyui_worker_cost_model_samples\{shape="[0-9a-f]{16}"\} 4/);
  // The gauge is the live estimate; max_perf took its value when it last moved by more than 5 %.
  const live = Number(/comfyui_worker_live_max_perf ([\d.]+)/.exec(metrics)?.[1]);
  expect(Math.abs(live / after - 1)).toBeLessThanOrEqual(0.05);
});
