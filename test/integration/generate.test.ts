import { expectProgressToMax } from "../harness/progress.js";
import { randomUUID } from "node:crypto";
import { createServer } from "node:net";
import { once } from "node:events";
import { RED_PIXEL_PNG, RecordingServer } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree, tinyText2Image } from "../harness/workflows.js";

let w: TestWorker;
let files: RecordingServer;
let hooks: RecordingServer;

beforeAll(async () => {
  files = await new RecordingServer().start();
  files.handler = (req, res) => {
    if (req.url.startsWith("/red.png")) {
      res.setHeader("content-type", "image/png");
      res.end(RED_PIXEL_PNG);
    } else if (req.url === "/big.png") {
      res.setHeader("content-type", "image/png");
      res.end(Buffer.concat([RED_PIXEL_PNG, Buffer.alloc(4096)]));
    } else if (req.url === "/not-an-image") {
      res.setHeader("content-type", "text/html");
      res.end("<html>nope</html>");
    } else {
      res.statusCode = 404;
      res.end();
    }
  };
  hooks = await new RecordingServer().start();
  w = await startTestWorker({ INPUT_URL_MAX_BYTES: "1024" });
});

afterAll(async () => {
  await w?.stop();
  await files?.stop();
  await hooks?.stop();
});

const generate = (input: Record<string, unknown>) => postJson(`${w.api}/generate/sync`, { input });

test("a text-to-image workflow completes: PNG behind a pre-signed URL, progress, timings, webhook with extra_params", async () => {
  const requestId = `t2i-${randomUUID()}`;
  const { status, body } = await generate({
    request_id: requestId,
    workflow_json: tinyText2Image(4),
    webhook: { url: `${hooks.url}/hook`, extra_params: { user_id: "12345", project_id: "abc-def" } },
  });
  expect(status).toBe(200);
  expect(body.status).toBe("completed");
  expect(body.id).toBe(requestId);
  expect(body.output).toHaveLength(1);
  const out = body.output[0];
  expect(out).toMatchObject({ node_id: "9", output_type: "images", type: "output", subfolder: requestId });
  expect(out.filename).toMatch(/\.png$/);
  expect(out.local_path).toBe(`${w.outputDir}/${requestId}/${out.filename}`);
  const png = await fetch(out.url);
  expect(png.status).toBe(200);
  expect(png.headers.get("content-type")).toBe("image/png");
  expect(
    Buffer.from(await png.arrayBuffer())
      .subarray(1, 4)
      .toString(),
  ).toBe("PNG");
  const details = body.comfyui_response.execution_details;
  expectProgressToMax(details.progress_updates, 4);
  expect(details.progress_updates.at(-1)).toMatchObject({ node: "3" });
  expect(body.comfyui_response.status.status_str).toBe("success");
  expect(body.comfyui_response.outputs["9"].images).toHaveLength(1);
  for (const k of [
    "preprocess_ms",
    "generation_ms",
    "postprocess_ms",
    "total_ms",
    "queued_at_ms",
    "completed_at_ms",
  ]) {
    expect(typeof body.timings[k]).toBe("number");
  }
  await hooks.waitFor(1);
  const hook = JSON.parse(hooks.received[0]!.body);
  expect(hook).toMatchObject({
    id: requestId,
    status: "completed",
    extra: { user_id: "12345", project_id: "abc-def" },
  });
  expect(hook.output[0].url).toBe(out.url);
  expect(hooks.received[0]!.headers["webhook-id"]).toBeDefined();
});

test("several outputs at once: images and an animated WEBP, each uploaded", async () => {
  const { status, body } = await generate({ workflow_json: modelFree() });
  expect(status).toBe(200);
  expect(body.status).toBe("completed");
  const byNode = (id: string) => body.output.filter((o: any) => o.node_id === id);
  expect(byNode("3")).toHaveLength(2);
  expect(byNode("4")).toHaveLength(1);
  expect(byNode("4")[0].filename).toMatch(/\.webp$/);
  for (const o of body.output) {
    const res = await fetch(o.url);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
  }
  expect(
    (await fetch(body.output.find((o: any) => o.filename.endsWith(".webp")).url)).headers.get("content-type"),
  ).toBe("image/webp");
});

