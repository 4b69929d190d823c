import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jest } from "@jest/globals";
import { loadConfig } from "../../config/index.js";
import type { ComfyBackend, ComfyPool, Lease } from "../../handlers/comfyui/pool.js";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import type { DeliveryRecord, WebhookDelivery, WebhookSender } from "../../handlers/webhook.js";
import {
  CancelledError,
  ComfyUnavailableError,
  NotReadyError,
  RequestIdReusedError,
} from "../../lib/errors.js";
import { Emitter } from "../../lib/events.js";
import type { WorkerEvents } from "../../worker/events.js";
import { JobManager } from "../../worker/jobs/manager.js";
import type { Job } from "../../worker/jobs/job.js";
import { SharedJobs } from "../../worker/jobs/shared.js";
import type { ParsedInput } from "../../worker/schema.js";
import {
  FAKE_BUCKET,
  FakeComfyClient,
  FakeComfyEvents,
  FakeObjectStorage,
  fakeClock,
  silentLogger,
  successEntry,
} from "./fakes.js";

/**
 * The pool as the job runner reads it: the node catalog, a slot (granted at once, or held until the test grants
 * it), the health probe and the way out of the rotation. Its one backend runs prompts on a fake ComfyUI, through
 * the real prompt runner.
 */
class FakeComfyPool {
  readonly client = new FakeComfyClient();
  readonly events = new FakeComfyEvents();
  readonly backend = {
    index: 0,
    client: this.client.asClient(),
    events: this.events.asEvents(),
    outputDir: "",
    capabilities: () => this.client.capabilities(),
  } as unknown as ComfyBackend;
  /** ComfyUI's node definitions: the one node type these workflows use. */
  readonly catalog = { get: async () => ({ EmptyImage: { input: { required: {} } } }) };
  /** While false, acquire waits (every slot taken) until `grant` or its signal aborts. */
  free = true;
  private readonly waiting: (() => void)[] = [];
  released = 0;

  acquire = (opts: { signal: AbortSignal }): Promise<Lease> => {
    const lease: Lease = { backend: this.backend, release: () => void this.released++ };
    if (opts.signal.aborted) return Promise.reject(opts.signal.reason as Error);
    if (this.free) return Promise.resolve(lease);
    return new Promise((resolve, reject) => {
      opts.signal.addEventListener("abort", () => reject(opts.signal.reason as Error), { once: true });
      this.waiting.push(() => resolve(lease));
    });
  };

  probe = async () => undefined;
  fail = () => undefined;
  forget = (_backend: ComfyBackend, promptId: string) => this.client.deleteHistory([promptId]);

  asPool(): ComfyPool {
    return this as unknown as ComfyPool;
  }
}

/** Webhooks as the runner hands them over: recorded, delivered at once. */
class FakeWebhookSender {
  readonly sent: WebhookDelivery[] = [];
  send = async (delivery: WebhookDelivery): Promise<DeliveryRecord> => {
    this.sent.push(delivery);
    return { status: "delivered", attempts: 1, http_status: 200 };
  };
}

/** No URL inputs in these workflows: the downloader is only asked how many a job may have. */
const fakeDownloader = { maxPerJob: 0, fetch: async () => "", pin: () => undefined, unpin: () => undefined };

let dir: string;
beforeEach(() => (dir = mkdtempSync(join(tmpdir(), "job-manager-"))));
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function manager(env: Record<string, string> = {}, extra: { shared?: SharedJobs } = {}) {
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
  // The fake ComfyUI finishes each prompt as soon as it is queued, and says so on the WebSocket.
  pool.client.onQueue = (id) => {
    pool.client.finish(id);
    pool.events.send(id, "executing", { node: null });
  };
  const webhooks = new FakeWebhookSender();
  const storage = new FakeObjectStorage();
  const clock = fakeClock();
  const events = new Emitter<WorkerEvents>(silentLogger());
  const jobs = new JobManager({
    config,
    pool: pool.asPool(),
    downloader: fakeDownloader as unknown as InputDownloader,
    storage: storage.asStorage(),
    webhooks: webhooks as unknown as WebhookSender,
    logger: silentLogger(),
    clientId: "fake-client",
    now: clock.now,
    events,
    ...extra,
  });
  return { jobs, pool, webhooks, storage, clock, events };
}

