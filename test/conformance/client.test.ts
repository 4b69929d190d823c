import { randomUUID } from "node:crypto";
import { RouterEmulator, type WorkerRecord } from "../../scripts/router-emulator/emulator.js";
import { freePort } from "../../scripts/services/child.js";
import { startHeldImage, startSlowProxy, type SlowProxy } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { vastClientRequest } from "../harness/vast-client.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree } from "../harness/workflows.js";

/**
 * The official client (PyPI vastai 1.9.1) against our workers through the router emulator: its streaming call, a
 * session through its API, and its retries on a 429 and on a 503 from a worker whose ComfyUI is down (the
 * request ends up served by another worker, once, not looped).
 */

let router: RouterEmulator;
let healthy: TestWorker;
let flaky: TestWorker;
let proxy: SlowProxy;

async function startRouted(id: number, env: Record<string, string> = {}): Promise<TestWorker> {
  const port = await freePort();
  return startTestWorker({
    UNSECURED: "false",
    REPORT_ADDR: router.url,
    CONTAINER_ID: String(id),
    MASTER_TOKEN: `token-${id}`,
    PUBLIC_IPADDR: "127.0.0.1",
    WORKER_PORT: String(port),
    [`VAST_TCP_PORT_${port}`]: String(port),
    REPORT_INTERVAL_MS: "200",
    COMFYUI_HISTORY_POLL_MS: "100",
    ...env,
  });
}

const workload = () => {
  const wf = modelFree();
  delete wf["4"];
  wf["1"].inputs.color = Math.floor(Math.random() * 0xffffff);
  return { input: { workflow_json: wf } };
};

const ready = (w: TestWorker) =>
  router.waitFor(() =>
    router.reports.some(
      (r) => r.path === "/worker_status/" && r.body.url === w.routed && Number(r.body.max_perf) > 0,
    ),
  );

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  healthy = await startRouted(31);
  // Its ComfyUI is reached through a proxy the test can cut; it refuses work beyond the one running.
  proxy = await startSlowProxy(new URL(stack().comfyUrl), 0);
  flaky = await startRouted(32, { COMFYUI_URL: proxy.url, MAX_QUEUE_TIME: "0" });
  await Promise.all([ready(healthy), ready(flaky)]);
}, 60_000);

afterAll(async () => {
  router.pickOverride = undefined;
  await flaky?.stop();
  await healthy?.stop();
  await proxy?.close();
  await router?.close();
});

afterEach(() => {
  router.pickOverride = undefined;
});

/** Routes the first /route/ call to `first`, every later one to `then` (the router's view may be stale). */
function routeFirstTo(first: TestWorker, then: TestWorker): void {
  const record = (w: TestWorker): WorkerRecord => router.workers.get(w.routed)!;
  let calls = 0;
  router.pickOverride = () => (calls++ === 0 ? record(first) : record(then));
}

test("stream=True: the client yields the progress lines and the result of /generate/stream", async () => {
  router.pickOverride = () => router.workers.get(healthy.routed);
  const res = await vastClientRequest({
    autoscalerUrl: router.url,
    route: "/generate/stream",
    payload: workload(),
    stream: true,
  });
  expect(res.status).toBe(200);
  expect(Array.isArray(res.response)).toBe(true);
  const last = res.response.at(-1);
  expect(last.type).toBe("result");
  expect(last.status).toBe("completed");
  expect(res.response.length).toBeGreaterThan(1);
});

test("a session through the client API: opened, used, checked, closed, and reported as upstream does", async () => {
  router.pickOverride = () => router.workers.get(healthy.routed);
  const routesBefore = router.routes.length;
  const res = await vastClientRequest({
    autoscalerUrl: router.url,
    route: "/generate/sync",
    payload: workload(),
    session: true,
  });
  expect(res.status).toBe(200);
  expect(res.response.status).toBe("completed");
  expect(res.session).toMatchObject({ open_before_close: true, open_after_close: false });
  // One /route/ call: the session's; its request reuses the session's auth_data.
  expect(router.routes.length - routesBefore).toBe(1);
  // Closed: the session is reported as one finished request (as upstream does), under the session's request_idx.
  const sessionIdx = router.routed.at(-1)!.request_idx;
  await finishedOn(31, sessionIdx, "Success");
});

