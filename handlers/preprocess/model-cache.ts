import { readdir, rm, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { ModelTooLargeError } from "../../lib/errors.js";
import { MODEL_PREFIX } from "./model-folders.js";

export interface ModelCacheOptions {
  /** ComfyUI's models folder. */
  modelsDir: string;
  /** Its sub-folders the worker downloads into: read once for what earlier runs left. */
  dirs: readonly string[];
  /** MODEL_CACHE_MAX_BYTES: downloaded models plus the downloads under way. */
  maxBytes: number;
  /** Whether a queued or running job uses the file (`<dir>/<name>`): such a file is never evicted. */
  isPinned: (file: string) => boolean;
}

export interface CachedModel {
  /** The folder's sub-folder and the file's name: `<dir>/<name>`. */
  file: string;
  name: string;
  bytes: number;
  /** The sha256 computed while downloading (unknown for a file an earlier run left). */
  sha256?: string | undefined;
}

/** A size held for a download under way, given back when it ends (its file, if any, is then counted by `add`). */
export type Reservation = () => void;

const OWN_FILE = new RegExp(`^(${MODEL_PREFIX}[0-9a-f]{16}-).+`);

/**
 * The models the worker downloaded, in least-recently-used order, bounded by MODEL_CACHE_MAX_BYTES. Only files named
 * `od-<hash>-...` are counted and evicted: the image's own models are never touched. Room is made before a download
 * starts (`reserve`), from the least recently used files no job pins; when the pinned files leave too little room,
 * the download is refused instead of filling the disk. The bookkeeping after the index is loaded is synchronous, so
 * two downloads reserving at once never both count the same free bytes.
 */
export class ModelCache {
  /** `<dir>/<stem>` -> the file, least recently used first (a Map keeps insertion order). */
  private loaded: Promise<Map<string, CachedModel>> | undefined;
  private usedBytes = 0;
  private reservedBytes = 0;

  constructor(private readonly opts: ModelCacheOptions) {}

  /** The file downloaded for `<dir>/<stem>`, marked as just used; undefined when none is (or it was removed). */
  async lookup(dir: string, stem: string): Promise<CachedModel | undefined> {
    const index = await this.index();
    const key = `${dir}/${stem}`;
    const entry = index.get(key);
    if (!entry) return undefined;
    const now = new Date();
    const present = await utimes(join(this.opts.modelsDir, entry.file), now, now).then(
      () => true,
      () => false,
    );
    // Looked up again after the await: an eviction meanwhile may have dropped it.
    if (index.get(key) !== entry) return undefined;
    this.drop(index, key);
    if (!present) return undefined;
    this.put(index, key, entry);
    return entry;
  }

  /** Whether `<dir>/<stem>` was downloaded and is still counted, without marking it used (a cost estimate's look). */
  async has(dir: string, stem: string): Promise<boolean> {
    return (await this.index()).has(`${dir}/${stem}`);
  }

  /**
   * Holds `bytes` for a download about to start, evicting the least recently used unpinned files to make room.
   * Throws ModelTooLargeError when even then the cache cannot hold it.
   */
  async reserve(bytes: number, what: string): Promise<Reservation> {
    const index = await this.index();
    const max = this.opts.maxBytes;
    if (bytes > max) {
      throw new ModelTooLargeError(`${what} is ${bytes} bytes, above MODEL_CACHE_MAX_BYTES=${max}`);
    }
    const victims: CachedModel[] = [];
    for (const [key, entry] of index) {
      if (this.usedBytes + this.reservedBytes + bytes <= max) break;
      if (this.opts.isPinned(entry.file)) continue;
      this.drop(index, key);
      victims.push(entry);
    }
    if (this.usedBytes + this.reservedBytes + bytes > max) {
      throw new ModelTooLargeError(
        `${what} is ${bytes} bytes: MODEL_CACHE_MAX_BYTES=${max} holds ${this.usedBytes} bytes of models in use ` +
          `and ${this.reservedBytes} bytes of downloads under way`,
      );
    }
    this.reservedBytes += bytes;
    await Promise.all(victims.map((v) => rm(join(this.opts.modelsDir, v.file), { force: true })));
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reservedBytes -= bytes;
    };
  }

  /** Records a file just renamed into its folder (its download's reservation is given back by the caller). */
  async add(dir: string, stem: string, entry: CachedModel): Promise<void> {
    const index = await this.index();
    const key = `${dir}/${stem}`;
    this.drop(index, key);
    this.put(index, key, entry);
  }

  /**
   * Deletes the least recently used file no job pins, for disk care when the disk runs low whatever this bound
   * says; undefined when every file is pinned or there is none.
   */
  async evictOne(): Promise<CachedModel | undefined> {
    const index = await this.index();
    for (const [key, entry] of index) {
      if (this.opts.isPinned(entry.file)) continue;
      this.drop(index, key);
      await rm(join(this.opts.modelsDir, entry.file), { force: true });
      return entry;
    }
    return undefined;
  }

  /** Files, bytes and reserved bytes now. */
  async size(): Promise<{ files: number; bytes: number; reserved: number }> {
    const index = await this.index();
    return { files: index.size, bytes: this.usedBytes, reserved: this.reservedBytes };
  }

  private index(): Promise<Map<string, CachedModel>> {
    this.loaded ??= this.load();
    return this.loaded;
  }

  /** One pass over the folders: what earlier runs downloaded, least recently used (oldest mtime) first. */
  private async load(): Promise<Map<string, CachedModel>> {
    const found: { key: string; entry: CachedModel; mtime: number }[] = [];
    for (const dir of this.opts.dirs) {
      const names = await readdir(join(this.opts.modelsDir, dir)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") return [] as string[];
        throw err;
      });
      for (const name of names) {
        const stem = OWN_FILE.exec(name)?.[1];
        if (stem === undefined) continue;
        const file = `${dir}/${name}`;
        const s = await stat(join(this.opts.modelsDir, file)).catch(() => undefined);
        if (s?.isFile())
          found.push({ key: `${dir}/${stem}`, entry: { file, name, bytes: s.size }, mtime: s.mtimeMs });
      }
    }
    found.sort((a, b) => a.mtime - b.mtime);
    const index = new Map<string, CachedModel>();
    for (const f of found) {
      this.drop(index, f.key);
      this.put(index, f.key, f.entry);
    }
    return index;
  }

  private put(index: Map<string, CachedModel>, key: string, entry: CachedModel): void {
    index.set(key, entry);
    this.usedBytes += entry.bytes;
  }

  private drop(index: Map<string, CachedModel>, key: string): void {
    const old = index.get(key);
    if (!old) return;
    index.delete(key);
    this.usedBytes -= old.bytes;
  }
}