function input(requestId: string, seed = 1, rest: Partial<ParsedInput> = {}): ParsedInput {
  return {
    requestId,
    workflow: { "1": { class_type: "EmptyImage", inputs: { seed } } },
    s3: undefined,
    webhook: undefined,
    ...rest,
  };
}

const finished = async (job: Job) => {
  await job.done;
  return job;
};

describe("JobManager submissions", () => {
  test("a job runs through the prompt runner to completed, with its timings, and frees its slot", async () => {
    const { jobs, pool } = manager();
    const { job, created } = jobs.submit(input("r1"), 100);
    expect(created).toBe(true);
    await finished(job);
    expect(job.status).toBe("completed");
    expect(job.message).toBe("Completed with 0 output(s)");
    expect(job.backend).toBe(0);
    expect(job.timings.completed_at_ms).not.toBeNull();
    expect(pool.client.queued).toHaveLength(1);
    // Its entry in ComfyUI's history is dropped once its outputs were collected.
    expect(pool.client.historyDeleted).toEqual([pool.client.queued[0]!.promptId]);
    expect(pool.released).toBe(1);
    expect(jobs.active()).toEqual([]);
  });

  test("the same request_id with the same request returns the same job, running or finished", async () => {
    const { jobs, pool } = manager();
    pool.free = false;
    const first = jobs.submit(input("r1"), 100);
    const again = jobs.submit(input("r1"), 100);
    expect(again).toEqual({ job: first.job, created: false });
    jobs.cancel("r1");
    await finished(first.job);
    expect(jobs.submit(input("r1"), 100)).toEqual({ job: first.job, created: false });
    expect(pool.client.queued).toHaveLength(0);
  });

  test("the same request_id with another request is refused with 409 request_id_reused", async () => {
    const { jobs } = manager();
    const { job } = jobs.submit(input("r1", 1), 100);
    const refused = (() => {
      try {
        jobs.submit(input("r1", 2), 100);
      } catch (e) {
        return e;
      }
    })();
    expect(refused).toBeInstanceOf(RequestIdReusedError);
    expect((refused as RequestIdReusedError).httpStatus).toBe(409);
    expect((refused as RequestIdReusedError).code).toBe("request_id_reused");
    await finished(job);
    expect(() => jobs.submit(input("r1", 2), 100)).toThrow(RequestIdReusedError);
    expect(jobs.get("r1")).toBe(job);
  });

  test("a retryable failure is kept for pollers, and a retry under the same id runs again as a new run", async () => {
    const { jobs, pool } = manager();
    pool.client.failQueue.push(new ComfyUnavailableError("ComfyUI did not answer POST /prompt (fake)"));
    const first = await finished(jobs.submit(input("r1"), 100).job);
    expect(first.status).toBe("failed");
    expect(first.error).toBeInstanceOf(ComfyUnavailableError);
    expect(first.httpStatus()).toBe(503);
    expect(jobs.get("r1")).toBe(first);

    const retry = jobs.submit(input("r1"), 100);
    expect(retry.created).toBe(true);
    expect(retry.job).not.toBe(first);
    expect(retry.job.id).toBe("r1");
    expect(retry.job.runId).not.toBe(first.runId);
    await finished(retry.job);
    expect(retry.job.status).toBe("completed");
    expect(jobs.get("r1")).toBe(retry.job);
    // A retry of the completed job is answered by it.
    expect(jobs.submit(input("r1"), 100)).toEqual({ job: retry.job, created: false });
  });

  test("a terminal failure is not run again under its id", async () => {
    const { jobs, pool } = manager();
    pool.client.onQueue = (id) =>
      pool.client.finish(id, {
        prompt: [],
        outputs: {},
        status: {
          status_str: "error",
          completed: false,
          messages: [
            ["execution_error", { node_id: "1", node_type: "EmptyImage", exception_message: "bad" }],
          ],
        },
      });
    const { job } = jobs.submit(input("r1"), 100);
    await finished(job);
    expect(job.status).toBe("failed");
    expect(job.error?.code).toBe("execution_error");
    expect(job.httpStatus()).toBe(200);
    expect(jobs.submit(input("r1"), 100)).toEqual({ job, created: false });
  });

  test("a queued job cancelled before it got a slot ends cancelled and never reaches ComfyUI", async () => {
    const { jobs, pool } = manager();
    pool.free = false;
    const { job } = jobs.submit(input("r1"), 100);
    await new Promise<void>((resolve) =>
      job.on("event", (e: { status?: string }) => e.status === "queued" && resolve()),
    );
    expect(jobs.cancel("r1")).toBe(job);
    await finished(job);
    expect(job.status).toBe("cancelled");
    expect(job.error).toBeInstanceOf(CancelledError);
    expect(job.message).toBe("Cancelled by the caller");
    expect(pool.client.queued).toEqual([]);
    expect(jobs.cancel("unknown")).toBeUndefined();
  });

  test("the webhook gets the final document once", async () => {
    const { jobs, webhooks } = manager({ WEBHOOK_URL: "https://hooks.invalid/done" });
    const { job } = jobs.submit(input("r1"), 100);
    await finished(job);
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(webhooks.sent).toHaveLength(1);
    expect(webhooks.sent[0]).toMatchObject({
      to: { kind: "operator", url: "https://hooks.invalid/done" },
      requestId: "r1",
      body: { id: "r1", status: "completed" },
    });
    expect(job.webhook).toMatchObject({ status: "delivered" });
  });
});

