import { readdir, rm, stat, statfs } from "node:fs/promises";
import { join, sep } from "node:path";
import { CACHE_PREFIX } from "../handlers/preprocess/downloads.js";
import type { FrozenConfig } from "../config/index.js";
import type { Logger } from "../lib/logger.js";

/** Written in an output folder once every file of it is in storage: the janitor's second rule may remove it. */
export const UPLOADED_MARKER = ".uploaded";

export interface JanitorOptions {
  outputDir: string;
  inputDir: string;
  /**
   * Other folders where files are left behind and only age out (rule 1): each ComfyUI backend's own output folder
   * other than `outputDir` (a job that failed after a save leaves its file there).
   */
  leftoverDirs?: readonly string[];
  minFreeBytes: number;
  maxAgeMs: number;
  intervalMs: number;
  logger: Logger;
  /** Request ids whose files must stay (jobs not finished). */
  activeIds: () => Set<string>;
  /** Input files a job still needs. */
  pinnedInputs: () => Set<string>;
  onRemoved?: (files: number, bytes: number) => void;
  onFreeBytes?: (bytes: number) => void;
  now?: () => number;
  /** ComfyUI's models folder, where `evictModel` deletes (absent: none known). */
  modelsDir?: string | undefined;
  /** Deletes the least recently used downloaded model no job uses (ModelFetcher.evictOne); undefined when none. */
  evictModel?: () => Promise<{ file: string; bytes: number } | undefined>;
}

/** The folders and rules of FrozenConfig's `disk` and ComfyUI sections, with what only the running worker knows. */
export function janitorOptions(
  config: FrozenConfig,
  live: Pick<
    JanitorOptions,
    "logger" | "activeIds" | "pinnedInputs" | "onRemoved" | "onFreeBytes" | "evictModel"
  >,
): JanitorOptions {
  return {
    outputDir: config.outputDir,
    inputDir: config.comfyui.inputDir,
    leftoverDirs: config.comfyui.backends.map((b) => b.outputDir).filter((d) => d !== config.outputDir),
    minFreeBytes: config.disk.minFreeBytes,
    maxAgeMs: config.disk.outputMaxAgeMs,
    intervalMs: config.disk.janitorIntervalMs,
    modelsDir: config.models.dir,
    ...live,
  };
}

/** The last pass, for the operator page. */
export interface LastSweep {
  at: number;
  report: SweepReport;
}

export interface SweepReport {
  freeBefore: number;
  freeAfter: number;
  removed: { path: string; bytes: number; reason: "age" | "uploaded" | "model" }[];
}

/**
 * Disk care, in-process (the template does it with cron). When free space on the output folder's file system is
 * below `minFreeBytes`:
 * 1. (the seed's rule) remove request output folders, cached URL inputs and what the other backends' output
 *    folders hold, older than `maxAgeMs`, oldest first, until free space is back above the bound;
 * 2. if it is still below, remove the oldest output folders whose files are all in storage (marked
 *    UPLOADED_MARKER), whatever their age: a busy worker fills its disk long before outputs get old;
 * 3. if it is still below, delete downloaded models (models on demand) no queued or running job uses, least
 *    recently used first, when they are on the same file system: last, since each costs a download to get back.
 * A running job's folder, a folder whose upload failed (or was never asked for) and a pinned input are never
 * touched. What is removed is logged with the rule that removed it.
 */
export class Janitor {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<SweepReport> | undefined;
  private last: LastSweep | undefined;

  constructor(private readonly opts: JanitorOptions) {}

