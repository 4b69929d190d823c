import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { freePort } from "../../scripts/services/child.js";
import { InputServer } from "../../benchmark/soak/inputs.js";
import { VastCaller } from "../../benchmark/soak/vast-caller.js";
import { WebhookReceiver } from "../../benchmark/soak/webhooks.js";
import { stack } from "../harness/stack.js";
import { pollUntil, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";
import { join } from "node:path";

/**
 * The soak's callers on real parts: its long-lived process of the official `vastai` client (PyPI) answers requests
 * sent at once through the router emulator, and a session it opens with on_close_route calls that route once when
 * it closes; its URL-input server feeds a LoadImage.
 */

let router: RouterEmulator;
let worker: TestWorker;
let receiver: WebhookReceiver;
let inputs: InputServer;
let caller: VastCaller;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  receiver = await new WebhookReceiver().start();
  inputs = await new InputServer().start();
  const port = await freePort();
  worker = await startTestWorker({
    UNSECURED: "false",
    REPORT_ADDR: router.url,
    CONTAINER_ID: "41",
    MASTER_TOKEN: "token-41",
    PUBLIC_IPADDR: "127.0.0.1",
    WORKER_PORT: String(port),
    [`VAST_TCP_PORT_${port}`]: String(port),
    REPORT_INTERVAL_MS: "200",
    COMFYUI_HISTORY_POLL_MS: "100",
    WEBHOOK_ALLOW_PRIVATE: "true",
    INPUT_URL_ALLOW_PRIVATE: "true",
  });
  await router.waitFor(() =>
    router.reports.some(
      (r) => r.path === "/worker_status/" && r.body.url === worker.routed && Number(r.body.max_perf) > 0,
    ),
  );
  caller = await new VastCaller({
    autoscalerUrl: router.url,
    apiKey: "soak",
    logFile: join(stack().tmpRoot, "soak-vast-caller.log"),
  }).start();
}, 120_000);

afterAll(async () => {
  await caller?.stop();
  await worker?.stop();
  await Promise.all([receiver?.stop(), inputs?.stop(), router?.close()]);
});

const workflow = () => {
  const wf = modelFree();
  wf["1"]!.inputs.color = Math.floor(Math.random() * 0xffffff);
  return wf;
};

test("one client process: a sync request, a stream and a session with on_close at once, each answered", async () => {
  const [sync, stream, session] = await Promise.all([
    caller.request({
      route: "/generate/sync",
      payload: { input: { request_id: "soak-caller-sync", workflow_json: workflow() } },
      timeout: 60,
    }),
    caller.request({
      route: "/generate/stream",
      payload: { input: { request_id: "soak-caller-stream", workflow_json: workflow() } },
      timeout: 60,
      stream: true,
    }),
    caller.request({
      route: "/generate/sync",
      payload: { input: { request_id: "soak-caller-session", workflow_json: workflow() } },
      timeout: 60,
      session: {
        lifetime: 30,
        on_close_route: receiver.closeUrl("soak-caller-session"),
        on_close_payload: { soak: "soak-caller-session" },
      },
    }),
  ]);
  expect(sync).toMatchObject({
    status: 200,
    ok: true,
    response: { id: "soak-caller-sync", status: "completed" },
  });
  expect(sync.url?.replace(/\/$/, "")).toBe(worker.routed);
  // The stream's lines as the client parsed them: the last is the result document.
  const lines = stream.response as Record<string, unknown>[];
  expect(lines[lines.length - 1]).toMatchObject({
    type: "result",
    id: "soak-caller-stream",
    status: "completed",
  });
  expect(session).toMatchObject({
    status: 200,
    response: { id: "soak-caller-session", status: "completed" },
    session: { closed: true },
  });
  const sessionId = session.session!.id;
  await pollUntil(
    async () => receiver.closes.filter((c) => c.session_id === sessionId),
    (calls) => calls.length > 0,
    15_000,
  );
  expect(receiver.closes).toEqual([
    expect.objectContaining({ key: "soak-caller-session", session_id: sessionId, answered: "200" }),
  ]);
  // The on_close call is not a webhook delivery.
  expect(receiver.deliveries).toEqual([]);
});

test("a request the client gives up on (no worker ever ready) answers an error, the process stays up", async () => {
  const none = await new VastCaller({
    autoscalerUrl: "http://127.0.0.1:9",
    apiKey: "soak",
    logFile: join(stack().tmpRoot, "soak-vast-caller-none.log"),
  }).start();
  try {
    const a = await none.request({ route: "/generate/sync", payload: { input: {} }, timeout: 5 });
    expect(a.error).toMatch(/route/i);
    expect(a.status).toBeUndefined();
    const b = await none.request({ route: "/generate/sync", payload: { input: {} }, timeout: 5 });
    expect(b.error).toBeDefined();
  } finally {
    await none.stop();
  }
}, 60_000);

test("a URL input from the soak's server: LoadImage downloads it, and the server counted the GET", async () => {
  const url = inputs.url("soak-caller-url");
  const res = await postJson(`${worker.api}/generate/sync`, {
    input: {
      request_id: "soak-caller-url",
      workflow_json: {
        "10": { class_type: "LoadImage", inputs: { image: url } },
        "11": { class_type: "ImageInvert", inputs: { image: ["10", 0] } },
        "12": { class_type: "SaveImage", inputs: { images: ["11", 0], filename_prefix: "loaded" } },
      },
    },
  });
  expect(res.body).toMatchObject({ id: "soak-caller-url", status: "completed" });
  expect(inputs.served.get(new URL(url).pathname)).toBe(1);
});
