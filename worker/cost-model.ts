import { createHash } from "node:crypto";
import type { Workflow } from "../handlers/comfyui/types.js";
import { samplingCost } from "./workload.js";

/** What the cost model needs to know of a request: which graph it is, and how much sampling it asks for. */
export interface JobFeatures {
  /** The graph with seeds, prompts, sizes and file names abstracted away (a hash). */
  shape: string;
  /** Sampling work: Σ width x height x batch x steps (0 when the graph has no measurable sampler). */
  units: number;
}

/** How a prediction was made: a fitted line, one size scaled by the prior, or the prior alone (a new shape). */
export type PredictionSource = "fit" | "scaled" | "prior";

export interface ShapeState {
  shape: string;
  samples: number;
  /** seconds = fixedS + perUnitS x units, for "fit" shapes. */
  fixedS: number;
  perUnitS: number;
  source: PredictionSource;
  lastSeenMs: number;
}

export interface CostModelOptions {
  /** Completed jobs kept per shape for the fit (a bounded window: the newest win). */
  window?: number;
  /** Shapes remembered at most; the least recently seen is forgotten first. */
  maxShapes?: number;
  now?: () => number;
}

/**
 * Inputs whose string value names a model or an algorithm: changing them changes the cost, so they stay in the
 * shape. Every other literal (seeds, prompts, sizes, file names) is abstracted away.
 */
const COST_BEARING = /(_name|^scheduler|^sampler)$/;

/**
 * Numeric literals that change how much work a node does but are not in the sampling units (which count width x
 * height x batch x steps, and which the per-shape fit already follows): the part of the schedule a sampler runs
 * (start_at_step >= steps runs nothing), denoise (0 runs nothing), the frames of a video latent. Their bucket is
 * part of the shape, so jobs that cost nothing never teach the cost of the same graph doing the work.
 */
const WORK_LITERALS = new Set([
  "start_at_step",
  "end_at_step",
  "denoise",
  "length",
  "frames",
  "num_frames",
  "video_frames",
]);

/**
 * A work literal's bucket: "none" at or below zero (no work), else quarter-octaves (about 19 % wide), so that nearby values share
 * a shape and a value that halves or doubles the work does not.
 */
export function workBucket(value: unknown): string {
  const n = Number(value);
  if (typeof value === "boolean" || !Number.isFinite(n)) return "?";
  if (n <= 0) return "none";
  return String(Math.round(Math.log2(n) * 4) / 4);
}

/**
 * The shape of a workflow: every node's class and, for each input, either the class and slot it is linked to,
 * (for cost-bearing strings) its value, or (for work literals) its bucket. Node ids are caller-chosen, so the shape does not use them: nodes are
 * described by what they are and what feeds them, and the sorted descriptions are hashed. Works on unvalidated
 * input (it runs at admission): anything odd is skipped.
 */
export function workflowShape(workflow: Workflow): string {
  const lines: string[] = [];
  const classOf = (id: unknown): string => {
    const node = (workflow as Record<string, unknown>)[String(id)];
    const ct = typeof node === "object" && node !== null ? (node as { class_type?: unknown }).class_type : "";
    return typeof ct === "string" ? ct : "";
  };
  for (const node of Object.values(workflow)) {
    if (typeof node !== "object" || node === null) continue;
    const { class_type, inputs } = node as { class_type?: unknown; inputs?: unknown };
    if (typeof class_type !== "string") continue;
    const parts: string[] = [];
    if (typeof inputs === "object" && inputs !== null) {
      for (const [name, value] of Object.entries(inputs).sort(([a], [b]) => (a < b ? -1 : 1))) {
        if (Array.isArray(value) && value.length === 2)
          parts.push(`${name}<${classOf(value[0])}:${String(value[1])}`);
        else if (typeof value === "string" && COST_BEARING.test(name)) parts.push(`${name}=${value}`);
        else if (WORK_LITERALS.has(name)) parts.push(`${name}~${workBucket(value)}`);
        else parts.push(name);
      }
    }
    lines.push(`${class_type}(${parts.join(",")})`);
  }
  lines.sort();
  return createHash("sha256").update(lines.join("\n")).digest("hex").slice(0, 16);
}

export function jobFeatures(workflow: Workflow): JobFeatures {
  if (typeof workflow !== "object" || workflow === null || Array.isArray(workflow)) {
    return { shape: "invalid", units: 0 };
  }
  return { shape: workflowShape(workflow), units: samplingCost(workflow) };
}

interface Sample {
  units: number;
  seconds: number;
}

interface ShapeRecord {
  samples: Sample[];
  lastSeenMs: number;
  fit: { fixedS: number; perUnitS: number } | undefined;
}

