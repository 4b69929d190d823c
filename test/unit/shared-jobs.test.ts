import { Job, type ResultDocument } from "../../worker/jobs/job.js";
import { SharedJobs, type JobBinding, type SharedDocument } from "../../worker/jobs/shared.js";
import { RemoteJobs } from "../../worker/jobs/endpoint-jobs.js";
import {
  ComfyUnavailableError,
  BadRequestError,
  ConflictError,
  ExecutionError,
  StorageUnavailableError,
  UploadError,
  type WorkerError,
} from "../../lib/errors.js";
import { FAKE_BUCKET, FakeObjectStorage, fakeClock, silentLogger } from "./fakes.js";

const HEARTBEAT_MS = 1_000;

/** Two workers of one endpoint sharing one (fake) bucket and one (fake) clock. */
function endpoint() {
  const storage = new FakeObjectStorage();
  const clock = fakeClock();
  const worker = (owner: string) =>
    new SharedJobs({
      storage: storage.asStorage(),
      target: FAKE_BUCKET,
      prefix: "jobs/",
      owner,
      heartbeatMs: HEARTBEAT_MS,
      logger: silentLogger(),
      now: clock.now,
    });
  return { storage, clock, a: worker("worker-a"), b: worker("worker-b") };
}

/** A job's document and binding, as the job runner hands them over. */
function job(id: string, workflowSeed = 1): { doc: ResultDocument; binding: JobBinding; job: Job } {
  const j = new Job(
    {
      requestId: id,
      workflow: { "1": { class_type: "EmptyImage", inputs: { seed: workflowSeed } } },
      s3: undefined,
      webhook: undefined,
    },
    100,
    0,
  );
  return { doc: j.result(), binding: { requestHash: j.requestHash, runId: j.runId }, job: j };
}

const stored = (storage: FakeObjectStorage, key: string) =>
  JSON.parse(storage.objects.get(key)!) as SharedDocument;

/** Waits (a few seconds at most) until `test` holds: for what a background loop does on its own clock. */
const until = async (test: () => boolean) => {
  for (let i = 0; i < 2_000 && !test(); i++) await new Promise((r) => setTimeout(r, 1));
};

