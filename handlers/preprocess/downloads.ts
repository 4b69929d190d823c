import { createHash, randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { extname, join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { got, type Got } from "got";
import { InputError, PayloadTooLargeError } from "../../lib/errors.js";
import { Pins } from "../../lib/pins.js";
import type { InputSettings } from "../../config/index.js";
import { BlockedAddressError, inputGuards } from "./address-policy.js";
import { CACHE_PREFIX, InputCache } from "./input-cache.js";
import { Slots } from "./slots.js";

export { CACHE_PREFIX } from "./input-cache.js";

export interface DownloaderOptions extends InputSettings {
  inputDir: string;
}

const IMAGE_MAGIC: [string, (b: Buffer) => boolean][] = [
  [".png", (b) => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))],
  [".jpg", (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff],
  [".gif", (b) => b.subarray(0, 4).toString("latin1") === "GIF8"],
  [
    ".webp",
    (b) => b.subarray(0, 4).toString("latin1") === "RIFF" && b.subarray(8, 12).toString("latin1") === "WEBP",
  ],
  [".bmp", (b) => b.subarray(0, 2).toString("latin1") === "BM"],
  [".tiff", (b) => ["II*\0", "MM\0*"].includes(b.subarray(0, 4).toString("latin1"))],
];

export function sniffImage(head: Buffer): string | undefined {
  return IMAGE_MAGIC.find(([, test]) => test(head))?.[0];
}

/**
 * Fetches URL and data: inputs into ComfyUI's input folder, streamed to disk with size and time limits, cached by
 * the URL's hash in a cache bounded by bytes and files. At most `concurrency` downloads run at once, worker-wide:
 * the others wait for a slot, and a job that is cancelled or times out while waiting leaves without fetching.
 * Private and metadata addresses are refused at connect time (so through redirects and DNS too) unless allowed.
 * Failure contract: InputError (400) or PayloadTooLargeError (413), with a message that names the limit or the
 * cause; the job's signal's reason when it aborts.
 */
export class InputDownloader {
  private readonly http: Got;
  /** Downloads under way, shared by every job that asks for the same input meanwhile (with the signal it runs under). */
  private readonly inFlight = new Map<string, { done: Promise<string>; signal: AbortSignal | undefined }>();
  /** Cache files that a job still needs: never evicted. */
  private readonly pinned = new Pins();
  private readonly slots: Slots;
  private readonly cache: InputCache;

  constructor(private readonly opts: DownloaderOptions) {
    this.slots = new Slots(opts.concurrency);
    this.cache = new InputCache({
      dir: opts.inputDir,
      maxBytes: opts.cacheMaxBytes,
      maxFiles: opts.cacheMaxFiles,
      isPinned: (name) => this.pinned.has(name),
    });
    this.http = got.extend({
      timeout: { request: opts.timeoutMs },
      retry: { limit: 1, statusCodes: [502, 503, 504], methods: ["GET"] },
      followRedirect: true,
      maxRedirects: 5,
      ...inputGuards(opts.allowPrivate),
    }) as Got;
  }

  /** URL and data: inputs one job may have fetched (MAX_INPUT_URLS). */
  get maxPerJob(): number {
    return this.opts.maxPerJob;
  }

  /** Downloads waiting for a slot now. */
  get waiting(): number {
    return this.slots.waiting;
  }

  /** Returns the file name (relative to the input folder) that replaces the URL in the workflow. */
  async fetch(
    url: string,
    opts: { expectImage: boolean; signal?: AbortSignal | undefined },
  ): Promise<string> {
    const hash = createHash("sha256").update(url).digest("hex").slice(0, 32);
    const key = `${hash}:${opts.expectImage}`;
    const shared = this.inFlight.get(key);
    if (shared) {
      // Another job's cancel ends the download it started, not this job: this one then fetches for itself.
      return shared.done.catch((err: unknown) => {
        if (shared.signal?.aborted && !opts.signal?.aborted) return this.fetch(url, opts);
        throw err;
      });
    }
    // A cached input takes no download slot: only fetching and decoding wait for one.
    const done = this.cache
      .lookup(hash)
      .then(
        (hit) =>
          hit ??
          this.slots.run(opts.signal, () =>
            url.startsWith("data:")
              ? this.fromDataUri(url, hash, opts.expectImage, opts.signal)
              : this.fromUrl(url, hash, opts),
          ),
      )
      .finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, { done, signal: opts.signal });
    return done;
  }

  pinnedFiles(): Set<string> {
    return this.pinned.files();
  }

  pin(name: string): void {
    this.pinned.pin(name);
  }

  unpin(name: string): void {
    this.pinned.unpin(name);
  }

  private async fromDataUri(
    uri: string,
    hash: string,
    expectImage: boolean,
    signal: AbortSignal | undefined,
  ): Promise<string> {
    signal?.throwIfAborted();
    const match = /^data:([^;,]*)((?:;[^;,]*)*),(.*)$/s.exec(uri);
    if (!match) throw new InputError("malformed data: URI");
    const [, mime = "", params = "", data = ""] = match;
    const body = decodeDataUri(data, params.includes(";base64"));
    signal?.throwIfAborted();
    if (body.length > this.opts.maxBytes) {
      throw new PayloadTooLargeError(
        `data: URI is ${body.length} bytes, above INPUT_URL_MAX_BYTES=${this.opts.maxBytes}`,
      );
    }
    const ext = expectImage ? sniffImage(body) : (extFromMime(mime) ?? ".bin");
    if (expectImage && !ext)
      throw new InputError(`data: URI is not an image (declared ${mime || "no type"})`);
    const name = `${CACHE_PREFIX}${hash}${ext ?? ".bin"}`;
    await mkdir(this.opts.inputDir, { recursive: true });
    const tmp = join(this.opts.inputDir, `${name}.${randomUUID()}.part`);
    try {
      await writeFile(tmp, body, signal ? { signal } : {});
      await rename(tmp, join(this.opts.inputDir, name));
    } catch (err) {
      await rm(tmp, { force: true });
      throw signal?.aborted ? signal.reason : err;
    }
    await this.cache.add(hash, name, body.length);
    return name;
  }

  private async fromUrl(
    url: string,
    hash: string,
    opts: { expectImage: boolean; signal?: AbortSignal | undefined },
  ) {
    await mkdir(this.opts.inputDir, { recursive: true });
    const tmp = join(this.opts.inputDir, `${CACHE_PREFIX}${hash}.${randomUUID()}.part`);
    const maxBytes = this.opts.maxBytes;
    let head = Buffer.alloc(0);
    let received = 0;
    let contentType = "";
    let finalUrl = url;
    try {
      const stream = this.http.stream(url, opts.signal ? { signal: opts.signal } : {});
      stream.once("response", (res: { headers: Record<string, string | undefined>; url: string }) => {
        contentType = res.headers["content-type"] ?? "";
        finalUrl = res.url;
        const declared = Number(res.headers["content-length"] ?? NaN);
        if (declared > maxBytes) {
          stream.destroy(
            new PayloadTooLargeError(`input is ${declared} bytes, above INPUT_URL_MAX_BYTES=${maxBytes}`),
          );
        }
      });
      const limit = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          received += chunk.length;
          if (received > maxBytes) {
            return cb(new PayloadTooLargeError(`input is larger than INPUT_URL_MAX_BYTES=${maxBytes}`));
          }
          if (head.length < 16) head = Buffer.concat([head, chunk.subarray(0, 16 - head.length)]);
          cb(null, chunk);
        },
      });
      await pipeline(stream, limit, createWriteStream(tmp));
    } catch (err) {
      await rm(tmp, { force: true });
      if (err instanceof PayloadTooLargeError || err instanceof InputError) throw err;
      // got wraps errors raised inside its stream (our size check among them) in a RequestError.
      const cause = (err as { cause?: unknown }).cause;
      if (cause instanceof PayloadTooLargeError) throw cause;
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw new InputError(describeDownloadError(err, this.opts.timeoutMs), undefined, { cause: err });
    }
    let ext: string | undefined;
    if (opts.expectImage) {
      ext = sniffImage(head);
      if (!ext) {
        await rm(tmp, { force: true });
        throw new InputError(`not an image (content-type ${contentType || "none"})`);
      }
    } else {
      ext = extFromPath(new URL(finalUrl).pathname) ?? extFromMime(contentType) ?? ".bin";
    }
    const name = `${CACHE_PREFIX}${hash}${ext}`;
    await rename(tmp, join(this.opts.inputDir, name));
    await this.cache.add(hash, name, received);
    return name;
  }
}