/**
 * Seconds of ComfyUI execution a request will take, learned online per workflow shape from completed jobs:
 * seconds = fixed + perUnit x units, fitted by least squares over the newest `window` jobs of that shape. Real cost
 * has a fixed part (text encoding, VAE decode, model loads) that a pure pixels x steps rule misses, and it differs
 * by graph. With one size seen so far, the prior's proportions are scaled to what that size took; a shape never
 * seen gets the prior (the caller's: the benchmark's seconds scaled by sampling units).
 */
export class CostModel {
  private readonly shapes = new Map<string, ShapeRecord>();
  private readonly window: number;
  private readonly maxShapes: number;
  private readonly now: () => number;

  constructor(opts: CostModelOptions = {}) {
    this.window = opts.window ?? 32;
    this.maxShapes = opts.maxShapes ?? 256;
    this.now = opts.now ?? Date.now;
  }

  /**
   * Predicted seconds for a request; `prior(units)` is used where the shape teaches nothing yet. `measured` says
   * the prediction rests on this shape's own jobs alone (a fit, or jobs of this very size), not on the prior's
   * proportions.
   */
  predict(
    f: JobFeatures,
    prior: (units: number) => number,
  ): { seconds: number; source: PredictionSource; measured: boolean } {
    const rec = this.shapes.get(f.shape);
    if (!rec || rec.samples.length === 0)
      return { seconds: prior(f.units), source: "prior", measured: false };
    if (rec.fit) {
      return {
        seconds: Math.max(0, rec.fit.fixedS + rec.fit.perUnitS * f.units),
        source: "fit",
        measured: true,
      };
    }
    // One size seen: what it took, scaled as the prior scales sizes.
    const meanUnits = mean(rec.samples.map((s) => s.units));
    const meanSeconds = median(rec.samples.map((s) => s.seconds));
    const base = prior(meanUnits);
    const ratio = base > 0 ? prior(f.units) / base : 1;
    const measured = rec.samples.every((s) => s.units === f.units);
    return { seconds: meanSeconds * ratio, source: "scaled", measured };
  }

  /** A completed job: `seconds` is ComfyUI's execution time for it. Non-finite or non-positive times are ignored. */
  observe(f: JobFeatures, seconds: number): void {
    if (!(seconds > 0) || !Number.isFinite(seconds) || !Number.isFinite(f.units)) return;
    let rec = this.shapes.get(f.shape);
    if (rec) this.shapes.delete(f.shape); // re-inserted below: Map order is the LRU order
    rec ??= { samples: [], lastSeenMs: 0, fit: undefined };
    rec.samples.push({ units: f.units, seconds });
    if (rec.samples.length > this.window) rec.samples.splice(0, rec.samples.length - this.window);
    rec.lastSeenMs = this.now();
    rec.fit = fitLine(rec.samples);
    this.shapes.set(f.shape, rec);
    while (this.shapes.size > this.maxShapes) {
      const oldest = this.shapes.keys().next().value as string;
      this.shapes.delete(oldest);
    }
  }

  /** The model's state, for /metrics and the debug route. */
  state(): ShapeState[] {
    return [...this.shapes.entries()].map(([shape, rec]) => {
      const base = {
        shape,
        samples: rec.samples.length,
        lastSeenMs: rec.lastSeenMs,
      };
      if (rec.fit) return { ...base, ...rec.fit, source: "fit" as const };
      return {
        ...base,
        fixedS: median(rec.samples.map((s) => s.seconds)),
        perUnitS: 0,
        source: "scaled" as const,
      };
    });
  }
}

/**
 * Ordinary least squares of seconds on units, from 3 jobs of at least two sizes 10 % apart. A negative fixed part
 * (a cost that is nearly proportional, plus noise) is refitted through the origin; a negative slope (noise on
 * close sizes) is not trusted, and the caller falls back to scaling.
 */
export function fitLine(samples: readonly Sample[]): { fixedS: number; perUnitS: number } | undefined {
  if (samples.length < 3) return undefined;
  const xs = samples.map((s) => s.units);
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  if (!(hi > 0) || hi < lo * 1.1) return undefined;
  const mx = mean(xs);
  const my = mean(samples.map((s) => s.seconds));
  let sxy = 0;
  let sxx = 0;
  for (const s of samples) {
    sxy += (s.units - mx) * (s.seconds - my);
    sxx += (s.units - mx) ** 2;
  }
  const perUnitS = sxy / sxx;
  if (!(perUnitS >= 0)) return undefined;
  const fixedS = my - perUnitS * mx;
  if (fixedS >= 0) return { fixedS, perUnitS };
  const throughOrigin =
    samples.reduce((a, s) => a + s.units * s.seconds, 0) / samples.reduce((a, s) => a + s.units ** 2, 0);
  return { fixedS: 0, perUnitS: throughOrigin };
}

function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
