import { randomUUID } from "node:crypto";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { RecordingServer, startSlowProxy } from "../harness/http-fixtures.js";
import { expectProgressToMax } from "../harness/progress.js";
import { stack, waitForComfyIdle } from "../harness/stack.js";
import { vastClientRequest } from "../harness/vast-client.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree, tinyText2Image } from "../harness/workflows.js";

/** Async, stream, cancel, idempotency and keeping ComfyUI fed. */

let w: TestWorker;
let hooks: RecordingServer;

beforeAll(async () => {
  hooks = await new RecordingServer().start();
  w = await startTestWorker({ MAX_INFLIGHT_PROMPTS: "1" });
});
afterAll(async () => {
  await w?.stop();
  await hooks?.stop();
});

/** Reads an NDJSON body line by line. */
async function readLines(res: Response): Promise<any[]> {
  const text = await res.text();
  return text
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l.replace(/^data:\s*/, "")));
}

/** Resolves when the job reaches `status`; rejects if it ends (a final status) without passing through it. */
async function waitForStatus(id: string, status: string): Promise<void> {
  const job = w.worker.jobs.get(id)!;
  if (job.status === status) return;
  if (job.final) throw new Error(`job ${id} is ${job.status}, not ${status}`);
  await new Promise<void>((resolve, reject) => {
    const on = (e: any) => {
      if (e.type !== "status") return;
      if (e.status === status) {
        job.off("event", on);
        resolve();
      } else if (job.final) {
        job.off("event", on);
        reject(new Error(`job ${id} ended ${e.status} before it was ${status}`));
      }
    };
    job.on("event", on);
  });
}

async function waitForProgress(id: string): Promise<void> {
  const job = w.worker.jobs.get(id)!;
  await new Promise<void>((resolve) => {
    const on = (e: any) => {
      if (e.type === "progress") {
        job.off("event", on);
        resolve();
      }
    };
    job.on("event", on);
  });
}

test("/generate/stream: status, real progress and executed lines in order, the result last", async () => {
  const res = await fetch(`${w.api}/generate/stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input: { workflow_json: tinyText2Image(5) } }),
    signal: AbortSignal.timeout(300_000),
  });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/application\/x-ndjson/);
  const lines = await readLines(res);
  const last = lines.at(-1);
  expect(last).toMatchObject({ type: "result", status: "completed", http_status: 200 });
  expect(last.output[0].url).toMatch(/^http/);
  const progress = lines.filter((l) => l.type === "progress");
  expectProgressToMax(progress, 5);
  expect(progress.at(-1)).toMatchObject({ max: 5, node: "3", percent: 100 });
  const statuses = lines.filter((l) => l.type === "status").map((l) => l.status);
  expect(statuses.indexOf("generating")).toBeLessThan(statuses.indexOf("completed"));
  const firstProgress = lines.findIndex((l) => l.type === "progress");
  expect(lines.findIndex((l) => l.type === "status" && l.status === "generating")).toBeLessThan(
    firstProgress,
  );
  expect(lines.some((l) => l.type === "executed" && l.node === "9")).toBe(true);
  for (const l of lines) expect(l.id).toBe(last.id);
});

test("/generate answers 202 at once; /result/{id} follows the job to completion", async () => {
  const id = `async-${randomUUID()}`;
  const accepted = await postJson(`${w.api}/generate`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(accepted.status).toBe(202);
  expect(accepted.body.id).toBe(id);
  expect(["queued", "processing", "generating"]).toContain(accepted.body.status);
  await w.worker.jobs.get(id)!.done;
  const res = await fetch(`${w.api}/result/${id}`);
  const body = (await res.json()) as any;
  expect(body.status).toBe("completed");
  expect(body.output.length).toBe(3);
  expect((await fetch(`${w.api}/result/nope-${randomUUID()}`)).status).toBe(404);
});

test("cancel: a queued job leaves the queue without running; the running one is unaffected", async () => {
  const a = `run-${randomUUID()}`;
  const b = `queued-${randomUUID()}`;
  // `a` holds the only slot (MAX_INFLIGHT_PROMPTS=1) for as long as the test needs: it is cancelled at the end.
  await postJson(`${w.api}/generate`, { input: { request_id: a, workflow_json: tinyText2Image(2000) } });
  await waitForStatus(a, "generating");
  await postJson(`${w.api}/generate`, {
    input: { request_id: b, workflow_json: modelFree(), webhook: { url: `${hooks.url}/b` } },
  });
  await waitForStatus(b, "queued");
  const cancelled = await postJson(`${w.api}/cancel/${b}`, {});
  expect(cancelled.status).toBe(200);
  expect(cancelled.body.status).toBe("cancelled");
  expect(w.worker.jobs.get(b)!.details).toBeUndefined();
  // `a` goes on: another step comes after the cancel.
  await waitForProgress(a);
  expect(w.worker.jobs.get(a)!.status).toBe("generating");
  await postJson(`${w.api}/cancel/${a}`, {});
  await w.worker.jobs.get(a)!.done;
  await waitForComfyIdle(stack().comfyUrl);
  await hooks.waitFor(1);
  const hook = JSON.parse(hooks.received.find((r) => r.url === "/b")!.body);
  expect(hook.status).toBe("cancelled");
});

test("cancel: a running job is interrupted in ComfyUI (that prompt only) and no webhook claims success", async () => {
  const id = `running-${randomUUID()}`;
  const before = hooks.received.length;
  await postJson(`${w.api}/generate`, {
    input: { request_id: id, workflow_json: tinyText2Image(200), webhook: { url: `${hooks.url}/running` } },
  });
  await waitForProgress(id);
  const cancelled = await postJson(`${w.api}/cancel/${id}`, {});
  expect(cancelled.body.status).toBe("cancelled");
  await hooks.waitFor(before + 1);
  const delivered = hooks.received.slice(before).map((r) => JSON.parse(r.body));
  expect(delivered.find((d) => d.id === id)?.status).toBe("cancelled");
  // ComfyUI goes idle again (the interrupt lands between two steps): the 200-step prompt did not run to the end.
  await waitForComfyIdle(stack().comfyUrl);
  expect(w.worker.jobs.get(id)!.details!.progress_updates.at(-1)!.value).toBeLessThan(200);
  const next = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(next.body.status).toBe("completed");
});

test("a caller that disconnects from /generate/sync cancels its job", async () => {
  const id = `disconnect-${randomUUID()}`;
  const ac = new AbortController();
  const pending = fetch(`${w.api}/generate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input: { request_id: id, workflow_json: tinyText2Image(200) } }),
    signal: ac.signal,
  }).catch(() => undefined);
  await new Promise<void>((resolve) => {
    const check = () => (w.worker.jobs.get(id) ? resolve() : setImmediate(check));
    check();
  });
  await waitForProgress(id);
  ac.abort();
  await pending;
  await w.worker.jobs.get(id)!.done;
  expect(w.worker.jobs.get(id)!.status).toBe("cancelled");
  expect(w.worker.jobs.get(id)!.message).toMatch(/disconnected/);
});

