import { randomUUID } from "node:crypto";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_BYTES_PER_SECOND } from "../../handlers/preprocess/download-estimate.js";
import { RecordingServer } from "../harness/http-fixtures.js";
import { getJson, pollUntil, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelsDir, tinyLora } from "../harness/models.js";
import { withLora } from "../harness/workflows.js";

/**
 * A model download is priced and shown as what it is, on the real stack: a job whose model is cold carries the
 * expected download time in the load at admission (a HEAD asked its size), apart from its GPU workload, and gives
 * it back as the bytes arrive; the same job warm carries none; a stream shows the download as a stage of the job;
 * metrics count the bytes, the downloads and the cache's hits and misses.
 */

const MiB = 1024 * 1024;

let files: RecordingServer;
const bodies = new Map<string, Buffer>();
/** GETs of these paths send half the body, then the rest once the test releases them. */
const gates = new Map<string, { arrived: () => void; released: Promise<void> }>();
let w: TestWorker;

/** Holds the next GET of `path` after half its body: `arrived` resolves when it came, `release` sends the rest. */
function gate(path: string): { arrived: Promise<void>; release: () => void } {
  let arrived!: () => void;
  let release!: () => void;
  const reached = new Promise<void>((r) => (arrived = r));
  const released = new Promise<void>((r) => (release = r));
  gates.set(path, { arrived, released });
  return { arrived: reached, release };
}

const requests = (path: string, method: string) =>
  files.received.filter((r) => r.url.split("?")[0] === path && r.method === method);

beforeAll(async () => {
  files = await new RecordingServer().start();
  files.handler = (req, res) => {
    const path = req.url.split("?")[0]!;
    const body = bodies.get(path);
    if (!body) {
      res.statusCode = 404;
      return void res.end();
    }
    res.writeHead(200, { "content-length": body.length });
    if (req.method === "HEAD") return void res.end();
    const g = gates.get(path);
    if (!g) return void res.end(body);
    gates.delete(path);
    res.write(body.subarray(0, body.length >> 1));
    g.arrived();
    void g.released.then(() => res.end(body.subarray(body.length >> 1)));
  };
  // BENCHMARK_SKIP: one backend scoring 1, so a second of download is a workload of 1.
  w = await startTestWorker({ MODEL_MAX_BYTES: String(64 * MiB) });
});

afterAll(async () => {
  for (const g of gates.values()) g.arrived();
  await w?.stop();
  await files?.stop();
  const loras = join(modelsDir(), "loras");
  for (const name of await readdir(loras).catch(() => [] as string[])) {
    if (/^od-[0-9a-f]{16}-(priced|streamed)-/.test(name)) await rm(join(loras, name), { force: true });
  }
});

/** POST /generate (asynchronous) on the routed port, as the router's client sends it (unsecured worker). */
async function routedGenerate(id: string, workflow: Record<string, any>): Promise<void> {
  const { status } = await postJson(`${w.routed}/generate`, {
    auth_data: { request_idx: 1, url: w.routed },
    payload: { input: { request_id: id, workflow_json: workflow } },
  });
  expect(status).toBeLessThan(300);
}

const finished = (id: string) =>
  pollUntil(
    () => getJson(`${w.api}/result/${id}`),
    (r) => ["completed", "failed", "cancelled"].includes(r.body?.status),
    120_000,
  );

