import { createHash, randomUUID, type Hash } from "node:crypto";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { got, type Got } from "got";
import type { S3Settings } from "../../config/index.js";
import {
  ModelAccessDeniedError,
  ModelChecksumError,
  ModelReferenceError,
  ModelTooLargeError,
  ModelUnreachableError,
  WorkerError,
} from "../../lib/errors.js";
import { backoffDelay, delay, untilAborted } from "../../lib/backoff.js";
import type { Logger } from "../../lib/logger.js";
import { Pins } from "../../lib/pins.js";
import { redactText } from "../../lib/redact.js";
import { resolveS3, type ResolvedS3 } from "../storage/s3.js";
import {
  DEFAULT_MODEL_BYTES,
  SIZE_PROBE_TIMEOUT_MS,
  Throughput,
  referencedModels,
} from "./download-estimate.js";
import { BlockedAddressError, inputGuards } from "./address-policy.js";
import { ModelCache, type CachedModel, type Reservation } from "./model-cache.js";
import {
  MODEL_PREFIX,
  modelFileName,
  parseModelReference,
  type ModelFolder,
  type ModelReference,
} from "./model-folders.js";

export interface ModelFetcherOptions {
  /** ComfyUI's models folder. */
  modelsDir: string;
  /** The sub-folders downloads go to (model-folders.ts): read at first use for what earlier runs left. */
  dirs: readonly string[];
  /** MODEL_MAX_BYTES. */
  maxBytes: number;
  /** MODEL_CACHE_MAX_BYTES. */
  cacheMaxBytes: number;
  /** MODEL_DOWNLOAD_TIMEOUT_MS: one download, whole. */
  timeoutMs: number;
  /** INPUT_URL_ALLOW_PRIVATE: the address policy for https:// and hf:// references. */
  allowPrivate: boolean;
  hfEndpoint: string;
  hfToken?: string | undefined;
  /**
   * For s3:// references: the operator's S3 settings (S3_*, possibly none) and a pre-signed GET URL of an object of
   * a resolved target (valid for the whole download, resumed ranges included). Absent, s3:// is refused.
   */
  s3?: { env: S3Settings; presignGet(target: ResolvedS3, key: string): Promise<string> } | undefined;
  logger?: Logger | undefined;
  /** Told of every lookup, byte and download (the worker's metrics); it must not throw. */
  observer?: ModelObserver | undefined;
}

/** What the fetcher tells its observer (Prometheus metrics in the worker). */
export interface ModelObserver {
  /** A fetch found the file downloaded (hit), or had to wait for a download, its own or one under way (miss). */
  lookup(hit: boolean): void;
  /** Bytes of a download written to disk (resumed attempts included). */
  bytes(n: number): void;
  /** A download that ended with the file in place: its size and its whole time. */
  downloaded(bytes: number, seconds: number): void;
}

/**
 * Where a download a job waits on stands: `total` is what the source's first answer declared (undefined before it,
 * or when it declares none). Told when the download starts, at each whole percent (each 8 MiB when the total is
 * unknown) and when the file is whole.
 */
export interface ModelProgress {
  /** The reference as shown in logs (no query, no credentials). */
  model: string;
  folder: string;
  received: number;
  total: number | undefined;
}

/** A job's expected wait on downloads of the models it names (see `expectedDownload`). */
export interface DownloadEstimate {
  /** Seconds of download expected: the missing models' bytes at the measured throughput, capped by the deadline. */
  seconds: number;
  bytes: number;
  /** Models neither downloaded nor being downloaded. */
  models: number;
  /** Of them, those whose size is not known (counted as DEFAULT_MODEL_BYTES). */
  unknownSize: number;
}

/** Who hears a download's progress, and the last progress told (a caller joining late hears it at once). */
interface Audience {
  listeners: Set<(p: ModelProgress) => void>;
  last: ModelProgress | undefined;
}

/** A download under way: whoever fetches the same reference meanwhile waits on it and hears its progress. */
interface Flight {
  done: Promise<CachedModel>;
  audience: Audience;
}

/** A parsed reference and, for s3://, the storage it reads (`ModelFetcher.reference` decides which). */
type Resolved = ModelReference & { s3?: ResolvedS3 };

/** Sizes remembered (per reference) at most; the oldest are forgotten first. */
const MAX_KNOWN_SIZES = 1024;
/** Without a declared total, progress is told every this many bytes. */
const PROGRESS_STEP_BYTES = 8 * 1024 * 1024;

