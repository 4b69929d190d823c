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
}

const FLAGS: Record<string, keyof ComfyArgs> = {
  "--port": "port",
  "--base-directory": "baseDir",
  "--input-directory": "inputDir",
  "--output-directory": "outputDir",
};

/** Splits on whitespace as the shell scripts that start ComfyUI do (they pass the variable unquoted). */
export function parseComfyArgs(args: string | undefined): ComfyArgs {
  const out: ComfyArgs = {};
  const words = (args ?? "").split(/\s+/).filter(Boolean);
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
