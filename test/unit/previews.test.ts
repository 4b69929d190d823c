import { once } from "node:events";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import jpeg from "jpeg-js";
import { MAX_DECODED_SIDE, shrinkJpeg } from "../../handlers/comfyui/preview-image.js";
import { ComfyEvents, PREVIEW_EVENT } from "../../handlers/comfyui/events.js";
import type { ComfyEvent } from "../../handlers/comfyui/types.js";
import { WebSocketServer } from "ws";
import { repoRoot } from "../harness/worker.js";
import { silentLogger } from "./fakes.js";
import {
  PREVIEW_MIN_INTERVAL_MS,
  PreviewThrottle,
  imageSize,
  parsePreviewFrame,
  sniffMime,
} from "../../handlers/comfyui/previews.js";

/** The header of a baseline JPEG as PIL writes it: SOI, APP0 (JFIF), a DQT, then SOF0 with the size. */
function jpegHeader(width: number, height: number): Buffer {
  const app0 = Buffer.from([0xff, 0xe0, 0x00, 0x10, ...Buffer.from("JFIF\0"), 1, 1, 0, 0, 1, 0, 1, 0, 0]);
  const dqt = Buffer.concat([Buffer.from([0xff, 0xdb, 0x00, 0x43, 0x00]), Buffer.alloc(64, 1)]);
  const sof = Buffer.alloc(19);
  sof.writeUInt16BE(0xffc0, 0);
  sof.writeUInt16BE(17, 2);
  sof[4] = 8;
  sof.writeUInt16BE(height, 5);
  sof.writeUInt16BE(width, 7);
  sof[9] = 3;
  return Buffer.concat([Buffer.from([0xff, 0xd8]), app0, dqt, sof, Buffer.from([0xff, 0xda, 0x00, 0x02])]);
}

function pngHeader(width: number, height: number): Buffer {
  const b = Buffer.alloc(33);
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(b, 0);
  b.writeUInt32BE(13, 8);
  b.write("IHDR", 12, "latin1");
  b.writeUInt32BE(width, 16);
  b.writeUInt32BE(height, 20);
  return b;
}

/** server.py's encode_bytes(PREVIEW_IMAGE, ...) of send_image: event 1, image type (1 JPEG, 2 PNG), the image. */
function oldFrame(kind: number, image: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(1, 0);
  head.writeUInt32BE(kind, 4);
  return Buffer.concat([head, image]);
}

/** server.py's send_image_with_metadata: event 4, the metadata's length, the metadata (JSON), the image. */
function metadataFrame(meta: unknown, image: Buffer): Buffer {
  const json = Buffer.from(typeof meta === "string" ? meta : JSON.stringify(meta));
  const head = Buffer.alloc(8);
  head.writeUInt32BE(4, 0);
  head.writeUInt32BE(json.length, 4);
  return Buffer.concat([head, json, image]);
}

