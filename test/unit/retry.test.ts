import { retry } from "../../lib/retry.js";

test("retries until success, waiting as told between attempts", async () => {
  const waits: number[] = [];
  let calls = 0;
  const value = await retry(
    async (attempt) => {
      calls++;
      if (attempt < 3) throw new Error(`fail ${attempt}`);
      return "ok";
    },
    { attempts: 5, delayMs: (a) => (waits.push(a), 1) },
  );
  expect(value).toBe("ok");
  expect(calls).toBe(3);
  expect(waits).toEqual([1, 2]);
});

test("stops at the attempt limit with the last failure, and at once on a failure that is not retryable", async () => {
  const seen: [number, boolean][] = [];
  await expect(
    retry(async (a) => Promise.reject(new Error(`fail ${a}`)), {
      attempts: 3,
      delayMs: () => 1,
      onFailure: (_e, a, again) => seen.push([a, again]),
    }),
  ).rejects.toThrow("fail 3");
  expect(seen).toEqual([
    [1, true],
    [2, true],
    [3, false],
  ]);
  let calls = 0;
  await expect(
    retry(async () => (calls++, Promise.reject(new Error("client"))), {
      attempts: 5,
      delayMs: () => 1,
      retryable: () => false,
    }),
  ).rejects.toThrow("client");
  expect(calls).toBe(1);
});

test("an abort during a wait rejects with the signal's reason", async () => {
  const ac = new AbortController();
  const p = retry(
    async () => {
      setTimeout(() => ac.abort(new Error("stopped")), 10);
      throw new Error("fail");
    },
    { attempts: 5, delayMs: () => 60_000, signal: ac.signal },
  );
  await expect(p).rejects.toThrow("stopped");
});