/**
 * The bytes of a data: URI's payload. Node's decoders are lenient (base64 skips bad characters, and
 * decodeURIComponent throws a URIError): a payload that does not decode cleanly is the caller's mistake (400).
 */
function decodeDataUri(data: string, base64: boolean): Buffer {
  let body: Buffer;
  if (base64) {
    const text = data.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text) || text.length % 4 === 1)
      throw new InputError("data: URI is not valid base64");
    body = Buffer.from(text, "base64");
  } else {
    try {
      body = Buffer.from(decodeURIComponent(data), "utf8");
    } catch {
      throw new InputError("data: URI has an invalid percent-encoding");
    }
  }
  if (body.length === 0) throw new InputError("data: URI is empty");
  return body;
}

function extFromPath(path: string): string | undefined {
  const ext = extname(path).toLowerCase();
  return /^\.[a-z0-9]{1,8}$/.test(ext) ? ext : undefined;
}

function extFromMime(mime: string): string | undefined {
  const m = mime.split(";")[0]?.trim().toLowerCase() ?? "";
  const table: Record<string, string> = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/flac": ".flac",
    "text/plain": ".txt",
    "application/json": ".json",
  };
  return table[m];
}

function describeDownloadError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; code?: string; message?: string; response?: { statusCode?: number } };
  if (e instanceof BlockedAddressError) return e.message;
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof BlockedAddressError) return cause.message;
  if (e.name === "TimeoutError" || e.code === "ETIMEDOUT")
    return `download took longer than INPUT_URL_TIMEOUT_MS=${timeoutMs}`;
  if (e.response?.statusCode) return `the server answered ${e.response.statusCode}`;
  return e.message ?? String(err);
}
