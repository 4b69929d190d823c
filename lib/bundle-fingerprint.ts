import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BUNDLE_DIR, BUNDLE_MANIFEST } from "./install.js";

/** What bundle/manifest.json records: the sources the bundle was built from, each with its SHA-256. */
export interface SourceFingerprint {
  /** SHA-256 over every file's path and hash, in path order. */
  fingerprint: string;
  /** Path relative to the installation (with /) to the SHA-256 of its bytes, or "missing". */
  files: Record<string, string>;
}

const MISSING = "missing";

/**
 * The one definition of "the sources of the bundle": scripts/bundle.ts records it when it builds, and a start
 * (worker.py, through `worker.mjs bundle-check`) recomputes it over the same files to tell whether the clone's
 * sources still match what the bundle was built from.
 */
export function sourceFingerprint(root: string, paths: readonly string[]): SourceFingerprint {
  const files: Record<string, string> = {};
  for (const path of [...new Set(paths)].sort()) {
    let hash = MISSING;
    try {
      hash = createHash("sha256")
        .update(readFileSync(join(root, path)))
        .digest("hex");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    files[path] = hash;
  }
  const all = createHash("sha256");
  for (const [path, hash] of Object.entries(files)) all.update(`${path}\0${hash}\n`);
  return { fingerprint: all.digest("hex"), files };
}

export type BundleCheck = { ok: true } | { ok: false; reason: string };

/** What `<root>/bundle/manifest.json` records (throws when it cannot be read). */
export function readBundleManifest(root: string): SourceFingerprint {
  return JSON.parse(readFileSync(join(root, BUNDLE_DIR, BUNDLE_MANIFEST), "utf8")) as SourceFingerprint;
}

/** Whether the bundle in `<root>/bundle` was built from the sources now in `root`; the reason when not. */
export function checkBundleSources(root: string): BundleCheck {
  let recorded: SourceFingerprint;
  try {
    recorded = readBundleManifest(root);
  } catch (err) {
    return { ok: false, reason: `no readable ${BUNDLE_DIR}/${BUNDLE_MANIFEST}: ${(err as Error).message}` };
  }
  const now = sourceFingerprint(root, Object.keys(recorded.files ?? {}));
  if (now.fingerprint === recorded.fingerprint) return { ok: true };
  const changed = Object.keys(now.files).filter((path) => now.files[path] !== recorded.files[path]);
  const shown =
    changed.slice(0, 5).join(", ") + (changed.length > 5 ? ` and ${changed.length - 5} more` : "");
  return { ok: false, reason: `changed since the bundle was built: ${shown || "the manifest itself"}` };
}
