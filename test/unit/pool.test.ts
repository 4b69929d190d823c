import { delay } from "../../lib/backoff.js";
import { ComfyPool, type Lease } from "../../handlers/comfyui/pool.js";
import { ComfyUnavailableError } from "../../lib/errors.js";
import { createLogger } from "../../lib/logger.js";

/** Dispatch only: no prompt is sent, so the backends' URLs are never called. */
function pool(
  n: number,
  slotsPerBackend = 1,
  scores: readonly number[] = Array<number>(n).fill(1),
): ComfyPool {
  const p = new ComfyPool({
    backends: Array.from({ length: n }, (_, i) => ({
      url: `http://backend-${i}.invalid`,
      outputDir: `/out/${i}`,
    })),
    requestTimeoutMs: 1_000,
    clientId: "test",
    slotsPerBackend,
    logger: createLogger({ level: "silent", pretty: false }),
    scoreOf: (i) => scores[i] ?? 0,
  });
  for (const b of p.backends) p.setUp(b, true);
  return p;
}

const never = () => new AbortController().signal;
const take = (p: ComfyPool, workload = 100, backend?: number) =>
  p.acquire({ workload, signal: never(), backend });
/** Whether a promise has settled, without waiting for it. */
const settled = async (promise: Promise<unknown>) => {
  let done = false;
  void promise.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setImmediate(r));
  return done;
};

describe("ComfyPool dispatch", () => {
  test("each prompt goes to the backend that would finish it first", async () => {
    const p = pool(2, 2, [1, 3]); // backend 1 three times as fast
    const a = await take(p);
    const b = await take(p);
    const c = await take(p);
    // Backend 1 finishes the first at t=33 and the second at t=67, before backend 0 would (t=100); then it is full.
    expect([a, b, c].map((l) => l.backend.index)).toEqual([1, 1, 0]);
    expect(p.backends.map((b) => b.workload)).toEqual([100, 200]);
  });

  test("while every backend is full, prompts wait in order and take the first slot freed", async () => {
    const p = pool(2);
    const [a, b] = [await take(p), await take(p)];
    const third = take(p, 100);
    const fourth = take(p, 100);
    expect(await settled(third)).toBe(false);
    b.release();
    expect((await third).backend.index).toBe(b.backend.index);
    expect(await settled(fourth)).toBe(false);
    a.release();
    expect((await fourth).backend.index).toBe(a.backend.index);
  });

  test("a pinned prompt waits for its backend without holding up the others", async () => {
    const p = pool(2);
    const first = await take(p, 100, 0);
    const pinned = take(p, 100, 0);
    const free = await take(p); // backend 1, although the pinned prompt came first
    expect(free.backend.index).toBe(1);
    expect(await settled(pinned)).toBe(false);
    first.release();
    expect((await pinned).backend.index).toBe(0);
  });

  test("a backend out of the rotation takes nothing; prompts fail at once only when none is left", async () => {
    const p = pool(2);
    p.setUp(p.backends[0]!, false);
    const leases: Lease[] = [await take(p)];
    expect(leases[0]!.backend.index).toBe(1);
    const waiting = take(p);
    const pinned = take(p, 100, 0);
    await expect(pinned).rejects.toBeInstanceOf(ComfyUnavailableError);
    p.fail(p.backends[1]!, "device lost");
    await expect(waiting).rejects.toThrow(/none of the 2 ComfyUI backends/);
    await expect(take(p)).rejects.toBeInstanceOf(ComfyUnavailableError);
    expect(p.anyInRotation).toBe(false);
    // Backend 0 answers again: it rejoins; backend 1 stays out for good.
    p.setUp(p.backends[0]!, true);
    expect((await take(p)).backend.index).toBe(0);
    expect(p.backends.map((b) => b.inRotation)).toEqual([true, false]);
  });

  test("an aborted wait leaves the queue (its listener removed) and releases are idempotent", async () => {
    const p = pool(1);
    const held = await take(p);
    const ac = new AbortController();
    const waiting = p.acquire({ workload: 1, signal: ac.signal });
    ac.abort(new Error("caller went away"));
    await expect(waiting).rejects.toThrow("caller went away");
    held.release();
    held.release();
    expect(p.backends[0]!.running).toBe(0);
    expect(p.backends[0]!.workload).toBe(0);
    // The aborted waiter did not take the freed slot.
    expect((await take(p)).backend.index).toBe(0);
    expect(p.backends[0]!.running).toBe(1);
  });

  test("a backend leaving or rejoining the rotation is emitted once; its score is read from its owner", () => {
    const p = pool(3, 1, [1, 1, 2]);
    expect(p.backends.map((b) => b.state().perf)).toEqual([1, 1, 2]);
    const changes: number[] = [];
    p.on("change", (b: { index: number }) => changes.push(b.index));
    p.setUp(p.backends[2]!, false);
    p.setUp(p.backends[2]!, false); // no change, no event
    p.fail(p.backends[0]!, "gone");
    p.fail(p.backends[0]!, "gone again"); // already out: no event
    expect(changes).toEqual([2, 0]);
    expect(p.backends.map((b) => b.inRotation)).toEqual([false, true, false]);
  });

  test("a prompt that found its backend unreachable takes it out before its slot goes to the next", async () => {
    const p = pool(2);
    const [a, b] = [await take(p), await take(p)];
    const next = take(p);
    a.release(new ComfyUnavailableError("connection refused"));
    expect(a.backend.inRotation).toBe(false);
    expect(await settled(next)).toBe(false); // not sent to the dead backend: it waits for the other
    b.release(new Error("the workflow failed")); // any other failure leaves the backend in
    expect(b.backend.inRotation).toBe(true);
    expect((await next).backend.index).toBe(b.backend.index);
  });
});