/**
 * Attempts of one download: a dropped connection resumes from the bytes already on disk (a Range request), after a
 * short backoff; a refusal, a status or a limit is never retried.
 */
const MAX_ATTEMPTS = 4;
/** Sub-folder of the models folder holding downloads under way: no folder_paths entry lists it. */
const PARTIAL_DIR = ".downloads";

/**
 * Models named by reference in a loader's input (`https://`, `s3://`, `hf://`), downloaded into ComfyUI's models
 * folder under a content-addressed name. One download per reference, whoever asks meanwhile: the download runs under
 * its own deadline, never a caller's signal (a cancelled job stops waiting, the download goes on for the others and
 * the cache). A download is written under `.downloads/` with a `.partial` name and renamed into its folder when
 * whole and verified, so ComfyUI never lists a partial file; ComfyUI's folder listing is cached by the folder's
 * mtime, so the renamed file is seen by the next prompt without a restart.
 *
 * Failure contract (never retried by the caller): ModelReferenceError (malformed, refused address),
 * ModelUnreachableError, ModelAccessDeniedError (401/403), ModelTooLargeError, ModelChecksumError; the caller's
 * signal's reason when it aborts. Messages show the reference without query or credentials.
 */
export class ModelFetcher {
  private readonly http: Got;
  /** For s3:// at the operator's own endpoint: its address is the operator's choice, no address policy. */
  private readonly unguarded: Got;
  private readonly cache: ModelCache;
  private readonly inFlight = new Map<string, Flight>();
  /** Sizes of references, from a HEAD or a download's first answer: what a cost estimate reads. */
  private readonly sizes = new Map<string, number>();
  /** HEADs under way, one per reference. */
  private readonly probes = new Map<string, Promise<number | undefined>>();
  /** Download throughput measured on the downloads that went to the network. */
  readonly throughput = new Throughput();
  /** Files (`<dir>/<name>`) a queued or running job uses, with how many jobs: never evicted. */
  private readonly pinned = new Pins();
  /** Downloads that went to the network, for tests and metrics. */
  downloads = 0;
  private swept: Promise<void> | undefined;

  constructor(private readonly opts: ModelFetcherOptions) {
    this.cache = new ModelCache({
      modelsDir: opts.modelsDir,
      dirs: opts.dirs,
      maxBytes: opts.cacheMaxBytes,
      isPinned: (file) => this.pinned.has(file),
    });
    this.http = makeHttp(opts.allowPrivate);
    this.unguarded = got.extend({ retry: { limit: 0 }, followRedirect: true, maxRedirects: 5 }) as Got;
  }

  /**
   * The file name (relative to the folder) that replaces `value` in the workflow, pinned for the caller: call
   * `unpin(<dir>/<name>)` (the `file` returned) when the job ends. `s3` is the request's `s3` settings: an s3://
   * reference reads the storage they name, with their keys (`reference`).
   */
  async fetch(
    value: string,
    folder: ModelFolder,
    signal?: AbortSignal,
    onProgress?: (p: ModelProgress) => void,
    s3?: S3Settings,
  ): Promise<{ name: string; file: string }> {
    const ref = this.reference(value, s3);
    const key = `${folder.dir}/${ref.stem}`;
    let flight = this.inFlight.get(key);
    if (flight) this.opts.observer?.lookup(false);
    else {
      const audience: Audience = { listeners: new Set(), last: undefined };
      flight = {
        audience,
        done: this.resolve(ref, folder, audience).finally(() => this.inFlight.delete(key)),
      };
      this.inFlight.set(key, flight);
    }
    const { audience } = flight;
    if (onProgress) {
      audience.listeners.add(onProgress);
      if (audience.last) onProgress(audience.last);
    }
    // Pinned in the same turn the download resolves: no other download's eviction runs in between.
    const pinned = flight.done.then((entry) => {
      this.pin(entry.file);
      return entry;
    });
    const entry = await untilAborted(pinned, signal)
      .finally(() => onProgress && audience.listeners.delete(onProgress))
      .catch((err: unknown) => {
        // A caller that stopped waiting leaves the pin its download took for it.
        if (signal?.aborted)
          void pinned.then(
            (e) => this.unpin(e.file),
            () => undefined,
          );
        throw err;
      });
    if (ref.sha256 !== undefined && entry.sha256 !== undefined && entry.sha256 !== ref.sha256) {
      this.unpin(entry.file);
      throw new ModelChecksumError(
        `${ref.shown}: the cached file's sha256 is ${entry.sha256}, not the ${ref.sha256} the reference gives`,
      );
    }
    return { name: entry.name, file: entry.file };
  }

