import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import {
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
} from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { median } from "../../worker/cost-model.js";
import { stack } from "../harness/stack.js";
import { firstConsoleStatus, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * What decides a backend's health and the worker's score, attacked with what a caller can write: text in an
 * exception's message, and jobs that cost nothing. And the other side of the health check: a device that really
 * failed (a fake GPU failure in front of the real ComfyUI) still leaves the rotation.
 */

let router: RouterEmulator;
let w: TestWorker;
/** The URL the worker advertises (what the router signs for it). */
let own: string;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startTestWorker(
    {
      UNSECURED: "false",
      REPORT_ADDR: router.url,
      REPORT_INTERVAL_MS: "100",
      // A status even when nothing changed, so that "no error heard" is read from a report made after the job.
      REPORT_HEARTBEAT_MS: "100",
      MASTER_TOKEN: "",
    },
    { publicKeyPem: router.publicKeyPem },
  );
  own = w.routed;
  await router.waitFor(() => router.workers.has(own));
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
});

/** A SaveImage whose prefix leaves the output folder: ComfyUI refuses it with a message quoting the folder. */
const quotingPrefix = (folder: string) => {
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = `../${folder}/y`;
  return wf;
};

/** The /worker_status/ reports of the worker advertising `url` (several workers report to this router). */
const statusReports = (url: string) =>
  router.reports.filter((r) => r.path === "/worker_status/" && r.body.url === url).map((r) => r.body);

const errorsReported = (url = own) => statusReports(url).filter((b) => String(b.error_msg ?? "") !== "");

describe("a caller's text cannot take a backend out of service", () => {
  test.each([
    "CUDA error: x",
    "out of memory",
    "an illegal memory access was encountered",
    "device-side assert triggered",
  ])(
    "a SaveImage prefix of ../%s/y fails that job alone (200, execution_error); the backend stays in service",
    async (folder) => {
      const id = `quoted-${randomUUID()}`;
      const routed = await postJson(`${own}/generate/sync`, {
        auth_data: router.authData(own),
        payload: { input: { request_id: id, workflow_json: quotingPrefix(folder) } },
      });
      const local = await postJson(`${w.api}/generate/sync`, {
        input: { workflow_json: quotingPrefix(folder) },
      });
      for (const { status, body } of [routed, local]) {
        expect(status).toBe(200);
        expect(body.status).toBe("failed");
        expect(body.error.code).toBe("execution_error");
      }
      expect((await fetch(`${w.api}/ready`)).status).toBe(200);
      const next = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
      expect(next.body.status).toBe("completed");
      // The autoscaler heard no error, in a report made after the job.
      const after = router.reports.length;
      await router.waitFor(() =>
        router.reports.slice(after).some((r) => r.path === "/worker_status/" && r.body.url === own),
      );
      expect(errorsReported()).toEqual([]);
    },
  );
});

/** The fake GPU failure and its switch. */
interface FakeDeviceFailureProxy {
  url: string;
  /**
   * The next prompt queued through the proxy fails on the (fake) device; resolves once the worker read that. With
   * `deviceStaysBroken`, GET /system_stats answers 500 from then on, as ComfyUI does once the CUDA context is lost.
   */
  failNextPrompt(opts: { exceptionType: TorchDeviceErrorType; deviceStaysBroken: boolean }): Promise<void>;
  close(): Promise<void>;
}

/** What torch raises for a CUDA error, as ComfyUI names it: AcceleratorError since torch 2.8, RuntimeError before. */
type TorchDeviceErrorType = "torch.AcceleratorError" | "RuntimeError";

/** CUDA's text for an illegal memory access, as torch puts it in the exception. */
const ILLEGAL_MEMORY_ACCESS =
  "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported " +
  "at some other API call, so the stacktrace below might be incorrect.\n";

