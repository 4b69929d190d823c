import { randomUUID } from "node:crypto";
import { rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { RecordingServer, startSlowProxy } from "../harness/http-fixtures.js";
import { SessionCloseNotifier } from "../../handlers/session-close.js";
import { silentLogger } from "../../lib/logger.js";
import { stack } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree } from "../harness/workflows.js";

/**
 * Ordinary faults that must not turn into retry loops, lost failures, or one caller's disconnect failing others:
 * client mistakes are 4xx, unanticipated failures are terminal, retryable failures stay visible.
 */

let w: TestWorker;
beforeAll(async () => {
  w = await startTestWorker();
});
afterAll(async () => {
  await w?.stop();
});

test.each([
  ["a bad percent-encoding", "data:image/png,%ZZ", /invalid percent-encoding/],
  ["bad base64", "data:image/png;base64,!!!not-base64!!!", /not valid base64/],
  ["an empty payload", "data:image/png;base64,", /empty/],
])("a data: URI with %s is a 400 naming the node and input", async (_what, uri, why) => {
  const { status, body } = await postJson(`${w.api}/generate/sync`, {
    input: { workflow_json: loadImageWorkflow(uri) },
  });
  expect(status).toBe(400);
  expect(body.status).toBe("failed");
  expect(body.error).toMatchObject({ code: "input_error", node_id: "10", input: "image" });
  expect(body.message).toMatch(/node 10 \(LoadImage\) input "image"/);
  expect(body.message).toMatch(why);
});

test("a 500 from ComfyUI's /prompt while ComfyUI answers fails that prompt with a 400, not a retryable 503", async () => {
  // Nesting deeper than Python's JSON decoder allows: ComfyUI answers 500 to /prompt, and keeps answering.
  let deep: unknown = [];
  for (let i = 0; i < 3000; i++) deep = [deep];
  const wf = { "1": { class_type: "PreviewAny", inputs: { source: deep } } };
  // The worker's own depth bound (64 by default) would refuse this body before ComfyUI sees it.
  const own = await startTestWorker({ MAX_JSON_DEPTH: "5000" });
  try {
    const id = `prompt500-${randomUUID()}`;
    const { status, body } = await postJson(`${own.api}/generate/sync`, {
      input: { request_id: id, workflow_json: wf },
    });
    expect(status).toBe(400);
    expect(body.status).toBe("failed");
    expect(body.error).toMatchObject({ code: "invalid_workflow", comfyui_status: 500 });
    // Terminal: the same request_id returns the same failure instead of running again.
    const again = await postJson(`${own.api}/generate/sync`, {
      input: { request_id: id, workflow_json: wf },
    });
    expect(again.body.timings.queued_at_ms).toBe(body.timings.queued_at_ms);
  } finally {
    await own.stop();
  }
});

test("an exception the worker did not anticipate is a terminal failed job (internal_error, 200), counted", async () => {
  // A real fault: the output folder is replaced by a file, so moving the outputs there fails.
  const own = await startTestWorker();
  try {
    await rm(own.outputDir, { recursive: true, force: true });
    await writeFile(own.outputDir, "not a folder");
    const { status, body } = await postJson(`${own.api}/generate/sync`, {
      input: { workflow_json: modelFree() },
    });
    expect(status).toBe(200);
    expect(body.status).toBe("failed");
    expect(body.error.code).toBe("internal_error");
    const metrics = await (await fetch(`${own.api}/metrics`)).text();
    expect(metrics).toMatch(/comfyui_worker_job_errors_total\{code="internal_error"\} 1/);
  } finally {
    await own.stop();
  }
});

