import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { access, mkdir, readFile, rename, symlink, lstat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { cliFlags } from "../../config/comfyui-args.js";
import { parentDeathBinding, spawnInstance, waitUntilReady } from "../../worker/launcher/instance.js";
import type { Service } from "./child.js";
import { runInstallScriptLines } from "./install.js";
import { cacheDir, repoRoot } from "./paths.js";

const run = promisify(execFile);
export const SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors";

export interface ComfyInstall {
  comfyDir: string;
  python: string;
}

/**
 * Installs (once, cached) the ComfyUI the tests run against: PyPI's 0.3.75 tree, or the source tree or tarball
 * named by `source` (COMFYUI_SOURCE by default), each version in a folder and venv of its own.
 */
export async function ensureComfyUI(source = process.env.COMFYUI_SOURCE): Promise<ComfyInstall> {
  const lines = await runInstallScriptLines(
    "install-comfyui.sh",
    source ? { COMFYUI_SOURCE: resolve(source) } : {},
  );
  const [python, comfyDir] = lines.slice(-2);
  if (python === undefined || comfyDir === undefined)
    throw new Error(
      `scripts/install-comfyui.sh printed ${lines.length} line(s), not its python and ComfyUI folder`,
    );
  return { comfyDir, python };
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/**
 * Builds (once, cached by the script's hash) the tiny random-weight SD1.5-shaped checkpoint and links it into
 * `<baseDir>/models/checkpoints/` under the SD1.5 file name. A real file already there is used as is.
 */
export async function ensureTinyCheckpoint(install: ComfyInstall, baseDir: string): Promise<string> {
  const script = join(repoRoot, "scripts", "make_tiny_checkpoint.py");
  const key = createHash("sha256")
    .update(await readFile(script))
    .digest("hex")
    .slice(0, 16);
  const cached = join(cacheDir(), "models", `tiny-sd15-${key}.safetensors`);
  if (!(await exists(cached))) {
    await mkdir(join(cacheDir(), "models"), { recursive: true });
    const tmp = cached.replace(/\.safetensors$/, ".partial.safetensors");
    await run(install.python, [script, "--comfyui", install.comfyDir, "--out", tmp], {
      timeout: 15 * 60_000,
      maxBuffer: 16 * 1024 * 1024,
    }).catch((err: { stderr?: string; message: string }) => {
      throw new Error(`building the tiny checkpoint failed: ${err.stderr?.slice(-4000) ?? err.message}`);
    });
    await rename(tmp, cached);
  }
  const dir = join(baseDir, "models", "checkpoints");
  await mkdir(dir, { recursive: true });
  const target = join(dir, SD15_CHECKPOINT);
  const present = await lstat(target).catch(() => undefined);
  if (present === undefined) await symlink(cached, target);
  return target;
}

export interface ComfyUIOptions {
  install: ComfyInstall;
  host: string;
  port: number;
  baseDir: string;
  logFile: string;
  timeoutMs?: number;
  /** Read inputs from this folder instead of `<baseDir>/input` (backends of one worker share it). */
  inputDir?: string;
  /** CPU threads for torch (OMP_NUM_THREADS): one per backend, as a GPU is one device per backend. */
  threads?: number;
  /** Folders of `<baseDir>/custom_nodes` loaded all the same (a test's own nodes); none by default. */
  customNodes?: string[];
}

/**
 * Starts a real ComfyUI on the CPU with its own base directory; custom nodes and API nodes disabled. Through the
 * worker's own launcher process code (worker/launcher/instance.ts): a session of its own, bound to this process,
 * ready once /system_stats answers.
 */
export async function startComfyUI(opts: ComfyUIOptions): Promise<Service & { url: string }> {
  await mkdir(opts.baseDir, { recursive: true });
  const url = `http://${opts.host}:${opts.port}`;
  const instance = spawnInstance(
    {
      name: "ComfyUI",
      command: opts.install.python,
      args: [
        "main.py",
        "--cpu",
        "--listen",
        opts.host,
        "--port",
        String(opts.port),
        ...comfyArgsFor(opts.install, opts.baseDir),
        "--disable-auto-launch",
        ...(opts.inputDir !== undefined ? ["--input-directory", opts.inputDir] : []),
        // Last: the flag takes every word after it.
        ...(opts.customNodes?.length ? ["--whitelist-custom-nodes", ...opts.customNodes] : []),
      ],
      cwd: opts.install.comfyDir,
      env: {
        ...process.env,
        PYTHONUNBUFFERED: "1",
        ...(opts.threads !== undefined && {
          OMP_NUM_THREADS: String(opts.threads),
          MKL_NUM_THREADS: String(opts.threads),
        }),
      },
      logFile: opts.logFile,
      url,
    },
    { bind: (await parentDeathBinding()) ?? [] },
  );
  const service = {
    name: "ComfyUI",
    process: instance.child,
    logFile: opts.logFile,
    url,
    stop: async (graceMs = 10_000) => void (await instance.stop(graceMs)),
  };
  try {
    await waitUntilReady(instance, { timeoutMs: opts.timeoutMs ?? 180_000 });
  } catch (err) {
    await service.stop();
    throw err;
  }
  return service;
}

/**
 * ComfyUI's arguments for a CPU ComfyUI of the stack and the tests, with its models and folders below `baseDir`
 * (COMFYUI_ARGS of a worker that starts it itself, less the port and listen address that the launcher gives). No
 * partner (API) nodes and nothing fetched from the internet, by the flags this tree has: newer ComfyUIs replace
 * --disable-api-nodes, which they deprecate, with --disable-partner-nodes and --offline.
 */
export function comfyArgsFor(install: ComfyInstall, baseDir: string): string[] {
  const flags = cliFlagsOf(install.comfyDir);
  const offline = flags.has("--disable-partner-nodes")
    ? ["--disable-partner-nodes", ...(flags.has("--offline") ? ["--offline"] : [])]
    : flags.has("--disable-api-nodes")
      ? ["--disable-api-nodes"]
      : [];
  return [
    "--cpu",
    "--base-directory",
    baseDir,
    "--disable-all-custom-nodes",
    ...offline,
    "--database-url",
    "sqlite:///:memory:",
  ];
}

const flagsByTree = new Map<string, Set<string>>();

/** The flags of the ComfyUI tree in `comfyDir` (its comfy/cli_args.py), read once per tree. */
function cliFlagsOf(comfyDir: string): Set<string> {
  let flags = flagsByTree.get(comfyDir);
  if (flags === undefined) {
    const path = join(comfyDir, "comfy", "cli_args.py");
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new Error(`cannot read ${path} to choose ComfyUI's flags: ${(err as Error).message}`);
    }
    flags = cliFlags(text);
    flagsByTree.set(comfyDir, flags);
  }
  return flags;
}
