import { Admission } from "../../worker/admission.js";

/** An Admission over a load and a score the test sets. */
function admission(maxQueueTimeS: number, maxPerf = 0) {
  const state = { load: 0, maxPerf };
  const a = new Admission(
    maxQueueTimeS,
    () => state.load,
    () => state.maxPerf,
  );
  return { a, state };
}

describe("Admission", () => {
  test("starts without a benchmark score", () => {
    expect(new Admission(10, () => 0).maxPerf).toBe(0);
  });

  test("no load means no wait, with or without max_perf", () => {
    const { a, state } = admission(10);
    expect(a.expectedWaitS()).toBe(0);
    expect(a.admits()).toBe(true);
    state.maxPerf = 50;
    expect(a.expectedWaitS()).toBe(0);
    expect(a.admits()).toBe(true);
  });

  test("a non-positive load counts as none", () => {
    const { a, state } = admission(0);
    state.load = -5;
    expect(a.expectedWaitS()).toBe(0);
    expect(a.admits()).toBe(true);
  });

  test("expected wait is load / max_perf", () => {
    const { a, state } = admission(10, 25);
    state.load = 100;
    expect(a.expectedWaitS()).toBe(4);
    state.load = 250;
    expect(a.expectedWaitS()).toBe(10);
    state.load = 1;
    expect(a.expectedWaitS()).toBeCloseTo(0.04, 10);
  });

  test("admits up to and including max queue time, refuses above", () => {
    const { a, state } = admission(10, 25);
    state.load = 249;
    expect(a.admits()).toBe(true);
    state.load = 250; // exactly 10 s
    expect(a.admits()).toBe(true);
    state.load = 251;
    expect(a.expectedWaitS()).toBeGreaterThan(10);
    expect(a.admits()).toBe(false);
  });

  test("max queue time 0 admits only an idle worker", () => {
    const { a, state } = admission(0, 1000);
    expect(a.admits()).toBe(true);
    state.load = 1;
    expect(a.admits()).toBe(false);
  });

  test("with load and no max_perf the wait is Infinity and nothing is admitted", () => {
    const { a, state } = admission(1e9);
    state.load = 1;
    expect(a.expectedWaitS()).toBe(Infinity);
    expect(a.admits()).toBe(false);
    state.maxPerf = -3;
    expect(a.expectedWaitS()).toBe(Infinity);
  });

  test("max_perf and the load are read on every call", () => {
    const { a, state } = admission(5);
    state.load = 100;
    expect(a.admits()).toBe(false);
    state.maxPerf = 20;
    expect(a.expectedWaitS()).toBe(5);
    expect(a.admits()).toBe(true);
    state.load = 120;
    expect(a.expectedWaitS()).toBe(6);
    expect(a.admits()).toBe(false);
  });
});
