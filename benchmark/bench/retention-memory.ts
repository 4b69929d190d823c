/**
 * Memory held by finished jobs: the compiled worker (`node dist/worker/cli.js start`) serves `count` requests, each
 * carrying its own 1 MB PNG as a data: URI, `concurrency` at a time; its RSS is read from /proc before the first
 * request and after the last one answered (after a settle). The target: within 100 MB of the start.
 */
import { randomBytes } from "node:crypto";
import { crc32, deflateSync } from "node:zlib";
import { got } from "got";
import { freePort } from "../../scripts/services/child.js";
import { procMb, spawnCompiledWorker, workerEnv, type BenchParts } from "./parts.js";

export interface RetentionResult {
  requests: number;
  completed: number;
  imageBytes: number;
  startMb: number;
  peakMb: number;
  endMb: number;
  growthMb: number;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/**
 * A valid PNG of `side`×`side` random RGB pixels (random data does not compress: about 3·side² bytes), without
 * its IEND chunk, so that each request can add a distinct text chunk.
 */
function noisePngHead(side: number): Buffer {
  const chunk = pngChunk;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(side, 0);
  ihdr.writeUInt32BE(side, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  const rows = Buffer.alloc(side * (1 + side * 3));
  const pixels = randomBytes(side * side * 3);
  for (let y = 0; y < side; y++) pixels.copy(rows, y * (1 + side * 3) + 1, y * side * 3, (y + 1) * side * 3);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows, { level: 0 })),
  ]);
}

export async function measureRetention(
  parts: BenchParts,
  count = 150,
  concurrency = 4,
): Promise<RetentionResult> {
  const apiPort = await freePort();
  const worker = await spawnCompiledWorker(
    workerEnv(parts, { API_PORT: String(apiPort), LOG_LEVEL: "info" }),
  );
  try {
    const api = `http://127.0.0.1:${apiPort}`;
    // One request first, so that the start figure includes what the first job loads once (the node catalog...).
    const head = noisePngHead(580);
    const request = async (i: number) => {
      // A distinct image (and data: URI) per request, so that no input cache short-cuts it.
      const png = Buffer.concat([
        head,
        pngChunk("tEXt", Buffer.from(`Comment\0request ${i}`, "latin1")),
        pngChunk("IEND", Buffer.alloc(0)),
      ]);
      const workflow = {
        "1": {
          class_type: "LoadImage",
          inputs: { image: `data:image/png;base64,${png.toString("base64")}` },
        },
        "2": {
          class_type: "ImageScale",
          inputs: { image: ["1", 0], upscale_method: "nearest-exact", width: 8, height: 8, crop: "disabled" },
        },
        "3": { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: "retention" } },
      };
      const res = await got.post(`${api}/generate/sync`, {
        json: { input: { workflow_json: workflow } },
        timeout: { request: 600_000 },
        retry: { limit: 0 },
        throwHttpErrors: false,
      });
      return (JSON.parse(res.body) as { status?: string }).status === "completed";
    };
    await request(1_000_000);
    await new Promise((r) => setTimeout(r, 2_000));
    const pid = worker.pid;
    const startMb = await procMb(pid);
    let peakMb = startMb;
    const sampler = setInterval(() => {
      void procMb(pid).then(
        (mb) => (peakMb = Math.max(peakMb, mb)),
        () => undefined,
      );
    }, 50);
    let next = 0;
    let completed = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < count) if (await request(next++)) completed++;
      }),
    );
    clearInterval(sampler);
    await new Promise((r) => setTimeout(r, 3_000));
    const endMb = await procMb(pid);
    return {
      requests: count,
      completed,
      imageBytes: head.length,
      startMb,
      peakMb,
      endMb,
      growthMb: endMb - startMb,
    };
  } finally {
    await worker.stop();
  }
}
