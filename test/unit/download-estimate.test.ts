import { captureLog } from "../harness/log-capture.js";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DEFAULT_BYTES_PER_SECOND,
  DEFAULT_MODEL_BYTES,
  THROUGHPUT_ALPHA,
  Throughput,
  referencedModels,
} from "../../handlers/preprocess/download-estimate.js";
import { MODEL_DIRS, parseModelReference } from "../../handlers/preprocess/model-folders.js";
import { ModelFetcher } from "../../handlers/preprocess/models.js";
import { Job } from "../../worker/jobs/job.js";
import { LoadSignal } from "../../worker/load-signal.js";

/** The expected download time of a job's missing models: the throughput, the sizes, what counts as missing. */

describe("Throughput", () => {
  test("the default before any download, then a moving average weighted towards the newest", () => {
    const t = new Throughput();
    expect(t.bytesPerSecond()).toBe(DEFAULT_BYTES_PER_SECOND);
    expect(t.samples).toBe(0);
    t.observe(100e6, 1);
    expect(t.bytesPerSecond()).toBe(100e6);
    t.observe(10e6, 1);
    expect(t.bytesPerSecond()).toBeCloseTo(THROUGHPUT_ALPHA * 10e6 + (1 - THROUGHPUT_ALPHA) * 100e6, 0);
    expect(t.samples).toBe(2);
    expect(t.secondsFor(t.bytesPerSecond() * 3)).toBeCloseTo(3, 9);
  });

  test("an empty download, or one without a measurable time, teaches nothing", () => {
    const t = new Throughput();
    for (const [b, s] of [
      [0, 1],
      [100, 0],
      [Infinity, 1],
      [100, NaN],
    ])
      t.observe(b!, s!);
    expect([t.samples, t.bytesPerSecond(), t.secondsFor(0)]).toEqual([0, DEFAULT_BYTES_PER_SECOND, 0]);
  });
});

test("referencedModels: model references in models inputs only, each once, on any input", () => {
  const wf = {
    "1": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "https://h/a.safetensors" } },
    "2": { class_type: "LoraLoader", inputs: { lora_name: "hf://o/r/l.safetensors", model: ["1", 0] } },
    "3": { class_type: "LoraLoader", inputs: { lora_name: "hf://o/r/l.safetensors" } },
    "4": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "local.safetensors" } },
    "5": { class_type: "CLIPTextEncode", inputs: { text: "https://not-a-model/x.safetensors" } },
    "6": { class_type: "LoadImage", inputs: { image: "https://h/x.png" } },
  };
  expect(referencedModels(wf)).toEqual([
    { value: "https://h/a.safetensors", folder: { folder: "checkpoints", dir: "checkpoints" } },
    { value: "hf://o/r/l.safetensors", folder: { folder: "loras", dir: "loras" } },
  ]);
  for (const odd of [null, [], "x", 3, { a: null }, { a: { class_type: 1, inputs: {} } }])
    expect(referencedModels(odd)).toEqual([]);
});

