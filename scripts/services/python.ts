import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** The oldest Python that worker.py supports: start_server.sh's venv is uv's managed Python 3.10. */
export const OLDEST_PYTHON = "3.10";

function version(interpreter: string): string | undefined {
  try {
    return execFileSync(interpreter, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], {
      encoding: "utf8",
      timeout: 10_000,
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    return undefined;
  }
}

/**
 * An interpreter of OLDEST_PYTHON: $PYTHON_3_10, else python3.10 on PATH, else pyenv's. Throws when there is none,
 * so that a machine without it fails the tests that need it instead of passing them untried.
 */
export function oldestPython(): string {
  const pyenvRoot = process.env.PYENV_ROOT ?? join(homedir(), ".pyenv");
  const pyenvVersions = join(pyenvRoot, "versions");
  const candidates = [
    process.env.PYTHON_3_10,
    `python${OLDEST_PYTHON}`,
    ...(existsSync(pyenvVersions)
      ? readdirSync(pyenvVersions)
          .filter((v) => v.startsWith(`${OLDEST_PYTHON}.`))
          .sort()
          .reverse()
          .map((v) => join(pyenvVersions, v, "bin", `python${OLDEST_PYTHON}`))
      : []),
  ].filter((c): c is string => !!c);
  for (const candidate of candidates) if (version(candidate) === OLDEST_PYTHON) return candidate;
  throw new Error(
    `no Python ${OLDEST_PYTHON} (tried ${candidates.join(", ")}); set PYTHON_3_10 to one (pyenv install ${OLDEST_PYTHON})`,
  );
}
