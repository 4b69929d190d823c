import { copyFile, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { createWriteStream } from "node:fs";
import { join, normalize, resolve, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import type { ComfyClient } from "./comfyui/client.js";
import type { HistoryEntry } from "./comfyui/types.js";

/** One entry of the result's `output[]`, before upload. */
export interface OutputEntry {
  filename: string;
  local_path: string;
  url?: string;
  type: string;
  subfolder: string;
  node_id: string;
  output_type: string;
  text?: string;
  upload_error?: string;
}

export interface CollectOptions {
  requestId: string;
  /** ComfyUI's folders on this machine. */
  comfyOutputDir: string;
  comfyInputDir: string;
  /** Outputs end up in `<outputDir>/<requestId>/`. */
  outputDir: string;
  client: ComfyClient;
  signal?: AbortSignal | undefined;
}

/**
 * Collects every output of a finished prompt: each list in the history's outputs whose items are files (images,
 * gifs, videos, audio, 3D files...), except temp previews, is moved under `<outputDir>/<requestId>/`; each list of
 * strings (text outputs) is written there as a .txt file and also returned inline. Files that are not on this
 * machine are streamed from ComfyUI's /view.
 */
export async function collectOutputs(history: HistoryEntry, opts: CollectOptions): Promise<OutputEntry[]> {
  const dir = resolve(opts.outputDir, safeComponent(opts.requestId));
  await mkdir(dir, { recursive: true });
  /** Every write goes through here: a name that could leave the job's folder never reaches the file system. */
  const inside = (name: string) => {
    const dest = resolve(dir, name);
    if (!dest.startsWith(dir + sep)) throw new Error(`output name escapes the job's folder: ${name}`);
    return dest;
  };
  const entries: OutputEntry[] = [];
  const used = new Set<string>();
  const unique = (name: string) => {
    let candidate = name;
    for (let i = 1; used.has(candidate); i++) candidate = `${i}_${name}`;
    used.add(candidate);
    return candidate;
  };
  for (const [nodeId, outputs] of Object.entries(history.outputs ?? {})) {
    for (const [outputType, items] of Object.entries(outputs ?? {})) {
      if (!Array.isArray(items)) continue;
      let textIndex = 0;
      for (const item of items) {
        if (isFileRef(item)) {
          if (item.type === "temp") continue;
          const filename = unique(safeComponent(item.filename.split(/[\\/]/).pop() ?? ""));
          const dest = inside(filename);
          await placeFile(item, dest, opts);
          entries.push({
            filename,
            local_path: dest,
            type: item.type,
            subfolder: opts.requestId,
            node_id: nodeId,
            output_type: outputType,
          });
        } else if (typeof item === "string") {
          // Node ids and output names come from the caller's workflow: they are sanitised like any file name.
          const filename = unique(safeComponent(`${nodeId}_${outputType}_${textIndex++}.txt`));
          const dest = inside(filename);
          await writeFile(dest, item);
          entries.push({
            filename,
            local_path: dest,
            type: "output",
            subfolder: opts.requestId,
            node_id: nodeId,
            output_type: outputType,
            text: item,
          });
        }
      }
    }
  }
  return entries;
}

/**
 * One path component from untrusted text: only letters, digits, '.', '_' and '-' survive (anything else becomes
 * '_'), no leading dot (so never '.' or '..'), at most 200 characters. Never empty.
 */
export function safeComponent(name: string): string {
  const cleaned = name
    .replace(/[^A-Za-z0-9._-]/g, "_")
    .replace(/^\.+/, "_")
    .slice(-200);
  return cleaned === "" ? "output" : cleaned;
}

function isFileRef(item: unknown): item is { filename: string; subfolder?: string; type: string } {
  return (
    typeof item === "object" &&
    item !== null &&
    typeof (item as { filename?: unknown }).filename === "string" &&
    typeof (item as { type?: unknown }).type === "string"
  );
}

async function placeFile(
  item: { filename: string; subfolder?: string; type: string },
  dest: string,
  opts: CollectOptions,
): Promise<void> {
  const root = item.type === "input" ? opts.comfyInputDir : opts.comfyOutputDir;
  const source = normalize(join(root, item.subfolder ?? "", item.filename));
  if (!source.startsWith(root + sep))
    throw new Error(`ComfyUI output path escapes its folder: ${item.filename}`);
  // Outputs are moved (a rename on the same file system); an input the workflow passed through is copied.
  const moved = await (item.type === "input" ? copyFile(source, dest) : rename(source, dest)).then(
    () => true,
    async (err: NodeJS.ErrnoException) => {
      if (err.code === "EXDEV") {
        await copyFile(source, dest);
        await rm(source, { force: true });
        return true;
      }
      if (err.code === "ENOENT") return false;
      throw err;
    },
  );
  if (moved) return;
  // Not on this machine (ComfyUI runs elsewhere): stream it from /view.
  const ref = { filename: item.filename, subfolder: item.subfolder ?? "", type: item.type };
  await pipeline(opts.client.viewStream(ref, opts.signal), createWriteStream(dest));
}