describe("ComfyPool health probe", () => {
  type Client = ComfyPool["backends"][number]["client"];
  /** A backend whose ComfyUI is faked per call: what its /system_stats, /prompt and /history answer. */
  function probed(
    fake: Partial<Pick<Client, "systemStats" | "queuePrompt" | "history">>,
    probeTimeoutMs = 5_000,
  ) {
    const p = new ComfyPool({
      backends: [{ url: "http://backend-0.invalid", outputDir: "/out/0" }],
      requestTimeoutMs: 1_000,
      clientId: "test",
      slotsPerBackend: 1,
      logger: createLogger({ level: "silent", pretty: false }),
      probeTimeoutMs,
    });
    const b = p.backends[0]!;
    Object.assign(b.client, {
      systemStats: async () => ({}),
      queuePrompt: async () => ({ prompt_id: "x", number: 0, node_errors: {} }),
      history: async () => ({
        prompt: [],
        outputs: {},
        status: { status_str: "success", completed: true, messages: [] },
      }),
      deleteFromQueue: async () => undefined,
      deleteHistory: async () => undefined,
      ...fake,
    });
    return { p, b };
  }

  test("a backend that answers /system_stats and completes the probe prompt (queued at the front) is healthy", async () => {
    const queued: unknown[] = [];
    let polls = 0;
    const { p, b } = probed({
      queuePrompt: async (workflow, opts) => {
        queued.push({ workflow, front: opts.front });
        return { prompt_id: opts.promptId, number: 0, node_errors: {} };
      },
      // Not finished at the first poll.
      history: async () =>
        ++polls < 2
          ? undefined
          : { prompt: [], outputs: {}, status: { status_str: "success", completed: true, messages: [] } },
    });
    await expect(p.probe(b)).resolves.toBeUndefined();
    expect(queued).toEqual([{ workflow: expect.any(Object), front: true }]);
    expect(polls).toBe(2);
  });

  test("a refused /system_stats, a failed probe prompt or one that never ends each say why", async () => {
    const down = probed({
      systemStats: async () => {
        throw new ComfyUnavailableError("ComfyUI answered 500 to GET /system_stats");
      },
    });
    await expect(down.p.probe(down.b)).resolves.toMatch(/health probe failed: .*500/);
    const failing = probed({
      history: async () => ({
        prompt: [],
        outputs: {},
        status: { status_str: "error", completed: false, messages: [] },
      }),
    });
    await expect(failing.p.probe(failing.b)).resolves.toMatch(/ended error/);
    const hung = probed({ systemStats: (signal) => delay(60_000, signal).then(() => ({})) }, 300);
    await expect(hung.p.probe(hung.b)).resolves.toMatch(/did not complete in time/);
  });

  test("a probe prompt still waiting behind the running prompt at the deadline keeps the backend", async () => {
    let withdrawn: string[] = [];
    const { p, b } = probed({ history: async () => undefined }, 300);
    Object.assign(b.client, { deleteFromQueue: async (ids: string[]) => void (withdrawn = ids) });
    await expect(p.probe(b)).resolves.toBeUndefined();
    expect(withdrawn).toHaveLength(1);
  });

  test("the probe prompt's history entry is deleted once read", async () => {
    const deleted: string[][] = [];
    const queued: string[] = [];
    const { p, b } = probed({
      queuePrompt: async (_workflow, opts) => {
        queued.push(opts.promptId);
        return { prompt_id: opts.promptId, number: 0, node_errors: {} };
      },
    });
    const done = new Promise<void>((resolve) =>
      Object.assign(b.client, {
        deleteHistory: async (ids: string[]) => {
          deleted.push(ids);
          resolve();
        },
      }),
    );
    await expect(p.probe(b)).resolves.toBeUndefined();
    await done;
    expect(deleted).toEqual([queued]);
  });

  test("failures that arrive together share one probe", async () => {
    let checks = 0;
    const { p, b } = probed({
      systemStats: async () => {
        checks++;
        return {};
      },
    });
    const [a, c] = await Promise.all([p.probe(b), p.probe(b)]);
    expect([a, c, checks]).toEqual([undefined, undefined, 1]);
    await p.probe(b);
    expect(checks).toBe(2);
  });
});

