import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { got } from "got";
import { freePort } from "../../scripts/services/child.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { startHeldImage } from "../harness/http-fixtures.js";
import { captureLog } from "../harness/log-capture.js";
import { stack, waitForComfyIdle } from "../harness/stack.js";
import { vastClientRequest } from "../harness/vast-client.js";
import {
  postJson,
  repoRoot,
  stackEnv,
  startTestWorker,
  type TestWorker,
  getJson,
  pollUntil,
} from "../harness/worker.js";
import { loadImageWorkflow, modelFree, tinyText2Image } from "../harness/workflows.js";

/**
 * An endpoint of two workers sharing the operator's bucket: a poll, a cancel or a retried request that lands on
 * the worker that did not run the job still answers for it.
 */

let a: TestWorker;
let b: TestWorker;
const bLog = captureLog("info");
const prefix = `endpoint-${randomUUID().slice(0, 8)}/`;

beforeAll(async () => {
  const env = { SHARED_JOBS_PREFIX: prefix, JOB_HEARTBEAT_MS: "500" };
  [a, b] = await Promise.all([startTestWorker(env), startTestWorker(env, { logger: bLog.logger })]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

test("an async job submitted to one worker is polled to its end on the other", async () => {
  const id = `shared-${randomUUID()}`;
  const submitted = await postJson(`${a.api}/generate`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(submitted.status).toBe(202);
  const polled = await pollUntil(
    () => getJson(`${b.api}/result/${id}`),
    (r) => r.status === 200 && r.body.status === "completed",
  );
  expect(polled.body).toMatchObject({ id, status: "completed" });
  expect(polled.body.output.length).toBeGreaterThan(0);
  expect(polled.body.output[0].url).toMatch(/^http/);
  // Only the owner's bookkeeping stays out of the document.
  expect(polled.body.owner).toBeUndefined();
  expect(b.worker.jobs.get(id)).toBeUndefined();
});

test("a retried request_id landing on the other worker is answered with the first job, not run again", async () => {
  const id = `retry-${randomUUID()}`;
  const first = await postJson(`${a.api}/generate/sync`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(first.body.status).toBe("completed");
  const again = await postJson(`${b.api}/generate/sync`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(again.status).toBe(200);
  expect(again.body).toMatchObject({ id, status: "completed" });
  expect(again.body.output.map((o: any) => o.filename)).toEqual(
    first.body.output.map((o: any) => o.filename),
  );
  expect(b.worker.jobs.get(id)).toBeUndefined(); // it did not run on b
});

test("the same request_id sent to both workers at once runs once: the conditional create lets one claim win", async () => {
  const id = `race-${randomUUID()}`;
  const input = { input: { request_id: id, workflow_json: tinyText2Image(4) } };
  const [ra, rb] = await Promise.all([
    postJson(`${a.api}/generate/sync`, input),
    postJson(`${b.api}/generate/sync`, input),
  ]);
  const completed = [a, b].filter((w) => w.worker.jobs.get(id)?.status === "completed");
  expect(completed).toHaveLength(1);
  // The other caller got the same job (it found the document) or a 409 naming the id to poll, never a second run.
  for (const r of [ra, rb]) {
    if (r.body.status === "completed") expect(r.body.id).toBe(id);
    else expect([r.status, r.body.status, r.body.error.code]).toEqual([409, "failed", "conflict"]);
  }
});

test("a sync retry that arrives while the job still runs elsewhere waits for it", async () => {
  // The job is held in flight (its input downloading) until the retry has reached the other worker.
  const input = await startHeldImage();
  try {
    const id = `wait-${randomUUID()}`;
    const wf = loadImageWorkflow(input.url(`${id}.png`));
    const firstP = postJson(`${a.api}/generate/sync`, { input: { request_id: id, workflow_json: wf } });
    await input.requested();
    await pollUntil(
      () => getJson(`${b.api}/result/${id}`),
      (r) => r.status === 200,
    );
    const secondP = postJson(`${b.api}/generate/sync`, { input: { request_id: id, workflow_json: wf } });
    await bLog.waitFor(new RegExp(`"request_id":"${id}".*another worker's running job: waiting`));
    expect(a.worker.jobs.get(id)!.final).toBe(false);
    input.release();
    const [first, second] = await Promise.all([firstP, secondP]);
    expect(first.body.status).toBe("completed");
    expect(second.body).toMatchObject({ id, status: "completed" });
    expect(b.worker.jobs.get(id)).toBeUndefined();
  } finally {
    await input.stop();
  }
});

test("a cancel sent to the other worker reaches the running job", async () => {
  const id = `cancel-${randomUUID()}`;
  const done = postJson(`${a.api}/generate/sync`, {
    input: { request_id: id, workflow_json: tinyText2Image(200) },
  });
  await pollUntil(
    () => Promise.resolve(a.worker.jobs.get(id)?.status),
    (s) => s === "generating",
  );
  const cancel = await postJson(`${b.api}/cancel/${id}`, {});
  expect(cancel.status).toBe(200);
  expect(cancel.body.id).toBe(id);
  const ended = await done;
  expect(ended.body.status).toBe("cancelled");
  const polled = await pollUntil(
    () => getJson(`${b.api}/result/${id}`),
    (r) => r.body?.status === "cancelled",
  );
  expect(polled.body.status).toBe("cancelled");
});

test("a worker killed mid-job leaves a document that shows the failure once its heartbeat lapses", async () => {
  const id = `lost-${randomUUID()}`;
  const dir = await mkdtemp(join(stack().tmpRoot, "killed-"));
  const apiPort = await freePort();
  // A real process, SIGKILLed: no drain, no final document.
  const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start"], {
    cwd: repoRoot,
    env: {
      ...process.env,
      ...stackEnv(join(dir, "output")),
      SHARED_JOBS_PREFIX: prefix,
      JOB_HEARTBEAT_MS: "500",
      WORKER_PORT: String(await freePort()),
      // Any free port: WORKER_PORT + 1 may be taken on a busy machine.
      WORKER_HTTP_PORT: "0",
      API_PORT: String(apiPort),
      BENCHMARK_SKIP: "true",
      BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
      LOG_LEVEL: "warn",
    },
    stdio: "ignore",
  });
  try {
    const api = `http://127.0.0.1:${apiPort}`;
    await pollUntil(
      () => getJson(`${api}/ready`).catch(() => ({ status: 0, body: undefined })),
      (r) => r.status === 200,
    );
    const running = postJson(`${api}/generate/sync`, {
      input: { request_id: id, workflow_json: tinyText2Image(200) },
    }).catch(() => undefined);
    await pollUntil(
      () => getJson(`${b.api}/result/${id}`),
      (r) => r.body?.status === "generating",
    );
    child.kill("SIGKILL");
    await running;
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
  const lost = await pollUntil(
    () => getJson(`${b.api}/result/${id}`),
    (r) => r.body?.status === "failed",
    10_000,
  );
  expect(lost.body).toMatchObject({ status: "failed", error: { code: "owner_lost" } });
  // The killed worker's prompt may still run in ComfyUI, the only one there: stop it so that later jobs do not
  // wait behind it.
  await got.post(`${stack().comfyUrl}/interrupt`, { timeout: { request: 10_000 }, retry: { limit: 0 } });
  await waitForComfyIdle(stack().comfyUrl);
  // A retry runs it again (here on b).
  const retried = await postJson(`${b.api}/generate`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(retried.status).toBe(202);
  expect(b.worker.jobs.get(id)).toBeDefined();
});

test("without S3 configured, a job unknown here is a 404 that says how to reach the same worker", async () => {
  const s = stack();
  const lone = await startTestWorker({ S3_BUCKET_NAME: "", S3_ACCESS_KEY_ID: "", S3_SECRET_ACCESS_KEY: "" });
  try {
    const r = await getJson(`${lone.api}/result/nothing-${s.s3Bucket}`);
    expect(r.status).toBe(404);
    expect(r.body.error).toMatch(/session/);
  } finally {
    await lone.stop();
  }
});

test("through the router and the official client: submitted to one worker, polled and answered by the other", async () => {
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const sharedPrefix = `${prefix}routed/`;
  const [x, y] = await Promise.all([
    startTestWorker({
      UNSECURED: "false",
      REPORT_ADDR: router.url,
      CONTAINER_ID: "21",
      MASTER_TOKEN: "token-21",
      PUBLIC_IPADDR: "127.0.0.1",
      REPORT_INTERVAL_MS: "100",
      SHARED_JOBS_PREFIX: sharedPrefix,
    }),
    startTestWorker({
      UNSECURED: "false",
      REPORT_ADDR: router.url,
      CONTAINER_ID: "22",
      MASTER_TOKEN: "token-22",
      PUBLIC_IPADDR: "127.0.0.1",
      REPORT_INTERVAL_MS: "100",
      SHARED_JOBS_PREFIX: sharedPrefix,
    }),
  ]);
  try {
    await router.waitFor(
      () => [...router.workers.values()].filter((w) => Number(w.lastStatus.max_perf) > 0).length === 2,
    );
    const byUrl = (url: string) => [...router.workers.values()].find((w) => w.url === url);
    // The submission goes to x, every poll to y: the router's choice, as on a real endpoint.
    router.pickOverride = () => byUrl(x.routed);
    const id = `routed-${randomUUID()}`;
    const submitted = await vastClientRequest({
      autoscalerUrl: router.url,
      route: "/generate",
      payload: { input: { request_id: id, workflow_json: modelFree() } },
    });
    expect(submitted.ok).toBe(true);
    expect(submitted.response.id).toBe(id);
    router.pickOverride = () => byUrl(y.routed);
    let polled = await vastClientRequest({ autoscalerUrl: router.url, route: `/result/${id}`, payload: {} });
    for (let i = 0; i < 50 && polled.response?.status !== "completed"; i++) {
      polled = await vastClientRequest({ autoscalerUrl: router.url, route: `/result/${id}`, payload: {} });
    }
    expect(polled.response).toMatchObject({ id, status: "completed" });
    expect(x.worker.jobs.get(id)?.status).toBe("completed");
    expect(y.worker.jobs.get(id)).toBeUndefined();
  } finally {
    await Promise.all([x.stop(), y.stop()]);
    await router.close();
  }
});
