import { readdir, rm, stat, utimes } from "node:fs/promises";
import { join } from "node:path";

/** Cached inputs are named `url_<hash><ext>` at the top of ComfyUI's input folder (LoadImage lists only that level). */
export const CACHE_PREFIX = "url_";

const CACHE_NAME = new RegExp(`^${CACHE_PREFIX}([0-9a-f]{32})(\\.[a-z0-9]{1,8})?$`);

export interface InputCacheOptions {
  dir: string;
  maxBytes: number;
  maxFiles: number;
  /** Files a job still needs: never evicted. */
  isPinned: (name: string) => boolean;
}

interface Entry {
  name: string;
  bytes: number;
}

/**
 * The downloaded inputs in the input folder, indexed in memory (hash -> file) in least-recently-used order, bounded
 * by total bytes and by file count. The folder is read once, at first use; after that a lookup costs one stat (the
 * janitor may have removed the file) and an addition evicts from the index, so time and memory stay linear in the
 * number of files, never in the number of downloads times files.
 */
export class InputCache {
  private loaded: Promise<Map<string, Entry>> | undefined;
  private totalBytes = 0;

  constructor(private readonly opts: InputCacheOptions) {}

  /** The cached file for this hash, marked as just used; undefined when there is none (or it was removed). */
  async lookup(hash: string): Promise<string | undefined> {
    const index = await this.index();
    const entry = index.get(hash);
    if (!entry) return undefined;
    const path = join(this.opts.dir, entry.name);
    const now = new Date();
    // The janitor ages cached inputs out by mtime: a hit keeps the file young.
    const present = await utimes(path, now, now).then(
      () => true,
      () => false,
    );
    this.drop(index, hash);
    if (!present) return undefined;
    this.put(index, hash, entry);
    return entry.name;
  }

  /** Records a file just written into the folder, then evicts past the bounds (never `name` or a pinned file). */
  async add(hash: string, name: string, bytes: number): Promise<void> {
    const index = await this.index();
    this.drop(index, hash);
    this.put(index, hash, { name, bytes });
    await this.evict(index, name);
  }

  /** Files and bytes indexed now. */
  async size(): Promise<{ files: number; bytes: number }> {
    const index = await this.index();
    return { files: index.size, bytes: this.totalBytes };
  }

  private index(): Promise<Map<string, Entry>> {
    this.loaded ??= this.load();
    return this.loaded;
  }

  /** One pass over the folder: what earlier runs left, oldest first. */
  private async load(): Promise<Map<string, Entry>> {
    // A folder that does not exist yet holds nothing; any other failure must not hide the files it holds (they
    // would never be counted nor evicted).
    const names = await readdir(this.opts.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return [] as string[];
      throw err;
    });
    const stated = await Promise.all(
      names.map(async (name) => {
        const hash = hashOf(name);
        if (hash === undefined) return undefined;
        const s = await stat(join(this.opts.dir, name)).catch(() => undefined);
        return s?.isFile() ? { hash, entry: { name, bytes: s.size }, mtime: s.mtimeMs } : undefined;
      }),
    );
    const found = stated.filter((f) => f !== undefined);
    found.sort((a, b) => a.mtime - b.mtime);
    const index = new Map<string, Entry>();
    for (const f of found) {
      this.drop(index, f.hash);
      this.put(index, f.hash, f.entry);
    }
    return index;
  }

  private put(index: Map<string, Entry>, hash: string, entry: Entry): void {
    index.set(hash, entry);
    this.totalBytes += entry.bytes;
  }

  private drop(index: Map<string, Entry>, hash: string): void {
    const old = index.get(hash);
    if (!old) return;
    index.delete(hash);
    this.totalBytes -= old.bytes;
  }

  private over(index: Map<string, Entry>): boolean {
    return this.totalBytes > this.opts.maxBytes || index.size > this.opts.maxFiles;
  }

  /** Removes the least recently used files while the cache is above a bound. */
  private async evict(index: Map<string, Entry>, keep: string): Promise<void> {
    const victims: Entry[] = [];
    for (const [hash, entry] of index) {
      if (!this.over(index)) break;
      if (entry.name === keep || this.opts.isPinned(entry.name)) continue;
      this.drop(index, hash);
      victims.push(entry);
    }
    await Promise.all(victims.map((v) => rm(join(this.opts.dir, v.name), { force: true })));
  }
}

/** The hash in a cache file's name (`url_<32 hex><ext>`), or undefined for any other file (a `.part` among them). */
function hashOf(name: string): string | undefined {
  const m = CACHE_NAME.exec(name);
  return m?.[1];
}
