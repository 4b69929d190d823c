import { createHash, randomUUID } from "node:crypto";
import { mkdir, readdir, rm, stat, utimes, writeFile } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import { join } from "node:path";
import { ObjectStorage, type ResolvedS3 } from "../../handlers/storage/s3.js";
import { RED_PIXEL_PNG, RecordingServer, type Received } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { getJson, pollUntil, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { downloaded, modelsDir, sendFile, tinyCheckpointPath, tinyLora } from "../harness/models.js";
import { tinyText2Image, withLora } from "../harness/workflows.js";

/**
 * Models named by reference in a loader's input, on the real stack: the tiny checkpoint and tiny LoRAs served by a
 * local HTTP server and by the stack's S3, downloaded into ComfyUI's models folder, seen by its loaders without a
 * restart, once per reference, bounded, verified, evicted only when no job uses them.
 */

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** Bytes in the downloads under way (`<models>/.downloads/*.partial`). */
async function partialBytes(): Promise<number> {
  const dir = join(modelsDir(), ".downloads");
  const names = await readdir(dir).catch(() => [] as string[]);
  const sizes = await Promise.all(
    names.map((n) =>
      stat(join(dir, n)).then(
        (s) => s.size,
        () => 0,
      ),
    ),
  );
  return sizes.reduce((a, b) => a + b, 0);
}

const HF_TOKEN = "hf_TESTTOKEN0123456789";
let files: RecordingServer;
/** Bodies by path; a path under /drop/ sends half its body, then drops the connection, once. */
const bodies = new Map<string, Buffer>();
const dropped = new Set<string>();
/** Responses the test holds open (their headers sent) until it releases them. */
let hold: ((res: ServerResponse) => void) | undefined;
let checkpointPath: string;
let w: TestWorker;

const requestsFor = (path: string): Received[] => files.received.filter((r) => r.url.split("?")[0] === path);

beforeAll(async () => {
  checkpointPath = await tinyCheckpointPath();
  files = await new RecordingServer().start();
  files.handler = (req, res) => {
    const path = req.url.split("?")[0]!;
    if (path === "/tiny-checkpoint.safetensors") return sendFile(res, checkpointPath);
    if (path === "/loras/huge.safetensors") {
      // Declares 2 GiB: refused from its headers, its body never read.
      res.writeHead(200, { "content-length": 2 * 1024 ** 3 });
      return void res.flushHeaders();
    }
    if (path.startsWith("/private/")) {
      res.statusCode = 403;
      return void res.end("no");
    }
    const body = bodies.get(path);
    if (!body) {
      res.statusCode = 404;
      return void res.end();
    }
    const range = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ""));
    if (range) {
      const start = Number(range[1]);
      res.writeHead(206, {
        "content-length": body.length - start,
        "content-range": `bytes ${start}-${body.length - 1}/${body.length}`,
      });
      return void res.end(body.subarray(start));
    }
    res.writeHead(200, { "content-length": body.length });
    if (path.startsWith("/drop/") && !dropped.has(path)) {
      dropped.add(path);
      // The connection drops once the first half is on the worker's disk (its partial file has bytes).
      res.write(body.subarray(0, body.length >> 1));
      void pollUntil(partialBytes, (n) => n > 0, 10_000).then(() => res.destroy());
      return;
    }
    if (hold) return hold(res);
    res.end(body);
  };
  // The local server stands in for the Hub too (HF_ENDPOINT): /<org>/<repo>/resolve/<revision>/<path>.
  w = await startTestWorker({
    MODEL_MAX_BYTES: String(1024 ** 3),
    HF_ENDPOINT: files.url,
    HF_TOKEN: HF_TOKEN,
  });
});

afterAll(async () => {
  await w?.stop();
  await files?.stop();
  // What this file downloaded into the stack's models folder (about a checkpoint or two) goes with it.
  for (const dir of ["checkpoints", "loras"]) {
    for (const name of await downloaded(dir)) {
      await rm(join(modelsDir(), dir, name), { force: true });
    }
  }
});