test("__RANDOM_INT__: whole values become distinct integers, embedded ones are replaced as text", async () => {
  const seeds: number[] = [];
  for (let i = 0; i < 2; i++) {
    const wf = tinyText2Image(1);
    wf["9"].inputs.filename_prefix = "seeded-__RANDOM_INT__-x";
    const { body } = await generate({ workflow_json: wf });
    expect(body.status).toBe("completed");
    const prompt = body.comfyui_response.prompt[2];
    const seed = prompt["3"].inputs.seed;
    expect(Number.isInteger(seed)).toBe(true);
    expect(seed).toBeGreaterThanOrEqual(0);
    expect(seed).toBeLessThanOrEqual(2 ** 32 - 1);
    expect(prompt["9"].inputs.filename_prefix).toMatch(/^seeded-\d+-x$/);
    expect(body.output[0].filename).toMatch(/^seeded-\d+-x_\d+_\.png$/);
    seeds.push(seed);
  }
  expect(seeds[0]).not.toBe(seeds[1]);
});

test("a URL input is downloaded into ComfyUI's input folder and the value replaced", async () => {
  const { status, body } = await generate({
    workflow_json: loadImageWorkflow(`${files.url}/red.png?v=${randomUUID()}`),
  });
  expect(status).toBe(200);
  expect(body.status).toBe("completed");
  expect(body.comfyui_response.prompt[2]["10"].inputs.image).toMatch(/^url_[0-9a-f]+\.png$/);
});

test("a data: URI input is decoded into the input folder", async () => {
  const uri = `data:image/png;base64,${RED_PIXEL_PNG.toString("base64")}`;
  const { status, body } = await generate({ workflow_json: loadImageWorkflow(uri) });
  expect(status).toBe(200);
  expect(body.status).toBe("completed");
});

test("a download above INPUT_URL_MAX_BYTES is a 413 naming the node, the input and the limit", async () => {
  const { status, body } = await generate({ workflow_json: loadImageWorkflow(`${files.url}/big.png`) });
  expect(status).toBe(413);
  expect(body.status).toBe("failed");
  expect(body.message).toMatch(/node 10 \(LoadImage\) input "image".*INPUT_URL_MAX_BYTES=1024/);
});

test("a URL that is not an image, for an image input, is a 400", async () => {
  const { status, body } = await generate({ workflow_json: loadImageWorkflow(`${files.url}/not-an-image`) });
  expect(status).toBe(400);
  expect(body.error.code).toBe("input_error");
  expect(body.message).toMatch(/node 10 \(LoadImage\) input "image": not an image/);
});

test("a private URL is refused unless INPUT_URL_ALLOW_PRIVATE=true", async () => {
  const strict = await startTestWorker({ INPUT_URL_ALLOW_PRIVATE: "false" });
  try {
    for (const url of [
      `${files.url}/red.png`,
      "http://169.254.169.254/latest/meta-data/",
      "http://[::1]:9/x.png",
      "http://localhost:9/x.png",
    ]) {
      const { status, body } = await postJson(`${strict.api}/generate/sync`, {
        input: { workflow_json: loadImageWorkflow(url) },
      });
      expect(status).toBe(400);
      expect(body.message).toMatch(/node 10 \(LoadImage\) input "image": .*not allowed/);
    }
  } finally {
    await strict.stop();
  }
});

test("a per-request s3 object sends outputs to another bucket", async () => {
  const s = stack();
  const { body } = await generate({
    workflow_json: modelFree(),
    s3: {
      bucket_name: s.s3SecondBucket,
      // Another bucket means the request's own keys: the worker's keys stay with its bucket.
      access_key_id: s.s3AccessKeyId,
      secret_access_key: s.s3SecretAccessKey,
      endpoint_url: "",
      region: "",
    },
  });
  expect(body.status).toBe("completed");
  const url = new URL(body.output[0].url);
  expect(url.pathname.startsWith(`/${s.s3SecondBucket}/`)).toBe(true);
  expect((await fetch(url)).status).toBe(200);
});