describe("ComfyBackend capabilities", () => {
  const NEWER = { jobsApi: true, atomicCancel: true, featureFlags: { supports_preview_metadata: true } };

  function backend() {
    const p = pool(1);
    const b = p.backends[0]!;
    let asked = 0;
    let answer: () => Promise<unknown> = async () => NEWER;
    Object.assign(b.client, {
      capabilities: () => {
        asked++;
        return answer();
      },
    });
    return {
      p,
      b,
      asked: () => asked,
      answer: (fn: () => Promise<unknown>) => (answer = fn),
    };
  }

  test("asked once: callers that ask together share the detection, later ones get what was found", async () => {
    const { b, asked } = backend();
    const [x, y] = await Promise.all([b.capabilities(), b.capabilities()]);
    expect(x).toEqual(NEWER);
    expect(y).toBe(x);
    expect(await b.capabilities()).toBe(x);
    expect(b.detected).toBe(x);
    expect(asked()).toBe(1);
  });

  test("a ComfyUI that does not answer is asked again by the next caller (a failure is not kept)", async () => {
    const { b, asked, answer } = backend();
    answer(async () => {
      throw new ComfyUnavailableError("ComfyUI did not answer GET /api/jobs (fake)");
    });
    await expect(b.capabilities()).rejects.toBeInstanceOf(ComfyUnavailableError);
    answer(async () => NEWER);
    await expect(b.capabilities()).resolves.toEqual(NEWER);
    expect(asked()).toBe(2);
  });

  test("a backend back in the rotation (it may have restarted as another version) is asked again", async () => {
    const { p, b, asked } = backend();
    await b.capabilities();
    p.setUp(b, false);
    p.setUp(b, true);
    await b.capabilities();
    expect(asked()).toBe(2);
  });

  test("a caller's abort stops its own wait, not the detection others share", async () => {
    const { b, answer } = backend();
    let finish!: (v: unknown) => void;
    answer(() => new Promise((resolve) => (finish = resolve)));
    const controller = new AbortController();
    const mine = b.capabilities(controller.signal);
    const other = b.capabilities();
    controller.abort(new Error("mine"));
    await expect(mine).rejects.toThrow("mine");
    finish(NEWER);
    await expect(other).resolves.toEqual(NEWER);
  });
});