const generate = (worker: TestWorker, workflow: Record<string, any>, id = `models-${randomUUID()}`) =>
  postJson(`${worker.api}/generate/sync`, { input: { request_id: id, workflow_json: workflow } });

/** The code of a failed job's answer (a 4xx body, or a failed job's error). */
const codeOf = (body: any): string | undefined => body?.code ?? body?.error?.code;

test("a checkpoint named by an http URL is downloaded into models/checkpoints and the job completes", async () => {
  const url = `${files.url}/tiny-checkpoint.safetensors`;
  // What a killed earlier run left under way, older than a download may last: swept at the first download.
  const partials = join(modelsDir(), ".downloads");
  await mkdir(partials, { recursive: true });
  await writeFile(join(partials, "od-0000000000000000-left.partial"), "x");
  const old = new Date(Date.now() - 2 * 3_600_000);
  await utimes(join(partials, "od-0000000000000000-left.partial"), old, old);
  const wf = tinyText2Image(1);
  wf["4"].inputs.ckpt_name = url;
  const res = await generate(w, wf);
  expect([res.status, res.body.status, res.body.message]).toEqual([200, "completed", expect.any(String)]);
  const names = await downloaded("checkpoints");
  expect(names).toEqual([expect.stringMatching(/^od-[0-9a-f]{16}-tiny-checkpoint\.safetensors$/)]);
  expect((await stat(join(modelsDir(), "checkpoints", names[0]!))).size).toBe(
    (await stat(checkpointPath)).size,
  );
  // Never a partial file where ComfyUI lists models, and none left behind.
  expect(await readdir(partials)).toEqual([]);
  // The next job finds it in the cache.
  const again = await generate(w, wf);
  expect(again.body.status).toBe("completed");
  expect(requestsFor("/tiny-checkpoint.safetensors")).toHaveLength(1);
});

test("a checkpoint named by s3://<bucket>/<key> (the operator's storage) completes", async () => {
  const s = stack();
  const storage = new ObjectStorage({
    forcePathStyle: true,
    partSizeBytes: 64 * 1024 * 1024,
    presignExpirySeconds: 600,
    uploadTimeoutMs: 300_000,
  });
  const target: ResolvedS3 = {
    accessKeyId: s.s3AccessKeyId,
    secretAccessKey: s.s3SecretAccessKey,
    endpointUrl: s.s3Endpoint,
    bucketName: s.s3Bucket,
    region: s.s3Region,
  };
  const key = `models-test/${randomUUID()}/tiny.safetensors`;
  await storage.put(target, key, checkpointPath);
  storage.close();
  const wf = tinyText2Image(1);
  wf["4"].inputs.ckpt_name = `s3://${s.s3Bucket}/${key}`;
  const { status, body } = await generate(w, wf);
  expect([status, body.status]).toEqual([200, "completed"]);
  expect(await downloaded("checkpoints")).toContainEqual(
    expect.stringMatching(/^od-[0-9a-f]{16}-tiny\.safetensors$/),
  );
  // Another bucket would mean the operator's keys signing for a bucket they were not given for.
  const other = tinyText2Image(1);
  other["4"].inputs.ckpt_name = `s3://${s.s3SecondBucket}/${key}`;
  const refused = await generate(w, other);
  expect([refused.status, codeOf(refused.body)]).toEqual([400, "model_bad_reference"]);
});

test("two jobs asking for the same LoRA at once share one download; both complete", async () => {
  const lora = tinyLora("shared");
  bodies.set("/loras/shared.safetensors", lora);
  const held: ServerResponse[] = [];
  hold = (res) => void held.push(res);
  const url = `${files.url}/loras/shared.safetensors#sha256=${sha256(lora)}`;
  const ids = [`models-${randomUUID()}`, `models-${randomUUID()}`];
  const before = files.received.length;
  const jobs = ids.map((id) => generate(w, withLora(url), id));
  // The download is under way (held) and both jobs are preparing their inputs: the second asks for it meanwhile.
  await files.waitFor(before + 1);
  for (const id of ids) {
    const seen = await pollUntil(
      () => getJson(`${w.api}/result/${id}`),
      (r) => r.body?.status === "processing",
      10_000,
    );
    expect(seen.body.status).toBe("processing");
  }
  hold = undefined;
  for (const res of held) res.end(lora);
  const results = await Promise.all(jobs);
  expect(results.map((r) => r.body.status)).toEqual(["completed", "completed"]);
  expect(requestsFor("/loras/shared.safetensors")).toHaveLength(1);
});