test("S3 unreachable: each output carries upload_error, the job is failed, files stay local", async () => {
  const closed = createServer();
  closed.listen(0, "127.0.0.1");
  await once(closed, "listening");
  const port = (closed.address() as { port: number }).port;
  closed.close();
  const s = stack();
  const { status, body } = await generate({
    workflow_json: modelFree(),
    s3: {
      endpoint_url: `http://127.0.0.1:${port}`,
      access_key_id: s.s3AccessKeyId,
      secret_access_key: s.s3SecretAccessKey,
    },
  });
  // Retryable (the storage may answer next time): a 5xx, so the Vast client sends it again.
  expect(status).toBe(502);
  expect(body.status).toBe("failed");
  expect(body.error.code).toBe("upload_failed");
  expect(body.message).toMatch(/upload\(s\) failed/);
  for (const o of body.output) {
    expect(o.url).toBeUndefined();
    expect(o.upload_error).toMatch(/upload of .* failed/);
  }
});

test("storage that refuses the upload (the request's keys are wrong): 424 upload_rejected, not retried", async () => {
  const s = stack();
  const { status, body } = await generate({
    workflow_json: modelFree(),
    s3: { access_key_id: s.s3AccessKeyId, secret_access_key: `${s.s3SecretAccessKey}-wrong` },
  });
  expect(status).toBe(424);
  expect(body.status).toBe("failed");
  expect(body.error).toMatchObject({ code: "upload_rejected", storage_status: 403 });
  for (const o of body.output) {
    expect(o.url).toBeUndefined();
    expect(o.upload_error).toMatch(/upload of .* failed/);
  }
});

test("an invalid workflow is a 400 with ComfyUI's node_errors", async () => {
  const wf = modelFree();
  wf["1"].inputs.width = "not a number";
  const { status, body } = await generate({ workflow_json: wf });
  expect(status).toBe(400);
  expect(body.status).toBe("failed");
  expect(body.error.code).toBe("invalid_workflow");
  expect(body.error.node_errors["1"].errors.length).toBeGreaterThan(0);
});

test("an unknown node type is a 400", async () => {
  const { status, body } = await generate({
    workflow_json: { "1": { class_type: "NoSuchNode", inputs: {} } },
  });
  expect(status).toBe(400);
  expect(body.error.code).toBe("invalid_workflow");
});

test("a request_id that could escape a folder is a 400; bad JSON is a 400", async () => {
  const { status, body } = await generate({ request_id: "../etc", workflow_json: modelFree() });
  expect(status).toBe(400);
  expect(body.error).toMatch(/request_id/);
  const bad = await fetch(`${w.api}/generate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{nope",
  });
  expect(bad.status).toBe(400);
  expect(await bad.json()).toEqual({ error: "invalid JSON" });
  const missing = await postJson(`${w.api}/generate/sync`, { input: {} });
  expect(missing.status).toBe(400);
  expect(missing.body.issues[0].path).toBe("input.workflow_json");
});

test("the local API serves /docs (Swagger UI, no CDN) and an OpenAPI document made from the request schema", async () => {
  const page = await fetch(`${w.api}/docs`);
  expect(page.status).toBe(200);
  const html = await page.text();
  expect(html).toContain("/docs/assets/swagger-ui-bundle.js");
  expect((await fetch(`${w.api}/docs/assets/swagger-ui-bundle.js`)).status).toBe(200);
  const doc = (await (await fetch(`${w.api}/openapi.json`)).json()) as any;
  expect(doc.openapi).toBe("3.0.3");
  const body = doc.paths["/generate/sync"].post.requestBody.content["application/json"];
  expect(body.schema.properties.input.properties.workflow_json).toBeDefined();
  expect(body.example.input.workflow_json["9"].class_type).toBe("SaveImage");
  const metrics = await (await fetch(`${w.api}/metrics`)).text();
  expect(metrics).toMatch(/comfyui_worker_jobs_total\{status="completed"\} \d+/);
  expect(metrics).toMatch(/comfyui_worker_stage_seconds_bucket\{le="[\d.]+",stage="generation"\}/);
});