test("a retryable failure stays visible at /result/{id}, and a retry with its request_id runs again", async () => {
  // A real allocation failure on the CPU (as in limits.test.ts): retryable out_of_memory.
  const oom = {
    "1": { class_type: "EmptyImage", inputs: { width: 16384, height: 16384, batch_size: 4096, color: 0 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "oom" } },
  };
  const id = `visible-${randomUUID()}`;
  const accepted = await postJson(`${w.api}/generate`, { input: { request_id: id, workflow_json: oom } });
  expect(accepted.status).toBe(202);
  await w.worker.jobs.get(id)!.done;
  const polled = await fetch(`${w.api}/result/${id}`);
  expect(polled.status).toBe(200);
  expect(await polled.json()).toMatchObject({
    id,
    status: "failed",
    error: { code: "out_of_memory" },
    message: expect.stringMatching(/ran out of memory/),
  });
  const retried = await postJson(`${w.api}/generate/sync`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(retried.status).toBe(200);
  expect(retried.body.status).toBe("completed");
  expect(retried.body.id).toBe(id);
});

test("one caller disconnecting while the node catalog loads does not cancel the others", async () => {
  // ComfyUI behind a proxy that holds each connection 1.5 s: the catalog fetch of a fresh worker is slow.
  const slowComfy = await startSlowProxy(new URL(stack().comfyUrl), 1_500);
  const own = await startTestWorker({ COMFYUI_URL: slowComfy.url });
  try {
    const leaving = new AbortController();
    const first = postJson(
      `${own.api}/generate/sync`,
      { input: { request_id: `leaves-${randomUUID()}`, workflow_json: modelFree() } },
      { signal: leaving.signal },
    ).catch((err: unknown) => err);
    const other = postJson(`${own.api}/generate/sync`, {
      input: { request_id: `stays-${randomUUID()}`, workflow_json: modelFree() },
    });
    // Both wait on the same /object_info (it takes at least 1.5 s); the first caller goes away meanwhile.
    await new Promise<void>((resolve) => {
      const check = () => (own.worker.jobs.active().length === 2 ? resolve() : setTimeout(check, 10));
      check();
    });
    leaving.abort();
    await first;
    const { status, body } = await other;
    expect(status).toBe(200);
    expect(body.status).toBe("completed");
  } finally {
    await own.stop();
    await slowComfy.close();
  }
});

test("finished jobs keep only their result, capped by RESULT_RETENTION_MAX (oldest evicted first)", async () => {
  // This worker alone (no job documents in the bucket): what is evicted from memory is gone.
  const own = await startTestWorker({ RESULT_RETENTION_MAX: "2", SHARED_JOBS: "false" });
  try {
    const ids = [1, 2, 3].map((i) => `kept-${i}-${randomUUID()}`);
    for (const id of ids) {
      const { body } = await postJson(`${own.api}/generate/sync`, {
        input: { request_id: id, workflow_json: modelFree() },
      });
      expect(body.status).toBe("completed");
    }
    expect((await fetch(`${own.api}/result/${ids[0]}`)).status).toBe(404);
    for (const id of ids.slice(1)) {
      const res = await fetch(`${own.api}/result/${id}`);
      expect(res.status).toBe(200);
      expect(((await res.json()) as any).output).toHaveLength(3);
      // The request itself is gone: only what the result document shows is kept.
      expect(own.worker.jobs.get(id)!.input.workflow).toEqual({});
    }
    expect(own.worker.jobs.list()).toHaveLength(2);
  } finally {
    await own.stop();
  }
});

test("RESULT_RETENTION_MAX_BYTES caps the bytes of kept results", async () => {
  const own = await startTestWorker({ RESULT_RETENTION_MAX_BYTES: "1", SHARED_JOBS: "false" });
  try {
    const id = `bytes-${randomUUID()}`;
    const { body } = await postJson(`${own.api}/generate/sync`, {
      input: { request_id: id, workflow_json: modelFree() },
    });
    expect(body.status).toBe("completed");
    expect((await fetch(`${own.api}/result/${id}`)).status).toBe(404);
  } finally {
    await own.stop();
  }
});

test("shutdown sends the last /delete_requests/ with the requests that ended since the previous report", async () => {
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  // Reports every 10 minutes: only the shutdown itself can deliver the request below in time.
  const own = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url, REPORT_INTERVAL_MS: "600000" },
    { publicKeyPem: router.publicKeyPem },
  );
  try {
    await router.waitFor(() => router.reports.some((r) => r.path === "/worker_status/"));
    const auth = router.authData(own.routed, { requestIdx: 424242 });
    const { body } = await postJson(`${own.routed}/generate/sync`, {
      auth_data: auth,
      payload: { input: { workflow_json: modelFree() } },
    });
    expect(body.status).toBe("completed");
    expect(router.reports.some((r) => r.path === "/delete_requests/")).toBe(false);
    await own.stop();
    const deleted = router.reports.filter((r) => r.path === "/delete_requests/");
    expect(deleted.flatMap((r) => r.body.requests as any[])).toEqual([
      expect.objectContaining({ request_idx: 424242, status: "Success" }),
    ]);
  } finally {
    await own.stop();
    await router.close();
  }
});