  pin(file: string): void {
    this.pinned.pin(file);
  }

  unpin(file: string): void {
    this.pinned.unpin(file);
  }

  /** The cache's size now (files and bytes downloaded, bytes reserved by downloads under way). */
  size(): Promise<{ files: number; bytes: number; reserved: number }> {
    return this.cache.size();
  }

  /**
   * The download time a job naming these models would wait for: every model reference of `workflow` that is neither
   * downloaded nor being downloaded (a download under way is counted by the job that started it, once), at its size
   * over the measured throughput. A size comes from what earlier HEADs and downloads of the reference said; with
   * `probe`, a reference never seen is asked with a HEAD (under the download's address policy, at most
   * SIZE_PROBE_TIMEOUT_MS); else, or when the source does not say, it is DEFAULT_MODEL_BYTES; never more than
   * MODEL_MAX_BYTES. The models download
   * side by side, sharing the link: their bytes add up. Never longer than a download may last
   * (MODEL_DOWNLOAD_TIMEOUT_MS). A reference that does not parse weighs nothing: the job is refused for it.
   */
  async expectedDownload(workflow: unknown, opts: { probe?: boolean } = {}): Promise<DownloadEstimate> {
    const refs: { ref: ModelReference; folder: ModelFolder }[] = [];
    for (const { value, folder } of referencedModels(workflow)) {
      try {
        refs.push({ ref: parseModelReference(value, { hfEndpoint: this.opts.hfEndpoint }), folder });
      } catch {
        /* refused when the job prepares its inputs */
      }
    }
    const present = await Promise.all(refs.map(({ ref, folder }) => this.cache.has(folder.dir, ref.stem)));
    const missing = refs.filter(
      ({ ref, folder }, i) => !present[i] && !this.inFlight.has(`${folder.dir}/${ref.stem}`),
    );
    const sizes = await Promise.all(
      missing.map(({ ref }) =>
        this.sizes.has(ref.stem) || !opts.probe ? this.sizes.get(ref.stem) : this.probeSize(ref),
      ),
    );
    // A source's claim counts at most MODEL_MAX_BYTES: a larger file is refused at its first answer, so a
    // caller's server cannot make this worker report more load than a download may bring.
    const bytes = sizes.reduce<number>(
      (sum, b) => sum + Math.min(b ?? DEFAULT_MODEL_BYTES, this.opts.maxBytes),
      0,
    );
    return {
      seconds: Math.min(this.throughput.secondsFor(bytes), this.opts.timeoutMs / 1000),
      bytes,
      models: missing.length,
      unknownSize: sizes.filter((b) => b === undefined).length,
    };
  }

  private rememberSize(stem: string, bytes: number): void {
    this.sizes.delete(stem);
    this.sizes.set(stem, bytes);
    if (this.sizes.size > MAX_KNOWN_SIZES) this.sizes.delete(this.sizes.keys().next().value as string);
  }

  /**
   * A reference's size from a HEAD of its source (redirects followed, under the address policy), one at a time per
   * reference; undefined when the source refuses, says nothing or does not answer in SIZE_PROBE_TIMEOUT_MS. An s3://
   * reference is a pre-signed GET, which a HEAD cannot use: its size is known from its first download.
   */
  private probeSize(ref: ModelReference): Promise<number | undefined> {
    if (ref.source.kind === "s3") return Promise.resolve(undefined);
    let probe = this.probes.get(ref.stem);
    if (probe) return probe;
    probe = (async () => {
      const { url, headers, guarded } = await this.source(ref);
      const res = await (guarded ? this.http : this.unguarded).head(url, {
        headers,
        signal: AbortSignal.timeout(SIZE_PROBE_TIMEOUT_MS),
      });
      const bytes = Number(res.headers["content-length"]);
      if (!(bytes > 0)) return undefined;
      this.rememberSize(ref.stem, bytes);
      return bytes;
    })()
      .catch(() => undefined)
      .finally(() => this.probes.delete(ref.stem));
    this.probes.set(ref.stem, probe);
    return probe;
  }