test("the same request_id twice runs once: both callers get the same job", async () => {
  const id = `idem-${randomUUID()}`;
  const input = { request_id: id, workflow_json: tinyText2Image(2) };
  const [a, b] = await Promise.all([
    postJson(`${w.api}/generate/sync`, { input }),
    postJson(`${w.api}/generate/sync`, { input }),
  ]);
  expect(a.body.status).toBe("completed");
  expect(b.body).toEqual(a.body);
  const again = await postJson(`${w.api}/generate/sync`, { input });
  expect(again.body.comfyui_response.prompt[1]).toBe(a.body.comfyui_response.prompt[1]);
  expect(w.worker.jobs.list().filter((j) => j.id === id)).toHaveLength(1);
});

test("the router retrying a request_id through another auth_data does not run it twice", async () => {
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const secured = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url },
    { publicKeyPem: router.publicKeyPem },
  );
  try {
    const id = `retry-${randomUUID()}`;
    const input = { request_id: id, workflow_json: modelFree() };
    const send = () =>
      postJson(`${secured.routed}/generate/sync`, {
        auth_data: router.authData(secured.routed),
        payload: { input },
      });
    const first = await send();
    const second = await send();
    expect(second.status).toBe(200);
    expect(second.body.comfyui_response.prompt[1]).toBe(first.body.comfyui_response.prompt[1]);
  } finally {
    await secured.stop();
    await router.close();
  }
});

test("two jobs back to back overlap: the second prompt runs in ComfyUI while the first one uploads", async () => {
  const s = stack();
  // The first job's upload is held at the network until the second job has run: with one slot, the second can
  // run only if the first gave its slot back when its prompt ended, not after its upload.
  const heldS3 = await startSlowProxy(new URL(s.s3Endpoint), "until-released");
  const fed = await startTestWorker({ MAX_INFLIGHT_PROMPTS: "1" });
  try {
    const first = postJson(`${fed.api}/generate/sync`, {
      input: {
        request_id: `first-${randomUUID()}`,
        workflow_json: modelFree(),
        s3: {
          access_key_id: s.s3AccessKeyId,
          secret_access_key: s.s3SecretAccessKey,
          endpoint_url: heldS3.url,
        },
      },
    });
    await heldS3.connections(1);
    const second = await postJson(
      `${fed.api}/generate/sync`,
      { input: { request_id: `second-${randomUUID()}`, workflow_json: tinyText2Image(2) } },
      { timeoutMs: 60_000 },
    );
    expect(second.body.status).toBe("completed");
    heldS3.release();
    const a = await first;
    expect(a.body.status).toBe("completed");
    expect(a.body.timings.completed_at_ms).toBeGreaterThan(second.body.timings.completed_at_ms);
  } finally {
    heldS3.release();
    await fed.stop();
    await heldS3.close();
  }
});

test("the official client's stream mode reads the progress lines and the result", async () => {
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const { createServer } = await import("node:net");
  const probe = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => probe.once("listening", r));
  const port = (probe.address() as { port: number }).port;
  await new Promise((r) => probe.close(r));
  const secured = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url, WORKER_PORT: String(port), REPORT_INTERVAL_MS: "100" },
    { publicKeyPem: router.publicKeyPem },
  );
  try {
    await router.waitFor(() => router.pick() !== undefined);
    const res = await vastClientRequest({
      autoscalerUrl: router.url,
      route: "/generate/stream",
      payload: { input: { workflow_json: tinyText2Image(3) } },
      stream: true,
    });
    expect(res.ok).toBe(true);
    const lines = res.response as any[];
    expectProgressToMax(
      lines.filter((l) => l.type === "progress"),
      3,
    );
    expect(lines.at(-1)).toMatchObject({ type: "result", status: "completed" });
  } finally {
    await secured.stop();
    await router.close();
  }
});