describe("parsePreviewFrame", () => {
  const jpeg = jpegHeader(8, 8);

  test("the old form (type 1): the image and its type, no ids", () => {
    expect(parsePreviewFrame(oldFrame(1, jpeg))).toEqual({ mime: "image/jpeg", image: jpeg });
    const png = pngHeader(8, 8);
    expect(parsePreviewFrame(oldFrame(2, png))).toEqual({ mime: "image/png", image: png });
  });

  test("with metadata (type 4): prompt id, the node the workflow names (display id first), the MIME type", () => {
    const frame = metadataFrame(
      {
        node_id: "3",
        prompt_id: "p-1",
        display_node_id: "3",
        parent_node_id: null,
        real_node_id: "3",
        image_type: "image/jpeg",
      },
      jpeg,
    );
    const parsed = parsePreviewFrame(frame)!;
    expect(parsed).toEqual({ mime: "image/jpeg", image: jpeg, promptId: "p-1", node: "3" });
    expect(parsed.image.equals(jpeg)).toBe(true);
    expect(parsePreviewFrame(metadataFrame({ node_id: "12:5", display_node_id: "12" }, jpeg))?.node).toBe(
      "12",
    );
    // No image_type: told by the image's magic bytes.
    expect(parsePreviewFrame(metadataFrame({ prompt_id: "p" }, jpeg))?.mime).toBe("image/jpeg");
  });

  test("anything else is no preview: other events, unknown image types, truncated or malformed frames", () => {
    const text = Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from("hello world")]);
    expect(parsePreviewFrame(text)).toBeUndefined();
    expect(parsePreviewFrame(oldFrame(7, jpeg))).toBeUndefined();
    expect(parsePreviewFrame(oldFrame(1, Buffer.alloc(0)))).toBeUndefined();
    expect(parsePreviewFrame(Buffer.from([0, 0, 0, 1]))).toBeUndefined();
    expect(parsePreviewFrame(metadataFrame("{not json", jpeg))).toBeUndefined();
    expect(parsePreviewFrame(metadataFrame({ image_type: "text/html" }, jpeg))).toBeUndefined();
    // A metadata length past the frame's end.
    const long = metadataFrame({ prompt_id: "p" }, jpeg);
    long.writeUInt32BE(long.length, 4);
    expect(parsePreviewFrame(long)).toBeUndefined();
  });
});

describe("imageSize", () => {
  test("JPEG, PNG and WEBP sizes from their headers", () => {
    expect(imageSize(jpegHeader(64, 48))).toEqual({ width: 64, height: 48 });
    expect(imageSize(pngHeader(300, 200))).toEqual({ width: 300, height: 200 });
    const vp8x = Buffer.alloc(30);
    vp8x.write("RIFF", 0, "latin1");
    vp8x.write("WEBP", 8, "latin1");
    vp8x.write("VP8X", 12, "latin1");
    vp8x.writeUIntLE(511, 24, 3);
    vp8x.writeUIntLE(255, 27, 3);
    expect(sniffMime(vp8x)).toBe("image/webp");
    expect(imageSize(vp8x)).toEqual({ width: 512, height: 256 });
  });

  test("no size for what it cannot read", () => {
    expect(imageSize(Buffer.from("GIF89a......"))).toBeUndefined();
    expect(imageSize(jpegHeader(8, 8).subarray(0, 30))).toBeUndefined();
    expect(imageSize(Buffer.from([0xff, 0xd8, 0xff]))).toBeUndefined();
  });
});

describe("PreviewThrottle", () => {
  test("the first frame passes, then one per interval; those between are dropped", () => {
    const t = new PreviewThrottle(500);
    expect([0, 100, 499, 500, 600, 999, 1000, 1700].map((at) => t.take(at))).toEqual([
      true,
      false,
      false,
      true,
      false,
      false,
      true,
      true,
    ]);
  });

  test(`never more often than every ${PREVIEW_MIN_INTERVAL_MS} ms`, () => {
    for (const asked of [0, 10, -5, Number.NaN]) {
      const t = new PreviewThrottle(asked);
      expect(t.everyMs).toBe(PREVIEW_MIN_INTERVAL_MS);
      expect([0, 50, 99, 100].map((at) => t.take(at))).toEqual([true, false, false, true]);
    }
  });
});