test("hf://<org>/<repo>/<path>@<revision> resolves against HF_ENDPOINT with HF_TOKEN, never shown", async () => {
  const lora = tinyLora("hub");
  bodies.set("/tiny-org/tiny-loras/resolve/v1/sub/hub.safetensors", lora);
  const { body } = await generate(w, withLora("hf://tiny-org/tiny-loras/sub/hub.safetensors@v1"));
  expect(body.status).toBe("completed");
  const [req] = requestsFor("/tiny-org/tiny-loras/resolve/v1/sub/hub.safetensors");
  expect(req?.headers.authorization).toBe(`Bearer ${HF_TOKEN}`);
  expect(await downloaded("loras")).toContainEqual(
    expect.stringMatching(/^od-[0-9a-f]{16}-hub\.safetensors$/),
  );
  // A missing file's error names the reference, not the token.
  const missing = await generate(w, withLora("hf://tiny-org/tiny-loras/none.safetensors"));
  expect([missing.status, codeOf(missing.body)]).toEqual([424, "model_unreachable"]);
  expect(JSON.stringify(missing.body)).toContain("hf://tiny-org/tiny-loras/none.safetensors");
  expect(JSON.stringify(missing.body)).not.toContain(HF_TOKEN);
});

test("a dropped connection resumes with a Range request and the file's sha256 still matches", async () => {
  const lora = tinyLora("resumed", 1024 * 1024);
  bodies.set("/drop/resumed.safetensors", lora);
  const { body } = await generate(
    w,
    withLora(`${files.url}/drop/resumed.safetensors#sha256=${sha256(lora)}`),
  );
  expect([body.status, body.error]).toEqual(["completed", undefined]);
  const seen = requestsFor("/drop/resumed.safetensors");
  expect(seen.map((r) => r.headers.range)).toEqual([undefined, expect.stringMatching(/^bytes=\d+-$/)]);
});

test("errors name their cause: checksum, size, 403, 404, not a models input", async () => {
  const lora = tinyLora("checked");
  bodies.set("/loras/checked.safetensors", lora);
  bodies.set("/loras/page", lora);
  const cases: [string, number, string, RegExp][] = [
    [
      `${files.url}/loras/checked.safetensors#sha256=${"0".repeat(64)}`,
      422,
      "model_bad_checksum",
      /sha256 is /,
    ],
    [`${files.url}/loras/huge.safetensors`, 413, "model_too_large", /above MODEL_MAX_BYTES/],
    [`${files.url}/private/x.safetensors?token=SECRET`, 424, "model_access_denied", /answered 403/],
    [`${files.url}/missing.safetensors`, 424, "model_unreachable", /answered 404/],
    [`${files.url}/loras/page`, 400, "model_bad_reference", /names no model file/],
  ];
  for (const [url, httpStatus, code, message] of cases) {
    const { status, body } = await generate(w, withLora(url));
    expect([url, status, codeOf(body)]).toEqual([url, httpStatus, code]);
    expect(JSON.stringify(body)).toMatch(message);
    expect(JSON.stringify(body)).toMatch(/node 10 \(LoraLoader\) input \\?"lora_name\\?"/);
    expect(JSON.stringify(body)).not.toContain("SECRET");
  }
  // Nothing half-written is left where ComfyUI lists models.
  expect(await readdir(join(modelsDir(), ".downloads"))).toEqual([]);
  expect((await downloaded("loras")).some((n) => n.includes("checked") || n.includes("huge"))).toBe(false);
  // A reference in LoadImage's input is refused, not fetched.
  const { status, body } = await generate(w, {
    "1": { class_type: "LoadImage", inputs: { image: "s3://outputs/x.png" } },
    "2": { class_type: "PreviewImage", inputs: { images: ["1", 0] } },
  });
  expect([status, codeOf(body)]).toEqual([400, "not_a_model_input"]);
});

