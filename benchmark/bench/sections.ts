import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { repoRoot } from "../../scripts/services/paths.js";

/**
 * BENCHMARKS.md is written by scripts, each owning sections that start with a `## ` heading. `withSection`
 * replaces the section whose heading is `section`'s first line (up to the next `## `), or appends it.
 */
export function withSection(doc: string, section: string): string {
  const heading = section.slice(0, section.indexOf("\n"));
  const start = doc.indexOf(`${heading}\n`);
  if (start < 0) return `${doc.trimEnd()}\n\n${section}`;
  const next = doc.indexOf("\n## ", start + 1);
  // One blank line between a replaced section and the next heading, whatever the section ends with.
  return `${doc.slice(0, start)}${section.trimEnd()}\n${next < 0 ? "" : `\n${doc.slice(next + 1)}`}`;
}

/** The section of `doc` whose heading is `heading` (`## Name`), or undefined when it has none. */
export function sectionOf(doc: string, heading: string): string | undefined {
  const start = doc.indexOf(`${heading}\n`);
  if (start < 0) return undefined;
  const next = doc.indexOf("\n## ", start + 1);
  return doc.slice(start, next < 0 ? undefined : next + 1);
}

/** The code a measurement ran: HEAD's short hash, and whether the working tree had uncommitted changes. */
export async function codeVersion(): Promise<{ head: string; dirty: boolean }> {
  const git = (...args: string[]) => promisify(execFile)("git", args, { cwd: repoRoot });
  const [{ stdout: head }, { stdout: status }] = await Promise.all([
    git("rev-parse", "--short", "HEAD"),
    git("status", "--porcelain"),
  ]);
  return { head: head.trim(), dirty: status.trim() !== "" };
}