describe("JobManager events", () => {
  /** Every event the manager emits, in order, as `name id [detail]`. */
  function record(events: Emitter<WorkerEvents>): string[] {
    const seen: string[] = [];
    events.on("job.created", (job) => void seen.push(`created ${job.id}`));
    events.on("job.stage", ({ job, stage }) => void seen.push(`stage ${job.id} ${stage}`));
    events.on("job.upload", ({ job, ok, bytes }) => void seen.push(`upload ${job.id} ${ok} ${bytes}`));
    events.on("job.finished", (job) => void seen.push(`finished ${job.id} ${job.status}`));
    return seen;
  }

  test("a job is created, passes its four stages, uploads its file and finishes, in that order, once each", async () => {
    const { jobs, pool, events } = manager({
      S3_ACCESS_KEY_ID: "fake-key",
      S3_SECRET_ACCESS_KEY: "fake-secret",
      S3_BUCKET_NAME: "fake-bucket",
    });
    pool.client.onQueue = (id) => {
      pool.client.finish(id, successEntry({ "1": { text: ["hello"] } }));
      pool.events.send(id, "executing", { node: null });
    };
    const seen = record(events);
    const { job } = jobs.submit(input("r1"), 100);
    // Answered by the existing job: not a new one.
    jobs.submit(input("r1"), 100);
    await finished(job);
    expect(seen).toEqual([
      "created r1",
      "stage r1 preprocess",
      "stage r1 queue",
      "stage r1 generation",
      "upload r1 true 1",
      "stage r1 postprocess",
      "finished r1 completed",
    ]);
  });

  test("a listener that throws fails neither the job nor the other listeners", async () => {
    const { jobs, events } = manager();
    for (const name of ["job.created", "job.stage", "job.finished"] as const) {
      events.on(name, () => {
        throw new Error(`a broken ${name} listener (fake)`);
      });
    }
    const seen = record(events);
    const { job } = jobs.submit(input("r1"), 100);
    await finished(job);
    expect(job.status).toBe("completed");
    expect(seen[0]).toBe("created r1");
    expect(seen.at(-1)).toBe("finished r1 completed");
    expect(jobs.active()).toEqual([]);
  });
});

describe("JobManager drain", () => {
  test("waits for running jobs, then refuses new ones", async () => {
    const { jobs } = manager();
    const { job } = jobs.submit(input("r1"), 100);
    await jobs.drain(60_000);
    expect(job.status).toBe("completed");
    expect(() => jobs.submit(input("r2"), 100)).toThrow(NotReadyError);
  });

  test("cancels what is still running when the timeout passes, and settles every job", async () => {
    const { jobs, pool } = manager();
    pool.free = false;
    const { job } = jobs.submit(input("r1"), 100);
    await jobs.drain(20);
    expect(job.status).toBe("cancelled");
    expect(job.message).toBe("the worker is shutting down");
    expect(jobs.active()).toEqual([]);
  });
});

