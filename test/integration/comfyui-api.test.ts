import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer, request as httpRequest, type IncomingMessage } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import WebSocket, { WebSocketServer, type RawData } from "ws";
import type { ComfyCapabilities } from "../../handlers/comfyui/types.js";
import { captureLog, type CapturedLog } from "../harness/log-capture.js";
import { stack, waitForComfyIdle } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree, tinyText2Image } from "../harness/workflows.js";

/**
 * What the worker uses of a newer ComfyUI's API, and its fallback on an older one, against the real ComfyUI of the
 * run (0.3.75, or 0.33.0 in CI's second leg): the jobs API for a prompt's state, the atomic cancel route, the history
 * entry dropped once collected, a partial run told to the caller. Each test reads what the backend offers from the
 * worker's own detection, asserts the newer route where it is there and the fallback where not, and says which.
 */

/** One HTTP request through the proxy: method, path (no query) and, for POST /prompt, its client_id. */
interface Seen {
  method: string;
  path: string;
  clientId?: unknown;
}

interface FakeLossyComfyProxy {
  url: string;
  requests: Seen[];
  /** The clientId of each WebSocket opened through the proxy. */
  socketClientIds: string[];
  /** While true, every text frame about a prompt (one with `data.prompt_id`) is dropped on its way to the worker. */
  losePromptEvents: boolean;
  /** While true, POST /history answers 500 without reaching ComfyUI. */
  failHistoryDelete: boolean;
  close(): Promise<void>;
}

/**
 * A FAKE lossy path to the real ComfyUI (a real ComfyUI does not lose WebSocket messages on demand): an HTTP and
 * WebSocket pass-through that records each request, drops a prompt's events while told to (as a dropped or stalled
 * connection loses them), and can refuse POST /history. Everything else reaches ComfyUI and comes back unchanged.
 */
async function startFakeLossyComfyProxy(target: string): Promise<FakeLossyComfyProxy> {
  const upstream = new URL(target);
  const sockets = new Set<Socket>();
  const wss = new WebSocketServer({ noServer: true });
  const proxy: Omit<FakeLossyComfyProxy, "url" | "close"> = {
    requests: [],
    socketClientIds: [],
    losePromptEvents: false,
    failHistoryDelete: false,
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const path = (req.url ?? "").split("?")[0]!;
      const seen: Seen = { method: req.method ?? "", path };
      if (req.method === "POST" && path === "/prompt") {
        try {
          seen.clientId = (JSON.parse(body.toString("utf8")) as { client_id?: unknown }).client_id;
        } catch {
          // Not JSON: ComfyUI answers it.
        }
      }
      proxy.requests.push(seen);
      if (proxy.failHistoryDelete && req.method === "POST" && path === "/history") {
        res.writeHead(500, { "content-type": "text/plain" }).end("500 Internal Server Error");
        return;
      }
      const out = httpRequest(
        {
          host: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: upstream.host },
          signal: AbortSignal.timeout(60_000),
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      out.on("error", () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      out.end(body);
    });
  });
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    wss.handleUpgrade(req, socket, head, (client) => {
      proxy.socketClientIds.push(new URL(req.url ?? "/", "http://x").searchParams.get("clientId") ?? "");
      const up = new WebSocket(`ws://${upstream.host}${req.url ?? "/ws"}`, { perMessageDeflate: false });
      const toUpstream: { data: RawData; isBinary: boolean }[] = [];
      up.on("open", () => {
        for (const m of toUpstream.splice(0)) up.send(m.data, { binary: m.isBinary });
      });
      client.on("message", (data, isBinary) => {
        if (up.readyState === WebSocket.OPEN) up.send(data, { binary: isBinary });
        else toUpstream.push({ data, isBinary });
      });
      up.on("message", (data, isBinary) => {
        if (!isBinary && proxy.losePromptEvents) {
          const event = JSON.parse(data.toString()) as { data?: { prompt_id?: unknown } };
          if (typeof event.data?.prompt_id === "string") return;
        }
        client.send(data, { binary: isBinary });
      });
      up.on("close", () => client.terminate());
      client.on("close", () => up.terminate());
      up.on("error", () => client.terminate());
      client.on("error", () => up.terminate());
    });
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return Object.assign(proxy, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
}

let proxy: FakeLossyComfyProxy;
let log: CapturedLog;
let w: TestWorker;
/** What the worker found the backend offers (from its log line), after the first job. */
let offers: ComfyCapabilities;
let version: string;

