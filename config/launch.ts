/**
 * COMFYUI_LAUNCH=true: the worker starts the ComfyUIs it drives (worker/launcher/ runs them). This is the plan: how
 * many, on which port, GPU and folders, with which Python and preload. It lives with the config because its
 * outcome is the config's backends (instance i is backend i); what it needs to know of the machine (the GPUs, the
 * venv, the ComfyUI tree) it asks a `LaunchHost`, which the caller provides (worker/launcher/host.ts, or a test's
 * answers), so that reading the config stays free of I/O of its own.
 */
import { join, resolve } from "node:path";
import {
  DEFAULT_COMFYUI_PORT,
  DEFAULT_LOG_DIR,
  DEFAULT_WORKSPACE,
  cliFlags,
  type ComfyArgs,
} from "./comfyui-args.js";
import { ConfigError, type EnvReader } from "./env.js";
import { redactUrl } from "../lib/redact.js";

/** The machine's answers to what the plan needs to know. Each is asked only where the settings need it. */
export interface LaunchHost {
  /** How many GPUs `<nvidiaSmi> -L` lists (0 when the program is missing or fails). */
  gpuCount(nvidiaSmi: string): number;
  /** Whether `path` is an executable file. */
  isExecutable(path: string): boolean;
  /** Where a program named without a folder is found on PATH. */
  findProgram(name: string): string | undefined;
  /** A file's text; undefined when it cannot be read. */
  readText(path: string): string | undefined;
  /** Where the dynamic loader finds a library (`ldconfig -p`); undefined when it is not installed. */
  library(name: string): string | undefined;
}

/** One ComfyUI that the worker starts. */
export interface LaunchedInstance {
  /** Its backend in the pool (config.comfyui.backends[index]). */
  index: number;
  /** `comfyui` (one ComfyUI), `comfyui-<i>` (one per GPU): in the log lines and events. */
  name: string;
  /** Where it answers (ComfyUI's port: COMFYUI_ARGS' --port, else COMFYUI_PORT, + i per GPU). */
  port: number;
  url: string;
  /** Its own CUDA_VISIBLE_DEVICES (one per GPU); undefined: the environment's. */
  gpu?: string;
  /** main.py and its arguments, run in the ComfyUI folder. */
  args: string[];
  /** Its output, appended (it also goes to the worker's stdout). */
  logFile: string;
}

export interface LaunchConfig {
  /** ComfyUI's folder (COMFYUI_DIR): main.py, run from there. */
  comfyDir: string;
  /** COMFYUI_PYTHON, else the image's venv's python, else python3 from PATH. */
  python: string;
  /** The venv's bin folder, first on ComfyUI's PATH, when its python is the one. */
  pathPrefix?: string;
  /** LD_PRELOAD of each ComfyUI (COMFYUI_LD_PRELOAD, else tcmalloc where installed); undefined: none. */
  ldPreload?: string;
  logDir: string;
  /** Folders made before the instances start: their output folders and their databases' folder. */
  folders: string[];
  /** An instance that exits while the worker runs starts again after 1, 2, 4 ... up to this (0: never). */
  restartMaxDelayS: number;
  /** A stop gives every instance this long after SIGTERM, together, before SIGKILL. */
  stopTimeoutS: number;
  /** The ComfyUIs the worker starts; under supervisor, not the image's own (`comfyui`, backend 0). */
  instances: LaunchedInstance[];
  /** What the plan decided, in words, for the start-up log. */
  notes: string[];
}

/** What the plan hands to the rest of the config. */
export interface LaunchPlan {
  launch: LaunchConfig;
  /** One per GPU: the backends' URLs and output folders (with COMFYUI_PER_GPU and 2 GPUs or more). */
  perGpu?: { urls: string[]; outputDirs: string[] };
  /** The port of a single ComfyUI (COMFYUI_URL's default). */
  port: number;
}

/** ComfyUI's folder: COMFYUI_DIR, else `$WORKSPACE/ComfyUI`. The default of COMFYUI_BASE_DIR when launching. */
export function launchComfyDir(e: EnvReader): string {
  return resolve(e.optional("COMFYUI_DIR") ?? join(e.string("WORKSPACE", DEFAULT_WORKSPACE), "ComfyUI"));
}

/** The ComfyUI folders the worker would use for one ComfyUI (config/index.ts), which the plan divides per GPU. */
export interface ComfyFolders {
  base: string;
  input: string;
  /** COMFYUI_OUTPUT_DIR's list (one per ComfyUI), or the one output folder. */
  outputs: string[];
}

const LISTEN = ["--listen", "127.0.0.1"];
const TCMALLOC = "libtcmalloc_minimal.so.4";

/**
 * The plan of COMFYUI_LAUNCH=true: one ComfyUI, or with COMFYUI_PER_GPU=true and 2 GPUs or more one per GPU (under
 * supervisor less the image's own, instance 0). Throws ConfigError naming the variable for what contradicts it.
 */