test("a job whose model is cold carries its download time in the load from admission; warm, the same job does not", async () => {
  const path = `/loras/priced-${randomUUID()}.safetensors`;
  const lora = tinyLora("priced", 8 * MiB);
  bodies.set(path, lora);
  const g = gate(path);
  const wf = withLora(`${files.url}${path}?token=SECRET`);
  const unit = w.worker.capacity.unit();
  expect(unit).toBeGreaterThan(0);

  // What the same job costs warm now: its GPU work as the load signal predicts it (the cache plays no part in it).
  const gpu = w.worker.load.workloadOf(wf);
  const coldId = `cold-${randomUUID()}`;
  await routedGenerate(coldId, wf);
  const cold = w.worker.jobs.get(coldId)!;
  expect(cold.workload).toBe(gpu);
  // Priced at admission from the size a HEAD gave, at the throughput assumed before any download was measured.
  expect(requests(path, "HEAD")).toHaveLength(1);
  expect(cold.downloadSeconds).toBeCloseTo(lora.length / DEFAULT_BYTES_PER_SECOND, 6);
  const priced = Math.round(cold.downloadSeconds * unit * 100) / 100;
  expect(priced).toBeGreaterThan(0);
  // (Already shrinking, perhaps: the download started as the answer came back.)
  expect(cold.downloadWorkload).toBeLessThanOrEqual(priced);
  expect(cold.workload + priced).toBeGreaterThan(gpu);
  await g.arrived;

  // The same job while the download is under way: it waits on it, so it is priced without it (counted once).
  const joinedId = `joined-${randomUUID()}`;
  await routedGenerate(joinedId, wf);
  const joined = w.worker.jobs.get(joinedId)!;
  expect([joined.downloadSeconds, joined.downloadWorkload]).toEqual([0, 0]);
  expect(joined.workload).toBe(cold.workload);

  // Half the bytes are in: the download part shrinks with what is left, and the load in flight (what cur_load
  // reports and admission divides by max_perf) is the GPU workloads plus what is left of the download.
  const shrunk = await pollUntil(
    async () => cold.downloadWorkload,
    (v) => v < priced,
    30_000,
  );
  expect(shrunk).toBeGreaterThan(0);
  expect(shrunk).toBeLessThan(priced);
  expect(w.worker.jobs.activeWorkload()).toBeCloseTo(cold.workload + joined.workload + shrunk, 6);
  expect(w.worker.admission.expectedWaitS() * w.worker.admission.maxPerf).toBeCloseTo(
    cold.workload + joined.workload + shrunk,
    3,
  );
  g.release();
  for (const id of [coldId, joinedId]) expect((await finished(id)).body.status).toBe("completed");
  expect(cold.downloadWorkload).toBe(0);

  // Warm: the same job costs its GPU work only, and nothing is asked of the source. The two jobs that waited on the
  // download taught the cost model nothing (their runs loaded the model for the first time): the same GPU price.
  const warmId = `warm-${randomUUID()}`;
  await routedGenerate(warmId, wf);
  const warm = w.worker.jobs.get(warmId)!;
  expect([warm.workload, warm.downloadSeconds, warm.downloadWorkload]).toEqual([gpu, 0, 0]);
  expect(cold.workload + priced).toBeGreaterThan(warm.workload);
  expect(w.worker.load.state().shapes).toEqual([]);
  expect((await finished(warmId)).body.status).toBe("completed");
  expect([requests(path, "HEAD").length, requests(path, "GET").length]).toEqual([1, 1]);
});

test("a stream shows the download as a stage of the job, before any node runs, without the reference's query", async () => {
  const path = `/loras/streamed-${randomUUID()}.safetensors`;
  const lora = tinyLora("streamed", 4 * MiB);
  bodies.set(path, lora);
  const g = gate(path);
  const id = `stream-${randomUUID()}`;
  const res = await fetch(`${w.api}/generate/stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      input: { request_id: id, workflow_json: withLora(`${files.url}${path}?token=SECRET`) },
    }),
    signal: AbortSignal.timeout(120_000),
  });
  expect(res.status).toBe(200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const lines: any[] = [];
  let text = "";
  let rest = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += value;
    const parts = (rest + value).split("\n");
    rest = parts.pop()!;
    for (const part of parts.filter(Boolean)) {
      const line = JSON.parse(part);
      lines.push(line);
      // Half the file is in: the rest is sent once a step between the ends was seen.
      if (line.type === "download" && line.percent > 0 && line.percent < 100) g.release();
    }
  }
  const shown = `${files.url}${path}`;
  const downloads = lines.filter((l) => l.type === "download");
  expect(downloads[0]).toEqual({
    id,
    type: "download",
    model: shown,
    folder: "loras",
    received: 0,
    total: lora.length,
    percent: 0,
  });
  expect(downloads.at(-1)).toMatchObject({ received: lora.length, total: lora.length, percent: 100 });
  expect(downloads.some((d) => d.percent > 0 && d.percent < 100)).toBe(true);
  const percents = downloads.map((d) => d.percent);
  expect(percents).toEqual([...percents].sort((a, b) => a - b));
  // The job's status says so, then it moves on to ComfyUI; no node ran before the model was whole.
  expect(lines).toContainEqual({
    id,
    type: "status",
    status: "processing",
    message: `Downloading model ${shown}: 0%`,
  });
  const lastDownload = lines.lastIndexOf(downloads.at(-1));
  const firstNode = lines.findIndex((l) => l.type === "executing" || l.type === "progress");
  expect(firstNode).toBeGreaterThan(lastDownload);
  expect(lines.at(-1)).toMatchObject({ type: "result", status: "completed" });
  expect(text).not.toContain("SECRET");
  // The local API admits everything: it asks no HEAD (the download's first answer gives the size).
  expect(requests(path, "HEAD")).toHaveLength(0);
});

test("metrics count the downloaded bytes, each download's time and the cache's hits and misses", async () => {
  const text = await (await fetch(`${w.api}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
  // Two downloads in this file (the priced LoRA and the streamed one); the joined and the warm job found them.
  expect(value(/comfyui_worker_model_download_bytes_total (\d+)/)).toBeGreaterThanOrEqual(12 * MiB);
  expect(value(/comfyui_worker_model_download_seconds_count (\d+)/)).toBe(2);
  expect(value(/comfyui_worker_model_cache_lookups_total\{result="miss"\} (\d+)/)).toBe(3);
  expect(value(/comfyui_worker_model_cache_lookups_total\{result="hit"\} (\d+)/)).toBe(1);
});