  /**
   * The reference parsed and, for `s3://<bucket>/<key>`, the one decision of which storage it reads: the request's
   * `s3` settings over the operator's, with the reference's bucket, by the rules of uploads (resolveS3). Without the
   * request's own keys that is the operator's endpoint and bucket only: another bucket or endpoint needs both of the
   * request's keys, so the operator's keys never sign for a bucket they were not given for. A caller's endpoint is
   * checked by the address policy here and downloaded through the guarded client (`source`), DNS and redirects
   * included. Throws ModelReferenceError.
   *
   * The cached file's identity (its stem: the in-flight key, the cache's key and the file's name) is whose storage
   * it is, endpoint + bucket + key: the bytes are that storage's. The bucket and key are in the reference; the
   * endpoint is added when it is the caller's, so that naming `s3://<the operator's bucket>/<key>` with one's own
   * endpoint can neither be served the operator's cached file nor put its own bytes where the operator's
   * reference (or another caller's storage) will find them. At the operator's endpoint the stem stays the plain
   * reference's, whoever's keys read it (the files of earlier runs stay valid). The keys are left out on purpose:
   * the same object is the same bytes whoever reads it, and a downloaded file is in ComfyUI's models folder, which
   * every caller of this worker can name (ComfyUI lists its choices), so a per-key identity would download a file
   * twice while keeping nothing from anyone; credentials decide only whether a download is allowed.
   */
  private reference(value: string, request?: S3Settings): Resolved {
    const ref = parseModelReference(value, { hfEndpoint: this.opts.hfEndpoint });
    if (ref.source.kind !== "s3") return ref;
    if (!this.opts.s3)
      throw new ModelReferenceError(`${ref.shown}: s3:// references need the worker's S3 settings`);
    let target: ResolvedS3 | undefined;
    try {
      target = resolveS3(
        this.opts.s3.env,
        { ...request, bucketName: ref.source.bucket },
        { allowPrivate: this.opts.allowPrivate },
      );
    } catch (err) {
      throw new ModelReferenceError(`${ref.shown}: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (!target) {
      throw new ModelReferenceError(
        `${ref.shown}: s3:// references need the worker's S3 settings or the request's s3 keys`,
      );
    }
    if (!target.callerEndpoint) return { ...ref, s3: target };
    const identity = JSON.stringify([ref.stem, target.endpointUrl]);
    const stem = `${MODEL_PREFIX}${createHash("sha256").update(identity).digest("hex").slice(0, 16)}-`;
    return { ...ref, stem, s3: target };
  }

  private async resolve(ref: Resolved, folder: ModelFolder, audience: Audience): Promise<CachedModel> {
    const hit = await this.cache.lookup(folder.dir, ref.stem);
    this.opts.observer?.lookup(hit !== undefined);
    if (hit) {
      // A file an earlier run left has no recorded digest: a reference that gives one is checked against it once
      // (pinned meanwhile: another download's eviction must not take it while it is read).
      if (ref.sha256 !== undefined && hit.sha256 === undefined) {
        this.pin(hit.file);
        try {
          hit.sha256 = await sha256Of(join(this.opts.modelsDir, hit.file));
        } finally {
          this.unpin(hit.file);
        }
      }
      return hit;
    }
    const started = Date.now();
    const entry = await this.download(ref, folder, audience);
    const seconds = (Date.now() - started) / 1000;
    this.throughput.observe(entry.bytes, seconds);
    this.opts.observer?.downloaded(entry.bytes, seconds);
    this.opts.logger?.info(
      {
        stage: "model_download",
        ms: Date.now() - started,
        bytes: entry.bytes,
        folder: folder.folder,
        model: ref.shown,
      },
      `downloaded ${ref.shown} into ${entry.file}`,
    );
    return entry;
  }

  private async source(
    ref: Resolved,
  ): Promise<{ url: string; headers: Record<string, string>; guarded: boolean }> {
    const s = ref.source;
    if (s.kind === "url") return { url: s.url, headers: {}, guarded: true };
    if (s.kind === "hf") {
      const token = this.opts.hfToken;
      return { url: s.url, headers: token ? { authorization: `Bearer ${token}` } : {}, guarded: true };
    }
    const target = ref.s3;
    if (!target || !this.opts.s3) throw new ModelReferenceError(`${ref.shown}: no storage resolved`);
    const url = await this.opts.s3.presignGet(target, s.key).catch((err: unknown) => {
      throw new ModelReferenceError(`${ref.shown}: ${err instanceof Error ? err.message : String(err)}`);
    });
    // The operator's endpoint is the operator's choice, as for outputs; a caller's is under the address policy at
    // connect time, redirects included.
    return { url, headers: {}, guarded: target.callerEndpoint === true };
  }

