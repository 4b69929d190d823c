import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { loadConfig } from "../../config/index.js";
import { benchmarkCandidates, loadBenchmarkPayload } from "../../benchmark/payload.js";
import { repoRoot } from "../harness/worker.js";

/**
 * Which custom benchmark the worker takes: upstream PyWorker's order (the clone's misc/benchmark.json, then
 * BENCHMARK_JSON_PATH, then the stock image's pyworker_benchmark.json), each file taken only when it is there, and
 * a fallback that names what it looked for.
 */

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "benchmark-payload-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A one-node workflow that says which file it came from. */
async function benchmarkFile(path: string, name: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, JSON.stringify({ "1": { class_type: "Note", inputs: { text: name } } }));
}

test("the clone's misc/benchmark.json, the seed's, BENCHMARK_JSON_PATH, the image's: the first that is there wins", async () => {
  const clone = join(dir, "vast-pyworker");
  const env = {
    UNSECURED: "true",
    COMFYUI_BASE_DIR: join(dir, "ComfyUI"),
    BENCHMARK_JSON_PATH: join(dir, "workspace", "benchmark.json"),
    BENCHMARK_WRAPPER_JSON_PATH: join(dir, "api-wrapper", "workflows", "pyworker_benchmark.json"),
  };
  const settings = loadConfig(env, clone).benchmark;
  const order = [
    join(clone, "misc", "benchmark.json"),
    join(clone, "workers", "comfyui-json", "misc", "benchmark.json"),
    env.BENCHMARK_JSON_PATH,
    env.BENCHMARK_WRAPPER_JSON_PATH,
  ];
  expect(benchmarkCandidates(settings)).toEqual(order);
  for (const [i, path] of order.entries()) await benchmarkFile(path, `file ${i}`);

  // Each removed in turn: the next in the order is taken.
  for (const [i, path] of order.entries()) {
    const payload = await loadBenchmarkPayload(settings, repoRoot);
    expect(payload.source).toBe(path);
    expect(payload.make()["1"]!.inputs.text).toBe(`file ${i}`);
    await rm(path);
  }
  const fallback = await loadBenchmarkPayload(settings, repoRoot);
  expect(fallback.source).toBe(
    `default SD1.5 text-to-image 512x512, 20 steps (no custom benchmark at ${order.join(", ")})`,
  );
});

test("the stock image's pyworker_benchmark.json is looked for where the image links it, unless told otherwise", () => {
  expect(
    loadConfig({ UNSECURED: "true", COMFYUI_BASE_DIR: join(dir, "ComfyUI") }, dir).benchmark.wrapperJsonPath,
  ).toBe("/opt/comfyui-api-wrapper/workflows/pyworker_benchmark.json");
});
