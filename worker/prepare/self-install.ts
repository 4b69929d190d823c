import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { ImagePrepare } from "../../config/prepare.js";
import { checkBundleSources } from "../../lib/bundle-fingerprint.js";
import { redactSource } from "../../lib/redact.js";
import { BuildStepError, npmBuild } from "./build.js";
import { runChild } from "./child.js";
import { errorText, PrepareError, since, type PrepareContext } from "./context.js";
import { writePrivate } from "./private-file.js";

const GIT_TIMEOUT_MS = 10 * 60_000;

/** Vast's Python PyWorker (the seed template's PYWORKER_REPO, or a fork of it): no worker for this image. */
const VAST_PYWORKER = /vast-ai\/pyworker(\.git|\/)?$/;

/** The marker of one repository and ref: its name hashes the value as given, its text shows it redacted. */
export function installMarker(markerDir: string, repo: string, ref: string): string {
  const key = createHash("sha256").update(`${repo}#${ref}`).digest("hex").slice(0, 16);
  return join(markerDir, `.installed-from-${key}`);
}

/**
 * PYWORKER_REPO in our image: this worker from a git repository (once per repository and PYWORKER_REF, a marker
 * says it was done), in place of the image's. A repository that is not this worker (Vast's PyWorker, the seed
 * template's default) is logged and ignored. The clone is built beside WORKER_DIR (nothing to build when its
 * bundle is its sources) and swapped in whole: a failure leaves the worker that was there and is thrown.
 */
export async function installFromRepository(
  config: ImagePrepare,
  ctx: PrepareContext,
  packageName: string,
): Promise<void> {
  if (!config.repo) return;
  const { url, ref } = config.repo;
  const shown = `${redactSource(url)}${ref ? ` @ ${ref}` : ""}`;
  if (VAST_PYWORKER.test(url)) {
    ctx.log.info(
      "install",
      `ignoring PYWORKER_REPO=${shown}: that is Vast's Python PyWorker, which this image replaces; running the worker in ${config.workerDir}`,
    );
    return;
  }
  const marker = installMarker(config.installMarkerDir, url, ref);
  if (existsSync(marker)) {
    ctx.log.info(
      "install",
      `${shown} already installed in ${config.workerDir} (${marker}), skipping the install`,
    );
    // A marker of an earlier version holds the repository as given, token and all, readable by anyone.
    if (redactSource(url) !== url && (await readFile(marker, "utf8").catch(() => "")).includes(url)) {
      await writePrivate(marker, [redactSource(url), ref]);
    }
    return;
  }
  const started = Date.now();
  ctx.log.info("install", `installing from ${shown} into ${config.workerDir}`);
  const parent = dirname(config.workerDir);
  await mkdir(parent, { recursive: true });
  const tmp = await mkdtemp(join(parent, ".worker-install."));
  const failed = async (step: string, why?: string): Promise<never> => {
    await rm(tmp, { recursive: true, force: true });
    throw new PrepareError(
      "install_failed",
      `worker install from ${shown} failed at: ${step}${why ? ` (${why})` : ""} (the worker in ${config.workerDir} is unchanged)`,
    );
  };
  const git = async (step: string, args: string[]) => {
    // No prompt for credentials: there is no one to answer it, and the start would hang.
    const env = { ...ctx.env, GIT_TERMINAL_PROMPT: "0" };
    const run = await runChild("git", args, { env, timeoutMs: GIT_TIMEOUT_MS, echo: ctx.childOutput });
    if (!run.ok) await failed(step, run.outcome);
  };
  if (/^[0-9a-f]{40}$/i.test(ref)) {
    // A full commit id: clone --branch does not take one, fetch does.
    await git("git init", ["init", "-q", tmp]);
    await git(`git fetch ${ref}`, ["-C", tmp, "fetch", "-q", "--depth", "1", url, ref]);
    await git(`git checkout ${ref}`, ["-C", tmp, "checkout", "-q", "FETCH_HEAD"]);
  } else {
    await git("git clone", ["clone", "-q", "--depth", "1", ...(ref ? ["--branch", ref] : []), url, tmp]);
  }
  const name = await readFile(join(tmp, "package.json"), "utf8").then(
    (text) => (JSON.parse(text) as { name?: unknown }).name,
    () => undefined,
  );
  if (name !== packageName) {
    await rm(tmp, { recursive: true, force: true });
    ctx.log.info(
      "install",
      `ignoring PYWORKER_REPO=${shown}: it is not this worker (its package.json names ${typeof name === "string" ? name : "nothing"}, not ${packageName}; a seed template's PyWorker repository?); running the worker in ${config.workerDir}`,
    );
    return;
  }
  const bundle = checkBundleSources(tmp);
  if (bundle.ok) {
    ctx.log.info("install", "its bundle was built from its sources: nothing to build");
  } else {
    ctx.log.info("install", `building it (${bundle.reason})`);
    try {
      await npmBuild(tmp, ctx);
    } catch (err) {
      await failed(err instanceof BuildStepError ? err.step : "the build", errorText(err));
    }
  }
  // The swap: the old worker moves aside, the new one in; either back where it was if that fails.
  const old = `${config.workerDir}.old.${process.pid}`;
  const hadOld = existsSync(config.workerDir);
  if (hadOld)
    await rename(config.workerDir, old).catch((err: unknown) =>
      failed("moving the old worker aside", errorText(err)),
    );
  try {
    await rename(tmp, config.workerDir);
  } catch (err) {
    if (hadOld) await rename(old, config.workerDir);
    await failed("moving the new worker in place", errorText(err));
  }
  if (hadOld) await rm(old, { recursive: true, force: true });
  await mkdir(config.installMarkerDir, { recursive: true });
  await writePrivate(marker, [redactSource(url), ref]);
  ctx.log.info("install", `installed from ${shown} (${basename(marker)})`, { duration_s: since(started) });
}
