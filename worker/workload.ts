import type { Workflow } from "../handlers/comfyui/types.js";

/** The unit of work of one default request, as the router counts it (the client's `cost`). */
export const DEFAULT_WORKLOAD = 100;

/**
 * Sampling work of a workflow: for every sampler (a node with `steps` and a `latent_image` link), width x height x
 * batch of the latent it starts from times its steps. Latents are traced through links to the node that declares
 * width/height (EmptyLatentImage, LatentUpscale...). Undefined (0) when nothing can be measured.
 */
export function samplingCost(workflow: Workflow): number {
  let total = 0;
  for (const node of Object.values(workflow)) {
    if (!isNode(node)) continue;
    const steps = Number(node.inputs?.steps);
    const latent = node.inputs?.latent_image;
    if (!Number.isFinite(steps) || steps <= 0 || !Array.isArray(latent)) continue;
    const size = latentSize(workflow, String(latent[0]), 0);
    if (size > 0) total += size * steps;
  }
  return total;
}

function isNode(node: unknown): node is Workflow[string] {
  return (
    typeof node === "object" && node !== null && typeof (node as { inputs?: unknown }).inputs === "object"
  );
}

function latentSize(workflow: Workflow, id: string, depth: number): number {
  const node = workflow[id];
  if (!isNode(node) || depth > 16) return 0;
  const { width, height, batch_size, samples, latent_image, scale_by } = node.inputs ?? {};
  const from = Array.isArray(samples) ? samples : Array.isArray(latent_image) ? latent_image : undefined;
  const upstream = () => (from ? latentSize(workflow, String(from[0]), depth + 1) : 0);
  const w = Number(width);
  const h = Number(height);
  if (w > 0 && h > 0) {
    // An upscale (LatentUpscale) keeps the batch of the latent it resizes.
    const batch = Number(batch_size) || (from ? batchOf(workflow, String(from[0]), depth + 1) : 1);
    return w * h * Math.max(1, batch);
  }
  const scale = Number(scale_by);
  return scale > 0 ? upstream() * scale * scale : upstream();
}

function batchOf(workflow: Workflow, id: string, depth: number): number {
  const node = workflow[id];
  if (!isNode(node) || depth > 16) return 1;
  const b = Number(node.inputs.batch_size);
  if (b > 0) return b;
  const { samples, latent_image } = node.inputs;
  const from = Array.isArray(samples) ? samples : Array.isArray(latent_image) ? latent_image : undefined;
  return from ? batchOf(workflow, String(from[0]), depth + 1) : 1;
}

/**
 * A request's workload relative to the benchmark: 100 x (its sampling cost / the benchmark's), bounded to
 * [1, 100 x 100]. With either cost unknown it is the default 100, as upstream counts every request.
 */
export function estimateWorkload(workflow: Workflow, benchmarkCost: number): number {
  // Runs on unvalidated input (admission comes before parsing): anything odd is the default.
  if (typeof workflow !== "object" || workflow === null || Array.isArray(workflow)) return DEFAULT_WORKLOAD;
  const cost = samplingCost(workflow);
  if (!(cost > 0) || !(benchmarkCost > 0)) return DEFAULT_WORKLOAD;
  const w = (DEFAULT_WORKLOAD * cost) / benchmarkCost;
  return Math.min(DEFAULT_WORKLOAD * 100, Math.max(1, Math.round(w * 100) / 100));
}

/**
 * A running prompt may go quiet (no event, no progress change) for this multiple of the whole job's predicted time:
 * one node can take most of a job (a model load, a VAE decode) and says nothing meanwhile.
 */
export const STALL_FACTOR = 4;
/** ...and never less than this (a model loaded from a slow disk says nothing for a minute or more). */
export const STALL_FLOOR_MS = 120_000;

/**
 * The watchdog's quiet time for a prompt predicted to take `predictedS` seconds: STALL_FACTOR x that, at least
 * STALL_FLOOR_MS, at most `capMs` (STALL_TIMEOUT_MS, which also wins over the floor); the cap where nothing is
 * predicted (before the benchmark). 0: no watchdog (`capMs` 0).
 */
export function stallTimeoutMs(predictedS: number | undefined, capMs: number): number {
  if (!(capMs > 0)) return 0;
  if (predictedS === undefined || !(predictedS > 0) || !Number.isFinite(predictedS)) return capMs;
  return Math.min(capMs, Math.max(STALL_FLOOR_MS, Math.ceil(predictedS * 1000 * STALL_FACTOR)));
}