beforeAll(async () => {
  proxy = await startFakeLossyComfyProxy(stack().comfyUrl);
  log = captureLog("info");
  w = await startTestWorker({ COMFYUI_URL: proxy.url }, { logger: log.logger });
  const stats = (await (
    await fetch(`${stack().comfyUrl}/system_stats`, { signal: AbortSignal.timeout(10_000) })
  ).json()) as { system: { comfyui_version: string } };
  version = stats.system.comfyui_version;
});

afterAll(async () => {
  await w?.stop();
  await proxy?.close();
});

/** Whether ComfyUI `v` is at least `min` (both x.y.z). */
const atLeast = (v: string, min: string) => {
  const [a, b] = [v, min].map((s) => s.split(".").map(Number));
  for (let i = 0; i < 3; i++) if ((a![i] ?? 0) !== (b![i] ?? 0)) return (a![i] ?? 0) > (b![i] ?? 0);
  return true;
};

const capabilityLines = () =>
  log.lines
    .map((l) => JSON.parse(l) as Record<string, any>)
    .filter((l) => l.stage === "comfyui-capabilities");

/** Says, in the test's output, which path a test asserts on this ComfyUI. */
const leg = (what: string) => process.stderr.write(`[comfyui ${version}] ${what}\n`);

const promptIdOf = (body: any): string => body.comfyui_response.execution_details.prompt_id;

/** ComfyUI's history entry of one prompt, asked of ComfyUI itself ({} when it has none). */
const historyOf = async (promptId: string) =>
  (await (
    await fetch(`${stack().comfyUrl}/history/${promptId}`, { signal: AbortSignal.timeout(10_000) })
  ).json()) as Record<string, unknown>;

test("what the backend offers is detected once, logged once, and matches its version", async () => {
  const first = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(first.body.status).toBe("completed");
  const second = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(second.body.status).toBe("completed");
  const lines = capabilityLines();
  expect(lines).toHaveLength(1);
  offers = lines[0]!.capabilities as ComfyCapabilities;
  // The jobs API came with 0.6.0 and the atomic cancel route with 0.26.0.
  expect(offers.jobsApi).toBe(atLeast(version, "0.6.0"));
  expect(offers.atomicCancel).toBe(atLeast(version, "0.26.0"));
  expect(offers.featureFlags).toMatchObject({ supports_preview_metadata: true });
  // Asked once: the second job sent no detection request.
  expect(proxy.requests.filter((r) => r.method === "GET" && r.path === "/features")).toHaveLength(1);
  leg(`detected: jobs API ${offers.jobsApi}, atomic cancel ${offers.atomicCancel}`);
});

test("every prompt carries the client_id of the worker's WebSocket", () => {
  const prompts = proxy.requests.filter((r) => r.method === "POST" && r.path === "/prompt");
  expect(prompts.length).toBeGreaterThan(0);
  expect(proxy.socketClientIds.length).toBeGreaterThan(0);
  for (const p of prompts) {
    expect(typeof p.clientId).toBe("string");
    expect(proxy.socketClientIds).toContain(p.clientId);
  }
});

test("a job whose WebSocket messages are lost still completes: through the jobs API where there is one, else /history", async () => {
  proxy.losePromptEvents = true;
  try {
    const before = proxy.requests.length;
    const res = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    expect(res.body.status).toBe("completed");
    expect(res.body.output.length).toBe(3);
    const details = res.body.comfyui_response.execution_details;
    expect(details.reconciled_from_history).toBe(true);
    // Nothing was heard of the prompt on the WebSocket.
    expect(details.nodes_executed).toEqual([]);
    const id = promptIdOf(res.body);
    const asked = proxy.requests.slice(before);
    const count = (method: string, path: string) =>
      asked.filter((r) => r.method === method && r.path === path).length;
    if (offers.jobsApi) {
      leg("the lost events' prompt was seen finished by GET /api/jobs/{id}");
      expect(count("GET", `/api/jobs/${id}`)).toBeGreaterThan(0);
      // Its entry read once, at the end; ComfyUI's queue never asked.
      expect(count("GET", `/history/${id}`)).toBe(1);
      expect(count("GET", "/queue")).toBe(0);
    } else {
      leg(
        "no jobs API on this ComfyUI: the jobs-API path is skipped; asserting the /history fallback instead",
      );
      expect(count("GET", `/api/jobs/${id}`)).toBe(0);
      expect(count("GET", `/history/${id}`)).toBeGreaterThan(0);
    }
  } finally {
    proxy.losePromptEvents = false;
  }
});

