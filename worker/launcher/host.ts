import { execFileSync } from "node:child_process";
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { LaunchHost } from "../../config/index.js";

/** How long nvidia-smi and ldconfig may take to answer while the config is read (both answer in milliseconds). */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * The machine's answers to the launch plan's questions (config/launch.ts), asked synchronously while the config is
 * read, once at start: nvidia-smi for the GPU count, ldconfig for the preload, the file system and `env`'s PATH for
 * the rest. A program that is missing, fails or takes too long answers "none".
 */
export function systemHost(env: NodeJS.ProcessEnv): LaunchHost {
  const output = (program: string, args: string[]): string | undefined => {
    try {
      return execFileSync(program, args, {
        encoding: "utf8",
        timeout: PROBE_TIMEOUT_MS,
        stdio: ["ignore", "pipe", "ignore"],
        maxBuffer: 16 * 1024 * 1024,
      });
    } catch {
      return undefined;
    }
  };
  const isExecutable = (path: string): boolean => {
    try {
      accessSync(path, constants.X_OK);
      return statSync(path).isFile();
    } catch {
      return false;
    }
  };
  return {
    gpuCount: (nvidiaSmi) =>
      (output(nvidiaSmi, ["-L"]) ?? "").split("\n").filter((l) => /^GPU \d/.test(l)).length,
    isExecutable,
    findProgram: (name) =>
      (env.PATH ?? "")
        .split(delimiter)
        .filter(Boolean)
        .map((dir) => join(dir, name))
        .find(isExecutable),
    readText: (path) => {
      try {
        return readFileSync(path, "utf8");
      } catch {
        return undefined;
      }
    },
    // ldconfig is in /sbin, which a user's PATH may lack. Its lines: "\tlibname.so.4 (libc6,x86-64) => /path".
    library: (name) => {
      const listing = output("ldconfig", ["-p"]) ?? output("/sbin/ldconfig", ["-p"]) ?? "";
      for (const line of listing.split("\n")) {
        const fields = line.trim().split(/\s+/);
        if (fields[0] === name && fields.length > 1) return fields.at(-1);
      }
      return undefined;
    },
  };
}
