import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jest } from "@jest/globals";
import { loadConfig } from "../../config/index.js";
import type { ComfyBackend, ComfyPool, Lease } from "../../handlers/comfyui/pool.js";
import { runPrompt, type RunPromptOptions } from "../../handlers/comfyui/run-prompt.js";
import type { ComfyCapabilities } from "../../handlers/comfyui/types.js";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import type { WebhookSender } from "../../handlers/webhook.js";
import { StalledError } from "../../lib/errors.js";
import { Emitter } from "../../lib/events.js";
import type { WorkerEvents } from "../../worker/events.js";
import { JobManager } from "../../worker/jobs/manager.js";
import { STALL_FACTOR, STALL_FLOOR_MS, stallTimeoutMs } from "../../worker/workload.js";
import {
  FakeComfyClient,
  FakeComfyEvents,
  FakeObjectStorage,
  fakeClock,
  silentLogger,
  successEntry,
} from "./fakes.js";

const NEWER: ComfyCapabilities = { jobsApi: true, atomicCancel: true, featureFlags: {} };
const WORKFLOW = { "1": { class_type: "EmptyImage", inputs: {} } };
const NEVER_POLLS = 600_000;
const STALL_MS = 5_000;

describe("stallTimeoutMs", () => {
  const CAP = 600_000;
  test("is STALL_FACTOR times the predicted seconds between the floor and the cap", () => {
    expect(stallTimeoutMs(60, CAP)).toBe(60_000 * STALL_FACTOR);
  });
  test("never goes below the floor for a short job", () => {
    expect(stallTimeoutMs(1, CAP)).toBe(STALL_FLOOR_MS);
  });
  test("never goes above STALL_TIMEOUT_MS, which also wins over the floor", () => {
    expect(stallTimeoutMs(10_000, CAP)).toBe(CAP);
    expect(stallTimeoutMs(1, 3_000)).toBe(3_000);
  });
  test("is the cap when nothing is predicted, and 0 (no watchdog) when the cap is 0", () => {
    for (const p of [undefined, 0, NaN, Infinity]) expect(stallTimeoutMs(p, CAP)).toBe(CAP);
    expect(stallTimeoutMs(60, 0)).toBe(0);
  });
});

