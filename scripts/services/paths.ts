import { homedir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Where installed parts (ComfyUI, its venv, tool venvs) live: outside the repository, shared between clones. */
export function cacheDir(): string {
  return process.env.COMFY_WORKER_CACHE ?? join(homedir(), ".cache", "comfyui-worker");
}
