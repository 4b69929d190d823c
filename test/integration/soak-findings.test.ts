import { randomUUID } from "node:crypto";
import { RecordingServer, startSlowProxy, type SlowProxy } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { getJson, pollUntil, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * What `npm run soak` (benchmark/soak/) found on an endpoint of two workers, each pinned by a focused test: the
 * workers' /result must agree on a job, and a webhook's outcome must outlive the worker that sent it.
 */

const prefix = `soak-findings-${randomUUID().slice(0, 8)}/`;
let a: TestWorker;
let b: TestWorker;
let down: TestWorker;
let receiver: RecordingServer;
let comfyPath: SlowProxy;

beforeAll(async () => {
  const env = { SHARED_JOBS_PREFIX: prefix, WEBHOOK_MAX_ATTEMPTS: "1" };
  receiver = await new RecordingServer().start();
  receiver.handler = (_req, res) => void res.writeHead(500).end("down");
  // A worker that reaches ComfyUI through a proxy, closed once the worker is up: its jobs then fail with
  // comfyui_unavailable (retryable).
  comfyPath = await startSlowProxy(new URL(stack().comfyUrl), 0);
  [a, b, down] = await Promise.all([
    startTestWorker(env),
    startTestWorker(env),
    startTestWorker({ ...env, COMFYUI_URL: comfyPath.url }),
  ]);
  await comfyPath.close();
}, 120_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop(), down?.stop(), receiver?.stop()]);
});

test("a retryable failure retried on another worker: both workers' /result answer the retry's end", async () => {
  const id = `retried-${randomUUID()}`;
  const body = { input: { request_id: id, workflow_json: modelFree() } };
  const first = await postJson(`${down.api}/generate/sync`, body);
  expect(first.status).toBe(503);
  expect(first.body).toMatchObject({ id, status: "failed", error: { code: "comfyui_unavailable" } });

  const retried = await postJson(`${a.api}/generate/sync`, body);
  expect(retried.body).toMatchObject({ id, status: "completed" });

  // The worker that failed it first no longer answers its own, superseded failure.
  // (The retry's final document reaches the bucket just after its answer: read until it is there.)
  const polled = await pollUntil(
    () => getJson(`${down.api}/result/${id}`),
    (r) => r.body?.status !== "queued" && r.body?.status !== "processing",
    30_000,
  );
  expect(polled.body).toMatchObject({ id, status: "completed" });
  expect((await getJson(`${b.api}/result/${id}`)).body).toMatchObject({ id, status: "completed" });

  // The caller sends it again to the worker that failed it (a client retrying a lost answer): the retry's end is
  // the answer, not a new run of the id there (it would fail again, or be refused 409 and then /result disagree).
  const again = await postJson(`${down.api}/generate/sync`, body);
  expect(again.status).toBe(200);
  expect(again.body).toMatchObject({ id, status: "completed" });
  expect((await getJson(`${down.api}/result/${id}`)).body).toMatchObject({ id, status: "completed" });
});

test("a webhook that failed is recorded on the job in the bucket: another worker's /result shows the cause", async () => {
  const id = `hook-${randomUUID()}`;
  const done = await postJson(`${a.api}/generate/sync`, {
    input: { request_id: id, workflow_json: modelFree(), webhook: { url: `${receiver.url}/hook` } },
  });
  expect(done.body).toMatchObject({ id, status: "completed" });
  const seen = await pollUntil(
    () => getJson(`${b.api}/result/${id}`),
    (r) => r.body?.webhook?.status === "failed",
    30_000,
  );
  expect(seen.body).toMatchObject({
    id,
    status: "completed",
    webhook: { status: "failed", attempts: 1, http_status: 500, error: expect.stringContaining("500") },
  });
});
