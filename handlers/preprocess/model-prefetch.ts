import { stat } from "node:fs/promises";
import { join } from "node:path";
import { MODEL_FOLDER_DIRS } from "../../config/models.js";
import { asWorkerError, BadRequestError, ModelReferenceError, type WorkerError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { redactUrlKeepingPath } from "../../lib/redact.js";
import { modelFolderNamed, parseModelReference, type ModelFolder } from "./model-folders.js";
import type { ModelFetcher } from "./models.js";

/** Models one prefetch request may name at most. */
export const MAX_PREFETCH_MODELS = 32;
/** Downloads one warm-up runs at once (each is still one download per reference, whoever else asks). */
const CONCURRENCY = 4;

/** A model to warm: ComfyUI's folder name (`checkpoints`, `loras`...) and the reference. */
export interface ModelRequest {
  folder: string;
  ref: string;
}

export interface PrefetchedModel {
  folder: string;
  /** The reference as shown: no query, no credentials. */
  model: string;
  /** The file's name in its folder: what a workflow's loader input may name it by. */
  name: string;
  bytes: number;
  /** It was in the folder already: nothing was downloaded. */
  cached: boolean;
  ms: number;
}

export interface PrefetchFailure {
  folder: string;
  model: string;
  error: WorkerError;
}

export interface ModelPrefetchDeps {
  /** Undefined without a known models folder: every reference is refused. */
  fetcher: ModelFetcher | undefined;
  modelsDir: string | undefined;
  hfEndpoint: string;
  logger: Logger;
}

interface Planned {
  request: ModelRequest;
  folder: ModelFolder;
  shown: string;
}

/**
 * Warms the models folder: MODELS at start (`warm`) and POST /models/prefetch (`prefetch`), through the same
 * ModelFetcher as a job's loader inputs (one download per reference, the cache, sha256, the address policy). The
 * models of one warm-up stay pinned until all of its downloads ended, so that a list does not evict its own first
 * models to make room for its last ones (it fails with model_too_large instead). MODELS then stay pinned for the
 * worker's life: the operator's list is never evicted by what callers fetch (their downloads and prefetches,
 * which are unpinned once fetched, or disk care). No
 * caller's signal reaches a download: a caller that goes away leaves it to finish for the cache and for others.
 */
export class ModelPrefetch {
  constructor(private readonly d: ModelPrefetchDeps) {}

  /**
   * MODELS at start: each model logged (stage `models`) with its size and time. The error message for the
   * autoscaler (error_msg) when any could not be had, else undefined; never throws.
   */
  async warm(models: readonly ModelRequest[]): Promise<string | undefined> {
    if (models.length === 0) return undefined;
    const started = Date.now();
    let failed: PrefetchFailure[];
    let fetched: PrefetchedModel[] = [];
    try {
      ({ fetched, failed } = await this.run(this.plan(models), "error", true));
    } catch (err) {
      const error = asWorkerError(err);
      failed = [{ folder: "", model: "", error }];
    }
    if (failed.length === 0) {
      this.d.logger.info(
        {
          stage: "models",
          ms: Date.now() - started,
          models: fetched.length,
          bytes: fetched.reduce((a, m) => a + m.bytes, 0),
        },
        `MODELS: ${fetched.length} model(s) ready`,
      );
      return undefined;
    }
    const [first] = failed;
    const what = first!.folder ? `${first!.folder}=${first!.model}: ` : "";
    const more = failed.length > 1 ? ` (and ${failed.length - 1} more)` : "";
    return `MODELS: ${what}${withoutPrefix(first!.error.message, first!.model)} (${first!.error.code})${more}`;
  }

  /**
   * POST /models/prefetch: each model's name, size and whether it was cached. A malformed list or reference
   * throws before anything is fetched; a download's failure throws its error once all have ended.
   */
  async prefetch(models: readonly ModelRequest[]): Promise<PrefetchedModel[]> {
    const { fetched, failed } = await this.run(this.plan(models), "warn", false);
    if (failed.length > 0) throw failed[0]!.error;
    return fetched;
  }

  /** Each model's folder and reference, checked: throws the first ModelReferenceError. */
  private plan(models: readonly ModelRequest[]): Planned[] {
    if (!this.d.fetcher || this.d.modelsDir === undefined) {
      throw new ModelReferenceError(
        "model references need ComfyUI's models folder (COMFYUI_MODELS_DIR or COMFYUI_BASE_DIR)",
      );
    }
    const seen = new Set<string>();
    const planned: Planned[] = [];
    for (const request of models) {
      const folder = modelFolderNamed(request.folder);
      if (!folder) {
        throw new ModelReferenceError(
          `${JSON.stringify(request.folder.slice(0, 40))} is not a models folder: one of ${Object.keys(MODEL_FOLDER_DIRS).join(", ")}`,
        );
      }
      let ref: ReturnType<typeof parseModelReference>;
      try {
        ref = parseModelReference(request.ref, { hfEndpoint: this.d.hfEndpoint });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        throw new ModelReferenceError(`${request.folder}=${redactUrlKeepingPath(request.ref)}: ${message}`);
      }
      const key = `${folder.dir}/${ref.stem}`;
      if (seen.has(key)) continue;
      seen.add(key);
      planned.push({ request, folder, shown: ref.shown });
    }
    return planned;
  }

  private async run(
    planned: readonly Planned[],
    failureLevel: "error" | "warn",
    /** The fetched models stay pinned (MODELS): never evicted. */
    keepPinned: boolean,
  ): Promise<{ fetched: PrefetchedModel[]; failed: PrefetchFailure[] }> {
    const fetcher = this.d.fetcher!;
    const pinned: string[] = [];
    const results: ({ ok: PrefetchedModel } | { failed: PrefetchFailure })[] = [];
    let next = 0;
    const one = async (p: Planned) => {
      const started = Date.now();
      const at = { stage: "models", folder: p.request.folder, model: p.shown };
      try {
        const cached = await fetcher.isCached(p.request.ref, p.folder);
        const { name, file } = await fetcher.fetch(p.request.ref, p.folder);
        pinned.push(file);
        const bytes = (await stat(join(this.d.modelsDir!, file))).size;
        const ms = Date.now() - started;
        this.d.logger.info(
          { ...at, file, bytes, ms, cached },
          `model ${p.shown} ${cached ? "was cached" : "downloaded"} in ${p.folder.dir}/ as ${name}`,
        );
        return { ok: { folder: p.request.folder, model: p.shown, name, bytes, cached, ms } };
      } catch (err) {
        const error = asWorkerError(err);
        this.d.logger[failureLevel](
          { ...at, code: error.code, ms: Date.now() - started },
          `model ${p.shown} could not be had: ${error.message}`,
        );
        return { failed: { folder: p.request.folder, model: p.shown, error } };
      }
    };
    try {
      await Promise.all(
        Array.from({ length: Math.min(CONCURRENCY, planned.length) }, async () => {
          while (next < planned.length) {
            const i = next++;
            results[i] = await one(planned[i]!);
          }
        }),
      );
    } finally {
      if (!keepPinned) for (const file of pinned) fetcher.unpin(file);
    }
    return {
      fetched: results.flatMap((r) => ("ok" in r ? [r.ok] : [])),
      failed: results.flatMap((r) => ("failed" in r ? [r.failed] : [])),
    };
  }
}

/**
 * The body of POST /models/prefetch (the payload, through the router): `{"models": [{"folder", "ref"}, ...]}`, at
 * most MAX_PREFETCH_MODELS of them. Throws BadRequestError.
 */
export function parsePrefetchRequest(payload: unknown): ModelRequest[] {
  const models = (payload as { models?: unknown } | null | undefined)?.models;
  if (!Array.isArray(models) || models.length === 0) {
    throw new BadRequestError(
      'the body is {"models": [{"folder": "loras", "ref": "https://host/model.safetensors"}, ...]}',
    );
  }
  if (models.length > MAX_PREFETCH_MODELS) {
    throw new BadRequestError(`at most ${MAX_PREFETCH_MODELS} models per request, got ${models.length}`);
  }
  return models.map((m: unknown, i) => {
    const { folder, ref } = (m ?? {}) as { folder?: unknown; ref?: unknown };
    if (typeof folder !== "string" || typeof ref !== "string") {
      throw new BadRequestError(`models[${i}] must be {"folder": "<models folder>", "ref": "<reference>"}`);
    }
    return { folder, ref };
  });
}

/** `message` without a leading `<shown>: ` (the fetcher's messages start with the reference). */
function withoutPrefix(message: string, shown: string): string {
  return shown && message.startsWith(`${shown}: `) ? message.slice(shown.length + 2) : message;
}