test("a model URL on a private address is refused by the address policy", async () => {
  const strict = await startTestWorker({ INPUT_URL_ALLOW_PRIVATE: "false" });
  try {
    bodies.set("/loras/private.safetensors", tinyLora("private"));
    const before = files.received.length;
    for (const url of [
      `${files.url}/loras/private.safetensors`,
      "http://169.254.169.254/latest/meta-data/x.safetensors",
      "http://[::1]:9/x.safetensors",
      "http://localhost:9/x.safetensors",
    ]) {
      const { status, body } = await generate(strict, withLora(url));
      expect([url, status, codeOf(body)]).toEqual([url, 400, "model_bad_reference"]);
      expect(body.message ?? body.error?.error).toMatch(
        /node 10 \(LoraLoader\) input "lora_name": .*not allowed/,
      );
    }
    expect(files.received.length).toBe(before);
  } finally {
    await strict.stop();
  }
});

test("eviction under a small MODEL_CACHE_MAX_BYTES never removes a file a job uses", async () => {
  const size = 48 * 1024;
  const [a, b] = [tinyLora("evict-a", size), tinyLora("evict-b", size)];
  bodies.set("/loras/evict-a.safetensors", a);
  bodies.set("/loras/evict-b.safetensors", b);
  // Room for one of them, whatever the folder held before (other files of this test are evicted first).
  const small = await startTestWorker({ MODEL_CACHE_MAX_BYTES: String(Math.floor(a.length * 1.5)) });
  try {
    const urlA = `${files.url}/loras/evict-a.safetensors`;
    const urlB = `${files.url}/loras/evict-b.safetensors`;
    // Job A holds its LoRA while its image input is held: A's model is downloaded and pinned, the job in flight.
    const held: ServerResponse[] = [];
    const wfA = withLora(urlA);
    wfA["20"] = { class_type: "LoadImage", inputs: { image: `${files.url}/held-image.png` } };
    const imageRequested = new Promise<void>((resolve) => {
      const previous = files.handler;
      files.handler = (req, res) => {
        if (req.url === "/held-image.png") {
          res.writeHead(200, { "content-type": "image/png" });
          res.flushHeaders();
          held.push(res);
          files.handler = previous;
          return resolve();
        }
        previous(req, res);
      };
    });
    const jobA = generate(small, wfA);
    await imageRequested;
    // Wait until A's LoRA is on disk (its download ran beside the image's).
    const present = await pollUntil(
      () => downloaded("loras"),
      (names) => names.some((n) => n.endsWith("evict-a.safetensors")),
      10_000,
    );
    const fileA = present.find((n) => n.endsWith("evict-a.safetensors"));
    expect(fileA).toBeDefined();
    // Job B needs room that only A's file could give: refused before its download starts, A's file kept.
    const refusedB = await generate(small, withLora(urlB));
    expect([refusedB.status, codeOf(refusedB.body)]).toEqual([413, "model_too_large"]);
    expect((await downloaded("loras")).filter((n) => n.endsWith("evict-b.safetensors"))).toEqual([]);
    expect(await downloaded("loras")).toContain(fileA);
    // A runs to the end with its file.
    for (const res of held) res.end(RED_PIXEL_PNG);
    expect((await jobA).body.status).toBe("completed");
    // A is done: B may now evict A's file.
    const b2 = await generate(small, withLora(urlB));
    expect(b2.body.status).toBe("completed");
    const after = await downloaded("loras");
    expect(after).not.toContain(fileA);
    expect(after.some((n) => n.endsWith("evict-b.safetensors"))).toBe(true);
  } finally {
    await small.stop();
  }
});
