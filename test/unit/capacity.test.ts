import { ComfyPool, type ComfyBackend } from "../../handlers/comfyui/pool.js";
import { createLogger } from "../../lib/logger.js";
import type { BenchmarkResult } from "../../worker/boot-benchmark.js";
import { Capacity } from "../../worker/capacity.js";
import { LiveScore } from "../../worker/live-score.js";

const logger = createLogger({ level: "silent", pretty: false });

/** A real pool whose backends are never called (their health is set by the test), and its Capacity. */
function setup(n: number, opts: { band?: number; liveScore?: boolean; up?: boolean } = {}) {
  const state = {
    serving: false,
    changes: [] as number[],
    saved: [] as { total: number; perBackend: number[] }[],
  };
  const pool = new ComfyPool({
    backends: Array.from({ length: n }, (_, i) => ({
      url: `http://backend-${i}.invalid`,
      outputDir: `/out/${i}`,
    })),
    requestTimeoutMs: 1_000,
    clientId: "test",
    slotsPerBackend: 1,
    logger,
    scoreOf: (i) => capacity.scoreOf(i),
  });
  const capacity: Capacity<ComfyBackend> = new Capacity<ComfyBackend>({
    pool,
    score: new LiveScore({ band: opts.band ?? 2 }),
    liveScore: opts.liveScore ?? true,
    serving: () => state.serving,
    saveScore: (total, perBackend) => {
      state.saved.push({ total, perBackend: [...perBackend] });
      return Promise.resolve();
    },
    changed: (maxPerf) => state.changes.push(maxPerf),
    logger,
  });
  pool.on("change", () => capacity.refresh());
  if (opts.up ?? true) for (const b of pool.backends) pool.setUp(b, true);
  return { pool, capacity, state };
}

const result = (perBackend: number[], rounds: number[]): BenchmarkResult => ({
  maxPerf: perBackend.reduce((a, b) => a + b, 0),
  perBackend,
  rounds,
  cached: false,
  source: "test",
});

describe("Capacity", () => {
  test("max_perf is the sum of the backends in rotation; each change is told once", () => {
    const { pool, capacity, state } = setup(3);
    expect(capacity.maxPerf()).toBe(0);
    capacity.applyBenchmark(result([1, 2, 3], [2, 2]));
    expect(capacity.maxPerf()).toBe(6);
    expect(pool.backends.map((b) => b.perf)).toEqual([1, 2, 3]);
    pool.setUp(pool.backends[2]!, false);
    expect(capacity.maxPerf()).toBe(3);
    capacity.refresh(); // nothing moved: not told again
    pool.setUp(pool.backends[2]!, true);
    expect(state.changes).toEqual([6, 3, 6]);
    expect(capacity.benchmark()?.perBackend).toEqual([1, 2, 3]);
  });

  test("the reported score and unit are 0 until the worker serves", () => {
    const { capacity, state } = setup(2);
    capacity.applyBenchmark(result([2, 4], [3]));
    expect(capacity.reported()).toBe(0);
    expect(capacity.reportedUnit()).toBe(0);
    state.serving = true;
    expect(capacity.reported()).toBe(6);
    expect(capacity.reportedUnit()).toBe(3);
  });

  test("a backend that scored nothing while answering leaves the rotation; one that was down gets the mean", () => {
    const { pool, capacity } = setup(3);
    pool.setUp(pool.backends[2]!, false);
    capacity.applyBenchmark(result([2, 0, 0], [2]));
    expect(pool.backends[1]!.failed).toBe("no benchmark round completed on it");
    expect(pool.backends.map((b) => b.perf)).toEqual([2, 0, 2]);
    expect(capacity.maxPerf()).toBe(2);
    pool.setUp(pool.backends[2]!, true);
    expect(capacity.maxPerf()).toBe(4);
  });

  test("benchmark scores are held within the band around the median of its rounds", () => {
    const { capacity } = setup(2, { band: 2 });
    capacity.applyBenchmark(result([10, 0.5], [2, 2, 2]));
    expect([capacity.scoreOf(0), capacity.scoreOf(1)]).toEqual([4, 1]);
  });

  test("BENCHMARK_SKIP: 1 per backend, and the band centred on 1", () => {
    const { capacity, state } = setup(2, { band: 2 });
    capacity.skipBenchmark();
    expect(capacity.maxPerf()).toBe(2);
    state.serving = true;
    capacity.measured(5); // bounded to 2
    expect(capacity.maxPerf()).toBe(4);
  });

  test("a live score moves every backend by one factor, within the band, and is saved in order", async () => {
    const { capacity, state } = setup(3, { band: 2 });
    capacity.applyBenchmark(result([0, 2, 4], [3]));
    // Backend 0 scored nothing while answering: out for good, its score stays 0.
    capacity.measured(4.5); // not serving yet: ignored
    expect(capacity.maxPerf()).toBe(6);
    state.serving = true;
    capacity.measured(4.5);
    expect([0, 1, 2].map((i) => capacity.scoreOf(i))).toEqual([0, 3, 6]);
    expect(capacity.maxPerf()).toBe(9);
    capacity.measured(100); // bounded to 6 (band 2 around 3)
    expect([1, 2].map((i) => capacity.scoreOf(i))).toEqual([4, 8]);
    await capacity.saved();
    expect(state.saved).toEqual([
      { total: 9, perBackend: [0, 3, 6] },
      { total: 12, perBackend: [0, 4, 8] },
    ]);
    expect(state.changes).toEqual([6, 9, 12]);
  });

  test("with LIVE_SCORE=false real work never moves the score", async () => {
    const { capacity, state } = setup(1, { liveScore: false });
    capacity.applyBenchmark(result([2], [2]));
    state.serving = true;
    capacity.measured(3);
    await capacity.saved();
    expect(capacity.maxPerf()).toBe(2);
    expect(state.saved).toEqual([]);
  });

  test("before any backend is measured a live score sets each backend to it", () => {
    const { capacity, state } = setup(2, { up: true });
    state.serving = true;
    capacity.measured(1.5);
    expect([capacity.scoreOf(0), capacity.scoreOf(1)]).toEqual([1.5, 1.5]);
    expect(capacity.unit()).toBe(1.5);
  });
});