describe("SharedJobs claims", () => {
  test("a free id is claimed with one conditional create, stamped with owner, heartbeat, hash and run", async () => {
    const { storage, clock, a } = endpoint();
    const { doc, binding } = job("r1");
    await expect(a.claim(doc, binding)).resolves.toEqual({ claimed: true });
    expect(a.requests).toEqual({ put: 1, get: 0, head: 0 });
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({
      id: "r1",
      status: "queued",
      owner: "worker-a",
      heartbeat_at: clock.now(),
      http_status: 202,
      retryable: false,
      request_hash: binding.requestHash,
      run_id: binding.runId,
    });
  });

  test("an id a live owner holds is not taken: the claim returns its document, which stays as it was", async () => {
    const { storage, clock, a, b } = endpoint();
    const first = job("r1");
    await a.claim(first.doc, first.binding);
    clock.advance(3 * HEARTBEAT_MS); // silent for exactly 3 heartbeats: still alive
    const second = job("r1");
    const result = await b.claim(second.doc, second.binding);
    expect(result).toMatchObject({
      claimed: false,
      existing: { owner: "worker-a", status: "queued", run_id: first.binding.runId },
    });
    expect(stored(storage, "jobs/r1/job.json").owner).toBe("worker-a");
  });

  test("an owner silent for more than 3 heartbeats has lost the job: readers see owner_lost, a retry takes it", async () => {
    const { storage, clock, a, b } = endpoint();
    const first = job("r1");
    await a.claim(first.doc, first.binding);
    clock.advance(3 * HEARTBEAT_MS + 1);
    const seen = await b.read("r1");
    expect(seen).toMatchObject({
      status: "failed",
      http_status: 503,
      retryable: true,
      owner: "worker-a",
      error: { code: "owner_lost" },
    });
    expect(seen!.message).toMatch(/stopped answering \(no heartbeat for 3 s\)/);
    const retry = job("r1");
    await expect(b.claim(retry.doc, retry.binding)).resolves.toEqual({ claimed: true });
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({
      owner: "worker-b",
      run_id: retry.binding.runId,
      status: "queued",
    });
  });

  test("a heartbeat keeps a running job alive; a finished job never becomes owner_lost", async () => {
    const { clock, a, b } = endpoint();
    const { doc, binding, job: j } = job("r1");
    await a.claim(doc, binding);
    clock.advance(3 * HEARTBEAT_MS);
    a.write(j.result(), binding, 202, false);
    await a.flush();
    clock.advance(3 * HEARTBEAT_MS);
    expect((await b.read("r1"))!.status).toBe("queued");
    j.setStatus("completed", "Completed with 0 output(s)");
    a.write(j.result(), binding, 200, false);
    await a.flush();
    clock.advance(100 * HEARTBEAT_MS);
    expect(await b.read("r1")).toMatchObject({ status: "completed", http_status: 200, owner: "worker-a" });
  });

  test("a retryable failure may be run again by anyone; a terminal one is kept", async () => {
    const { a, b } = endpoint();
    const first = job("r1");
    await a.claim(first.doc, first.binding);
    first.job.setStatus("failed", "ComfyUI went away");
    a.write(first.job.result(), first.binding, 503, true);
    await a.flush();
    const retry = job("r1");
    await expect(b.claim(retry.doc, retry.binding)).resolves.toEqual({ claimed: true });

    const other = job("r2");
    await a.claim(other.doc, other.binding);
    other.job.setStatus("failed", "a node raised");
    a.write(other.job.result(), other.binding, 200, false);
    await a.flush();
    const again = job("r2");
    await expect(b.claim(again.doc, again.binding)).resolves.toMatchObject({
      claimed: false,
      existing: { status: "failed", retryable: false },
    });
  });

  test("the claim hands back the holder's request hash, so another request under the id can be told apart", async () => {
    const { a, b } = endpoint();
    const first = job("r1", 1);
    await a.claim(first.doc, first.binding);
    const same = job("r1", 1);
    const different = job("r1", 2);
    expect(same.binding.requestHash).toBe(first.binding.requestHash);
    expect(different.binding.requestHash).not.toBe(first.binding.requestHash);
    const r = await b.claim(different.doc, different.binding);
    expect(r.claimed).toBe(false);
    expect(r.claimed === false && r.existing.request_hash).toBe(first.binding.requestHash);
  });

  test("a bucket that cannot be reached makes claims and reads reject; background writes are logged, not thrown", async () => {
    const { storage, a } = endpoint();
    const { doc, binding } = job("r1");
    storage.down = new StorageUnavailableError("writing jobs/r1/job.json: fake outage");
    await expect(a.claim(doc, binding)).rejects.toBeInstanceOf(StorageUnavailableError);
    await expect(a.read("r1")).rejects.toBeInstanceOf(StorageUnavailableError);
    a.write(doc, binding, 202, false);
    await expect(a.flush()).resolves.toBeUndefined();
  });

  test("documents that are not a job of this id read as none", async () => {
    const { storage, a } = endpoint();
    storage.objects.set("jobs/r1/job.json", "not json");
    storage.objects.set("jobs/r2/job.json", JSON.stringify({ id: "someone-else" }));
    expect(await a.read("r1")).toBeUndefined();
    expect(await a.read("r2")).toBeUndefined();
    expect(await a.read("r3")).toBeUndefined();
  });

  test("writes of one id land in order, the last one last", async () => {
    const { storage, a } = endpoint();
    const { binding, job: j } = job("r1");
    // The first write is slow (held until the last one was handed over): the later ones still wait for it.
    const put = storage.putDocument;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let calls = 0;
    Object.assign(storage, {
      putDocument: async (...args: Parameters<typeof put>) => {
        if (++calls === 1) await held;
        return put(...args);
      },
    });
    j.setStatus("processing", "Preparing inputs");
    a.write(j.result(), binding, 202, false);
    j.setStatus("generating", "Submitted to ComfyUI");
    a.write(j.result(), binding, 202, false);
    j.setStatus("completed", "Completed");
    a.write(j.result(), binding, 200, false);
    release();
    await a.flush();
    expect(stored(storage, "jobs/r1/job.json").status).toBe("completed");
    expect(a.requests.put).toBe(3);
  });
});

