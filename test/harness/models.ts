import { createReadStream } from "node:fs";
import { readdir, realpath, stat } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import { join } from "node:path";
import { SD15_CHECKPOINT } from "../../scripts/services/comfyui.js";
import { stack } from "./stack.js";

/** The stack's ComfyUI models folder, shared by every test file: what a file downloads there, it removes. */
export const modelsDir = (): string => join(stack().comfyBaseDir, "models");

/** The worker's downloads in the models folder `folder` (`<folder>/od-...`), sorted. */
export async function downloaded(folder: string): Promise<string[]> {
  const names = await readdir(join(modelsDir(), folder)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith("od-")).sort();
}

/** The real path of the stack's tiny checkpoint (what a test serves as a model to download). */
export const tinyCheckpointPath = (): Promise<string> =>
  realpath(join(modelsDir(), "checkpoints", SD15_CHECKPOINT));

/** Answers `res` 200 with the file at `path`, its length declared. */
export function sendFile(res: ServerResponse, path: string): void {
  void stat(path).then((s) => {
    res.writeHead(200, { "content-length": s.size });
    createReadStream(path).pipe(res);
  });
}

/** A LoRA with no tensors (ComfyUI loads it and patches nothing): a real safetensors file of about `size` bytes. */
export function tinyLora(tag: string, size = 256): Buffer {
  let header = Buffer.from(
    JSON.stringify({ __metadata__: { tag, pad: "x".repeat(Math.max(0, size - 40)) } }),
  );
  header = Buffer.concat([header, Buffer.alloc((8 - (header.length % 8)) % 8, 0x20)]);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([length, header]);
}