describe("ModelFetcher.expectedDownload", () => {
  let dir: string;
  let server: Server;
  let base: string;
  const heads: string[] = [];
  /** A GET of /held.safetensors waits for this; `getArrived` resolves when one came. */
  let releaseHeld: () => void = () => undefined;
  let getArrived: () => void = () => undefined;
  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.method === "HEAD") heads.push(req.url!);
      if (req.url === "/held.safetensors" && req.method === "GET") {
        res.writeHead(200, { "content-length": 4 });
        res.write("ab");
        releaseHeld = () => res.end("cd");
        return getArrived();
      }
      if (req.url === "/sized.safetensors") {
        res.writeHead(200, { "content-length": 30e6 });
        return void res.end(req.method === "HEAD" ? undefined : Buffer.alloc(0));
      }
      // A source that claims more than any download may hold (a caller's server inflating the load).
      if (req.url === "/huge.safetensors" && req.method === "HEAD") {
        res.writeHead(200, { "content-length": 1e15 });
        return void res.end();
      }
      // No size declared (chunked), as some servers answer a HEAD.
      if (req.url === "/unsized.safetensors") {
        res.writeHead(200, { "transfer-encoding": "chunked" });
        return void res.end();
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "estimate-"));
    heads.length = 0;
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const fetcher = (timeoutMs = 600_000) =>
    new ModelFetcher({
      modelsDir: dir,
      dirs: MODEL_DIRS,
      maxBytes: 10 * 1024 ** 3,
      cacheMaxBytes: 10 * 1024 ** 3,
      timeoutMs,
      allowPrivate: true,
      hfEndpoint: "https://hub.example",
    });
  const lora = (ref: string) => ({
    "1": { class_type: "LoraLoader", inputs: { lora_name: ref } },
  });

  test("a size from a HEAD over the measured throughput; unknown sizes count as the default", async () => {
    const f = fetcher();
    const wf = {
      "1": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: `${base}/sized.safetensors` } },
      "2": { class_type: "LoraLoader", inputs: { lora_name: `${base}/unsized.safetensors` } },
      "3": { class_type: "VAELoader", inputs: { vae_name: `${base}/missing.safetensors` } },
    };
    const probed = await f.expectedDownload(wf, { probe: true });
    expect(probed).toEqual({
      bytes: 30e6 + 2 * DEFAULT_MODEL_BYTES,
      seconds: (30e6 + 2 * DEFAULT_MODEL_BYTES) / DEFAULT_BYTES_PER_SECOND,
      models: 3,
      unknownSize: 2,
    });
    expect(heads.sort()).toEqual(["/missing.safetensors", "/sized.safetensors", "/unsized.safetensors"]);
    // The size is remembered: asked once. Measured throughput replaces the default.
    f.throughput.observe(10e6, 1);
    const again = await f.expectedDownload(lora(`${base}/sized.safetensors`), { probe: true });
    expect(again).toEqual({ bytes: 30e6, seconds: 3, models: 1, unknownSize: 0 });
    expect(heads).toHaveLength(3);
  });

  test("without a probe nothing is asked: a size never seen is the default", async () => {
    const f = fetcher();
    const e = await f.expectedDownload(lora(`${base}/sized.safetensors`), { probe: false });
    expect(e).toEqual({
      bytes: DEFAULT_MODEL_BYTES,
      seconds: DEFAULT_MODEL_BYTES / DEFAULT_BYTES_PER_SECOND,
      models: 1,
      unknownSize: 1,
    });
    expect(heads).toEqual([]);
  });

  test("a model being downloaded is counted by the job that started it, not again", async () => {
    const f = fetcher();
    const arrived = new Promise<void>((r) => (getArrived = r));
    const folder = { folder: "loras", dir: "loras" };
    const fetching = f.fetch(`${base}/held.safetensors`, folder);
    await arrived;
    expect(await f.expectedDownload(lora(`${base}/held.safetensors`), { probe: true })).toEqual({
      bytes: 0,
      seconds: 0,
      models: 0,
      unknownSize: 0,
    });
    releaseHeld();
    const { file } = await fetching;
    f.unpin(file);
    // Downloaded: measured, and still nothing to download.
    expect(f.throughput.samples).toBe(1);
    expect((await f.expectedDownload(lora(`${base}/held.safetensors`))).models).toBe(0);
    expect(heads).toEqual([]);
  });

  test("a declared size counts at most MODEL_MAX_BYTES: a larger file is refused, never downloaded", async () => {
    const e = await fetcher().expectedDownload(lora(`${base}/huge.safetensors`), { probe: true });
    expect(e.bytes).toBe(10 * 1024 ** 3);
    expect(heads).toEqual(["/huge.safetensors"]);
  });

  test("never longer than a download may last", async () => {
    const e = await fetcher(5_000).expectedDownload(lora("https://h.example/a.safetensors"));
    expect(e.seconds).toBe(5);
  });

  test("a model already downloaded, a malformed reference and a workflow without references weigh nothing", async () => {
    const url = `${base}/sized.safetensors`;
    const { stem } = parseModelReference(url, { hfEndpoint: "https://hub.example" });
    await mkdir(join(dir, "loras"), { recursive: true });
    await writeFile(join(dir, "loras", `${stem}sized.safetensors`), "x");
    const f = fetcher();
    for (const wf of [lora(url), lora("https://h/a.safetensors#sha256=nope"), {}, null]) {
      expect(await f.expectedDownload(wf, { probe: true })).toEqual({
        bytes: 0,
        seconds: 0,
        models: 0,
        unknownSize: 0,
      });
    }
    expect(heads).toEqual([]);
  });

  test("a model the address policy refuses is not asked (its size is the default; the job is refused anyway)", async () => {
    const strict = new ModelFetcher({
      modelsDir: dir,
      dirs: MODEL_DIRS,
      maxBytes: 1e12,
      cacheMaxBytes: 1e12,
      timeoutMs: 600_000,
      allowPrivate: false,
      hfEndpoint: "https://hub.example",
    });
    const e = await strict.expectedDownload(lora(`${base}/sized.safetensors`), { probe: true });
    expect([e.models, e.unknownSize]).toEqual([1, 1]);
    expect(heads).toEqual([]);
  });
});