describe("SharedJobs cancel requests", () => {
  test("are scoped to one run of the id: a later run of the same id never sees an earlier run's request", async () => {
    const { storage, a, b } = endpoint();
    const first = job("r1");
    await a.claim(first.doc, first.binding);
    const doc = (await b.read("r1"))!;
    await expect(b.requestCancel(doc)).resolves.toBe(true);
    expect(storage.objects.has(`jobs/r1/cancel.${first.binding.runId}`)).toBe(true);
    expect(await a.cancelRequested("r1", first.binding.runId)).toBe(true);
    const second = job("r1");
    expect(second.binding.runId).not.toBe(first.binding.runId);
    expect(await a.cancelRequested("r1", second.binding.runId)).toBe(false);
    expect(await a.cancelRequested("r2", first.binding.runId)).toBe(false);
  });

  test("a document without a run id cannot be cancelled from another worker (nothing is written)", async () => {
    const { storage, a, b } = endpoint();
    const { doc, binding } = job("r1");
    await a.claim(doc, binding);
    const legacy = { ...(await b.read("r1"))!, run_id: "" };
    const before = storage.objects.size;
    await expect(b.requestCancel(legacy)).resolves.toBe(false);
    expect(storage.objects.size).toBe(before);
  });
});

describe("SharedJobs while the bucket is unreachable", () => {
  /** A worker of the endpoint whose final documents are tried again every few ms (or every `baseMs`). */
  function quickRetries(
    storage: FakeObjectStorage,
    attempts = 50,
    opts: { owner?: string; baseMs?: number; now?: () => number } = {},
  ) {
    return new SharedJobs({
      storage: storage.asStorage(),
      target: FAKE_BUCKET,
      prefix: "jobs/",
      owner: opts.owner ?? "worker-a",
      heartbeatMs: HEARTBEAT_MS,
      logger: silentLogger(),
      finalWriteRetry: { baseMs: opts.baseMs ?? 1, capMs: opts.baseMs ?? 5, attempts },
      ...(opts.now && { now: opts.now }),
    });
  }
  /** S3 requests made, whatever they were (a write held back reads before it tries again). */
  const tries = (w: SharedJobs) => w.requests.put + w.requests.get;
  /** A run of `id` on `w` whose outputs could not be uploaded: its retryable failure, written in the background. */
  const uploadFailed = (w: SharedJobs, id: string) => {
    const r = job(id);
    r.job.error = new UploadError("Generated 3 output(s) but 3 upload(s) failed");
    r.job.setStatus("failed", r.job.error.message);
    w.write(r.job.result(), r.binding, 502, true);
    return r;
  };
  /** The caller's retry of `id`, claimed and completed on `w`; resolves once its document is in the bucket. */
  const completedOn = async (w: SharedJobs, id: string) => {
    const r = job(id);
    await expect(w.claim(r.doc, r.binding)).resolves.toEqual({ claimed: true });
    r.job.setStatus("completed", "Completed with 3 output(s)");
    w.write(r.job.result(), r.binding, 200, false);
    await w.flush();
    return r;
  };

  test("a write resolves with its first try, written or failed; the retries go on behind it", async () => {
    const storage = new FakeObjectStorage();
    const a = quickRetries(storage, 1_000_000, { baseMs: 60_000 });
    const written = job("r1");
    written.job.setStatus("completed", "Completed with 0 output(s)");
    await a.write(written.job.result(), written.binding, 200, false);
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({ id: "r1", status: "completed" });

    const held = job("r2");
    held.job.setStatus("completed", "Completed with 0 output(s)");
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    // Its next try is a minute away: resolving now is the first try's doing.
    await a.write(held.job.result(), held.binding, 200, false);
    expect(a.requests.put).toBe(2);
    storage.down = undefined;
    await a.flush();
    expect(stored(storage, "jobs/r2/job.json")).toMatchObject({ id: "r2", status: "completed" });
  });

  test("a final document written during an outage lands once the bucket answers again", async () => {
    const storage = new FakeObjectStorage();
    const a = quickRetries(storage);
    const { binding, job: j } = job("r1");
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    j.setStatus("completed", "Completed with 0 output(s)");
    a.write(j.result(), binding, 200, false);
    await until(() => tries(a) >= 3);
    expect(storage.objects.has("jobs/r1/job.json")).toBe(false);
    storage.down = undefined;
    await until(() => storage.objects.has("jobs/r1/job.json"));
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({ id: "r1", status: "completed" });
    await a.flush();
  });

  test("a heartbeat is not tried again, and flush (shutdown) ends a final document's retries after one last try", async () => {
    const storage = new FakeObjectStorage();
    const a = quickRetries(storage, 1_000_000);
    const running = job("r1");
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    a.write(running.job.result(), running.binding, 202, false);
    await a.flush();
    expect(a.requests.put).toBe(1);

    const done = job("r2");
    done.job.setStatus("failed", "a node raised");
    a.write(done.job.result(), done.binding, 200, false);
    await until(() => tries(a) >= 3);
    await a.flush();
    const made = tries(a);
    await new Promise((r) => setTimeout(r, 20));
    expect(tries(a)).toBe(made);
  });

  test("a final document held back by an outage never lands over a later run of the id (another worker's retry)", async () => {
    const storage = new FakeObjectStorage();
    const clock = fakeClock();
    // Tries again only after a minute, or at flush: the other worker's run happens in between.
    const a = quickRetries(storage, 50, { baseMs: 60_000, now: clock.now });
    const b = quickRetries(storage, 50, { owner: "worker-b", now: clock.now });
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    uploadFailed(a, "r1");
    await until(() => a.requests.put >= 1);

    storage.down = undefined;
    clock.advance(1_000);
    const retry = await completedOn(b, "r1");

    clock.advance(1_000);
    await a.flush(); // its held-back write's last try: it reads first
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({
      status: "completed",
      owner: "worker-b",
      run_id: retry.binding.runId,
    });
  });

  test("two runs of one id here during an outage: the later one's document is not held behind the earlier's retries, and neither lands over another worker's run", async () => {
    const storage = new FakeObjectStorage();
    const clock = fakeClock();
    const a = quickRetries(storage, 50, { baseMs: 60_000, now: clock.now });
    const b = quickRetries(storage, 50, { owner: "worker-b", now: clock.now });
    /** A run whose claim fails (the bucket down) and which ends in an upload failure. */
    const failedRun = async () => {
      const claimed = job("r1");
      await expect(a.claim(claimed.doc, claimed.binding)).rejects.toBeInstanceOf(StorageUnavailableError);
      claimed.job.error = new UploadError("Generated 3 output(s) but 3 upload(s) failed");
      claimed.job.setStatus("failed", claimed.job.error.message);
      a.write(claimed.job.result(), claimed.binding, 502, true);
      return claimed;
    };
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    await failedRun();
    await until(() => tries(a) >= 2);
    const second = await failedRun();
    await until(() => tries(a) >= 4);

    storage.down = undefined;
    clock.advance(1_000);
    const retry = await completedOn(b, "r1");
    await a.flush();
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({
      status: "completed",
      run_id: retry.binding.runId,
    });

    // A later write of the id, the bucket answering: it lands now, not after the earlier one's minute of backoff.
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    const held = job("r3");
    held.job.setStatus("completed", "Completed with 0 output(s)");
    const before = tries(a);
    a.write(held.job.result(), held.binding, 200, false);
    await until(() => tries(a) > before);
    storage.down = undefined;
    const later = job("r3");
    later.job.setStatus("completed", "Completed with 1 output(s)");
    a.write(later.job.result(), later.binding, 200, false);
    await until(() => storage.objects.has("jobs/r3/job.json"));
    expect(stored(storage, "jobs/r3/job.json")).toMatchObject({ message: "Completed with 1 output(s)" });
    expect(second.binding.runId).not.toBe(retry.binding.runId);
    await a.flush();
  });

  test("a run whose claim failed still replaces an earlier run's retryable failure, but not a later run's", async () => {
    const storage = new FakeObjectStorage();
    const clock = fakeClock();
    const a = quickRetries(storage, 50, { now: clock.now });
    const b = quickRetries(storage, 50, { owner: "worker-b", now: clock.now });
    const earlier = job("r1");
    await b.claim(earlier.doc, earlier.binding);
    earlier.job.error = new ComfyUnavailableError("ComfyUI went away");
    earlier.job.setStatus("failed", earlier.job.error.message);
    b.write(earlier.job.result(), earlier.binding, 503, true);
    await b.flush();

    // The caller's retry lands on a, which cannot claim the id while the bucket is down, and runs it anyway.
    const retry = job("r1");
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    await expect(a.claim(retry.doc, retry.binding)).rejects.toBeInstanceOf(StorageUnavailableError);
    storage.down = undefined;
    clock.advance(1_000);
    retry.job.setStatus("completed", "Completed with 0 output(s)");
    a.write(retry.job.result(), retry.binding, 200, false);
    await a.flush();
    expect(stored(storage, "jobs/r1/job.json")).toMatchObject({
      status: "completed",
      run_id: retry.binding.runId,
    });

    // A heartbeat of a run whose claim failed, after another worker's run took the id, leaves that run's document.
    const lost = job("r2");
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    await expect(a.claim(lost.doc, lost.binding)).rejects.toBeInstanceOf(StorageUnavailableError);
    storage.down = undefined;
    const taken = job("r2");
    await b.claim(taken.doc, taken.binding);
    clock.advance(HEARTBEAT_MS);
    a.write(lost.job.result(), lost.binding, 202, false);
    await a.flush();
    expect(stored(storage, "jobs/r2/job.json")).toMatchObject({
      owner: "worker-b",
      run_id: taken.binding.runId,
    });
  });
});