  private async download(ref: Resolved, folder: ModelFolder, audience: Audience): Promise<CachedModel> {
    this.downloads++;
    let told = -1;
    const tell = (received: number, total: number | undefined, force = false) => {
      const mark = total ? Math.floor((received / total) * 100) : Math.floor(received / PROGRESS_STEP_BYTES);
      if (mark === told && !force) return;
      told = mark;
      audience.last = { model: ref.shown, folder: folder.folder, received, total };
      // A listener's failure is its own: the download goes on for the others and the cache.
      for (const listener of audience.listeners) {
        try {
          listener(audience.last);
        } catch (err) {
          this.opts.logger?.warn({ stage: "model_download", err }, "a download's progress listener failed");
        }
      }
    };
    const signal = AbortSignal.timeout(this.opts.timeoutMs);
    const { url, headers, guarded } = await this.source(ref);
    const partialDir = join(this.opts.modelsDir, PARTIAL_DIR);
    await mkdir(partialDir, { recursive: true });
    this.swept ??= this.sweepPartials(partialDir);
    await this.swept;
    const tmp = join(partialDir, `${ref.stem}${randomUUID()}.partial`);
    let reservation: Reservation | undefined;
    let name: string | undefined;
    try {
      let attempt = 0;
      // What is on disk: every byte counted and hashed was written first, so a resume starts exactly there.
      let received = 0;
      let hash = createHash("sha256");
      for (;;) {
        const start = received;
        let stream: ReturnType<Got["stream"]> | undefined;
        try {
          stream = (guarded ? this.http : this.unguarded).stream(url, {
            headers: { ...headers, ...(start > 0 && { range: `bytes=${start}-` }) },
            signal,
          });
          // An error while room is made below is read by the pipeline (the stream keeps it), never unhandled.
          stream.on("error", () => undefined);
          const [res] = (await once(stream, "response")) as [
            { statusCode: number; headers: IncomingHttpHeaders },
          ];
          if (start > 0 && res.statusCode !== 206) {
            // The server ignored the range: the body is the whole file again.
            received = 0;
            hash = createHash("sha256");
          }
          const total = received + Number(res.headers["content-length"] ?? NaN);
          if (Number.isFinite(total)) this.rememberSize(ref.stem, total);
          if (total > this.opts.maxBytes) {
            throw new ModelTooLargeError(
              `${ref.shown} is ${total} bytes, above MODEL_MAX_BYTES=${this.opts.maxBytes}`,
            );
          }
          // Named from the first answer (its path, else its Content-Disposition): a wrong name fails before the body.
          name ??= modelFileName(ref, filenameOf(res.headers["content-disposition"]));
          // Room is made before the body is read: the size is known from the first answer when it declares one.
          if (!reservation && Number.isFinite(total))
            reservation = await this.cache.reserve(total, ref.shown);
          const file = await open(tmp, received > 0 ? "a" : "w");
          const maxBytes = this.opts.maxBytes;
          const h = hash;
          const observer = this.opts.observer;
          const declared = Number.isFinite(total) ? total : undefined;
          tell(received, declared, attempt === 0);
          const sink = new Writable({
            write(chunk: Buffer, _enc, cb) {
              if (received + chunk.length > maxBytes)
                return cb(new ModelTooLargeError(`${ref.shown} is larger than MODEL_MAX_BYTES=${maxBytes}`));
              file.write(chunk).then(() => {
                received += chunk.length;
                h.update(chunk);
                observer?.bytes(chunk.length);
                tell(received, declared);
                cb();
              }, cb);
            },
          });
          try {
            await pipeline(stream, sink);
          } finally {
            await file.close();
          }
          break;
        } catch (err) {
          // A refusal after the answer came (size, name, no room) closes the connection at once.
          stream?.destroy();
          attempt++;
          if (!resumable(err) || attempt >= MAX_ATTEMPTS || signal.aborted)
            throw this.describe(err, ref, signal);
          await delay(backoffDelay(attempt, 500, 5_000), signal).catch(() => {
            throw this.describe(err, ref, signal);
          });
          this.opts.logger?.warn(
            { stage: "model_download", model: ref.shown, bytes: received, attempt },
            `download of ${ref.shown} dropped: resuming at byte ${received}`,
          );
        }
      }
      tell(received, received, true);
      const digest = hash.digest("hex");
      if (ref.sha256 !== undefined && digest !== ref.sha256) {
        throw new ModelChecksumError(
          `${ref.shown}: sha256 is ${digest}, not the ${ref.sha256} the reference gives`,
        );
      }
      name ??= modelFileName(ref);
      if (!reservation) reservation = await this.cache.reserve(received, ref.shown);
      await mkdir(join(this.opts.modelsDir, folder.dir), { recursive: true });
      const file = `${folder.dir}/${name}`;
      await rename(tmp, join(this.opts.modelsDir, file));
      const entry: CachedModel = { file, name, bytes: received, sha256: digest };
      await this.cache.add(folder.dir, ref.stem, entry);
      return entry;
    } finally {
      reservation?.();
      await rm(tmp, { force: true });
    }
  }