export function planLaunch(
  e: EnvReader,
  args: ComfyArgs,
  comfyDir: string,
  folders: ComfyFolders,
  host: LaunchHost,
): LaunchPlan {
  const supervised = e.bool("WORKER_UNDER_SUPERVISOR", false);
  const logDir = resolve(e.string("LOG_DIR", DEFAULT_LOG_DIR));
  const portVariable = args.port !== undefined ? "COMFYUI_ARGS" : "COMFYUI_PORT";
  const comfyPort = e.int("COMFYUI_PORT", DEFAULT_COMFYUI_PORT, { min: 1, max: 65535 });
  const port = args.port ?? comfyPort;
  const notes: string[] = [];
  const gpus = e.bool("COMFYUI_PER_GPU", false) ? perGpuIds(e, args, host, notes) : [];

  let instances: LaunchedInstance[];
  let perGpu: LaunchPlan["perGpu"];
  const made: string[] = [];
  if (gpus.length >= 2) {
    if (port + gpus.length - 1 > 65535) {
      throw new ConfigError(
        portVariable,
        `COMFYUI_PER_GPU=true: ${gpus.length} ports from ${port} run past 65535`,
      );
    }
    const outputs = perGpuOutputs(folders.outputs, gpus, supervised);
    // ComfyUI's temp folder is <--temp-directory>/temp; each wipes it at start, so each has its own.
    const temp = resolve(args.tempDir ?? join(folders.base, "temp"));
    // Each ComfyUI migrates its sqlite database (--database-url; <ComfyUI>/user/comfyui.db by default) as it
    // starts, copying the file aside and back when that fails: several on one file race each other. Where this
    // ComfyUI has the flag and COMFYUI_ARGS sets none, instances 1..N-1 get one of their own beside it.
    const userDir = join(comfyDir, "user");
    const flags = cliFlags(host.readText(join(comfyDir, "comfy", "cli_args.py")));
    const ownDatabases = args.databaseUrl === undefined && flags.has("--database-url");
    // ComfyUI's assets system (on by default where --disable-assets exists) indexes the model folders into that
    // database at start and stops start-up (ASSETS_STARTUP_FAILED) when it cannot use it. The worker uses none of
    // it, and instance 0 already indexes the same folders: instances 1..N-1 run without it.
    const noAssets = flags.has("--disable-assets") ? ["--disable-assets"] : [];
    made.push(...outputs, ...(ownDatabases ? [userDir] : []));
    instances = gpus.map((gpu, i) => ({
      index: i,
      name: `comfyui-${i}`,
      port: port + i,
      url: `http://127.0.0.1:${port + i}`,
      gpu,
      // ComfyUI takes the last of a flag: these win over COMFYUI_ARGS'.
      args: [
        "main.py",
        ...LISTEN,
        "--disable-auto-launch",
        ...args.words,
        ...["--port", String(port + i)],
        ...["--input-directory", folders.input, "--output-directory", outputs[i]!],
        ...["--temp-directory", supervised ? `${temp}-gpu${i}` : join(temp, `gpu${i}`)],
        ...(ownDatabases && i > 0
          ? ["--database-url", `sqlite:///${join(userDir, `comfyui-gpu${i}.db`)}`]
          : []),
        ...(i > 0 ? noAssets : []),
      ],
      logFile: join(logDir, `comfyui-${i}.log`),
    }));
    perGpu = { urls: instances.map((x) => x.url), outputDirs: outputs };
    if (supervised) {
      // Instance 0 is the image's `comfyui` program, which supervisor runs and restarts: it uses the first visible
      // GPU (cuda:0, as --cuda-device is refused above), its usual folders and port.
      const others = gpus.length === 2 ? "instance 1" : `instances 1..${gpus.length - 1}`;
      notes.push(
        `comfyui-0: the image's \`comfyui\` program (127.0.0.1:${port}, GPU ${gpus[0]}, output ${outputs[0]}); ` +
          `${others} start here and stop with the worker`,
      );
      instances = instances.slice(1);
    }
  } else {
    instances = supervised
      ? []
      : [
          {
            index: 0,
            name: "comfyui",
            port,
            url: `http://127.0.0.1:${port}`,
            args: ["main.py", ...LISTEN, "--port", String(comfyPort), "--disable-auto-launch", ...args.words],
            logFile: join(logDir, "comfyui.log"),
          },
        ];
    if (supervised) notes.push(`comfyui: supervisor's program (127.0.0.1:${port}), not started here`);
  }

  const launch: LaunchConfig = {
    comfyDir,
    ...pythonOf(e, host, instances.length > 0),
    logDir,
    folders: made,
    restartMaxDelayS: e.int("COMFYUI_RESTART_MAX_DELAY", 60, { min: 0 }),
    stopTimeoutS: e.int("COMFYUI_STOP_TIMEOUT", 30, { min: 0 }),
    instances,
    notes,
  };
  if (instances.length > 0) {
    if (host.readText(join(comfyDir, "main.py")) === undefined) {
      throw new ConfigError("COMFYUI_DIR", `no ComfyUI in ${comfyDir} (no main.py)`);
    }
    // The allocator the image's own `comfyui` program preloads, so that every instance runs alike.
    const preload = e.present("COMFYUI_LD_PRELOAD")
      ? e.optional("COMFYUI_LD_PRELOAD")
      : host.library(TCMALLOC);
    if (preload !== undefined) launch.ldPreload = preload;
  }
  return { launch, port, ...(perGpu && { perGpu }) };
}