describe("RemoteJobs: a job of this worker that another worker's run of its id overtook", () => {
  /** Worker a's job `r1`, ended with `err`; worker b then ran the id to completion and published it. */
  async function overtaken(err: WorkerError) {
    const { a, b } = endpoint();
    const mine = job("r1");
    mine.job.error = err;
    mine.job.setStatus("failed", err.message);
    const theirs = job("r1");
    await b.claim(theirs.doc, theirs.binding);
    theirs.job.setStatus("completed", "Completed with 0 output(s)");
    b.write(theirs.job.result(), theirs.binding, 200, false);
    await b.flush();
    const remote = new RemoteJobs({ shared: a, local: (id) => (id === "r1" ? mine.job : undefined) });
    return { a, remote, mine, theirs };
  }

  test("a retryable failure here answers the later run's document, on /result and to the same request again", async () => {
    const { remote, mine, theirs } = await overtaken(new ComfyUnavailableError("not answering"));
    await expect(remote.laterRun(mine.job)).resolves.toMatchObject({
      status: "completed",
      run_id: theirs.binding.runId,
    });
    const payload = { input: { request_id: "r1" } };
    await expect(remote.holding(mine.job.input, payload)).resolves.toMatchObject({ status: "completed" });
  });

  test("a run refused because the other run held the id (409) answers that run's document", async () => {
    const { remote, mine } = await overtaken(
      new ConflictError("request_id r1 is already queued on another worker"),
    );
    await expect(remote.laterRun(mine.job)).resolves.toMatchObject({ status: "completed" });
  });

  test("a failure that is not retried is this worker's answer: the bucket is not read", async () => {
    const { a, remote, mine } = await overtaken(new ExecutionError("a node raised"));
    const reads = a.requests.get;
    await expect(remote.laterRun(mine.job)).resolves.toBeUndefined();
    await expect(remote.holding(mine.job.input, { input: { request_id: "r1" } })).resolves.toBeUndefined();
    expect(a.requests.get).toBe(reads);
  });
});

describe("RemoteJobs following another worker's job", () => {
  test("a bucket that cannot be read while following is waited out: the answer is the other run's end", async () => {
    const { storage, a, b } = endpoint();
    const theirs = job("r1");
    await b.claim(theirs.doc, theirs.binding);
    const remote = new RemoteJobs({ shared: a, local: () => undefined, logger: silentLogger() });
    const queued = (await a.read("r1"))!;
    const reads = a.requests.get;
    storage.down = new StorageUnavailableError("connect ECONNREFUSED");
    const followed = remote.follow(queued, () => false);
    // Two reads refused (one every 500 ms), then the bucket answers with the other run's end.
    await until(() => a.requests.get >= reads + 2);
    expect(a.requests.get).toBeGreaterThanOrEqual(reads + 2);
    storage.down = undefined;
    theirs.job.error = new BadRequestError("Cannot execute because node NoSuchNode does not exist.");
    theirs.job.setStatus("failed", theirs.job.error.message);
    await b.write(theirs.job.result(), theirs.binding, 400, false);
    await expect(followed).resolves.toMatchObject({ id: "r1", status: "failed", http_status: 400 });
  });
});