/**
 * A FAKE device failure, since a ComfyUI on CPU cannot lose its GPU on demand: an HTTP and WebSocket proxy in front
 * of the real ComfyUI that passes everything through, except that the prompt armed by `failNextPrompt()` (it runs,
 * for real) is reported by /history/{id} as a dead GPU reports it (status "error", an `execution_error` message
 * with torch's exception type and CUDA's text, no outputs), and that from then on, if told so, GET /system_stats
 * answers 500. Its WebSocket frames pass unchanged: the worker learns the failure from /history, as it does
 * whenever the event stream missed the end of a prompt.
 */
async function startFakeDeviceFailureProxy(target: string): Promise<FakeDeviceFailureProxy> {
  const upstream = new URL(target);
  const sockets = new Set<Socket>();
  interface Failure {
    exceptionType: TorchDeviceErrorType;
    deviceStaysBroken: boolean;
    served: () => void;
  }
  let armed: Failure | undefined;
  const doomed = new Map<string, Failure>();
  let broken = false;

  const forward = (
    req: IncomingMessage,
    body: Buffer,
    answer: (status: number, headers: IncomingHttpHeaders, body: Buffer) => void,
  ) => {
    const out = httpRequest(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
        signal: AbortSignal.timeout(60_000),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => answer(res.statusCode ?? 502, res.headers, Buffer.concat(chunks)));
        res.on("error", () => answer(502, {}, Buffer.from("upstream error")));
      },
    );
    out.on("error", () => answer(502, {}, Buffer.from("upstream error")));
    out.end(body);
  };

  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const path = req.url ?? "";
      const send = (status: number, headers: IncomingHttpHeaders, payload: Buffer) => {
        const { "content-length": _length, "transfer-encoding": _encoding, ...rest } = headers;
        res.writeHead(status, { ...rest, "content-length": payload.length });
        res.end(payload);
      };
      if (broken && req.method === "GET" && path === "/system_stats") {
        return send(500, { "content-type": "text/plain" }, Buffer.from("500 Internal Server Error"));
      }
      if (armed && req.method === "POST" && path === "/prompt") {
        let promptId: unknown;
        try {
          promptId = (JSON.parse(body.toString("utf8")) as { prompt_id?: unknown }).prompt_id;
        } catch {
          // Not a prompt the worker queued: ComfyUI answers it, and the failure waits for the next one.
        }
        if (typeof promptId === "string") {
          doomed.set(promptId, armed);
          armed = undefined;
        }
      }
      const historyOf = /^\/history\/([^/?]+)$/.exec(path)?.[1];
      const promptId = historyOf === undefined ? undefined : decodeURIComponent(historyOf);
      const failure = promptId === undefined ? undefined : doomed.get(promptId);
      forward(req, body, (status, headers, payload) => {
        if (promptId === undefined || failure === undefined || status !== 200) {
          return send(status, headers, payload);
        }
        const history = JSON.parse(payload.toString("utf8")) as Record<string, any>;
        const entry = history[promptId];
        if (entry === undefined) return send(status, headers, payload);
        const messages = (entry.status?.messages ?? []) as [string, Record<string, unknown>][];
        const started = messages.filter(
          ([type]) => type === "execution_start" || type === "execution_cached",
        );
        entry.outputs = {};
        entry.status = {
          status_str: "error",
          completed: false,
          messages: [
            ...started,
            [
              "execution_error",
              {
                prompt_id: promptId,
                node_id: "2",
                node_type: "ImageBlur",
                executed: ["1"],
                exception_message: ILLEGAL_MEMORY_ACCESS,
                exception_type: failure.exceptionType,
                traceback: ['  File "/ComfyUI/execution.py", line 510, in execute\n'],
                current_inputs: {},
                current_outputs: {},
                timestamp: Date.now(),
              },
            ],
          ],
        };
        // Broken before the worker hears of the failure, so that its probe finds the device gone.
        if (failure.deviceStaysBroken) broken = true;
        doomed.delete(promptId);
        send(200, { "content-type": "application/json" }, Buffer.from(JSON.stringify(history)));
        failure.served();
      });
    });
  });
  // The event stream: the upgrade request is replayed to ComfyUI and the two sockets joined.
  server.on("upgrade", (req: IncomingMessage, client: Socket, head: Buffer) => {
    sockets.add(client);
    const up = connect(Number(upstream.port), upstream.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]!;
        lines.push(`${name}: ${name.toLowerCase() === "host" ? upstream.host : req.rawHeaders[i + 1]}`);
      }
      up.write(`${lines.join("\r\n")}\r\n\r\n`);
      up.write(head);
      client.pipe(up);
      up.pipe(client);
    });
    sockets.add(up);
    up.on("error", () => client.destroy());
    client.on("error", () => up.destroy());
    up.on("close", () => client.destroy());
    client.on("close", () => up.destroy());
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    failNextPrompt: ({ exceptionType, deviceStaysBroken }) =>
      new Promise<void>((served) => (armed = { exceptionType, deviceStaysBroken, served })),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The backends as the worker sees them, from the operator page's event stream. */