describe("runPrompt's watchdog", () => {
  beforeEach(() => jest.useFakeTimers({ doNotFake: ["nextTick", "setImmediate", "queueMicrotask"] }));
  afterEach(() => jest.useRealTimers());

  function setup(overrides: Partial<RunPromptOptions> = {}) {
    const client = new FakeComfyClient();
    const events = new FakeComfyEvents();
    const opts: RunPromptOptions = {
      client: client.asClient(),
      events: events.asEvents(),
      clientId: "fake-client",
      promptId: "prompt-1",
      workflow: WORKFLOW,
      signal: new AbortController().signal,
      pollMs: NEVER_POLLS,
      stallMs: STALL_MS,
      ...overrides,
    };
    return { client, events, opts };
  }

  test("a running prompt that goes quiet is interrupted and fails `stalled`, retryable, with its details", async () => {
    const { client, events, opts } = setup();
    client.onQueue = (id) => {
      events.send(id, "execution_start", {});
      events.send(id, "executing", { node: "1" });
    };
    const failure = runPrompt(opts).catch((e: unknown) => e);
    await jest.advanceTimersByTimeAsync(STALL_MS);
    const err = await failure;
    expect(err).toBeInstanceOf(StalledError);
    expect(err).toMatchObject({ code: "stalled", retryable: true, httpStatus: 503 });
    expect((err as StalledError).details?.execution_details).toMatchObject({ current_node: "1" });
    expect(client.interrupted).toEqual(["prompt-1"]);
    expect(client.deleted).toEqual(["prompt-1"]);
    expect(events.listened()).toEqual([]);
  });

  test("where the backend has the atomic route, the stalled prompt is cancelled through it", async () => {
    const { client, events, opts } = setup({ capabilities: NEWER });
    client.onQueue = (id) => events.send(id, "execution_start", {});
    const failure = runPrompt(opts).catch((e: unknown) => e);
    await jest.advanceTimersByTimeAsync(STALL_MS);
    expect(await failure).toBeInstanceOf(StalledError);
    expect(client.cancelled).toEqual(["prompt-1"]);
    expect(client.interrupted).toEqual([]);
  });

  test("progress that changes keeps it alive; progress repeated unchanged does not", async () => {
    const { client, events, opts } = setup();
    client.onQueue = (id) => events.send(id, "execution_start", {});
    let settled: unknown;
    const run = runPrompt(opts).then(
      (r) => (settled = r),
      (e: unknown) => (settled = e),
    );
    for (let step = 1; step <= 5; step++) {
      await jest.advanceTimersByTimeAsync(STALL_MS - 1);
      events.send("prompt-1", "progress", { node: "1", value: step, max: 10 });
    }
    expect(settled).toBeUndefined();
    for (let i = 0; i < 5 && settled === undefined; i++) {
      await jest.advanceTimersByTimeAsync(STALL_MS / 2);
      events.send("prompt-1", "progress", { node: "1", value: 5, max: 10 });
    }
    await run;
    expect(settled).toBeInstanceOf(StalledError);
  });

  test("a prompt queued behind another (not running yet) is not watched, and completes", async () => {
    const { client, events, opts } = setup();
    let settled: unknown;
    const run = runPrompt(opts).then(
      (r) => (settled = r),
      (e: unknown) => (settled = e),
    );
    await jest.advanceTimersByTimeAsync(STALL_MS * 3);
    expect(settled).toBeUndefined();
    client.finish("prompt-1", successEntry());
    events.send("prompt-1", "execution_start", {});
    events.send("prompt-1", "executing", { node: null });
    await run;
    expect(settled).toMatchObject({ details: { prompt_id: "prompt-1" } });
    expect(client.interrupted).toEqual([]);
  });

  test("while the WebSocket is down nothing can be heard: the watchdog waits for it to reopen", async () => {
    const { client, events, opts } = setup();
    const ws = events as FakeComfyEvents & { connected: boolean };
    ws.connected = true;
    client.onQueue = (id) => events.send(id, "execution_start", {});
    let settled: unknown;
    const run = runPrompt(opts).then(
      (r) => (settled = r),
      (e: unknown) => (settled = e),
    );
    await jest.advanceTimersByTimeAsync(1);
    ws.connected = false;
    events.emit("close");
    await jest.advanceTimersByTimeAsync(STALL_MS * 3);
    expect(settled).toBeUndefined();
    ws.connected = true;
    events.emit("open");
    await jest.advanceTimersByTimeAsync(STALL_MS);
    await run;
    expect(settled).toBeInstanceOf(StalledError);
  });

  test("no watchdog without stallMs", async () => {
    const { client, events, opts } = setup({ stallMs: 0 });
    client.onQueue = (id) => events.send(id, "execution_start", {});
    let settled: unknown;
    const run = runPrompt(opts).then(
      (r) => (settled = r),
      (e: unknown) => (settled = e),
    );
    await jest.advanceTimersByTimeAsync(STALL_MS * 10);
    expect(settled).toBeUndefined();
    client.finish("prompt-1", successEntry());
    events.send("prompt-1", "executing", { node: null });
    await run;
    expect(settled).toMatchObject({ details: { prompt_id: "prompt-1" } });
  });
});

/** The pool as the job runner reads it (as in job-manager.test.ts): one backend on a fake ComfyUI, a probe counted. */
class FakeComfyPool {
  readonly client = new FakeComfyClient();
  readonly events = new FakeComfyEvents();
  readonly backend = {
    index: 0,
    url: "http://comfyui.invalid",
    perf: 0,
    freeing: undefined,
    client: this.client.asClient(),
    events: this.events.asEvents(),
    outputDir: "",
    capabilities: () => this.client.capabilities(),
  } as unknown as ComfyBackend;
  readonly catalog = { get: async () => ({ EmptyImage: { input: { required: {} } } }) };
  probes = 0;
  probeAnswer: string | undefined;
  failed: string[] = [];

  acquire = async (): Promise<Lease> => ({ backend: this.backend, release: () => undefined });
  probe = async () => {
    this.probes++;
    return this.probeAnswer;
  };
  fail = (_b: ComfyBackend, reason: string) => void this.failed.push(reason);
  forget = async () => undefined;

  asPool(): ComfyPool {
    return this as unknown as ComfyPool;
  }
}