describe("sessions as upstream", () => {
  let hooks: RecordingServer;
  beforeAll(async () => {
    hooks = await new RecordingServer().start();
  });
  afterAll(async () => {
    await hooks?.stop();
  });

  const create = (payload: Record<string, unknown>) =>
    postJson(`${w.routed}/session/create`, { auth_data: { url: "x" }, payload });

  test("/session/end POSTs on_close_payload with session_id added to on_close_route", async () => {
    const before = hooks.received.length;
    const created = await create({
      lifetime: 60,
      on_close_route: `${hooks.url}/closed`,
      on_close_payload: { reason: "done", user: 7 },
    });
    expect(created.status).toBe(201);
    const { session_id } = created.body;
    const ended = await postJson(`${w.routed}/session/end`, { session_id, session_auth: { url: "x" } });
    expect(ended.body).toEqual({ ended: true, removed_session: session_id });
    await hooks.waitFor(before + 1);
    const call = hooks.received[before]!;
    expect(call).toMatchObject({ method: "POST", url: "/closed" });
    expect(JSON.parse(call.body)).toEqual({ reason: "done", user: 7, session_id });
  });

  test("an expired session's callback is sent by the session sweep", async () => {
    const before = hooks.received.length;
    const created = await create({ lifetime: 0.1, on_close_route: `${hooks.url}/expired` });
    await hooks.waitFor(before + 1);
    expect(hooks.received[before]).toMatchObject({ url: "/expired" });
    expect(JSON.parse(hooks.received[before]!.body)).toEqual({ session_id: created.body.session_id });
  }, 30_000);

  test("the callback follows the address policy: private addresses are refused unless allowed", async () => {
    const before = hooks.received.length;
    const strict = new SessionCloseNotifier({ allowPrivate: false, logger: silentLogger() });
    const session = { id: "s1", onCloseRoute: `${hooks.url}/private`, onClosePayload: null };
    expect(await strict.notify(session)).toBe("refused");
    expect(await strict.notify({ ...session, onCloseRoute: "http://localhost:1/x" })).toBe("refused");
    expect(await strict.notify({ ...session, onCloseRoute: "/relative-route" })).toBe("skipped");
    const open = new SessionCloseNotifier({ allowPrivate: true, logger: silentLogger() });
    expect(await open.notify(session)).toBe("delivered");
    expect(hooks.received.slice(before).map((r) => r.url)).toEqual(["/private"]);
  });

  test("/pyworker/update writes the flag file upstream writes", async () => {
    const own = await startTestWorker({ MASTER_TOKEN: "update-token" });
    try {
      const res = await postJson(
        `${own.routed}/pyworker/update`,
        {},
        {
          headers: { authorization: "Bearer update-token" },
        },
      );
      expect(res.status).toBe(200);
      expect((await stat(join(own.dir, ".force_update"))).isFile()).toBe(true);
    } finally {
      await own.stop();
    }
  });
});