async function consoleBackends(api: string): Promise<{ up: boolean; failed: string | null }[]> {
  return (await firstConsoleStatus(api)).comfyui.backends;
}

const inRotation = async (api: string) => {
  const text = await (await fetch(`${api}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  return Number(/comfyui_worker_backend_in_rotation\{backend="0"[^}]*\} (\d+)/.exec(text)?.[1]);
};

describe("a real device failure still takes its backend out of service", () => {
  let proxy: FakeDeviceFailureProxy;
  let dw: TestWorker;

  beforeEach(async () => {
    proxy = await startFakeDeviceFailureProxy(stack().comfyUrl);
    dw = await startTestWorker({
      COMFYUI_URL: proxy.url,
      REPORT_ADDR: router.url,
      // A status every 200 ms even when nothing changed, so that "no error heard" is read from a fresh report.
      REPORT_INTERVAL_MS: "200",
      REPORT_HEARTBEAT_MS: "200",
      MASTER_TOKEN: "",
    });
  });

  afterEach(async () => {
    await dw?.stop();
    await proxy?.close();
  });

  test.each<TorchDeviceErrorType>(["torch.AcceleratorError", "RuntimeError"])(
    "an illegal memory access (%s), and a health probe that fails: the job fails device_failed (503), /ready 503, the backend is out, the autoscaler hears it",
    async (exceptionType) => {
      const failed = proxy.failNextPrompt({ exceptionType, deviceStaysBroken: true });
      const res = await postJson(`${dw.api}/generate/sync`, { input: { workflow_json: modelFree() } });
      await failed;
      expect(res.status).toBe(503);
      expect(res.body.status).toBe("failed");
      expect(res.body.error.code).toBe("device_failed");
      expect(res.body.message).toMatch(/illegal memory access/);

      const ready = await fetch(`${dw.api}/ready`, { signal: AbortSignal.timeout(10_000) });
      expect(ready.status).toBe(503);
      expect(((await ready.json()) as { error_msg?: string }).error_msg).toMatch(/illegal memory access/);
      const [backend] = await consoleBackends(dw.api);
      expect(backend!.failed).toMatch(/illegal memory access/);
      expect(await inRotation(dw.api)).toBe(0);
      await router.waitFor(() =>
        errorsReported(dw.routed).some((b) => /illegal memory access/.test(String(b.error_msg))),
      );
    },
  );

  test.each<TorchDeviceErrorType>(["torch.AcceleratorError", "RuntimeError"])(
    "the same failure (%s) while the backend passes its health probe: an ordinary execution_error (200), the backend stays in service",
    async (exceptionType) => {
      const failed = proxy.failNextPrompt({ exceptionType, deviceStaysBroken: false });
      const res = await postJson(`${dw.api}/generate/sync`, { input: { workflow_json: modelFree() } });
      await failed;
      expect(res.status).toBe(200);
      expect(res.body.status).toBe("failed");
      expect(res.body.error.code).toBe("execution_error");
      expect(res.body.message).toMatch(/illegal memory access/);

      expect((await fetch(`${dw.api}/ready`, { signal: AbortSignal.timeout(10_000) })).status).toBe(200);
      const [backend] = await consoleBackends(dw.api);
      expect(backend).toMatchObject({ up: true, failed: null });
      expect(await inRotation(dw.api)).toBe(1);
      const next = await postJson(`${dw.api}/generate/sync`, { input: { workflow_json: modelFree() } });
      expect(next.body.status).toBe("completed");
      const after = router.reports.length;
      await router.waitFor(() =>
        router.reports.slice(after).some((r) => r.path === "/worker_status/" && r.body.url === dw.routed),
      );
      expect(errorsReported(dw.routed)).toEqual([]);
    },
  );
});

/**
 * A benchmark of real work on a CPU (about half a second): an image blurred with fresh noise each round, so that
 * ComfyUI's cache cannot answer a round from the one before.
 */
function noisyBlur(size: number, seed: number | string): Record<string, any> {
  return {
    "1": { class_type: "EmptyImage", inputs: { width: size, height: size, batch_size: 1, color: 0 } },
    "2": { class_type: "ImageAddNoise", inputs: { image: ["1", 0], seed, strength: 0.5 } },
    "3": { class_type: "ImageBlur", inputs: { image: ["2", 0], blur_radius: 15, sigma: 4 } },
    "4": { class_type: "SaveImage", inputs: { images: ["3", 0], filename_prefix: "noisy-blur" } },
  };
}

describe("callers cannot steer the score the autoscaler scales on", () => {
  test("many free jobs of the benchmark's own shape keep max_perf, reported and cached, within LIVE_SCORE_BAND of the benchmark", async () => {
    const dir = join(stack().tmpRoot, `score-${randomUUID()}`);
    await mkdir(dir, { recursive: true });
    const benchmarkFile = join(dir, "benchmark.json");
    await writeFile(benchmarkFile, JSON.stringify(noisyBlur(1024, "__RANDOM_INT__")));
    const cacheFile = join(dir, ".has_benchmark");
    const sw = await startTestWorker(
      {
        UNSECURED: "false",
        REPORT_ADDR: router.url,
        MASTER_TOKEN: "",
        BENCHMARK_SKIP: "false",
        BENCHMARK_JSON_PATH: benchmarkFile,
        BENCHMARK_CACHE_FILE: cacheFile,
        LIVE_SCORE_BAND: "2",
      },
      { publicKeyPem: router.publicKeyPem },
    );
    try {
      const url = sw.routed;
      const anchor = median(sw.worker.benchmark()!.rounds);
      const [lo, hi] = [anchor / 2, anchor * 2];
      const inBand = (score: number) => score >= lo * 0.999 && score <= hi * 1.001;
      expect(anchor).toBeGreaterThan(0);
      // The attack: signed jobs of the benchmark's graph on a 32x32 image (the blur needs 31), each a small fraction of its time.
      for (let i = 0; i < 8; i++) {
        const r = await postJson(`${url}/generate/sync`, {
          auth_data: router.authData(url),
          payload: { input: { request_id: `free-${randomUUID()}`, workflow_json: noisyBlur(32, i) } },
        });
        expect({ http: r.status, ...r.body }).toMatchObject({ http: 200, status: "completed" });
      }
      // The jobs did move the score (they are far faster than the benchmark), as far as the band allows.
      const moved = sw.worker.admission.maxPerf;
      expect(moved).toBeGreaterThan(anchor);
      await router.waitFor(() => statusReports(url).some((b) => b.max_perf === moved), 10_000);
      const reported = statusReports(url)
        .map((b) => Number(b.max_perf))
        .filter((p) => p > 0);
      expect(reported.filter((p) => !inBand(p))).toEqual([]);
      // What a restart starts from: written off the job's path, so wait (bounded) for the last write.
      const cached = async () => JSON.parse(await readFile(cacheFile, "utf8")) as Record<string, unknown>;
      const deadline = Date.now() + 10_000;
      while ((await cached()).max_perf !== moved && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      const record = await cached();
      expect(record).toMatchObject({ max_perf: moved, live: true });
      const scores = [record.max_perf, ...((record.backends as unknown[] | undefined) ?? [])].map(Number);
      expect(scores.filter((p) => !inBand(p))).toEqual([]);
    } finally {
      await sw.stop();
    }
  });
});