test("a running prompt is cancelled through the atomic route where there is one, else /queue delete + /interrupt", async () => {
  const id = `cancel-${randomUUID()}`;
  await postJson(`${w.api}/generate`, { input: { request_id: id, workflow_json: tinyText2Image(200) } });
  const job = w.worker.jobs.get(id)!;
  await new Promise<void>((resolve) => {
    const on = (e: { type: string }) => {
      if (e.type !== "progress") return;
      job.off("event", on);
      resolve();
    };
    job.on("event", on);
  });
  const before = proxy.requests.length;
  const cancelled = await postJson(`${w.api}/cancel/${id}`, {});
  expect(cancelled.body.status).toBe("cancelled");
  await job.done;
  await waitForComfyIdle(stack().comfyUrl);
  const promptId = job.details!.prompt_id;
  const asked = proxy.requests.slice(before).filter((r) => r.method === "POST");
  const paths = asked.map((r) => r.path);
  if (offers.atomicCancel) {
    leg("cancelled through POST /api/jobs/{id}/cancel");
    expect(paths).toContain(`/api/jobs/${promptId}/cancel`);
    expect(paths).not.toContain("/interrupt");
    expect(paths).not.toContain("/queue");
  } else {
    leg(
      "no atomic cancel on this ComfyUI: the atomic route is skipped; asserting /queue delete + /interrupt",
    );
    expect(paths).toEqual(expect.arrayContaining(["/queue", "/interrupt"]));
    expect(paths.some((p) => p.startsWith("/api/jobs/"))).toBe(false);
  }
  // The prompt did not run to its end, and the next one runs.
  expect(job.details!.progress_updates.at(-1)!.value).toBeLessThan(200);
  const next = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(next.body.status).toBe("completed");
});

test("each collected job's entry leaves ComfyUI's history, a completed job's and a failed job's", async () => {
  const done = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(done.body.status).toBe("completed");
  // A SaveImage whose prefix leaves the output folder fails inside ComfyUI.
  const failing = modelFree();
  failing["3"].inputs.filename_prefix = "../outside/y";
  const failed = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: failing } });
  expect(failed.body.status).toBe("failed");
  expect(failed.body.error.code).toBe("execution_error");
  const ids = [promptIdOf(done.body), promptIdOf(failed.body)];
  for (const id of ids) expect(await historyOf(id)).toEqual({});
  const all = (await (
    await fetch(`${stack().comfyUrl}/history`, { signal: AbortSignal.timeout(10_000) })
  ).json()) as Record<string, unknown>;
  for (const id of ids) expect(all).not.toHaveProperty([id]);
});

test("a history entry that cannot be deleted is logged, and the job completes all the same", async () => {
  proxy.failHistoryDelete = true;
  try {
    const res = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    expect(res.body.status).toBe("completed");
    await log.waitFor(/could not delete the prompt's entry from ComfyUI's history/);
    expect(Object.keys(await historyOf(promptIdOf(res.body)))).toHaveLength(1);
  } finally {
    proxy.failHistoryDelete = false;
  }
});

test("a 200 from /prompt with node_errors is a partial run: the job completes, and says which outputs will not come", async () => {
  const wf: Record<string, any> = modelFree();
  // An output whose input is out of range: ComfyUI validates it apart and runs the others.
  wf["8"] = { class_type: "ImageBlur", inputs: { image: ["1", 0], blur_radius: 999, sigma: 1.0 } };
  wf["9"] = { class_type: "SaveImage", inputs: { images: ["8", 0], filename_prefix: "skipped" } };
  const res = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: wf } });
  expect(res.status).toBe(200);
  expect(res.body.status).toBe("completed");
  const details = res.body.comfyui_response.execution_details;
  expect(details.skipped_outputs).toEqual(["9"]);
  expect(details.node_errors["8"]).toMatchObject({ class_type: "ImageBlur", dependent_outputs: ["9"] });
  expect(res.body.message).toMatch(/output node\(s\) 9 skipped/);
  const nodes = new Set(res.body.output.map((o: { node_id: string }) => o.node_id));
  expect(nodes).toEqual(new Set(["3", "4"]));
});
