import jpeg from "jpeg-js";

/**
 * The largest side decoded: a frame declares its own size, and decoding runs on the event loop (a few tens of
 * milliseconds at 512 px, ComfyUI's default `--preview-size`).
 */
export const MAX_DECODED_SIDE = 2048;
const JPEG_QUALITY = 80;

/**
 * Makes a preview frame small enough for a caller: ComfyUI scales every preview to its `--preview-size` (512 by
 * default, upscaling latent2rgb's latent-sized image too), so a caller asking for 256 px needs the frame decoded and
 * shrunk. jpeg-js decodes (within MAX_DECODED_SIDE, bounded in memory) and encodes; the frame is averaged down to fit
 * `maxPx`. A frame it cannot read is undefined: that frame is not sent.
 */
export function shrinkJpeg(
  frame: Buffer,
  maxPx: number,
): { jpeg: Buffer; width: number; height: number } | undefined {
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    decoded = jpeg.decode(frame, {
      useTArray: true,
      formatAsRGBA: true,
      maxResolutionInMP: (MAX_DECODED_SIDE * MAX_DECODED_SIDE) / 1e6,
      maxMemoryUsageInMB: 64,
    });
  } catch {
    return undefined;
  }
  if (decoded.width > MAX_DECODED_SIDE || decoded.height > MAX_DECODED_SIDE) return undefined;
  const scale = Math.min(1, maxPx / Math.max(decoded.width, decoded.height));
  const width = Math.max(1, Math.floor(decoded.width * scale));
  const height = Math.max(1, Math.floor(decoded.height * scale));
  const data = boxShrink(decoded, width, height);
  return { jpeg: jpeg.encode({ data, width, height }, JPEG_QUALITY).data, width, height };
}

/** Each target pixel is the mean of the source pixels it covers (RGBA in, RGBA out). */
function boxShrink(
  src: { width: number; height: number; data: Uint8Array },
  width: number,
  height: number,
): Uint8Array {
  if (width === src.width && height === src.height) return src.data;
  const out = new Uint8Array(width * height * 4);
  for (let ty = 0; ty < height; ty++) {
    const y0 = Math.floor((ty * src.height) / height);
    const y1 = Math.max(y0 + 1, Math.floor(((ty + 1) * src.height) / height));
    for (let tx = 0; tx < width; tx++) {
      const x0 = Math.floor((tx * src.width) / width);
      const x1 = Math.max(x0 + 1, Math.floor(((tx + 1) * src.width) / width));
      const sum = [0, 0, 0];
      for (let y = y0; y < y1; y++)
        for (let x = x0; x < x1; x++) {
          const o = (y * src.width + x) * 4;
          for (let c = 0; c < 3; c++) sum[c]! += src.data[o + c]!;
        }
      const n = (y1 - y0) * (x1 - x0);
      const o = (ty * width + tx) * 4;
      for (let c = 0; c < 3; c++) out[o + c] = Math.round(sum[c]! / n);
      out[o + 3] = 255;
    }
  }
  return out;
}
