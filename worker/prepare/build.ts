import { existsSync, readFileSync } from "node:fs";
import { mkdir, open, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { delay } from "../../lib/backoff.js";
import { checkBundleSources, readBundleManifest, sourceFingerprint } from "../../lib/bundle-fingerprint.js";
import { BUNDLE_DIR, BUNDLE_PROGRAM, DIST_PROGRAM } from "../../lib/install.js";
import { runChild } from "./child.js";
import { errorText, PrepareError, since, type PrepareContext } from "./context.js";
import { npmEnvironment } from "./npm-env.js";

/**
 * The program an installation runs: its bundle when `bundle-check` says it was built from the installation's
 * sources (no npm, no compiler, no registry), else tsc's build in dist/.
 */
export function bundleProgram(root: string): string {
  return join(root, BUNDLE_DIR, BUNDLE_PROGRAM);
}

export function distProgram(root: string): string {
  return join(root, DIST_PROGRAM);
}

/** What the build (npm run build) reads besides the sources the bundle records. */
const BUILD_RECIPE = ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"];

// Deadlines of the build's steps: a first `npm ci` downloads every package (minutes on a slow mirror).
const NPM_CI_TIMEOUT_MS = 20 * 60_000;
const NPM_BUILD_TIMEOUT_MS = 10 * 60_000;
const NPM_PRUNE_TIMEOUT_MS = 5 * 60_000;
const GIT_LIST_TIMEOUT_MS = 60_000;
/** How long a start waits for another one's build in the same installation. */
const BUILD_LOCK_WAIT_MS = 40 * 60_000;

/** A step of the build that failed: `step` as the install's failure names it ("npm ci"). */
export class BuildStepError extends PrepareError {
  constructor(
    readonly step: string,
    message: string,
  ) {
    super("build_failed", message);
  }
}

/**
 * npm's own entry point beside the Node that runs prepare (the wheel's bin/npm only works through a link, and
 * the image's npm is a wrapper of this file), else npm from PATH.
 */
function npmCommand(): { command: string; prefix: string[] } {
  const cli = join(dirname(dirname(process.execPath)), "lib", "node_modules", "npm", "bin", "npm-cli.js");
  return existsSync(cli) ? { command: process.execPath, prefix: [cli] } : { command: "npm", prefix: [] };
}

/**
 * `npm ci`, `npm run build`, `npm prune --omit=dev` in `root`, each with npm's environment only and within its
 * deadline. --include=dev: the build needs TypeScript even where NODE_ENV=production. --ignore-scripts: no
 * package's install script runs; nothing the worker runs needs one (esbuild's, for tsx in development, only checks
 * the binary its platform package already holds). Throws BuildStepError naming the step.
 */
export async function npmBuild(root: string, ctx: PrepareContext): Promise<void> {
  const npm = npmCommand();
  // The Node that runs prepare comes first on PATH: npm's scripts (tsc's `#!/usr/bin/env node`) run on it too.
  const env = npmEnvironment({
    ...ctx.env,
    PATH: [dirname(process.execPath), ctx.env.PATH].filter(Boolean).join(":"),
  });
  const steps: [string, string[], number][] = [
    ["npm ci", ["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--include=dev"], NPM_CI_TIMEOUT_MS],
    ["npm run build", ["run", "build"], NPM_BUILD_TIMEOUT_MS],
    [
      "npm prune --omit=dev",
      ["prune", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
      NPM_PRUNE_TIMEOUT_MS,
    ],
  ];
  for (const [step, args, timeoutMs] of steps) {
    const started = Date.now();
    ctx.log.info("build", `${step} in ${root}`);
    const run = await runChild(npm.command, [...npm.prefix, ...args], {
      cwd: root,
      env,
      timeoutMs,
      echo: ctx.childOutput,
    });
    if (!run.ok) throw new BuildStepError(step, `${step} failed (${run.outcome})`);
    ctx.log.info("build", `${step} done`, { duration_s: since(started) });
  }
  if (!existsSync(distProgram(root))) {
    throw new BuildStepError("npm run build", `the build made no ${DIST_PROGRAM}`);
  }
}

/**
 * The sources a build in `root` is made from, so that a change to any of them builds again: the sources the bundle
 * records (lib/bundle-fingerprint.ts: what the CLI reaches, the lock, the bundle's recipe), the build's own recipe,
 * and every file git tracks in the folders those live in (a file added since the bundle was built counts too;
 * what a build writes there is not tracked, so it never counts).
 */
async function buildSources(root: string, ctx: PrepareContext): Promise<string[]> {
  let recorded: string[] | undefined;
  try {
    recorded = Object.keys(readBundleManifest(root).files ?? {});
  } catch {
    recorded = undefined;
  }
  const git = await runChild("git", ["-C", root, "ls-files", "-z"], {
    env: ctx.env,
    timeoutMs: GIT_LIST_TIMEOUT_MS,
  });
  const tracked = git.ok ? git.output.split("\0").filter(Boolean) : [];
  const folders = new Set((recorded ?? []).filter((p) => p.includes("/")).map((p) => p.split("/")[0]!));
  const inFolders = tracked.filter((p) =>
    recorded ? folders.has(p.split("/")[0]!) : !p.startsWith(`${BUNDLE_DIR}/`),
  );
  return [...(recorded ?? []), ...BUILD_RECIPE, ...inFolders];
}

interface BuildStamp {
  node: string;
  fingerprint: string;
}

/**
 * The program of the installation this code runs from (the stock template's clone): the bundle when it was built
 * from the clone's sources, else dist/, built here once and again only when a source or Node's major version
 * changed (a stamp in .bootstrap/). One start builds at a time (a restart racing a slow first build waits for it).
 */
export async function programFromSources(root: string, ctx: PrepareContext): Promise<string> {
  const bundle = checkBundleSources(root);
  if (bundle.ok) {
    ctx.log.info("build", "bundle built from these sources: running it (no npm)", {
      program: bundleProgram(root),
    });
    return bundleProgram(root);
  }
  ctx.log.info("build", `not running the bundle (${bundle.reason}): building from the sources`);
  const state = join(root, ".bootstrap");
  await mkdir(state, { recursive: true });
  return withLock(join(state, "lock"), ctx, async () => {
    const stampFile = join(state, "build-stamp");
    const stamp = async (): Promise<BuildStamp> => ({
      node: process.versions.node.split(".")[0]!,
      fingerprint: sourceFingerprint(root, await buildSources(root, ctx)).fingerprint,
    });
    const previous = await readFile(stampFile, "utf8").then(
      (text) => JSON.parse(text) as BuildStamp,
      () => undefined,
    );
    const now = await stamp();
    if (
      previous?.fingerprint === now.fingerprint &&
      previous.node === now.node &&
      existsSync(distProgram(root))
    ) {
      ctx.log.info("build", `up to date in ${root} (node ${process.version})`);
      return distProgram(root);
    }
    ctx.log.info(
      "build",
      `installing and building the worker in ${root} with node ${process.version} (first start: minutes)`,
    );
    const started = Date.now();
    await npmBuild(root, ctx);
    // Taken after the build: npm may have rewritten the lock in its own format, which the next start then reads.
    await writeFile(stampFile, `${JSON.stringify(await stamp())}\n`);
    ctx.log.info("build", "built", { duration_s: since(started) });
    return distProgram(root);
  });
}

/**
 * Runs `fn` holding a lock file that names this process (pid and start time, so that a pid reused after a
 * restart is not taken for the holder). A holder that is gone leaves its file behind: it is taken over.
 */
async function withLock<T>(file: string, ctx: PrepareContext, fn: () => Promise<T>): Promise<T> {
  const me = processTag(process.pid);
  const deadline = Date.now() + BUILD_LOCK_WAIT_MS;
  let told = false;
  for (;;) {
    try {
      const handle = await open(file, "wx");
      await handle.writeFile(me);
      await handle.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const holder = (await readFile(file, "utf8").catch(() => "")).trim();
    const pid = Number(holder.split(" ")[0]);
    if (!Number.isInteger(pid) || pid <= 0 || processTag(pid) !== holder) {
      ctx.log.info("build", `taking over the build lock of a start that is gone (${holder || "empty"})`);
      await rm(file, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new PrepareError("build_failed", `another start (pid ${pid}) has held ${file} for too long`);
    }
    if (!told) ctx.log.info("build", `waiting for another start's build (pid ${pid})`);
    told = true;
    await delay(1_000);
  }
  try {
    return await fn();
  } finally {
    await rm(file, { force: true }).catch((err: unknown) =>
      ctx.log.warn("build", `could not remove ${file}: ${errorText(err)}`),
    );
  }
}

/** A process as the lock names it: its pid and, on Linux, its start time ("" when it does not exist). */
function processTag(pid: number): string {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return "";
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return `${pid} ${stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]}`;
  } catch {
    return String(pid);
  }
}