/**
 * The GPUs of COMFYUI_PER_GPU=true: CUDA_VISIBLE_DEVICES' ids, else nvidia-smi's. Refuses what would contradict one
 * ComfyUI per GPU, whatever the count; fewer than 2 is one ComfyUI, as without it (said in `notes`).
 */
function perGpuIds(e: EnvReader, args: ComfyArgs, host: LaunchHost, notes: string[]): string[] {
  const conflict = "COMFYUI_PER_GPU=true starts one ComfyUI per GPU and gives the worker their URLs";
  for (const name of ["COMFYUI_URL", "COMFYUI_URLS"]) {
    const set = e.optional(name);
    if (set !== undefined) {
      const shown = set
        .split(",")
        .map((u) => redactUrl(u.trim()))
        .join(",");
      throw new ConfigError(name, `${conflict}: unset ${name} (now ${shown})`);
    }
  }
  for (const flag of ["--cuda-device", "--default-device"] as const) {
    if ((flag === "--cuda-device" ? args.cudaDevice : args.defaultDevice) !== undefined) {
      throw new ConfigError(
        "COMFYUI_ARGS",
        `COMFYUI_PER_GPU=true gives each ComfyUI its GPU: remove ${flag}`,
      );
    }
  }
  const listed = e.present("CUDA_VISIBLE_DEVICES");
  const ids = listed
    ? (e.list("CUDA_VISIBLE_DEVICES") ?? []).map((id) => id.replace(/\s+/g, "")).filter(Boolean)
    : Array.from({ length: host.gpuCount(e.string("NVIDIA_SMI", "nvidia-smi")) }, (_, i) => String(i));
  if (ids.length < 2) {
    const shown = listed ? ` (CUDA_VISIBLE_DEVICES=${e.optional("CUDA_VISIBLE_DEVICES") ?? ""})` : "";
    notes.push(`COMFYUI_PER_GPU=true, ${ids.length} GPU visible${shown}: one ComfyUI`);
    return [];
  }
  return ids;
}

/**
 * Each ComfyUI's output folder: a COMFYUI_OUTPUT_DIR list as given (one per ComfyUI), else below the one folder
 * (`<output>/gpu<i>`). Under supervisor, instance 0 keeps the image's ComfyUI's folder and the others go beside it,
 * not inside: the worker keeps its request folders in the first output folder, whose entries its disk care may
 * remove.
 */
function perGpuOutputs(outputs: string[], gpus: string[], supervised: boolean): string[] {
  if (outputs.length > 1) {
    if (outputs.length !== gpus.length) {
      throw new ConfigError(
        "COMFYUI_OUTPUT_DIR",
        `lists ${outputs.length} folders for ${gpus.length} ComfyUIs (one per GPU: ${gpus.join(" ")})`,
      );
    }
    return outputs.map((d) => resolve(d));
  }
  const one = resolve(outputs[0]!);
  return gpus.map((_, i) => (!supervised ? join(one, `gpu${i}`) : i === 0 ? one : `${one}-gpu${i}`));
}

/** ComfyUI's Python: COMFYUI_PYTHON, else the image's venv's (its bin first on PATH, as Vast's program), else python3. */
function pythonOf(
  e: EnvReader,
  host: LaunchHost,
  needed: boolean,
): Pick<LaunchConfig, "python" | "pathPrefix"> {
  const given = e.optional("COMFYUI_PYTHON");
  const venvBin = join(e.string("COMFYUI_VENV", "/venv/main"), "bin");
  const chosen =
    given !== undefined
      ? { python: given }
      : host.isExecutable(join(venvBin, "python"))
        ? { python: join(venvBin, "python"), pathPrefix: venvBin }
        : { python: "python3" };
  if (needed) {
    const found = chosen.python.includes("/")
      ? host.isExecutable(chosen.python)
      : host.findProgram(chosen.python) !== undefined;
    if (!found) throw new ConfigError("COMFYUI_PYTHON", `program '${chosen.python}' not found`);
  }
  return chosen;
}