  /**
   * Removes what downloads of an earlier run left in `.downloads/` (a crash, a kill): only files older than a
   * download may last, so another process's download under way there is never touched.
   */
  private async sweepPartials(dir: string): Promise<void> {
    const names = await readdir(dir).catch(() => [] as string[]);
    const before = Date.now() - this.opts.timeoutMs;
    for (const name of names) {
      const path = join(dir, name);
      const s = await stat(path).catch(() => undefined);
      if (s && s.mtimeMs < before) await rm(path, { force: true });
    }
  }

  /** The failure, as one of the contract's errors; messages never quote a URL's query (signatures, tokens). */
  private describe(err: unknown, ref: ModelReference, signal: AbortSignal): WorkerError {
    if (err instanceof WorkerError && !(err instanceof BlockedAddressError)) return err;
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof ModelTooLargeError) return cause;
    const blocked =
      err instanceof BlockedAddressError ? err : cause instanceof BlockedAddressError ? cause : undefined;
    if (blocked) return new ModelReferenceError(`${ref.shown}: ${blocked.message}`);
    const e = err as { name?: string; code?: string; message?: string; response?: { statusCode?: number } };
    const status = (e.response?.statusCode ?? 0) >= 400 ? e.response?.statusCode : undefined;
    if (status === 401 || status === 403)
      return new ModelAccessDeniedError(`${ref.shown}: the source answered ${status}`, { status });
    if (status !== undefined)
      return new ModelUnreachableError(`${ref.shown}: the source answered ${status}`, { status });
    if (signal.aborted || e.name === "TimeoutError")
      return new ModelUnreachableError(
        `${ref.shown}: the download took longer than MODEL_DOWNLOAD_TIMEOUT_MS=${this.opts.timeoutMs}`,
      );
    return new ModelUnreachableError(`${ref.shown}: ${redactText(e.code ?? e.message ?? String(err))}`);
  }

  /**
   * Whether `value` is in `folder` already, downloaded and not under way (what a prefetch reports as `cached`);
   * marks it as just used. Throws ModelReferenceError for a malformed reference.
   */
  async isCached(value: string, folder: ModelFolder): Promise<boolean> {
    const ref = this.reference(value);
    if (this.inFlight.has(`${folder.dir}/${ref.stem}`)) return false;
    return (await this.cache.lookup(folder.dir, ref.stem)) !== undefined;
  }

  /** Deletes the least recently used downloaded model no job pins (disk care); undefined when there is none. */
  evictOne(): Promise<CachedModel | undefined> {
    return this.cache.evictOne();
  }
}

/** got under the address policy (literal hosts, redirects and the address DNS gives), redirects followed. */
function makeHttp(allowPrivate: boolean): Got {
  return got.extend({
    retry: { limit: 0 },
    followRedirect: true,
    maxRedirects: 5,
    ...inputGuards(allowPrivate),
  }) as Got;
}

/** A dropped connection, worth resuming; a refusal, a status or a limit is not. */
function resumable(err: unknown): boolean {
  if (err instanceof WorkerError) return false;
  const e = err as { name?: string; code?: string; response?: unknown };
  if (e.name === "HTTPError" || e.name === "TimeoutError") return false;
  return (
    e.name === "ReadError" ||
    ["ECONNRESET", "EPIPE", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE"].includes(e.code ?? "")
  );
}

/** The file name a Content-Disposition gives (`filename="..."` or `filename*=UTF-8''...`). */
function filenameOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const star = /filename\*\s*=\s*[^']*''([^;]+)/i.exec(header)?.[1];
  if (star) {
    try {
      return decodeURIComponent(star.trim());
    } catch {
      /* fall through to filename= */
    }
  }
  return /filename\s*=\s*"?([^";]+)"?/i.exec(header)?.[1]?.trim();
}

async function hashFile(path: string): Promise<Hash> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash;
}

async function sha256Of(path: string): Promise<string> {
  return (await hashFile(path)).digest("hex");
}
