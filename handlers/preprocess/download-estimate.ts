import { isModelReference, modelFolder, type ModelFolder } from "./model-folders.js";

/**
 * The size assumed for a model whose size is not known (no HEAD was asked, or its answer gave none): about an
 * SD1.5 checkpoint in fp16 (2 GiB). A LoRA is smaller, an SDXL or Flux file larger; the real size replaces it as
 * soon as a download's first answer gives one.
 */
export const DEFAULT_MODEL_BYTES = 2 * 1024 ** 3;
/** The throughput assumed before any download was measured: 50 MB/s (400 Mbit/s, a modest Vast host). */
export const DEFAULT_BYTES_PER_SECOND = 50e6;
/** Weight of the newest download in the throughput's moving average. */
export const THROUGHPUT_ALPHA = 0.3;
/** How long the HEAD that asks a model's size may take: past it the size is unknown (the default). */
export const SIZE_PROBE_TIMEOUT_MS = 2_000;

/**
 * Download throughput, an exponentially weighted moving average of the downloads that went to the network (bytes
 * over the download's whole time: latency, redirects and resumes included, as a job waits for them).
 * DEFAULT_BYTES_PER_SECOND until the first one ends.
 */
export class Throughput {
  private ewma: number | undefined;
  private count = 0;

  constructor(
    private readonly alpha = THROUGHPUT_ALPHA,
    private readonly fallback = DEFAULT_BYTES_PER_SECOND,
  ) {}

  /** One finished download; an empty one, or one with no measurable time, teaches nothing. */
  observe(bytes: number, seconds: number): void {
    if (!(bytes > 0) || !(seconds > 0) || !Number.isFinite(bytes) || !Number.isFinite(seconds)) return;
    const rate = bytes / seconds;
    this.ewma = this.ewma === undefined ? rate : this.alpha * rate + (1 - this.alpha) * this.ewma;
    this.count++;
  }

  /** Bytes per second now. */
  bytesPerSecond(): number {
    return this.ewma ?? this.fallback;
  }

  /** Downloads measured so far (0: the default is in use). */
  get samples(): number {
    return this.count;
  }

  /** Seconds to download `bytes` at the throughput now. */
  secondsFor(bytes: number): number {
    return bytes > 0 ? bytes / this.bytesPerSecond() : 0;
  }
}

/** A model reference in a loader's input: what the job will ask the model fetcher for. */
export interface ReferencedModel {
  value: string;
  folder: ModelFolder;
}

/**
 * The model references of a workflow (a models input of a loader holding `https://`, `s3://` or `hf://`), each
 * once. Runs at admission, before the workflow is validated or ComfyUI's node list read: anything odd is skipped,
 * and an input is recognised by its loader and name alone (model-folders.ts), as preprocessing later does.
 */
export function referencedModels(workflow: unknown): ReferencedModel[] {
  if (typeof workflow !== "object" || workflow === null || Array.isArray(workflow)) return [];
  const found = new Map<string, ReferencedModel>();
  for (const node of Object.values(workflow as Record<string, unknown>)) {
    if (typeof node !== "object" || node === null) continue;
    const { class_type, inputs } = node as { class_type?: unknown; inputs?: unknown };
    if (typeof class_type !== "string" || typeof inputs !== "object" || inputs === null) continue;
    for (const [input, value] of Object.entries(inputs)) {
      if (typeof value !== "string" || !isModelReference(value)) continue;
      const folder = modelFolder(class_type, input);
      if (folder && !found.has(`${folder.dir}\n${value}`))
        found.set(`${folder.dir}\n${value}`, { value, folder });
    }
  }
  return [...found.values()];
}
