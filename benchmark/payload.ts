import { readFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Workflow } from "../handlers/comfyui/types.js";

export interface BenchmarkSettings {
  defaultJsonPath: string;
  seedJsonPath?: string | undefined;
  jsonPath?: string | undefined;
  wrapperJsonPath?: string | undefined;
  promptsPath: string;
  width: number;
  height: number;
  steps: number;
}

export interface BenchmarkPayload {
  /** Where the workflow came from, for the logs. */
  source: string;
  /** Makes a fresh workflow for one round (a new random prompt; `__RANDOM_INT__` is seeded by the pipeline). */
  make(): Workflow;
  /** Identifies the benchmark for the score cache: what the workflow is, not its random parts. */
  fingerprint: string;
}

async function readJson(path: string): Promise<Workflow | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as unknown;
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
      // Accept a bare workflow or the request shape {input: {workflow_json}}.
      const p = parsed as { input?: { workflow_json?: Workflow } };
      return p.input?.workflow_json ?? (parsed as Workflow);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new Error(`${path}: ${(err as Error).message}`);
  }
  return undefined;
}

/**
 * Where a custom benchmark is looked for, in upstream PyWorker's order (its comfyui-json worker): the clone's
 * misc/benchmark.json (ours, then the seed's workers/comfyui-json/misc/), $BENCHMARK_JSON_PATH, then the stock
 * image's pyworker_benchmark.json. The one list both bootstraps rely on: they look for none themselves.
 */
export function benchmarkCandidates(s: BenchmarkSettings): string[] {
  return [s.defaultJsonPath, s.seedJsonPath, s.jsonPath, s.wrapperJsonPath].filter((p): p is string => !!p);
}

/**
 * The benchmark workflow, first found of benchmarkCandidates (a missing file is passed over), else SD1.5
 * text-to-image with BENCHMARK_TEST_WIDTH/HEIGHT/STEPS and a random prompt from misc/test_prompts.txt, seeded with
 * __RANDOM_INT__; its source names the files that were not there, so the fallback is never silent.
 */
export async function loadBenchmarkPayload(s: BenchmarkSettings, root: string): Promise<BenchmarkPayload> {
  const candidates = benchmarkCandidates(s);
  for (const path of candidates) {
    const workflow = await readJson(path);
    if (workflow) {
      const text = JSON.stringify(workflow);
      return { source: path, make: () => JSON.parse(text) as Workflow, fingerprint: hash(text) };
    }
  }
  const template = JSON.parse(
    await readFile(join(root, "misc", "workflows", "sd15_text2image.json"), "utf8"),
  ) as Workflow;
  const prompts = (await readFile(s.promptsPath, "utf8").catch(() => ""))
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const make = () => {
    const w = JSON.parse(JSON.stringify(template)) as Workflow;
    w["5"]!.inputs.width = s.width;
    w["5"]!.inputs.height = s.height;
    w["3"]!.inputs.steps = s.steps;
    w["3"]!.inputs.seed = "__RANDOM_INT__";
    w["6"]!.inputs.text =
      prompts[Math.floor(Math.random() * prompts.length)] ?? "a still life on a wooden table, soft daylight";
    return w;
  };
  return {
    source: `default SD1.5 text-to-image ${s.width}x${s.height}, ${s.steps} steps (no custom benchmark at ${candidates.join(", ")})`,
    make,
    fingerprint: hash(JSON.stringify({ template, width: s.width, height: s.height, steps: s.steps })),
  };
}

function hash(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 24);
}
