import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";

/**
 * The hash of a PNG's image data (its IDAT chunks), for telling whether two outputs are the same image: ComfyUI's
 * metadata chunks name the workflow, and so differ for every request.
 */
export async function pngPixelsHash(path: string): Promise<string> {
  const png = await readFile(path);
  const hash = createHash("sha256");
  for (let at = 8; at < png.length;) {
    const length = png.readUInt32BE(at);
    if (png.toString("latin1", at + 4, at + 8) === "IDAT") hash.update(png.subarray(at + 8, at + 8 + length));
    at += 12 + length;
  }
  return hash.digest("hex");
}