test("429: the client re-routes the request away from a busy worker and it is served", async () => {
  // Busy through its local API (not counted by the router) until the test lets its input download finish;
  // MAX_QUEUE_TIME=0 refuses any routed work meanwhile.
  const input = await startHeldImage();
  try {
    const busy = postJson(`${flaky.api}/generate/sync`, {
      input: { workflow_json: loadImageWorkflow(input.url(`busy-${randomUUID()}.png`)) },
    });
    await input.requested();
    // The busy worker refused the request and reported it finished as rejected.
    await expectServedElsewhere("Rejected");
    input.release();
    expect((await busy).status).toBe(200);
  } finally {
    await input.stop();
  }
});

test("503 from a worker whose ComfyUI is down: the client re-routes, the request is served once, not looped", async () => {
  await proxy.close();
  // The worker that failed it reported it finished with an error (a 5xx).
  await expectServedElsewhere("Error");
});

/**
 * Sends one request through the official client with the router's first pick the flaky worker (32): the client
 * re-routes it (a second /route/ call for the same request_idx), the healthy worker serves it, and the flaky one
 * reports that request_idx finished with `reported`.
 */
async function expectServedElsewhere(reported: "Rejected" | "Error"): Promise<void> {
  routeFirstTo(flaky, healthy);
  const routesBefore = router.routes.length;
  const res = await vastClientRequest({
    autoscalerUrl: router.url,
    route: "/generate/sync",
    payload: workload(),
  });
  expect(res.status).toBe(200);
  expect(res.response.status).toBe("completed");
  expect(res.response.output[0].local_path.startsWith(healthy.outputDir)).toBe(true);
  const routed = router.routes.slice(routesBefore);
  expect(routed).toHaveLength(2);
  const idx = Number(routed[1]!.request_idx);
  expect(idx).toBeGreaterThan(0);
  await finishedOn(32, idx, reported);
}

/** Resolves once worker `id` reported request `idx` finished with `status` (rejects after the wait's timeout). */
function finishedOn(id: number, idx: number, status: string): Promise<void> {
  return router.waitFor(() =>
    router.reports.some(
      (r) =>
        r.path === "/delete_requests/" &&
        r.body.worker_id === id &&
        (r.body.requests as { request_idx: number; status: string }[]).some(
          (q) => q.request_idx === idx && q.status === status,
        ),
    ),
  );
}

test("attack: /session/create needs this worker's signature, and a signed one's huge cost cannot make the load absurd", async () => {
  // Upstream verifies nothing here; ours refuses a forged signature (issue 9)...
  const forged = await postJson(`${healthy.routed}/session/create`, {
    auth_data: { ...router.authData(healthy.routed), signature: "forged" },
    payload: { lifetime: 30 },
  });
  expect(forged.status).toBe(401);
  // ...and the cost, which the router's signature does not cover, is bounded.
  const auth = { ...router.authData(healthy.routed), cost: 1e12 };
  const created = await postJson(`${healthy.routed}/session/create`, {
    auth_data: auth,
    payload: { lifetime: 30 },
  });
  expect(created.status).toBe(201);
  const since = Date.now();
  try {
    await router.waitFor(() =>
      router.reports.some(
        (r) =>
          r.path === "/worker_status/" &&
          r.body.id === 31 &&
          r.at >= since &&
          Number(r.body.num_requests_working) >= 1,
      ),
    );
    const report = router.reports
      .filter((r) => r.path === "/worker_status/" && r.body.id === 31)
      .at(-1)!.body;
    expect(Number(report.cur_load)).toBeLessThanOrEqual(10_000);
  } finally {
    const ended = await postJson(`${healthy.routed}/session/end`, {
      session_id: created.body.session_id,
      session_auth: auth,
    });
    expect(ended.status).toBe(200);
  }
});