describe("shrinkJpeg", () => {
  // 40x24 gradients written by PIL (ComfyUI's encoder) and, beside each, PIL's own decoding of it (raw RGB).
  const fixture = (name: string) => readFileSync(join(repoRoot, "test/fixtures/previews", name));

  test("shrinks to fit max_px, keeping the aspect ratio, as a JPEG whose pixels are the averages", () => {
    const out = shrinkJpeg(fixture("gradient-444-restart.jpg"), 20)!;
    expect(out).toMatchObject({ width: 20, height: 12 });
    expect(sniffMime(out.jpeg)).toBe("image/jpeg");
    expect(imageSize(out.jpeg)).toEqual({ width: 20, height: 12 });
    const rgba = jpeg.decode(out.jpeg, { useTArray: true, formatAsRGBA: true }).data;
    // Pixel (0, 0) is the mean of the 2x2 source pixels it covers (within JPEG's loss at quality 80).
    const src = fixture("gradient-444-restart.rgb");
    for (let ch = 0; ch < 3; ch++) {
      const mean = (src[ch]! + src[3 + ch]! + src[40 * 3 + ch]! + src[40 * 3 + 3 + ch]!) / 4;
      expect(Math.abs(rgba[ch]! - mean)).toBeLessThanOrEqual(12);
    }
  });

  test.each(["gradient-420", "gradient-gray", "progressive"])(
    "reads %s as ComfyUI's PIL writes it",
    (name) => {
      expect(shrinkJpeg(fixture(`${name}.jpg`), 10)).toMatchObject({ width: 10, height: 6 });
    },
  );

  test("what it does not read is undefined: truncated, not a JPEG, too large", () => {
    const whole = fixture("gradient-420.jpg");
    expect(shrinkJpeg(whole.subarray(0, whole.length / 4), 8)).toBeUndefined();
    expect(shrinkJpeg(fixture("gradient-420.rgb"), 8)).toBeUndefined();
    // A side over MAX_DECODED_SIDE: refused before its planes are allocated.
    expect(shrinkJpeg(jpegHeader(MAX_DECODED_SIDE + 1, 8), 8)).toBeUndefined();
  });
});

describe("ComfyEvents and preview frames", () => {
  test("announces supports_preview_metadata first; a frame with metadata goes to its prompt, one without to the running prompt", async () => {
    // A loopback server playing ComfyUI's wire (server.py): it answers the handshake, then sends a prompt's frames.
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await once(server, "listening");
    const jpeg = jpegHeader(8, 8);
    const firstMessage = new Promise<unknown>((resolve) =>
      server.on("connection", (socket) => {
        socket.once("message", (data) => {
          resolve(JSON.parse(String(data)));
          // Before any prompt runs, a frame without ids belongs to nobody.
          socket.send(oldFrame(1, jpeg), { binary: true });
          socket.send(JSON.stringify({ type: "execution_start", data: { prompt_id: "p2" } }));
          socket.send(metadataFrame({ prompt_id: "p1", node_id: "3", image_type: "image/jpeg" }, jpeg), {
            binary: true,
          });
          socket.send(oldFrame(1, jpeg), { binary: true });
          socket.send(JSON.stringify({ type: "executing", data: { prompt_id: "p2", node: null } }));
        });
      }),
    );
    const events = new ComfyEvents({
      url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws?clientId=test`,
      logger: silentLogger(),
    });
    const heard: { p1: ComfyEvent[]; p2: ComfyEvent[] } = { p1: [], p2: [] };
    const ended = new Promise<void>((resolve) => {
      events.subscribe("p1", (e) => heard.p1.push(e));
      events.subscribe("p2", (e) => {
        heard.p2.push(e);
        if (e.type === "executing") resolve();
      });
    });
    try {
      events.start();
      expect(await firstMessage).toEqual({
        type: "feature_flags",
        data: { supports_preview_metadata: true },
      });
      await ended;
      expect(heard.p1).toEqual([
        { type: PREVIEW_EVENT, data: { prompt_id: "p1", node: "3", mime: "image/jpeg", image: jpeg } },
      ]);
      expect(heard.p2.map((e) => e.type)).toEqual(["execution_start", PREVIEW_EVENT, "executing"]);
      expect(heard.p2[1]!.data).toEqual({ prompt_id: "p2", mime: "image/jpeg", image: jpeg });
    } finally {
      events.stop();
      for (const client of server.clients) client.terminate();
      server.close();
    }
  });
});
