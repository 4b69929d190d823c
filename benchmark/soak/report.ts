import { readFile, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../../scripts/services/paths.js";
import { withSection } from "../bench/sections.js";
import type { SoakReport } from "./run.js";

/** The heading of the soak's section of BENCHMARKS.md (the only part of it the soak writes). */
export const SOAK_HEADING = "## Soak";

export interface SoakRunFacts {
  minutes: number;
  seed: number;
  concurrency: number;
  /** The whole run's wall time (start of the fleet to the checker's end). */
  seconds: number;
  /** The code the run loaded (codeVersion's, read at its start). */
  code: { head: string; dirty: boolean };
}

/** The soak's section of BENCHMARKS.md: how it was run, on what, and its tables (renderTable's). */
export function soakSection(report: SoakReport, run: SoakRunFacts): string {
  const command =
    `npm run soak -- --minutes ${run.minutes} --seed ${run.seed}` +
    `${run.concurrency === 3 ? "" : ` --concurrency ${run.concurrency}`} --benchmarks`;
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const code = `code at \`${run.code.head}\`${run.code.dirty ? " with uncommitted changes" : ""}`;
  return `${SOAK_HEADING}

Written by \`${command}\` on ${new Date().toISOString().slice(0, 10)}, ${code}: ${machine}; ${run.minutes} min of traffic,
seed ${run.seed}, ${run.concurrency} requests in flight, ${run.seconds.toFixed(0)} s in all. **${report.violations} violation(s).**

Two workers (each its own process and its own ComfyUI on the CPU), one SeaweedFS S3 reached through a proxy that a
fault takes down, and the router emulator; seeded traffic through the workers' local APIs, \`/route/\` by hand and
the official \`vastai\` client (PyPI), while seeded faults happen. After a quiet period the checker proves each
invariant from the ledger of what every request was told, both workers' \`/result\`, their logs, S3 and their
folders (benchmark/soak/check.ts). Reproduce with \`${command}\`.

${report.table}
`;
}

/** Replaces the soak's section of BENCHMARKS.md (or appends it), leaving every other section as it is. */
export async function writeSoakSection(section: string): Promise<string> {
  const path = join(repoRoot, "BENCHMARKS.md");
  await writeFile(path, withSection(await readFile(path, "utf8"), section));
  return path;
}