describe("the job runner", () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), "stall-"))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function manager(env: Record<string, string>) {
    const config = loadConfig(
      {
        COMFYUI_BASE_DIR: dir,
        OUTPUT_DIR: join(dir, "out"),
        REPORT_ADDR: "https://report.invalid",
        COMFYUI_HISTORY_POLL_MS: "10",
        ...env,
      },
      dir,
    );
    const pool = new FakeComfyPool();
    const jobs = new JobManager({
      config,
      pool: pool.asPool(),
      downloader: {
        maxPerJob: 0,
        fetch: async () => "",
        pin: () => undefined,
        unpin: () => undefined,
      } as unknown as InputDownloader,
      storage: new FakeObjectStorage().asStorage(),
      webhooks: { send: async () => ({ status: "delivered", attempts: 1 }) } as unknown as WebhookSender,
      logger: silentLogger(),
      clientId: "fake-client",
      now: fakeClock().now,
      events: new Emitter<WorkerEvents>(silentLogger()),
    });
    return { jobs, pool };
  }

  const input = (requestId: string) => ({
    requestId,
    workflow: { "1": { class_type: "EmptyImage", inputs: { seed: 1 } } },
    s3: undefined,
    webhook: undefined,
  });

  test("a stalled prompt fails the job `stalled` (retryable) and probes the backend, which stays in service", async () => {
    // STALL_TIMEOUT_MS caps the derived timeout (no score yet: the cap itself).
    const { jobs, pool } = manager({ STALL_TIMEOUT_MS: "50" });
    pool.client.onQueue = (id) => pool.events.send(id, "execution_start", {});
    const { job } = jobs.submit(input("stalls"), 100);
    await job.done;
    expect(job.status).toBe("failed");
    expect(job.error).toMatchObject({ code: "stalled", retryable: true });
    expect(pool.probes).toBe(1);
    expect(pool.failed).toEqual([]);
    expect(pool.client.interrupted).toHaveLength(1);
  });

  test("a stalled backend that fails its probe leaves the rotation; the job is still `stalled`", async () => {
    const { jobs, pool } = manager({ STALL_TIMEOUT_MS: "50" });
    pool.probeAnswer = "the health probe did not complete in time";
    pool.client.onQueue = (id) => pool.events.send(id, "execution_start", {});
    const { job } = jobs.submit(input("stalls-for-good"), 100);
    await job.done;
    expect(job.error).toMatchObject({ code: "stalled", retryable: true });
    expect(job.error?.message).toMatch(/left the rotation/);
    expect(pool.failed).toEqual([expect.stringMatching(/stalled.*did not complete in time/)]);
  });

  test("after an out-of-memory failure, ComfyUI frees memory before the next prompt is sent", async () => {
    const { jobs, pool } = manager({});
    const order: string[] = [];
    let releaseFree: (() => void) | undefined;
    (pool.client as { free: () => Promise<void> }).free = () => {
      order.push("free asked");
      return new Promise<void>((done) => {
        releaseFree = () => {
          order.push("free done");
          done();
        };
      });
    };
    const oom = { exception_type: "torch.OutOfMemoryError", exception_message: "CUDA out of memory." };
    pool.client.onQueue = (id) => {
      order.push("prompt queued");
      pool.client.finish(id, {
        prompt: [],
        outputs: {},
        status: { status_str: "error", completed: false, messages: [["execution_error", oom]] },
      });
      pool.events.send(id, "execution_error", oom);
    };
    const first = jobs.submit(input("oom"), 100).job;
    await first.done;
    expect(first.error).toMatchObject({ code: "out_of_memory", retryable: true });
    pool.client.onQueue = (id) => {
      order.push("prompt queued");
      pool.client.finish(id);
      pool.events.send(id, "executing", { node: null });
    };
    // The free ends only after the next job got its slot, a turn of the event loop later: a runner that did not
    // wait for it would have queued its prompt by then.
    const acquire = pool.acquire;
    pool.acquire = async () => {
      const lease = await acquire();
      setImmediate(() => releaseFree?.());
      return lease;
    };
    const next = jobs.submit(input("after-oom"), 100).job;
    await next.done;
    expect(next.status).toBe("completed");
    expect(order).toEqual(["prompt queued", "free asked", "free done", "prompt queued"]);
  });
});
