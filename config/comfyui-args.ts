/** Where Vast's images keep the user's files, ComfyUI included ($WORKSPACE). */
export const DEFAULT_WORKSPACE = "/workspace";
/** Where Vast's images keep their programs' logs (the portal shows them). */
export const DEFAULT_LOG_DIR = "/var/log/portal";
/** ComfyUI's port in Vast's images (its --port there). */
export const DEFAULT_COMFYUI_PORT = 18188;

/**
 * What ComfyUI's own command line (the `COMFYUI_ARGS` variable that Vast's image and our entrypoint pass to
 * `main.py`) says about where it listens and keeps its folders, so the worker follows a user who moved them
 * instead of watching the wrong folder.
 */
export interface ComfyArgs {
  port?: number;
  baseDir?: string;
  inputDir?: string;
  outputDir?: string;
  /** ComfyUI's temp folder is `<this>/temp`; without it, `<base>/temp`. */
  tempDir?: string;
  databaseUrl?: string;
  /** The GPU flags that a launcher of one ComfyUI per GPU must give itself. */
  cudaDevice?: string;
  defaultDevice?: string;
  /** Every word, in order, as ComfyUI gets them. */
  words: string[];
}

const FLAGS: Record<string, Exclude<keyof ComfyArgs, "words">> = {
  "--port": "port",
  "--base-directory": "baseDir",
  "--input-directory": "inputDir",
  "--output-directory": "outputDir",
  "--temp-directory": "tempDir",
  "--database-url": "databaseUrl",
  "--cuda-device": "cudaDevice",
  "--default-device": "defaultDevice",
};

/**
 * Splits on whitespace as the shell scripts that start ComfyUI do (they pass the variable unquoted); the last of a
 * flag wins, as in ComfyUI's own parsing.
 */
export function parseComfyArgs(args: string | undefined): ComfyArgs {
  const words = (args ?? "").split(/\s+/).filter(Boolean);
  const out: ComfyArgs = { words };
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    const eq = word.indexOf("=");
    const flag = eq > 0 ? word.slice(0, eq) : word;
    const key = FLAGS[flag];
    if (!key) continue;
    let value: string | undefined;
    if (eq > 0) value = word.slice(eq + 1);
    else if (words[i + 1] !== undefined && !words[i + 1]!.startsWith("--")) value = words[++i];
    if (value === undefined || value === "") continue;
    if (key === "port") {
      if (/^\d+$/.test(value) && Number(value) <= 65535) out.port = Number(value);
    } else {
      out[key] = value;
    }
  }
  return out;
}

/**
 * The flags a ComfyUI tree accepts, read from its `comfy/cli_args.py` text (`parser.add_argument("--flag", ...)`),
 * so that the worker passes a flag only to the versions that have it (argparse refuses an unknown one, and ComfyUI
 * then does not start). Empty for no text.
 */
export function cliFlags(cliArgsPy: string | undefined): Set<string> {
  const flags = new Set<string>();
  for (const m of (cliArgsPy ?? "").matchAll(/add_argument\(([^)]*)/g)) {
    for (const name of m[1]!.matchAll(/["'](--[A-Za-z0-9][\w-]*)["']/g)) flags.add(name[1]!);
  }
  return flags;
}
