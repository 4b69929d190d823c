import { getEventListeners } from "node:events";
import { jest } from "@jest/globals";
import { backoffDelay, delay, doublingDelay } from "../../lib/backoff.js";

describe("backoffDelay", () => {
  test("full jitter: random() scales the capped exponential ceiling", () => {
    expect(backoffDelay(0, 500, 30_000, () => 0.5)).toBe(250);
    expect(backoffDelay(1, 500, 30_000, () => 0.5)).toBe(500);
    expect(backoffDelay(3, 500, 30_000, () => 0.5)).toBe(2_000);
    expect(backoffDelay(3, 500, 30_000, () => 0.25)).toBe(1_000);
  });

  test("the ceiling is capped", () => {
    // 500 * 2^6 = 32000 > 30000
    expect(backoffDelay(6, 500, 30_000, () => 0.5)).toBe(15_000);
    expect(backoffDelay(50, 500, 30_000, () => 0.5)).toBe(15_000);
    expect(backoffDelay(5000, 500, 30_000, () => 0.5)).toBe(15_000);
  });

  test("the delay lies in [0, ceiling)", () => {
    expect(backoffDelay(4, 100, 10_000, () => 0)).toBe(0);
    expect(backoffDelay(4, 100, 10_000, () => 0.999999)).toBe(1_599);
    expect(backoffDelay(20, 100, 10_000, () => 0.999999)).toBe(9_999);
  });

  test("is an integer number of milliseconds", () => {
    expect(backoffDelay(0, 3, 100, () => 0.5)).toBe(1);
    expect(Number.isInteger(backoffDelay(2, 333, 10_000, () => 0.123456))).toBe(true);
  });

  test("the default random source stays within the bounds", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, 100, 5_000);
        expect(Number.isInteger(d)).toBe(true);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(Math.min(5_000, 100 * 2 ** attempt));
      }
    }
  });
});

describe("delay", () => {
  beforeEach(() => {
    jest.useFakeTimers();
  });
  afterEach(() => {
    jest.useRealTimers();
  });

  /** Tracks whether a promise has settled, without awaiting it. */
  function track(p: Promise<void>) {
    const state = { settled: false, error: undefined as unknown };
    p.then(
      () => {
        state.settled = true;
      },
      (e: unknown) => {
        state.settled = true;
        state.error = e;
      },
    );
    return state;
  }

  test("resolves after ms and not before", async () => {
    const state = track(delay(1_000));
    await jest.advanceTimersByTimeAsync(999);
    expect(state.settled).toBe(false);
    await jest.advanceTimersByTimeAsync(1);
    expect(state.settled).toBe(true);
    expect(state.error).toBeUndefined();
  });

  test("with a signal: resolves on time and removes its abort listener", async () => {
    const ac = new AbortController();
    const p = delay(500, ac.signal);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(1);
    await jest.advanceTimersByTimeAsync(500);
    await expect(p).resolves.toBeUndefined();
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
    // A later abort changes nothing.
    ac.abort();
  });

  test("rejects with the signal's reason when it aborts first, clears its timer and listener", async () => {
    const ac = new AbortController();
    const p = delay(10_000, ac.signal);
    const state = track(p);
    await jest.advanceTimersByTimeAsync(100);
    expect(state.settled).toBe(false);
    expect(jest.getTimerCount()).toBe(1);
    const reason = new Error("shutting down");
    ac.abort(reason);
    await expect(p).rejects.toBe(reason);
    expect(jest.getTimerCount()).toBe(0);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
  });

  test("aborting without a reason rejects with an AbortError", async () => {
    const ac = new AbortController();
    const p = delay(10_000, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ name: "AbortError" });
  });

  test("an already aborted signal rejects at once, without a timer or listener", async () => {
    const reason = new Error("already");
    const signal = AbortSignal.abort(reason);
    const p = delay(10_000, signal);
    expect(jest.getTimerCount()).toBe(0);
    expect(getEventListeners(signal, "abort")).toHaveLength(0);
    await expect(p).rejects.toBe(reason);
  });

  test("many delays on one signal do not accumulate listeners", async () => {
    const ac = new AbortController();
    for (let i = 0; i < 20; i++) {
      const p = delay(10, ac.signal);
      await jest.advanceTimersByTimeAsync(10);
      await p;
    }
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
  });
});

describe("doublingDelay", () => {
  test("base, doubling, capped; no jitter (a restart's delays read 1 s, 2 s, 4 s ... in the log)", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((a) => doublingDelay(a, 1_000, 60_000))).toEqual([
      1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000,
    ]);
    expect(doublingDelay(5_000, 1_000, 60_000)).toBe(60_000);
    expect(doublingDelay(0, 1_000, 500)).toBe(500);
  });
});