describe("LoadSignal.downloadPrice", () => {
  test("seconds of download in workload units (seconds x the unit score), apart from the GPU workload", async () => {
    const seen: [unknown, boolean][] = [];
    const load = new LoadSignal({
      maxPerf: () => 4,
      onScore: () => undefined,
      downloadSeconds: async (wf, probe) => {
        seen.push([wf, probe]);
        return 12.5;
      },
    });
    const wf = { "1": { class_type: "X", inputs: {} } };
    expect(await load.downloadPrice(wf, true)).toEqual({ seconds: 12.5, workload: 50 });
    expect(seen).toEqual([[wf, true]]);
    // The GPU estimate does not move.
    expect(load.estimate(wf).workload).toBe(
      new LoadSignal({ maxPerf: () => 4, onScore: () => {} }).estimate(wf).workload,
    );
  });

  test("before a score, or without a models folder, or when the estimate fails: nothing", async () => {
    const price = (opts: ConstructorParameters<typeof LoadSignal>[0]) =>
      new LoadSignal(opts).downloadPrice({}, true);
    expect(await price({ maxPerf: () => 0, onScore: () => {}, downloadSeconds: async () => 10 })).toEqual({
      seconds: 10,
      workload: 0,
    });
    expect(await price({ maxPerf: () => 2, onScore: () => {} })).toEqual({ seconds: 0, workload: 0 });
    expect(
      await price({
        maxPerf: () => 2,
        onScore: () => {},
        downloadSeconds: () => Promise.reject(new Error("x")),
      }),
    ).toEqual({ seconds: 0, workload: 0 });
  });
});

test("a failed download estimate is logged with its cause, and the job is priced without it", async () => {
  const log = captureLog();
  const load = new LoadSignal({
    maxPerf: () => 2,
    onScore: () => {},
    logger: log.logger,
    downloadSeconds: () => Promise.reject(new Error("models folder unreadable")),
  });
  expect(await load.downloadPrice({}, true)).toEqual({ seconds: 0, workload: 0 });
  await log.waitFor(/could not estimate a job's model downloads/);
  expect(log.lines.find((l) => l.includes("could not estimate"))).toContain("models folder unreadable");
});

test("a job that waited on a model download teaches the cost model nothing (its run loaded the model first)", () => {
  const load = new LoadSignal({ maxPerf: () => 4, onScore: () => undefined });
  const run = (fetchedModels: boolean) => {
    const job = new Job(
      {
        requestId: `j-${String(fetchedModels)}`,
        workflow: { "1": { class_type: "X", inputs: {} } },
        s3: undefined,
        webhook: undefined,
      },
      100,
      0,
    );
    job.status = "completed";
    job.timings.generation_ms = 2_000;
    job.fetchedModels = fetchedModels;
    load.completed(job);
  };
  run(true);
  expect(load.state().shapes).toEqual([]);
  run(false);
  expect(load.state().shapes).toEqual([expect.objectContaining({ samples: 1 })]);
});
