import { randomUUID } from "node:crypto";
import { RecordingServer } from "../harness/http-fixtures.js";
import { stack, waitForComfyIdle } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree, tinyText2Image } from "../harness/workflows.js";

/** Every limit is answered with a clear 4xx naming it; resource failures inside ComfyUI are retryable. */

let w: TestWorker;
let slow: RecordingServer;

beforeAll(async () => {
  slow = await new RecordingServer().start();
  // Sends headers, then never finishes the body.
  slow.handler = (_req, res) => {
    res.setHeader("content-type", "image/png");
    res.write(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
  };
  w = await startTestWorker({
    MAX_BODY_BYTES: "20000",
    MAX_WORKFLOW_NODES: "10",
    INPUT_URL_TIMEOUT_MS: "500",
  });
});
afterAll(async () => {
  await w?.stop();
  await slow?.stop();
});

test("a body above MAX_BODY_BYTES is a 413 naming the limit", async () => {
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = "x".repeat(30_000);
  const { status, body } = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: wf } });
  expect(status).toBe(413);
  expect(body.error).toMatch(/MAX_BODY_BYTES=20000/);
});

test("a workflow above MAX_WORKFLOW_NODES is a 413 naming the limit", async () => {
  const wf: Record<string, unknown> = {};
  for (let i = 0; i < 11; i++) wf[String(i)] = { class_type: "EmptyImage", inputs: {} };
  const { status, body } = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: wf } });
  expect(status).toBe(413);
  expect(body.error).toMatch(/11 nodes, above MAX_WORKFLOW_NODES=10/);
});

test("a download slower than INPUT_URL_TIMEOUT_MS is a 400 naming the limit", async () => {
  const { status, body } = await postJson(`${w.api}/generate/sync`, {
    input: { workflow_json: loadImageWorkflow(`${slow.url}/stalls-${randomUUID()}.png`) },
  });
  expect(status).toBe(400);
  expect(body.message).toMatch(
    /node 10 \(LoadImage\) input "image": download took longer than INPUT_URL_TIMEOUT_MS=500/,
  );
});

test("a job past JOB_TIMEOUT_MS is a 422 naming the limit, and only its prompt is interrupted", async () => {
  // A worker of its own: with so short a deadline, the other tests' jobs would race it on a loaded machine.
  const timed = await startTestWorker({ JOB_TIMEOUT_MS: "1500" });
  try {
    const id = `deadline-${randomUUID()}`;
    const { status, body } = await postJson(`${timed.api}/generate/sync`, {
      input: { request_id: id, workflow_json: tinyText2Image(500) },
    });
    expect(status).toBe(422);
    expect(body.status).toBe("failed");
    expect(body.message).toMatch(/JOB_TIMEOUT_MS=1500/);
  } finally {
    await timed.stop();
  }
  await waitForComfyIdle(stack().comfyUrl);
  const next = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(next.body.status).toBe("completed");
});

test("ComfyUI running out of memory fails the job as retryable (503), and the next job runs", async () => {
  // A real allocation failure on the CPU: 4096 images of 16384x16384 cannot be allocated.
  const wf = {
    "1": { class_type: "EmptyImage", inputs: { width: 16384, height: 16384, batch_size: 4096, color: 0 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "oom" } },
  };
  const id = `oom-${randomUUID()}`;
  const { status, body } = await postJson(`${w.api}/generate/sync`, {
    input: { request_id: id, workflow_json: wf },
  });
  expect(status).toBe(503);
  expect(body.error.code).toBe("out_of_memory");
  expect(body.message).toMatch(/ran out of memory/);
  // The failure stays visible to pollers; the same id may still run again (see robustness.test.ts).
  expect((await (await fetch(`${w.api}/result/${id}`)).json()) as any).toMatchObject({
    status: "failed",
    error: { code: "out_of_memory" },
  });
  const next = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(next.body.status).toBe("completed");
});
