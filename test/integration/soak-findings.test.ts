import { randomUUID } from "node:crypto";
import { got } from "got";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import {
  RecordingServer,
  startLaggingProxy,
  startSlowProxy,
  type LaggingProxy,
  type SlowProxy,
} from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import {
  freePort,
  getJson,
  pollUntil,
  postJson,
  startTestWorker,
  type TestWorker,
} from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * What `npm run soak` (benchmark/soak/) found on an endpoint of two workers, each pinned by a focused test: the
 * workers' /result must agree on a job, and a webhook's outcome must outlive the worker that sent it.
 */

const prefix = `soak-findings-${randomUUID().slice(0, 8)}/`;
let a: TestWorker;
let b: TestWorker;
let down: TestWorker;
let lagging: TestWorker;
let receiver: RecordingServer;
let comfyPath: SlowProxy;
let slowDocuments: LaggingProxy;

beforeAll(async () => {
  const env = { SHARED_JOBS_PREFIX: prefix, WEBHOOK_MAX_ATTEMPTS: "1" };
  receiver = await new RecordingServer().start();
  receiver.handler = (_req, res) => void res.writeHead(500).end("down");
  // A worker that reaches ComfyUI through a proxy, closed once the worker is up: its jobs then fail with
  // comfyui_unavailable (retryable).
  comfyPath = await startSlowProxy(new URL(stack().comfyUrl), 0);
  // A worker whose job documents reach the bucket a second late (each request for a job.json is held), its uploads
  // at once: an answer sent before its document landed shows as another worker's /result disagreeing, as the
  // soak's worker killed just after answering left it.
  slowDocuments = await startLaggingProxy(new URL(stack().s3Endpoint), 1_000, (path) =>
    path.split("?")[0]!.endsWith("/job.json"),
  );
  [a, b, down, lagging] = await Promise.all([
    startTestWorker(env),
    startTestWorker(env),
    startTestWorker({ ...env, COMFYUI_URL: comfyPath.url }),
    startTestWorker({ ...env, S3_ENDPOINT_URL: slowDocuments.url }),
  ]);
  await comfyPath.close();
}, 120_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop(), down?.stop(), lagging?.stop(), receiver?.stop()]);
  await slowDocuments?.close();
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

test("a worker routed to before it has the router's key answers 503 not_ready (retried), then serves the same request", async () => {
  // The autoscaler as a restarted worker finds it: reachable, but its /pubkey/ not answering yet (a fault the
  // router emulator cannot hold on demand). The router itself still routes to the worker, which it saw ready.
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  let keyWasAsked!: () => void;
  const keyAsked = new Promise<void>((resolve) => (keyWasAsked = resolve));
  let keyServed = false;
  const autoscaler = await new RecordingServer().start();
  autoscaler.handler = (req, res) => {
    if (!req.url.startsWith("/pubkey/")) return void res.end("{}");
    keyWasAsked();
    if (keyServed) res.end(router.publicKeyPem);
    else res.writeHead(503).end("not yet");
  };
  const port = String(await freePort());
  const starting = startTestWorker({ UNSECURED: "false", REPORT_ADDR: autoscaler.url, WORKER_PORT: port });
  try {
    // The key is asked for once the ports listen.
    await keyAsked;
    const url = `http://127.0.0.1:${port}`;
    // The client's retry sends the same payload under a fresh route's auth_data.
    const payload = { input: { request_id: `keyless-${randomUUID()}`, workflow_json: modelFree() } };
    const body = () => ({ auth_data: router.authData(url), payload });
    const refused = await got.post(`${url}/generate/sync`, {
      json: body(),
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: { request: 30_000 },
    });
    expect(refused.statusCode).toBe(503);
    expect(refused.headers["retry-after"]).toBe("1");
    expect(JSON.parse(refused.body)).toMatchObject({ code: "not_ready" });

    keyServed = true;
    await starting;
    const served = await postJson(`${url}/generate/sync`, body());
    expect(served.status).toBe(200);
    expect(served.body).toMatchObject({ status: "completed" });
  } finally {
    keyServed = true;
    await (await starting).stop();
    await autoscaler.stop();
    await router.close();
  }
}, 120_000);

test("the same request run again on one worker after its upload failed runs its output nodes again (no cached run's files)", async () => {
  // Storage that refuses connections: the run ends in upload_failed (retryable) after ComfyUI saved its files.
  const s3 = {
    endpoint_url: `http://127.0.0.1:${await freePort()}`,
    access_key_id: stack().s3AccessKeyId,
    secret_access_key: stack().s3SecretAccessKey,
  };
  const id = `rerun-${randomUUID()}`;
  const body = { input: { request_id: id, workflow_json: modelFree(), s3 } };
  for (let run = 1; run <= 3; run++) {
    const answer = await postJson(`${a.api}/generate/sync`, body);
    expect(answer.status).toBe(502);
    expect(answer.body).toMatchObject({ id, status: "failed", error: { code: "upload_failed" } });
  }
});

test("a job's end is in the bucket when its caller hears it: the sync answer and the webhook wait for its document", async () => {
  const id = `told-${randomUUID()}`;
  const hooks = await new RecordingServer().start();
  // What another worker says of the job at the moment the webhook arrives.
  let atWebhook: Promise<{ status: number; body: any }> | undefined;
  hooks.handler = (_req, res) => {
    atWebhook ??= getJson(`${b.api}/result/${id}`);
    res.end("ok");
  };
  try {
    const answer = await postJson(`${lagging.api}/generate/sync`, {
      input: { request_id: id, workflow_json: modelFree(), webhook: { url: `${hooks.url}/hook` } },
    });
    expect(answer.body).toMatchObject({ id, status: "completed" });
    expect((await getJson(`${b.api}/result/${id}`)).body).toMatchObject({ id, status: "completed" });
    await hooks.waitFor(1);
    expect((await atWebhook!).body).toMatchObject({ id, status: "completed" });
  } finally {
    await hooks.stop();
  }
});

test("an async job is in the bucket when its 202 is sent: every worker knows it, even if this one dies next", async () => {
  const id = `accepted-${randomUUID()}`;
  const accepted = await postJson(`${lagging.api}/generate`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(accepted.status).toBe(202);
  const elsewhere = await getJson(`${b.api}/result/${id}`);
  expect(elsewhere.status).toBe(200);
  expect(elsewhere.body).toMatchObject({ id });
});
