import { ConfigError } from "./env.js";

/**
 * ComfyUI's models folders (folder_paths' keys) a model reference may be downloaded into, each with the sub-folder
 * of the models folder the file is written to: the first path ComfyUI's folder_paths lists for that folder in the
 * versions we run (0.3.x to 0.33), so that its loader finds it (`diffusion_models` reads models/unet first,
 * `text_encoders` models/text_encoders then models/clip). Read by MODELS here and by the loaders' inputs
 * (handlers/preprocess/model-folders.ts).
 */
export const MODEL_FOLDER_DIRS: Readonly<Record<string, string>> = Object.freeze({
  checkpoints: "checkpoints",
  loras: "loras",
  vae: "vae",
  controlnet: "controlnet",
  diffusion_models: "unet",
  text_encoders: "text_encoders",
  clip_vision: "clip_vision",
  upscale_models: "upscale_models",
  style_models: "style_models",
  gligen: "gligen",
  hypernetworks: "hypernetworks",
  photomaker: "photomaker",
  model_patches: "model_patches",
  audio_encoders: "audio_encoders",
  embeddings: "embeddings",
});

/** A value that names a model by where it is (`https://`, `http://`, `s3://`, `hf://`). */
export const MODEL_REFERENCE = /^(https?|s3|hf):\/\//i;

/** One model to warm: ComfyUI's folder name and the reference, as given. */
export interface ModelToWarm {
  folder: string;
  ref: string;
}

/**
 * MODELS: `<folder>=<reference>` entries separated by newlines or commas, or `@<path>` naming a file of one entry a
 * line (there only newlines separate, so a reference may hold a comma; blank lines and lines starting with `#` are
 * skipped). The folder must be one of MODEL_FOLDER_DIRS and the reference start with a model scheme; the rest of
 * the reference (its `#sha256=`, an hf:// path) is checked by the download at start. A malformed entry throws
 * ConfigError naming MODELS. `readText` reads the `@` file (the caller's file system).
 */
export function parseModelsList(
  value: string | undefined,
  readText: (path: string) => string,
): ModelToWarm[] {
  if (value === undefined) return [];
  let entries: string[];
  if (value.startsWith("@")) {
    const path = value.slice(1).trim();
    let text: string;
    try {
      text = readText(path);
    } catch (err) {
      throw new ConfigError(
        "MODELS",
        `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      );
    }
    entries = text.split(/\r?\n/).filter((line) => !line.trim().startsWith("#"));
  } else {
    entries = value.split(/[\n,]/);
  }
  const out: ModelToWarm[] = [];
  const seen = new Set<string>();
  let n = 0;
  for (const raw of entries) {
    const entry = raw.trim();
    if (entry === "") continue;
    n++;
    const eq = entry.indexOf("=");
    const folder = eq < 0 ? "" : entry.slice(0, eq).trim();
    const ref = eq < 0 ? "" : entry.slice(eq + 1).trim();
    // Only the folder is quoted: a reference may carry a signature or a token.
    if (!/^[a-z_]+$/.test(folder) || ref === "") {
      throw new ConfigError(
        "MODELS",
        `entry ${n} is not <folder>=<reference> (as checkpoints=https://host/model.safetensors)`,
      );
    }
    if (!Object.hasOwn(MODEL_FOLDER_DIRS, folder)) {
      throw new ConfigError(
        "MODELS",
        `entry ${n}: ${folder} is not a models folder: one of ${Object.keys(MODEL_FOLDER_DIRS).join(", ")}`,
      );
    }
    if (!MODEL_REFERENCE.test(ref)) {
      throw new ConfigError(
        "MODELS",
        `entry ${n} (${folder}): a reference starts with https://, http://, s3:// or hf://`,
      );
    }
    const key = `${folder}=${ref}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ folder, ref });
  }
  return out;
}
