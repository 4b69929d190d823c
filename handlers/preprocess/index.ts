import type { S3Settings } from "../../config/index.js";
import {
  InputError,
  InvalidWorkflowError,
  ModelReferenceError,
  NotModelInputError,
  PayloadTooLargeError,
  WorkerError,
} from "../../lib/errors.js";
import type { ObjectInfoNode, Workflow, WorkflowNode } from "../comfyui/types.js";
import type { InputDownloader } from "./downloads.js";
import { fileNameProblem } from "./file-names.js";
import { isModelReference, modelFolder, type ModelFolder } from "./model-folders.js";
import type { ModelFetcher, ModelProgress } from "./models.js";
import { seedRandomInts } from "./random-int.js";

/**
 * The input added to every output node so that ComfyUI's cache never skips saving a run's files: its value is unique
 * per run, since a run of the same request_id again (a retry) would otherwise hit the cache of the last one, whose
 * files that run moved away.
 */
export const REQUEST_NONCE_INPUT = "worker_request_id";

export interface PreparedWorkflow {
  workflow: Workflow;
  /** Cached input files this workflow uses; unpin them when the job ends. */
  inputFiles: string[];
  /** Downloaded models (`<dir>/<name>`) this workflow uses; unpin them (ModelFetcher) when the job ends. */
  modelFiles: string[];
}

const URL_VALUE = /^(https?:\/\/\S+|data:[^,]*,[\s\S]*)$/i;

/** One URL or data: input to fetch: where it goes in the workflow. */
interface PlannedDownload {
  nodeId: string;
  node: WorkflowNode;
  input: string;
  url: string;
  expectImage: boolean;
  /** A model reference (https://, s3://, hf://) in an input choosing a file of this models folder. */
  model?: ModelFolder | undefined;
}

/**
 * Turns a request's workflow into the one sent to ComfyUI:
 * - `__RANDOM_INT__` values are seeded;
 * - every node must be of a type ComfyUI has (its /object_info), before anything is fetched: an unknown type is
 *   what ComfyUI refuses anyway, and its inputs could not be told apart (files or text);
 * - a file input (one that ComfyUI declares as a list of choices: LoadImage's `image`, LoadAudio's `audio`...) holds
 *   an http(s) URL or data: URI, which is downloaded and replaced by the local file name, or a file name that stays
 *   in its folder (`fileNameProblem`); a URL in a text input (a prompt, a custom node's URL field) is left as it is;
 * - a models input (a loader's `ckpt_name`, `lora_name`...: model-folders.ts) holds a model reference
 *   (`https://`, `s3://`, `hf://`), which `models` downloads into ComfyUI's models folder and is replaced by the
 *   file's name there; a reference in any other file input is refused (not_a_model_input);
 * - at most `downloader.maxPerJob` inputs (models included) are fetched: more is refused before the first download starts;
 * - output nodes get the request id as an extra input, which ComfyUI ignores when running the node but which keeps
 *   its cache from skipping this request's saves.
 */
export async function prepareWorkflow(
  workflow: Workflow,
  opts: {
    /** The output nodes' nonce (REQUEST_NONCE_INPUT): unique per run of a request. */
    nonce: string;
    nodes: Record<string, ObjectInfoNode>;
    downloader: InputDownloader;
    /** Downloads model references; absent, a reference is refused (no models folder known). */
    models?: ModelFetcher | undefined;
    signal?: AbortSignal | undefined;
    /** Progress of the model downloads this workflow waits on (its own, or one under way it joined). */
    onModelProgress?: ((p: ModelProgress) => void) | undefined;
    /** The request's `s3` settings: the storage its s3:// model references read (ModelFetcher.fetch). */
    s3?: S3Settings | undefined;
  },
): Promise<PreparedWorkflow> {
  const seeded = seedRandomInts(workflow);
  const planned = planDownloads(seeded, opts.nodes, opts.downloader.maxPerJob);
  for (const [, node] of Object.entries(seeded)) {
    if (opts.nodes[node.class_type]?.output_node) node.inputs[REQUEST_NONCE_INPUT] = opts.nonce;
  }
  const inputFiles: string[] = [];
  const modelFiles: string[] = [];
  const downloads = planned.map(({ nodeId, node, input, url, expectImage, model }) =>
    model
      ? fetchModel(url, model, opts.models, opts.signal, opts.onModelProgress, opts.s3).then(
          ({ name, file }) => {
            node.inputs[input] = name;
            modelFiles.push(file);
          },
          (err: unknown) => {
            throw opts.signal?.aborted ? err : nameInput(err, nodeId, node.class_type, input);
          },
        )
      : opts.downloader.fetch(url, { expectImage, signal: opts.signal }).then(
          (file) => {
            node.inputs[input] = file;
            opts.downloader.pin(file);
            inputFiles.push(file);
          },
          (err: unknown) => {
            throw opts.signal?.aborted ? err : nameInput(err, nodeId, node.class_type, input);
          },
        ),
  );
  const results = await Promise.allSettled(downloads);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    for (const f of inputFiles) opts.downloader.unpin(f);
    for (const f of modelFiles) opts.models?.unpin(f);
    throw failed.reason;
  }
  return { workflow: seeded, inputFiles, modelFiles };
}

