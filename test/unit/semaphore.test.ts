import { getEventListeners } from "node:events";
import { Semaphore } from "../../lib/semaphore.js";

/** Lets every queued promise callback run. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("Semaphore", () => {
  test("grants up to size at once, then queues", async () => {
    const sem = new Semaphore(2);
    const a = await sem.acquire();
    const b = await sem.acquire();
    expect(sem.inUse).toBe(2);
    let granted = false;
    const c = sem.acquire().then((release) => {
      granted = true;
      return release;
    });
    await flush();
    expect(granted).toBe(false);
    expect(sem.waiting).toBe(1);
    a();
    const releaseC = await c;
    expect(granted).toBe(true);
    expect(sem.inUse).toBe(2);
    expect(sem.waiting).toBe(0);
    b();
    releaseC();
    expect(sem.inUse).toBe(0);
  });

  test("waiters are served in FIFO order, one per release", async () => {
    const sem = new Semaphore(1);
    const first = await sem.acquire();
    const order: string[] = [];
    const releases = new Map<string, () => void>();
    for (const name of ["w1", "w2", "w3", "w4"]) {
      void sem.acquire().then((release) => {
        order.push(name);
        releases.set(name, release);
      });
    }
    await flush();
    expect(sem.waiting).toBe(4);
    expect(order).toEqual([]);

    first();
    await flush();
    expect(order).toEqual(["w1"]);
    releases.get("w1")!();
    await flush();
    expect(order).toEqual(["w1", "w2"]);
    releases.get("w2")!();
    await flush();
    expect(order).toEqual(["w1", "w2", "w3"]);
    releases.get("w3")!();
    await flush();
    expect(order).toEqual(["w1", "w2", "w3", "w4"]);
    expect(sem.inUse).toBe(1);
    releases.get("w4")!();
    expect(sem.inUse).toBe(0);
    expect(sem.waiting).toBe(0);
  });

  test("release is idempotent without waiters", async () => {
    const sem = new Semaphore(1);
    const release = await sem.acquire();
    release();
    release();
    release();
    expect(sem.inUse).toBe(0);
    // Still a size-1 semaphore: the second acquire must wait.
    const again = await sem.acquire();
    let granted = false;
    void sem.acquire().then(() => {
      granted = true;
    });
    await flush();
    expect(granted).toBe(false);
    again();
    await flush();
    expect(granted).toBe(true);
  });

  test("release is idempotent with waiters: a second call grants nothing more", async () => {
    const sem = new Semaphore(1);
    const release = await sem.acquire();
    const granted: number[] = [];
    void sem.acquire().then(() => granted.push(1));
    void sem.acquire().then(() => granted.push(2));
    await flush();
    release();
    release();
    await flush();
    expect(granted).toEqual([1]);
    expect(sem.waiting).toBe(1);
    expect(sem.inUse).toBe(1);
  });

  test("aborting a waiter rejects it with the reason and removes it from the queue", async () => {
    const sem = new Semaphore(1);
    const held = await sem.acquire();
    const ac = new AbortController();
    const p = sem.acquire(ac.signal);
    expect(sem.waiting).toBe(1);
    const reason = new Error("client went away");
    ac.abort(reason);
    await expect(p).rejects.toBe(reason);
    expect(sem.waiting).toBe(0);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
    held();
    expect(sem.inUse).toBe(0);
  });

  test("an aborted waiter in the middle is skipped", async () => {
    const sem = new Semaphore(1);
    const held = await sem.acquire();
    const ac = new AbortController();
    const order: string[] = [];
    const releases: (() => void)[] = [];
    void sem.acquire().then((r) => {
      order.push("a");
      releases.push(r);
    });
    const b = sem.acquire(ac.signal).then(
      () => order.push("b"),
      () => order.push("b aborted"),
    );
    void sem.acquire().then((r) => {
      order.push("c");
      releases.push(r);
    });
    ac.abort();
    await b;
    expect(sem.waiting).toBe(2);
    held();
    await flush();
    releases[0]!();
    await flush();
    expect(order).toEqual(["b aborted", "a", "c"]);
    expect(sem.waiting).toBe(0);
    expect(sem.inUse).toBe(1);
  });

  test("a granted waiter's abort listener is removed, and a later abort changes nothing", async () => {
    const sem = new Semaphore(1);
    const held = await sem.acquire();
    const ac = new AbortController();
    const p = sem.acquire(ac.signal);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(1);
    held();
    const release = await p;
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
    ac.abort();
    expect(sem.inUse).toBe(1);
    release();
    expect(sem.inUse).toBe(0);
  });

  test("an immediate grant adds no listener", async () => {
    const sem = new Semaphore(1);
    const ac = new AbortController();
    const release = await sem.acquire(ac.signal);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
    release();
  });

  test("an already aborted signal is refused without taking a slot or queueing", async () => {
    const sem = new Semaphore(1);
    const reason = new Error("too late");
    await expect(async () => sem.acquire(AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(sem.inUse).toBe(0);
    expect(sem.waiting).toBe(0);

    const held = await sem.acquire();
    await expect(async () => sem.acquire(AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(sem.waiting).toBe(0);
    held();
  });
});
