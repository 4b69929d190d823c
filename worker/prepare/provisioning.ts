import { existsSync, watch, type FSWatcher } from "node:fs";
import { access, constants, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { HTTPError } from "got";
import type { ImagePrepare } from "../../config/prepare.js";
import { delay } from "../../lib/backoff.js";
import { redactSource, redactText } from "../../lib/redact.js";
import { retry } from "../../lib/retry.js";
import { runChild } from "./child.js";
import { errorText, since, type PrepareContext } from "./context.js";
import { writePrivate } from "./private-file.js";

const DOWNLOAD_TIMEOUT_MS = 60_000;
const DOWNLOAD_ATTEMPTS = 4;
/** While waiting for Vast's provisioning, how often the flag is looked at when no event says it went. */
const FLAG_POLL_MS = 5_000;
const FLAG_LOG_EVERY_MS = 60_000;

/**
 * Provisioning in our image. Under supervisor, Vast's boot runs PROVISIONING_SCRIPT once and flags the run with
 * PROVISIONING_FLAG: this waits while the flag is there. On its own, PROVISIONING_SCRIPT (a path, or an http(s)
 * URL downloaded first) runs once with bash (a 0600 marker, which shows the source redacted, says it did). A
 * failure is logged, never thrown, as in Vast's images: the worker starts, and a missing model shows in its
 * benchmark and jobs; an unmarked script runs again at the next start.
 */
export async function provision(config: ImagePrepare["provisioning"], ctx: PrepareContext): Promise<void> {
  if (config.underSupervisor) {
    await waitForFlag(config, ctx);
    return;
  }
  if (config.script === undefined) return;
  const script = config.script;
  const shown = redactSource(script);
  if (existsSync(config.marker)) {
    ctx.log.info("provisioning", `already done (${config.marker}), not running ${shown} again`);
    // A marker of an earlier version holds the script as given, token and all, readable by anyone.
    if (shown !== script && (await readFile(config.marker, "utf8").catch(() => "")).includes(script)) {
      await writePrivate(config.marker, [shown]);
    }
    return;
  }
  const started = Date.now();
  const failure = await runScript(script, config.timeoutMs, ctx).catch((err: unknown) => errorText(err));
  if (failure !== undefined) {
    ctx.log.error(
      "provisioning",
      `${redactText(failure)}; starting the worker anyway (provisioning runs again at the next start)`,
      { duration_s: since(started) },
    );
    return;
  }
  await writePrivate(config.marker, [shown]);
  ctx.log.info("provisioning", "done", { duration_s: since(started) });
}

/** Runs the script; returns why it failed, or undefined when it succeeded. */
async function runScript(
  script: string,
  timeoutMs: number,
  ctx: PrepareContext,
): Promise<string | undefined> {
  const shown = redactSource(script);
  let file = script;
  let folder: string | undefined;
  if (/^https?:\/\//i.test(script)) {
    ctx.log.info("provisioning", `downloading and running ${shown}`);
    let body: Buffer;
    try {
      body = await retry(
        () =>
          ctx.http.get(script, { timeout: { request: DOWNLOAD_TIMEOUT_MS }, retry: { limit: 0 } }).buffer(),
        {
          attempts: DOWNLOAD_ATTEMPTS,
          delayMs: (attempt) => attempt * 1_000,
          // A 4xx (a wrong URL, a revoked token) stays what it is; the network and the server's 5xx may pass.
          retryable: (err) => !(err instanceof HTTPError && err.response.statusCode < 500),
          onFailure: (err, attempt, again) =>
            ctx.log.warn(
              "provisioning",
              `download attempt ${attempt} failed: ${redactText(errorText(err))}${again ? "" : " (no more)"}`,
            ),
        },
      );
    } catch {
      return `could not download ${shown}`;
    }
    folder = await mkdtemp(join(ctx.env.TMPDIR ?? tmpdir(), "provisioning."));
    file = join(folder, "provision.sh");
    await writeFile(file, body, { mode: 0o700 });
  } else {
    const readable = await stat(script)
      .then(
        (s) => s.isFile() && access(script, constants.R_OK).then(() => true),
        () => false,
      )
      .catch(() => false);
    if (!readable) return `no such file (or not readable): ${script}`;
    ctx.log.info("provisioning", `running ${script}`);
  }
  try {
    // The operator's own script: it gets the whole environment (its tokens are for it), and no stdin.
    const run = await runChild("bash", [file], { env: ctx.env, timeoutMs, echo: ctx.childOutput });
    return run.ok ? undefined : `${shown} failed (${run.outcome})`;
  } finally {
    if (folder) await rm(folder, { recursive: true, force: true });
  }
}

/**
 * Waits while Vast's provisioning runs (its flag file is there), at most `timeoutMs`; then goes on as after a
 * failed provisioning. A change in the flag's folder wakes the wait; a slow look every few seconds covers a folder
 * that sends no events.
 */
async function waitForFlag(config: ImagePrepare["provisioning"], ctx: PrepareContext): Promise<void> {
  if (!existsSync(config.flag)) return;
  const started = Date.now();
  ctx.log.info("provisioning", `waiting for the image's provisioning to finish (${config.flag} present)`);
  let wake: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(config.flag), (_event, name) => {
      if (name === null || name === basename(config.flag)) wake?.();
    });
    watcher.on("error", () => undefined);
  } catch {
    watcher = undefined;
  }
  try {
    let lastLog = started;
    while (existsSync(config.flag)) {
      if (Date.now() - started > config.timeoutMs) {
        ctx.log.error(
          "provisioning",
          `the image's provisioning still runs after ${Math.round(config.timeoutMs / 1000)} s (${config.flag} present); starting the worker anyway`,
        );
        return;
      }
      if (Date.now() - lastLog >= FLAG_LOG_EVERY_MS) {
        lastLog = Date.now();
        ctx.log.info("provisioning", `still waiting for the image's provisioning (${config.flag} present)`, {
          waited_s: since(started),
        });
      }
      const tick = new AbortController();
      wake = () => tick.abort();
      await delay(FLAG_POLL_MS, tick.signal).catch(() => undefined);
    }
  } finally {
    watcher?.close();
  }
  ctx.log.info("provisioning", "the image's provisioning finished", { waited_s: since(started) });
}