function fetchModel(
  value: string,
  folder: ModelFolder,
  models: ModelFetcher | undefined,
  signal: AbortSignal | undefined,
  onProgress: ((p: ModelProgress) => void) | undefined,
  s3: S3Settings | undefined,
): Promise<{ name: string; file: string }> {
  if (!models) {
    return Promise.reject(
      new ModelReferenceError(
        "model references need ComfyUI's models folder (COMFYUI_MODELS_DIR or COMFYUI_BASE_DIR)",
      ),
    );
  }
  return models.fetch(value, folder, signal, onProgress, s3);
}

/**
 * Reads the whole workflow before anything is fetched: refuses a node type ComfyUI does not have, a file name that
 * leaves its folder and more URL inputs than allowed; returns the downloads to run.
 */
export function planDownloads(
  workflow: Workflow,
  nodes: Record<string, ObjectInfoNode>,
  maxPerJob: number,
): PlannedDownload[] {
  const planned: PlannedDownload[] = [];
  for (const [nodeId, node] of Object.entries(workflow)) {
    const info = nodes[node.class_type];
    if (!info) {
      const message = `Cannot execute because node ${node.class_type} does not exist.`;
      throw new InvalidWorkflowError(message, {
        error: { type: "invalid_prompt", message, details: `Node ID '#${nodeId}'`, extra_info: {} },
        node_errors: {},
      });
    }
    for (const [input, value] of Object.entries(node.inputs ?? {})) {
      if (typeof value !== "string") continue;
      const choices = fileChoices(info, input);
      if (!choices) continue;
      if (isModelReference(value) && !choices.has(value)) {
        const model = modelFolder(node.class_type, input);
        if (model) {
          planned.push({ nodeId, node, input, url: value, expectImage: false, model });
          continue;
        }
        if (!URL_VALUE.test(value)) {
          throw nameInput(
            new NotModelInputError(
              "a model reference (s3://, hf://) is only read in an input that chooses a file of a models folder",
            ),
            nodeId,
            node.class_type,
            input,
          );
        }
      }
      if (URL_VALUE.test(value)) {
        const expectImage = /^(image|mask)$/i.test(input) || /^LoadImage/i.test(node.class_type);
        planned.push({ nodeId, node, input, url: value, expectImage });
        continue;
      }
      const problem = choices.has(value) ? undefined : fileNameProblem(value);
      if (problem) {
        throw nameInput(
          new InputError(
            `${JSON.stringify(value)} ${problem}: name a file of the input folder or give a URL`,
          ),
          nodeId,
          node.class_type,
          input,
        );
      }
    }
  }
  if (planned.length > maxPerJob) {
    throw new InputError(
      `the workflow has ${planned.length} URL or data: inputs, above MAX_INPUT_URLS=${maxPerJob}`,
      { inputs: planned.length, limit: maxPerJob },
    );
  }
  return planned;
}

/** ComfyUI's declared choices, per spec: the same list object is read by every job until the catalog changes. */
const choiceSets = new WeakMap<object, ReadonlySet<string>>();

/**
 * The declared choices of a file input, or undefined when `input` is not one. A file input is one that ComfyUI
 * declares as a list of choices (`[[...choices]]` or `["COMBO", { options }]`); an input it does not declare is
 * not passed to the node at all.
 */
function fileChoices(info: ObjectInfoNode, input: string): ReadonlySet<string> | undefined {
  const spec = info.input?.required?.[input] ?? info.input?.optional?.[input];
  if (!Array.isArray(spec)) return undefined;
  const [type, options] = spec as [unknown, { options?: unknown } | undefined];
  if (type !== "COMBO" && !Array.isArray(type)) return undefined;
  const list = Array.isArray(type) ? type : options?.options;
  const key = Array.isArray(list) ? list : spec;
  let set = choiceSets.get(key);
  if (!set) {
    set = new Set(Array.isArray(list) ? list.filter((c): c is string => typeof c === "string") : []);
    choiceSets.set(key, set);
  }
  return set;
}

/**
 * Every failure while reading one of the caller's inputs is a 4xx naming the node and input: an error we did not
 * anticipate here (a decoder throwing) is still about the caller's value, and a 5xx would be retried forever.
 */
function nameInput(err: unknown, nodeId: string, classType: string, input: string): WorkerError {
  if (err instanceof WorkerError && err.retryable) return err;
  const where = `node ${nodeId} (${classType}) input "${input}"`;
  const details = { node_id: nodeId, class_type: classType, input };
  // A model's failure keeps its own code (model_unreachable, model_bad_checksum...): the cause is the point.
  if ((err instanceof WorkerError && err.code.startsWith("model_")) || err instanceof NotModelInputError) {
    const Class = err.constructor as new (
      m: string,
      d?: Record<string, unknown>,
      o?: { cause?: unknown },
    ) => WorkerError;
    return new Class(`${where}: ${err.message}`, { ...err.details, ...details }, { cause: err });
  }
  if (err instanceof PayloadTooLargeError)
    return new PayloadTooLargeError(`${where}: ${err.message}`, details);
  const message = err instanceof Error ? err.message : String(err);
  return new InputError(`${where}: ${message}`, details, { cause: err });
}
