import { ComfyPool } from "../../handlers/comfyui/pool.js";
import { createLogger } from "../../lib/logger.js";
import { followPool } from "../../worker/boot-sequence.js";
import { Capacity } from "../../worker/capacity.js";
import { LiveScore } from "../../worker/live-score.js";
import { Startup } from "../../worker/startup.js";

const logger = createLogger({ level: "silent", pretty: false });

/** A Startup and every error_msg the autoscaler would be told (each `changed` call). */
function startup() {
  const told: string[] = [];
  const s: Startup = new Startup(logger, () => told.push(s.errorMsg));
  return { s, told };
}

describe("Startup", () => {
  test("waiting for ComfyUI, benchmarking, ready: each a transition, ready told with its load time", () => {
    const { s, told } = startup();
    expect(s.phase).toBe("starting");
    expect(s.waitForComfy()).toBe(true);
    expect(s.phase).toBe("waiting-for-comfyui");
    expect(s.benchmarking()).toBe(true);
    expect(s.ready(12.5)).toBe(true);
    expect(s.phase).toBe("ready");
    expect(s.loadtime).toBe(12.5);
    expect(told).toEqual([""]);
    expect(s.serving).toBe(true);
  });

  test("a move the table does not allow is refused and changes nothing", () => {
    const { s } = startup();
    expect(s.ready(1)).toBe(false);
    expect(s.benchmarking()).toBe(false);
    expect(s.phase).toBe("starting");
    s.waitForComfy();
    s.fail("the router's key could not be fetched");
    // A failure is final: a benchmark that returns afterwards does not make the worker ready.
    expect(s.benchmarking()).toBe(false);
    expect(s.ready(1)).toBe(false);
    expect(s.phase).toBe("error");
    expect(s.loadtime).toBe(0);
    s.drain();
    s.stopped();
    expect(s.waitForComfy()).toBe(false);
    expect(s.phase).toBe("stopped");
    expect(s.serving).toBe(false);
  });

  test("ComfyUI's own errors go when it answers; a failure stays, whatever its message starts with", () => {
    const { s, told } = startup();
    s.waitForComfy();
    s.comfyLate("ComfyUI did not answer at http://x within 10 ms");
    s.comfyLate("a second deadline message is not told");
    s.comfyui(true);
    expect(s.errorMsg).toBe("");
    s.comfyui(false);
    expect(s.errorMsg).toBe("ComfyUI stopped answering");
    s.comfyui(true);
    expect(s.errorMsg).toBe("");
    s.fail("ComfyUI at http://x is out of service: unrecoverable device error");
    s.comfyui(false);
    s.comfyui(true);
    expect(s.errorMsg).toBe("ComfyUI at http://x is out of service: unrecoverable device error");
    expect(s.errorCause).toBe("failed");
    expect(told).toEqual([
      "ComfyUI did not answer at http://x within 10 ms",
      "",
      "ComfyUI stopped answering",
      "",
      "ComfyUI at http://x is out of service: unrecoverable device error",
    ]);
  });

  test("the deadline's error goes when benchmarking starts, a failure does not", () => {
    const { s } = startup();
    s.waitForComfy();
    s.comfyui(true);
    s.comfyLate("ComfyUI did not answer at http://y within 10 ms");
    s.benchmarking();
    expect(s.errorMsg).toBe("");
  });

  test("draining from ready tells the autoscaler it shuts down; ComfyUI going away then is no error", () => {
    const { s, told } = startup();
    s.waitForComfy();
    s.comfyui(true);
    s.benchmarking();
    s.ready(1);
    expect(s.drain()).toBe("ready");
    expect(s.phase).toBe("draining");
    s.comfyui(false);
    expect(s.errorMsg).toBe("worker is shutting down");
    s.stopped();
    expect(told).toEqual(["", "worker is shutting down"]);
  });

  test("draining from error keeps the error", () => {
    const { s } = startup();
    s.fail("Worker Server failed to launch: EADDRINUSE");
    expect(s.drain()).toBe("error");
    expect(s.errorMsg).toBe("Worker Server failed to launch: EADDRINUSE");
  });

  test("a device failure of the last backend sets error_msg once, to the failure", () => {
    const { s, told } = startup();
    const pool = new ComfyPool({
      backends: [
        { url: "http://backend-0.invalid", outputDir: "/out/0" },
        { url: "http://backend-1.invalid", outputDir: "/out/1" },
      ],
      requestTimeoutMs: 1_000,
      clientId: "test",
      slotsPerBackend: 1,
      logger,
      scoreOf: () => 1,
    });
    const capacity = new Capacity({
      pool,
      score: new LiveScore(),
      liveScore: true,
      serving: () => s.phase === "ready",
      saveScore: () => Promise.resolve(),
      changed: () => undefined,
      logger,
    });
    followPool(pool, s, capacity);
    s.waitForComfy();
    for (const b of pool.backends) pool.setUp(b, true);
    s.benchmarking();
    capacity.skipBenchmark();
    s.ready(1);
    told.length = 0;
    // One backend out: the other still serves, no error.
    pool.fail(pool.backends[0]!, "unrecoverable device error: illegal memory access");
    expect(s.phase).toBe("ready");
    expect(capacity.maxPerf()).toBe(1);
    pool.fail(pool.backends[1]!, "unrecoverable device error: illegal memory access (probe failed)");
    expect(s.phase).toBe("error");
    expect(told).toEqual(["unrecoverable device error: illegal memory access (probe failed)"]);
    expect(capacity.maxPerf()).toBe(0);
  });
});
