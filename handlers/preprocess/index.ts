import { InputError, PayloadTooLargeError, WorkerError } from "../../lib/errors.js";
import type { ObjectInfoNode, Workflow } from "../comfyui/types.js";
import type { InputDownloader } from "./downloads.js";
import { seedRandomInts } from "./random-int.js";

/** The input added to every output node so that ComfyUI's cache never skips saving this request's files. */
export const REQUEST_NONCE_INPUT = "worker_request_id";

export interface PreparedWorkflow {
  workflow: Workflow;
  /** Cached input files this workflow uses; unpin them when the job ends. */
  inputFiles: string[];
}

const URL_VALUE = /^(https?:\/\/\S+|data:[^,]*,[\s\S]*)$/i;

/**
 * Turns a request's workflow into the one sent to ComfyUI:
 * - `__RANDOM_INT__` values are seeded;
 * - http(s) URLs and data: URIs given as file inputs are downloaded and replaced by the local file name. A file
 *   input is one that ComfyUI declares as a list of choices (LoadImage's `image`, LoadAudio's `audio`...) or that it
 *   does not declare at all; a URL in a text input (a prompt, a custom node's URL field) is left as it is;
 * - output nodes get the request id as an extra input, which ComfyUI ignores when running the node but which keeps
 *   its cache from skipping this request's saves.
 */
export async function prepareWorkflow(
  workflow: Workflow,
  opts: {
    requestId: string;
    nodes: Record<string, ObjectInfoNode>;
    downloader: InputDownloader;
    signal?: AbortSignal | undefined;
  },
): Promise<PreparedWorkflow> {
  const seeded = seedRandomInts(workflow);
  const inputFiles: string[] = [];
  const downloads: Promise<void>[] = [];
  for (const [nodeId, node] of Object.entries(seeded)) {
    const info = opts.nodes[node.class_type];
    for (const [name, value] of Object.entries(node.inputs ?? {})) {
      if (typeof value !== "string" || !URL_VALUE.test(value) || !isFileInput(info, name)) continue;
      const expectImage = /^(image|mask)$/i.test(name) || /^LoadImage/i.test(node.class_type);
      downloads.push(
        opts.downloader.fetch(value, { expectImage, signal: opts.signal }).then(
          (file) => {
            node.inputs[name] = file;
            opts.downloader.pin(file);
            inputFiles.push(file);
          },
          (err: unknown) => {
            throw opts.signal?.aborted ? err : nameInput(err, nodeId, node.class_type, name);
          },
        ),
      );
    }
    if (info?.output_node) node.inputs[REQUEST_NONCE_INPUT] = opts.requestId;
  }
  const results = await Promise.allSettled(downloads);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    for (const f of inputFiles) opts.downloader.unpin(f);
    throw failed.reason;
  }
  return { workflow: seeded, inputFiles };
}

function isFileInput(info: ObjectInfoNode | undefined, name: string): boolean {
  if (!info) return true;
  const spec = info.input?.required?.[name] ?? info.input?.optional?.[name];
  if (spec === undefined) return false;
  const type = Array.isArray(spec) ? spec[0] : undefined;
  return Array.isArray(type) || type === "COMBO";
}

/**
 * Every failure while reading one of the caller's inputs is a 4xx naming the node and input: an error we did not
 * anticipate here (a decoder throwing) is still about the caller's value, and a 5xx would be retried forever.
 */
function nameInput(err: unknown, nodeId: string, classType: string, input: string): WorkerError {
  if (err instanceof WorkerError && err.retryable) return err;
  const where = `node ${nodeId} (${classType}) input "${input}"`;
  const details = { node_id: nodeId, class_type: classType, input };
  if (err instanceof PayloadTooLargeError)
    return new PayloadTooLargeError(`${where}: ${err.message}`, details);
  const message = err instanceof Error ? err.message : String(err);
  return new InputError(`${where}: ${message}`, details, { cause: err });
}