  start(): void {
    const tick = () => {
      void this.sweep()
        .catch((err: unknown) => this.opts.logger.error({ stage: "janitor", err }, "disk care failed"))
        .finally(() => {
          this.timer = setTimeout(tick, this.opts.intervalMs);
          this.timer.unref();
        });
    };
    this.timer = setTimeout(tick, this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  lastSweep(): LastSweep | undefined {
    return this.last;
  }

  /** One pass; concurrent calls share it. */
  sweep(): Promise<SweepReport> {
    this.running ??= this.pass()
      .then((report) => {
        this.last = { at: (this.opts.now ?? Date.now)(), report };
        return report;
      })
      .finally(() => (this.running = undefined));
    return this.running;
  }

  private async free(): Promise<number> {
    const s = await statfs(this.opts.outputDir);
    return s.bavail * s.bsize;
  }

  /** Whether deleting models frees space where free space is measured (the models folder may be another disk). */
  private async modelsShareDisk(): Promise<boolean> {
    if (this.opts.modelsDir === undefined || !this.opts.evictModel) return false;
    const [models, outputs] = await Promise.all([
      stat(this.opts.modelsDir).catch(() => undefined),
      stat(this.opts.outputDir).catch(() => undefined),
    ]);
    return models !== undefined && outputs !== undefined && models.dev === outputs.dev;
  }

  private async pass(): Promise<SweepReport> {
    const freeBefore = await this.free();
    this.opts.onFreeBytes?.(freeBefore);
    const report: SweepReport = { freeBefore, freeAfter: freeBefore, removed: [] };
    if (freeBefore >= this.opts.minFreeBytes) return report;
    const cutoff = (this.opts.now ?? Date.now)() - this.opts.maxAgeMs;
    const active = this.opts.activeIds();
    const pinned = this.opts.pinnedInputs();
    const candidates = [
      ...(await this.entries(this.opts.outputDir, (name) => !active.has(name))),
      ...(await this.entries(
        this.opts.inputDir,
        (name) => name.startsWith(CACHE_PREFIX) && !pinned.has(name),
      )),
      ...(
        await Promise.all(
          (this.opts.leftoverDirs ?? []).map((dir) =>
            this.entries(dir, (name) => !this.holdsOurFolders(join(dir, name))),
          ),
        )
      ).flat(),
    ]
      .filter((c) => c.mtime < cutoff)
      .sort((a, b) => a.mtime - b.mtime);
    let free = freeBefore;
    const remove = async (c: { path: string; bytes: number }, reason: "age" | "uploaded") => {
      await rm(c.path, { recursive: true, force: true });
      report.removed.push({ path: c.path, bytes: c.bytes, reason });
      free = await this.free();
    };
    for (const c of candidates) {
      if (free >= this.opts.minFreeBytes) break;
      await remove(c, "age");
    }
    if (free < this.opts.minFreeBytes) {
      const gone = new Set(report.removed.map((r) => r.path));
      const stillActive = this.opts.activeIds();
      const uploaded = (await this.entries(this.opts.outputDir, (name) => !stillActive.has(name)))
        .filter((c) => !gone.has(c.path))
        .sort((a, b) => a.mtime - b.mtime);
      for (const c of uploaded) {
        if (free >= this.opts.minFreeBytes) break;
        if (!(await isUploaded(c.path))) continue;
        await remove(c, "uploaded");
      }
    }
    if (free < this.opts.minFreeBytes && (await this.modelsShareDisk())) {
      while (free < this.opts.minFreeBytes) {
        const model = await this.opts.evictModel!();
        if (!model) break;
        report.removed.push({
          path: join(this.opts.modelsDir!, model.file),
          bytes: model.bytes,
          reason: "model",
        });
        free = await this.free();
      }
    }
    report.freeAfter = free;
    if (report.removed.length > 0) {
      const bytes = report.removed.reduce((a, r) => a + r.bytes, 0);
      const byAge = report.removed.filter((r) => r.reason === "age");
      const byUpload = report.removed.filter((r) => r.reason === "uploaded");
      const models = report.removed.filter((r) => r.reason === "model");
      this.opts.onRemoved?.(report.removed.length, bytes);
      this.opts.onFreeBytes?.(free);
      this.opts.logger.warn(
        {
          stage: "janitor",
          removed: report.removed.length,
          bytes,
          free_before: freeBefore,
          free_after: free,
          older_than_max_age: byAge.map((r) => r.path),
          already_uploaded: byUpload.map((r) => r.path),
          models_evicted: models.map((r) => r.path),
          models_bytes: models.reduce((a, r) => a + r.bytes, 0),
        },
        `disk care: free space below DISK_MIN_FREE_MB; removed ${byAge.length} item(s) older than ` +
          `OUTPUT_MAX_AGE_HOURS, ${byUpload.length} output folder(s) already uploaded to storage and ` +
          `${models.length} downloaded model(s) no job uses`,
      );
    } else {
      this.opts.logger.warn(
        { stage: "janitor", free_bytes: free, min_free_bytes: this.opts.minFreeBytes },
        "free disk space is low and no output is old enough to remove, nor a downloaded model unused",
      );
    }
    return report;
  }

  /** Whether `path` is, or contains, a folder the janitor keeps (folders nested by an odd configuration). */
  private holdsOurFolders(path: string): boolean {
    const kept = [this.opts.outputDir, this.opts.inputDir, ...(this.opts.leftoverDirs ?? [])];
    return kept.some((dir) => dir === path || dir.startsWith(`${path}${sep}`));
  }

  private async entries(dir: string, keep: (name: string) => boolean) {
    const names = await readdir(dir).catch(() => [] as string[]);
    const out: { path: string; mtime: number; bytes: number }[] = [];
    for (const name of names) {
      if (!keep(name)) continue;
      const path = join(dir, name);
      const s = await stat(path).catch(() => undefined);
      if (!s) continue;
      out.push({ path, mtime: s.mtimeMs, bytes: s.isDirectory() ? await dirBytes(path) : s.size });
    }
    return out;
  }
}

async function isUploaded(dir: string): Promise<boolean> {
  return stat(join(dir, UPLOADED_MARKER)).then(
    (s) => s.isFile(),
    () => false,
  );
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await dirBytes(p);
    else total += (await stat(p).catch(() => ({ size: 0 }))).size;
  }
  return total;
}
