import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ComfyPool } from "../../handlers/comfyui/pool.js";
import { createLogger } from "../../lib/logger.js";
import { VRAM_DRIFT_MIN_FRACTION, VramWatch, vramDrift } from "../../worker/vram-drift.js";

const GiB = 2 ** 30;

describe("vramDrift: the last N readings each lower than the one before, more than 10 % of the total in all", () => {
  test.each<[string, number[], number, boolean]>([
    ["3 decreases of 0.5 GiB of 10 (1.5 GiB > 1 GiB)", [9, 8.5, 8, 7.5], 3, true],
    ["an older rise before the run does not matter", [5, 9, 8.5, 8, 7.5], 3, true],
    ["too few readings for the run", [9, 8.5, 8], 3, false],
    ["a rise inside the run (ComfyUI unloaded a model)", [9, 8.5, 8.7, 7.5], 3, false],
    ["an equal reading breaks the run", [9, 8.5, 8.5, 7.5], 3, false],
    ["decreases totalling 10 % exactly: not more than", [9, 8.7, 8.4, 8], 3, false],
    ["small decreases (models loading a little each time)", [9, 8.9, 8.8, 8.7, 8.6, 8.5], 5, false],
    ["N = 0: never", [9, 8, 7, 6], 0, false],
  ])("%s", (_, gib, jobs, drifted) => {
    const found = vramDrift(
      gib.map((g) => g * GiB),
      10 * GiB,
      jobs,
    );
    expect(found !== undefined).toBe(drifted);
    if (found) expect(found).toEqual({ fromBytes: 9 * GiB, toBytes: 7.5 * GiB, totalBytes: 10 * GiB, jobs });
  });

  test("the threshold is a tenth of the total, and a total of 0 (no device numbers) is never drift", () => {
    expect(VRAM_DRIFT_MIN_FRACTION).toBe(0.1);
    expect(vramDrift([9, 8, 7], 0, 2)).toBeUndefined();
  });
});

/**
 * VramWatch on a real pool whose backend is a FAKE ComfyUI's /system_stats serving a scripted sequence of free-VRAM
 * readings (a CUDA device's drift is a fault that ComfyUI on the CPU cannot produce).
 */
describe("VramWatch: after each job, drift drains the backend and restarts it where the worker owns it", () => {
  let server: Server;
  let readings: { type: string; free: number }[];
  let url: string;

  beforeEach(async () => {
    readings = [];
    server = createServer((req, res) => {
      const next = readings.shift() ?? { type: "cuda", free: 9 * GiB };
      const body = JSON.stringify({
        system: { comfyui_version: "fake" },
        devices: [{ name: "fake", type: next.type, index: 0, vram_total: 10 * GiB, vram_free: next.free }],
      });
      res.writeHead(req.url === "/system_stats" ? 200 : 404, { "content-type": "application/json" });
      res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterEach(async () => {
    await new Promise((r) => server.close(r));
  });

  function setup(owned: boolean) {
    const logger = createLogger({ level: "silent", pretty: false });
    const pool = new ComfyPool({
      backends: [{ url, outputDir: "/tmp/out" }],
      requestTimeoutMs: 5_000,
      clientId: "test",
      slotsPerBackend: 2,
      logger,
    });
    const backend = pool.backends[0]!;
    backend.up = true;
    const drifts: number[] = [];
    const restarts: { withdrawn: string | undefined; inRotation: boolean; running: number }[] = [];
    const watch = new VramWatch({
      pool,
      jobs: 3,
      logger,
      drifted: (b) => drifts.push(b.index),
      restarter: () =>
        owned
          ? async () => {
              restarts.push({
                withdrawn: backend.withdrawn,
                inRotation: backend.inRotation,
                running: backend.running,
              });
            }
          : undefined,
    });
    return { pool, backend, watch, drifts, restarts };
  }

  test("owned: withdrawn at once, restarted once its running prompt ended, then back in the rotation", async () => {
    const { pool, backend, watch, drifts, restarts } = setup(true);
    readings.push(...[9, 8.5, 8, 7.5].map((g) => ({ type: "cuda", free: g * GiB })));
    for (let i = 0; i < 3; i++) await watch.afterJob(backend);
    expect(drifts).toEqual([]);
    // A prompt still running there when the drift is seen.
    const lease = await pool.acquire({ workload: 1, signal: AbortSignal.timeout(5_000) });
    const recycled = watch.afterJob(backend);
    await new Promise<void>((r) => pool.once("change", () => r()));
    expect(drifts).toEqual([0]);
    expect(backend.withdrawn).toBe("free VRAM drifted down");
    expect(pool.anyInRotation).toBe(false);
    expect(restarts).toEqual([]);
    lease.release();
    await recycled;
    expect(restarts).toEqual([{ withdrawn: "free VRAM drifted down", inRotation: false, running: 0 }]);
    expect(backend.withdrawn).toBeUndefined();
    expect(backend.inRotation).toBe(true);
    // The run starts over after the restart: three more jobs are needed.
    readings.push(...[9, 8.5, 8].map((g) => ({ type: "cuda", free: g * GiB })));
    for (let i = 0; i < 3; i++) await watch.afterJob(backend);
    expect(drifts).toEqual([0]);
  });

  test("not owned: the drift is counted and logged, the backend stays in the rotation", async () => {
    const { backend, watch, drifts, restarts } = setup(false);
    readings.push(...[9, 8.5, 8, 7.5].map((g) => ({ type: "cuda", free: g * GiB })));
    for (let i = 0; i < 4; i++) await watch.afterJob(backend);
    expect(drifts).toEqual([0]);
    expect(restarts).toEqual([]);
    expect(backend.inRotation).toBe(true);
  });

  test("on the CPU (vram is the machine's RAM) nothing is judged", async () => {
    const { backend, watch, drifts } = setup(true);
    readings.push(...[9, 8, 7, 6, 5].map((g) => ({ type: "cpu", free: g * GiB })));
    for (let i = 0; i < 5; i++) await watch.afterJob(backend);
    expect(drifts).toEqual([]);
  });
});
