import { readFileSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { repoRoot } from "./worker.js";

export function loadWorkflow(path: string): Record<string, any> {
  return JSON.parse(readFileSync(join(repoRoot, path), "utf8"));
}

/** The seed's SD1.5 graph made small enough for a CPU (64x64, few steps). */
export function tinyText2Image(steps = 4): Record<string, any> {
  const w = loadWorkflow("misc/workflows/sd15_text2image.json");
  w["5"].inputs.width = 64;
  w["5"].inputs.height = 64;
  w["3"].inputs.steps = steps;
  return w;
}

/** The tiny SD1.5 graph, one step, with `lora` (a LoraLoader) between its checkpoint (`ckpt`, if given) and its sampler. */
export function withLora(lora: string, ckpt?: string): Record<string, any> {
  const w = tinyText2Image(1);
  if (ckpt !== undefined) w["4"].inputs.ckpt_name = ckpt;
  w["10"] = {
    class_type: "LoraLoader",
    inputs: { model: ["4", 0], clip: ["4", 1], lora_name: lora, strength_model: 0.5, strength_clip: 0.5 },
  };
  w["3"].inputs.model = ["10", 0];
  w["6"].inputs.clip = ["10", 1];
  w["7"].inputs.clip = ["10", 1];
  return w;
}

/** EmptyImage -> ImageBlur -> SaveImage + SaveAnimatedWEBP: runs in milliseconds. */
export function modelFree(): Record<string, any> {
  return loadWorkflow("test/fixtures/workflows/model-free.json");
}

/** LoadImage(value) -> ImageInvert -> SaveImage. */
export function loadImageWorkflow(image: string): Record<string, any> {
  return {
    "10": { class_type: "LoadImage", inputs: { image } },
    "11": { class_type: "ImageInvert", inputs: { image: ["10", 0] } },
    "12": { class_type: "SaveImage", inputs: { images: ["11", 0], filename_prefix: "loaded" } },
  };
}

/** Writes a benchmark that runs in milliseconds (the model-free workflow, seeded) under `root`; returns its path. */
export async function fastBenchmarkFile(root: string): Promise<string> {
  const dir = await mkdtemp(join(root, "bench-"));
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = "bench-__RANDOM_INT__";
  delete wf["4"];
  const path = join(dir, "benchmark.json");
  await writeFile(path, JSON.stringify(wf));
  return path;
}
