/**
 * ComfyUI's binary WebSocket frames (server.py's encode_bytes: a big-endian uint32 event type, then its payload) as
 * far as previews go, an image's size read from its header, and the least interval between two previews. Shrinking
 * a frame is preview-image.ts's.
 */

/** protocol.py's BinaryEventTypes as sent on the wire (UNENCODED_PREVIEW_IMAGE, 2, is encoded to 1 before). */
export const BINARY_PREVIEW_IMAGE = 1;
export const BINARY_PREVIEW_IMAGE_WITH_METADATA = 4;

/** What a client announces in its first message for ComfyUI to send previews with their prompt and node ids. */
export const PREVIEW_FEATURE_FLAGS = Object.freeze({ supports_preview_metadata: true });

/**
 * The per-prompt preview method the worker asks for (`extra_data.preview_method`, ComfyUI >= 0.5.0): the latent
 * projected to RGB, a matrix product per step with no model to load (TAESD needs its decoder in models/vae_approx and
 * runs it every step). ComfyUI then scales the frame to its `--preview-size` (512 by default) and sends a JPEG.
 */
export const PREVIEW_METHOD = "latent2rgb";

/** The least interval between two previews a caller gets, whatever it asks. */
export const PREVIEW_MIN_INTERVAL_MS = 100;

export interface PreviewFrame {
  mime: string;
  image: Buffer;
  /** From the metadata of a type-4 frame; absent in the old form (type 1). */
  promptId?: string;
  node?: string;
}

/**
 * A preview out of one binary frame, or undefined for any other frame (a text frame in binary form, an event type
 * this parser does not know, a truncated or malformed one).
 * Type 1: uint32 image type (1 JPEG, 2 PNG), then the image. Type 4: uint32 length, that many bytes of JSON metadata
 * (`prompt_id`, `node_id`, `display_node_id`, `image_type` as a MIME type, ...), then the image.
 */
export function parsePreviewFrame(frame: Buffer): PreviewFrame | undefined {
  if (frame.length < 8) return undefined;
  const event = frame.readUInt32BE(0);
  if (event === BINARY_PREVIEW_IMAGE) {
    const kind = frame.readUInt32BE(4);
    const mime = kind === 2 ? "image/png" : kind === 1 ? "image/jpeg" : undefined;
    const image = frame.subarray(8);
    return mime && image.length > 0 ? { mime, image } : undefined;
  }
  if (event === BINARY_PREVIEW_IMAGE_WITH_METADATA) {
    const length = frame.readUInt32BE(4);
    if (8 + length >= frame.length) return undefined;
    let meta: unknown;
    try {
      meta = JSON.parse(frame.subarray(8, 8 + length).toString("utf8"));
    } catch {
      return undefined;
    }
    if (typeof meta !== "object" || meta === null) return undefined;
    const m = meta as Record<string, unknown>;
    const image = frame.subarray(8 + length);
    const mime = typeof m.image_type === "string" ? m.image_type : (sniffMime(image) ?? "");
    if (!/^image\/(jpeg|png|webp)$/.test(mime)) return undefined;
    // The node the caller's workflow names: inside a subgraph or an expanded node, its display id.
    const node = [m.display_node_id, m.node_id].find((v) => typeof v === "string" || typeof v === "number");
    return {
      mime,
      image,
      ...(typeof m.prompt_id === "string" && { promptId: m.prompt_id }),
      ...(node !== undefined && { node: String(node) }),
    };
  }
  return undefined;
}

/** The MIME type by the image's magic bytes (JPEG, PNG, WEBP), or undefined. */
export function sniffMime(image: Buffer): string | undefined {
  if (image.length >= 3 && image[0] === 0xff && image[1] === 0xd8 && image[2] === 0xff) return "image/jpeg";
  if (image.length >= 8 && image.readUInt32BE(0) === 0x89504e47 && image.readUInt32BE(4) === 0x0d0a1a0a)
    return "image/png";
  if (
    image.length >= 12 &&
    image.toString("latin1", 0, 4) === "RIFF" &&
    image.toString("latin1", 8, 12) === "WEBP"
  )
    return "image/webp";
  return undefined;
}

/** An image's width and height read from its header (JPEG's SOF, PNG's IHDR, WEBP's VP8/VP8L/VP8X), or undefined. */
export function imageSize(image: Buffer): { width: number; height: number } | undefined {
  switch (sniffMime(image)) {
    case "image/png":
      return image.length >= 24 && image.toString("latin1", 12, 16) === "IHDR"
        ? { width: image.readUInt32BE(16), height: image.readUInt32BE(20) }
        : undefined;
    case "image/jpeg":
      return jpegSize(image);
    case "image/webp":
      return webpSize(image);
    default:
      return undefined;
  }
}

function jpegSize(image: Buffer): { width: number; height: number } | undefined {
  let at = 2;
  while (at + 4 <= image.length) {
    if (image[at] !== 0xff) return undefined;
    const marker = image[at + 1]!;
    // Fill bytes, and the markers without a length (TEM, RSTn).
    if (marker === 0xff) {
      at++;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    const length = image.readUInt16BE(at + 2);
    // Start of frame, every kind but DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (at + 9 > image.length) return undefined;
      return { height: image.readUInt16BE(at + 5), width: image.readUInt16BE(at + 7) };
    }
    if (marker === 0xda || length < 2) return undefined;
    at += 2 + length;
  }
  return undefined;
}

function webpSize(image: Buffer): { width: number; height: number } | undefined {
  if (image.length < 30) return undefined;
  const chunk = image.toString("latin1", 12, 16);
  if (chunk === "VP8X") return { width: image.readUIntLE(24, 3) + 1, height: image.readUIntLE(27, 3) + 1 };
  if (chunk === "VP8 ")
    return { width: image.readUInt16LE(26) & 0x3fff, height: image.readUInt16LE(28) & 0x3fff };
  if (chunk === "VP8L") {
    const bits = image.readUInt32LE(21);
    return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
  }
  return undefined;
}

/**
 * At most one preview every `everyMs` (never under PREVIEW_MIN_INTERVAL_MS): the first frame passes, then the first
 * one `everyMs` after the last that passed; those between are dropped (the next one is newer anyway).
 */
export class PreviewThrottle {
  private last: number | undefined;
  readonly everyMs: number;

  constructor(everyMs: number) {
    this.everyMs = Math.max(PREVIEW_MIN_INTERVAL_MS, Number.isFinite(everyMs) ? everyMs : 0);
  }

  /** Whether a frame arriving at `now` goes out; one that does starts the next interval. */
  take(now: number): boolean {
    if (this.last !== undefined && now - this.last < this.everyMs) return false;
    this.last = now;
    return true;
  }
}
