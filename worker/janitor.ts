import { readdir, rm, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { CACHE_PREFIX } from "../handlers/preprocess/downloads.js";
import type { Logger } from "../lib/logger.js";

export interface JanitorOptions {
  outputDir: string;
  inputDir: string;
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
}

/** The last pass, for the operator page. */
export interface LastSweep {
  at: number;
  report: SweepReport;
}

export interface SweepReport {
  freeBefore: number;
  freeAfter: number;
  removed: { path: string; bytes: number }[];
}

/**
 * Disk care, in-process (the template does it with cron): when free space on the output folder's file system is
 * below `minFreeBytes`, remove request output folders and cached URL inputs older than `maxAgeMs`, oldest first,
 * until free space is back above the bound. A running job's folder and a pinned input are never touched.
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
    ]
      .filter((c) => c.mtime < cutoff)
      .sort((a, b) => a.mtime - b.mtime);
    let free = freeBefore;
    for (const c of candidates) {
      if (free >= this.opts.minFreeBytes) break;
      await rm(c.path, { recursive: true, force: true });
      report.removed.push({ path: c.path, bytes: c.bytes });
      free = await this.free();
    }
    report.freeAfter = free;
    if (report.removed.length > 0) {
      const bytes = report.removed.reduce((a, r) => a + r.bytes, 0);
      this.opts.onRemoved?.(report.removed.length, bytes);
      this.opts.onFreeBytes?.(free);
      this.opts.logger.warn(
        {
          stage: "janitor",
          removed: report.removed.length,
          bytes,
          free_before: freeBefore,
          free_after: free,
        },
        `disk care removed ${report.removed.length} old output(s) and cached input(s)`,
      );
    } else {
      this.opts.logger.warn(
        { stage: "janitor", free_bytes: free, min_free_bytes: this.opts.minFreeBytes },
        "free disk space is low and no output is old enough to remove",
      );
    }
    return report;
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

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await dirBytes(p);
    else total += (await stat(p).catch(() => ({ size: 0 }))).size;
  }
  return total;
}