describe("JobManager retention", () => {
  test("keeps at most RESULT_RETENTION_MAX finished jobs, evicting the oldest first", async () => {
    const { jobs } = manager({ RESULT_RETENTION_MAX: "2" });
    for (const id of ["r1", "r2", "r3"]) await finished(jobs.submit(input(id), 100).job);
    expect(jobs.get("r1")).toBeUndefined();
    expect(jobs.list().map((j) => j.id)).toEqual(["r2", "r3"]);
  });

  test("keeps at most RESULT_RETENTION_MAX_BYTES of result documents; a finished job drops its workflow", async () => {
    const { jobs } = manager({ RESULT_RETENTION_MAX_BYTES: "1" });
    const { job } = jobs.submit(input("r1"), 100);
    await finished(job);
    expect(jobs.get("r1")).toBeUndefined();
    expect(job.input.workflow).toEqual({});
  });

  test("forgets finished jobs older than RESULT_RETENTION_MS at the next sweep", async () => {
    const { jobs, clock } = manager({ RESULT_RETENTION_MS: "1000" });
    await finished(jobs.submit(input("r1"), 100).job);
    clock.advance(500);
    await finished(jobs.submit(input("r2"), 100).job);
    jest.useFakeTimers();
    try {
      jobs.start();
      clock.advance(600);
      jest.advanceTimersByTime(60_000);
    } finally {
      jest.useRealTimers();
    }
    expect(jobs.list().map((j) => j.id)).toEqual(["r2"]);
  });
});

describe("JobManager with the shared bucket", () => {
  function withBucket() {
    const bucket = new FakeObjectStorage();
    const clock = fakeClock();
    const shared = (owner: string) =>
      new SharedJobs({
        storage: bucket.asStorage(),
        target: FAKE_BUCKET,
        prefix: "",
        owner,
        heartbeatMs: 1_000,
        logger: silentLogger(),
        now: clock.now,
      });
    return { bucket, clock, shared };
  }

  test("claims the id, and writes the final document when the job ends", async () => {
    const { bucket, shared } = withBucket();
    const here = shared("worker-a");
    const { jobs } = manager({}, { shared: here });
    const { job } = jobs.submit(input("r1"), 100);
    await finished(job);
    await jobs.drain(1_000);
    expect(JSON.parse(bucket.objects.get("r1/job.json")!)).toMatchObject({
      id: "r1",
      status: "completed",
      owner: "worker-a",
      run_id: job.runId,
      http_status: 200,
    });
  });

  test("an id another worker's live job holds: the same request is 409 conflict, another is request_id_reused", async () => {
    const { bucket, shared } = withBucket();
    const theirs = manager({}, { shared: shared("worker-b") });
    theirs.pool.free = false;
    const running = theirs.jobs.submit(input("r1", 1), 100).job;
    // Their claim is in the bucket once their job holds the id.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const theirDocument = bucket.objects.get("r1/job.json");
    expect(JSON.parse(theirDocument!)).toMatchObject({ owner: "worker-b", run_id: running.runId });

    const here = manager({}, { shared: shared("worker-a") });
    const same = await finished(here.jobs.submit(input("r1", 1), 100).job);
    expect(same.status).toBe("failed");
    expect(same.error?.code).toBe("conflict");
    expect(same.error?.message).toMatch(/already queued on another worker; poll \/result\/r1/);
    expect(same.httpStatus()).toBe(409);

    const third = manager({}, { shared: shared("worker-c") });
    const another = await finished(third.jobs.submit(input("r1", 2), 100).job);
    expect(another.error?.code).toBe("request_id_reused");
    expect(another.httpStatus()).toBe(409);

    // Neither refusal wrote over their document.
    await here.jobs.drain(1_000);
    await third.jobs.drain(1_000);
    expect(bucket.objects.get("r1/job.json")).toBe(theirDocument);
    theirs.jobs.cancel(running.id);
    await theirs.jobs.drain(1_000);
  });
});
