import { createHash } from "node:crypto";
import { MODEL_FOLDER_DIRS, MODEL_REFERENCE } from "../../config/models.js";
import { ModelReferenceError } from "../../lib/errors.js";
import { redactUrlKeepingPath } from "../../lib/redact.js";

/**
 * Which models folder an input chooses a file of. ComfyUI's /object_info gives an input's choices but not the folder
 * they were listed from, so the folder is declared here: by node class where a class departs from the usual name
 * (CLIPVisionLoader's `clip_name` is a clip_vision model), else by input name. `dir` is the sub-folder of ComfyUI's
 * models folder the file is written to (config/models.ts MODEL_FOLDER_DIRS, which MODELS reads too).
 */
export interface ModelFolder {
  /** ComfyUI's name for the folder (folder_paths' key). */
  folder: string;
  /** The sub-folder of the models folder the file goes to. */
  dir: string;
}

const FOLDERS = MODEL_FOLDER_DIRS;

/** The sub-folders of the models folder that downloads go to. */
export const MODEL_DIRS: readonly string[] = [...new Set(Object.values(FOLDERS))];

/** Inputs whose folder depends on the node class (the input name alone would say another folder or none). */
const BY_CLASS: Record<string, Record<string, string>> = {
  CLIPVisionLoader: { clip_name: "clip_vision" },
  UpscaleModelLoader: { model_name: "upscale_models" },
  ModelPatchLoader: { name: "model_patches" },
};

/** Inputs named the same across core and custom loaders. */
const BY_INPUT: [RegExp, string][] = [
  [/^ckpt_name$/, "checkpoints"],
  [/^lora_name$/, "loras"],
  [/^vae_name$/, "vae"],
  [/^control_net_name$/, "controlnet"],
  [/^unet_name$/, "diffusion_models"],
  [/^clip_name\d?$/, "text_encoders"],
  [/^style_model_name$/, "style_models"],
  [/^gligen_name$/, "gligen"],
  [/^hypernetwork_name$/, "hypernetworks"],
  [/^photomaker_model_name$/, "photomaker"],
  [/^audio_encoder_name$/, "audio_encoders"],
];

/** The models folder `input` of `classType` chooses a file of, or undefined when it is not a models input. */
export function modelFolder(classType: string, input: string): ModelFolder | undefined {
  const folder = BY_CLASS[classType]?.[input] ?? BY_INPUT.find(([re]) => re.test(input))?.[1];
  return folder === undefined ? undefined : { folder, dir: FOLDERS[folder]! };
}

/** The models folder ComfyUI calls `name` (`loras`, `checkpoints`...), or undefined when downloads go to none. */
export function modelFolderNamed(name: string): ModelFolder | undefined {
  return Object.hasOwn(FOLDERS, name) ? { folder: name, dir: FOLDERS[name]! } : undefined;
}

/** The extensions ComfyUI lists in a models folder (folder_paths.supported_pt_extensions). */
export const MODEL_EXTENSIONS: ReadonlySet<string> = new Set([
  ".ckpt",
  ".pt",
  ".pt2",
  ".bin",
  ".pth",
  ".safetensors",
  ".pkl",
  ".sft",
]);

/** A value that names a model by where it is rather than by a file already in the folder. */
export function isModelReference(value: string): boolean {
  return MODEL_REFERENCE.test(value);
}

export type ModelSource =
  { kind: "url"; url: string } | { kind: "s3"; bucket: string; key: string } | { kind: "hf"; url: string };

export interface ModelReference {
  source: ModelSource;
  /** The expected sha256 (lowercase hex), from `#sha256=<hex>`. */
  sha256: string | undefined;
  /** What the reference is shown as in logs and errors: no query, no credentials. */
  shown: string;
  /** The content-addressed stem of the file's name: `od-<16 hex of the reference's sha256>-`. */
  stem: string;
  /** The file name the reference's path ends with (possibly without a model extension: see fileName). */
  basename: string;
}

/** The prefix of every file the worker downloaded into a models folder: only these are ever evicted. */
export const MODEL_PREFIX = "od-";

/**
 * Parses `https://...`, `s3://<bucket>/<key>` or `hf://<org>/<repo>/<path>[@<revision>]`, each with an optional
 * `#sha256=<hex>`. The file's name is content-addressed by the reference (without its fragment), so the same
 * reference always lands on the same file. Throws ModelReferenceError for anything else.
 */
export function parseModelReference(value: string, opts: { hfEndpoint: string }): ModelReference {
  const hashAt = value.indexOf("#");
  const bare = hashAt < 0 ? value : value.slice(0, hashAt);
  const fragment = hashAt < 0 ? "" : value.slice(hashAt + 1);
  let sha256: string | undefined;
  if (fragment !== "") {
    const m = /^sha256=([0-9a-fA-F]{64})$/.exec(fragment);
    if (!m) throw new ModelReferenceError("the reference's fragment must be #sha256=<64 hex digits>");
    sha256 = m[1]!.toLowerCase();
  }
  let source: ModelSource;
  let path: string;
  let shown: string;
  const scheme = /^([a-z0-9]+):\/\//i.exec(bare)?.[1]?.toLowerCase();
  if (scheme === "http" || scheme === "https") {
    let u: URL;
    try {
      u = new URL(bare);
    } catch {
      throw new ModelReferenceError("the model URL does not parse");
    }
    if (u.username || u.password)
      throw new ModelReferenceError("the model URL carries credentials: use a signed URL or HF_TOKEN");
    source = { kind: "url", url: u.href };
    path = decodeURIComponentSafe(u.pathname);
    shown = redactUrlKeepingPath(u.href);
  } else if (scheme === "s3") {
    const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\/(.+)$/.exec(bare);
    if (!m) throw new ModelReferenceError("an s3 reference is s3://<bucket>/<key>");
    source = { kind: "s3", bucket: m[1]!, key: m[2]! };
    path = m[2]!;
    shown = bare;
  } else if (scheme === "hf") {
    const m = /^hf:\/\/([\w.-]+)\/([\w.-]+)\/([^@]+?)(?:@([\w./-]+))?$/.exec(bare);
    if (!m || m[3]!.split("/").some((s) => s === "" || s === "." || s === ".."))
      throw new ModelReferenceError("an hf reference is hf://<org>/<repo>/<path>[@<revision>]");
    const [, org, repo, file, revision = "main"] = m;
    const endpoint = opts.hfEndpoint.replace(/\/+$/, "");
    const encoded = file!.split("/").map(encodeURIComponent).join("/");
    source = {
      kind: "hf",
      url: `${endpoint}/${org}/${repo}/resolve/${encodeURIComponent(revision)}/${encoded}`,
    };
    path = file!;
    shown = bare;
  } else {
    throw new ModelReferenceError("a model reference starts with https://, s3:// or hf://");
  }
  const basename = sanitize(path.split("/").pop() ?? "");
  const stem = `${MODEL_PREFIX}${createHash("sha256").update(bare).digest("hex").slice(0, 16)}-`;
  return { source, sha256, shown, stem, basename };
}

/**
 * The file name for a reference: its stem and the basename of its path, or of the name the server gave
 * (Content-Disposition) when the path has no model extension. ComfyUI lists only files with a model extension, so
 * a reference that gives none is refused rather than written where no loader sees it.
 */
export function modelFileName(ref: ModelReference, dispositionName?: string): string {
  for (const candidate of [ref.basename, sanitize(dispositionName ?? "")]) {
    if (MODEL_EXTENSIONS.has(extension(candidate))) return `${ref.stem}${candidate}`.slice(0, 200);
  }
  throw new ModelReferenceError(
    `${ref.shown} names no model file: its path (or Content-Disposition) must end with one of ${[...MODEL_EXTENSIONS].join(" ")}`,
  );
}

function extension(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot <= 0 ? "" : name.slice(dot).toLowerCase();
}

/** A plain file name: letters, digits and `._-`, no leading dot, at most 150 characters (the extension kept). */
function sanitize(name: string): string {
  const clean = name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "");
  if (clean.length <= 150) return clean;
  const ext = extension(clean);
  return clean.slice(0, 150 - ext.length) + ext;
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
