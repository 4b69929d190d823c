import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * scripts/docker-entrypoint.sh, run for real with bash in a temp WORKER_DIR. The worker program there is a stand-in
 * (fake-worker, a Node script at bundle/worker.mjs or dist/worker/cli.js): its `prepare --for image` answers as
 * the FAKE_* variables say (what the real prepare does is worker/commands/prepare.ts's tests), and its `start`
 * records its arguments, folder, pid and environment. What is tested is what the script itself does: Vast's
 * environment under supervisor, the program it prepares with, the lines it exports, and the exec.
 */

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ENTRYPOINT = join(repoRoot, "scripts", "docker-entrypoint.sh");
const RUN_TIMEOUT_MS = 15_000;

// prepare: records how it was called in prepare.json; exits FAKE_PREPARE_EXIT if set (after a line on stderr, as
// the real one logs); else prints FAKE_START_PROGRAM (default: itself) and FAKE_PREPARE_LINES (a JSON array).
// start: records start.json and exits FAKE_START_EXIT (default 0).
const FAKE_WORKER = `import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
const [command, ...args] = process.argv.slice(2);
const env = process.env;
const record = (name) =>
  writeFileSync(
    env.FAKE_RECORDS + "/" + name + ".json",
    JSON.stringify({ program: fileURLToPath(import.meta.url), args, cwd: process.cwd(), pid: process.pid, env }),
  );
record(command);
if (command === "prepare") {
  if (env.FAKE_PREPARE_EXIT) {
    console.error("fake-worker: prepare failed (reported)");
    process.exit(Number(env.FAKE_PREPARE_EXIT));
  }
  console.error("fake-worker: prepare logs on stderr");
  const lines = [env.FAKE_START_PROGRAM || fileURLToPath(import.meta.url), ...JSON.parse(env.FAKE_PREPARE_LINES || "[]")];
  process.stdout.write(lines.join("\\n") + "\\n");
} else {
  process.exit(Number(env.FAKE_START_EXIT || 0));
}
`;

interface Recorded {
  program: string;
  args: string[];
  cwd: string;
  pid: number;
  env: Record<string, string>;
}

interface Sandbox {
  dir: string;
  workerDir: string;
  records: string;
  env: Record<string, string>;
  recorded(name: "prepare" | "start"): Promise<Recorded | undefined>;
}

const sandboxes: string[] = [];
afterEach(async () => {
  for (const dir of sandboxes.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** A WORKER_DIR holding fake-worker at each of the given paths (relative to it). */
async function sandbox(programs: string[] = ["bundle/worker.mjs"]): Promise<Sandbox> {
  const dir = await mkdtemp(join(tmpdir(), "entrypoint-test-"));
  sandboxes.push(dir);
  const workerDir = join(dir, "opt", "worker");
  const records = join(dir, "records");
  await mkdir(records, { recursive: true });
  await mkdir(workerDir, { recursive: true });
  // dist/worker/cli.js is an ES module, as in the package (its package.json says "type": "module").
  await writeFile(join(workerDir, "package.json"), '{ "type": "module" }\n');
  for (const program of programs) {
    await mkdir(dirname(join(workerDir, program)), { recursive: true });
    await writeFile(join(workerDir, program), FAKE_WORKER);
  }
  return {
    dir,
    workerDir,
    records,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      NODE: process.execPath,
      WORKER_DIR: workerDir,
      FAKE_RECORDS: records,
    },
    recorded: async (name) => {
      const file = join(records, `${name}.json`);
      return existsSync(file) ? (JSON.parse(await readFile(file, "utf8")) as Recorded) : undefined;
    },
  };
}

/** Runs the entrypoint to its end; `pid` is the process bash ran in. */
function runEntrypoint(
  env: Record<string, string>,
  args: string[] = [],
): Promise<{ code: number | null; pid: number; stdout: string; stderr: string }> {
  return new Promise((resolveRun, rejectRun) => {
    const child = spawn("bash", [ENTRYPOINT, ...args], {
      cwd: tmpdir(),
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rejectRun(new Error(`the entrypoint ran past ${RUN_TIMEOUT_MS} ms:\n${stdout}${stderr}`));
    }, RUN_TIMEOUT_MS);
    child.once("error", rejectRun);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolveRun({ code, pid: child.pid!, stdout, stderr });
    });
  });
}

describe("docker-entrypoint.sh", () => {
  test("under supervisor: Vast's environment is loaded, prepare --for image runs with the bundle, its lines are exported, and start replaces the script in WORKER_DIR", async () => {
    const s = await sandbox();
    // Vast's utils/environment.sh, as the image's programs source it: what it exports reaches prepare and start.
    const vastEnv = join(s.dir, "environment.sh");
    await writeFile(vastEnv, "export FROM_VAST_ENV=from-workspace-dotenv\n");
    const { code, pid, stdout, stderr } = await runEntrypoint({
      ...s.env,
      WORKER_UNDER_SUPERVISOR: "true",
      VAST_ENVIRONMENT_SCRIPT: vastEnv,
      FAKE_PREPARE_LINES: JSON.stringify([
        "COMFYUI_LAUNCH=true",
        "LOG_FILE=/var/log/portal/comfyui worker.log",
        "",
        "EXTRA=a=b c",
      ]),
      FAKE_START_EXIT: "3",
    });
    const program = join(s.workerDir, "bundle", "worker.mjs");

    const prepare = (await s.recorded("prepare"))!;
    expect(prepare.program).toBe(program);
    expect(prepare.args).toEqual(["--for", "image"]);
    expect(prepare.env.FROM_VAST_ENV).toBe("from-workspace-dotenv");
    expect(prepare.env.WORKER_DIR).toBe(s.workerDir);

    const start = (await s.recorded("start"))!;
    expect(start.program).toBe(program);
    expect(start.args).toEqual([]);
    expect(start.cwd).toBe(s.workerDir);
    // exec: the worker is the process supervisor started (its signals reach the worker), and its code is the exit.
    expect(start.pid).toBe(pid);
    expect(code).toBe(3);
    expect(start.env).toMatchObject({
      FROM_VAST_ENV: "from-workspace-dotenv",
      COMFYUI_LAUNCH: "true",
      LOG_FILE: "/var/log/portal/comfyui worker.log",
      EXTRA: "a=b c",
    });
    // prepare's log reaches the output; its stdout is the script's to read, not printed.
    expect(stderr).toContain("fake-worker: prepare logs on stderr");
    expect(stdout).toBe("");
  });

  test("without supervisor, Vast's environment script is not loaded", async () => {
    const s = await sandbox();
    const vastEnv = join(s.dir, "environment.sh");
    await writeFile(vastEnv, "export FROM_VAST_ENV=loaded\n");
    const { code } = await runEntrypoint({ ...s.env, VAST_ENVIRONMENT_SCRIPT: vastEnv });
    expect(code).toBe(0);
    expect((await s.recorded("prepare"))!.env.FROM_VAST_ENV).toBeUndefined();
    expect((await s.recorded("start"))!.env.FROM_VAST_ENV).toBeUndefined();
  });

  test("without a bundle, dist/worker/cli.js prepares; the program prepare names is the one started", async () => {
    const s = await sandbox(["dist/worker/cli.js", "elsewhere/worker.mjs"]);
    const named = join(s.workerDir, "elsewhere", "worker.mjs");
    const { code, pid } = await runEntrypoint({ ...s.env, FAKE_START_PROGRAM: named });
    expect(code).toBe(0);
    expect((await s.recorded("prepare"))!.program).toBe(join(s.workerDir, "dist", "worker", "cli.js"));
    const start = (await s.recorded("start"))!;
    expect(start.program).toBe(named);
    expect(start.pid).toBe(pid);
  });

  test.each([
    ["1 (prepare has logged and reported why)", "1", false],
    ["7 (Node's own failure)", "7", true],
  ])("when prepare exits %s, the script exits 1 and starts nothing", async (_, exit, saysSo) => {
    const s = await sandbox();
    const { code, stderr } = await runEntrypoint({ ...s.env, FAKE_PREPARE_EXIT: exit });
    expect(code).toBe(1);
    expect(await s.recorded("start")).toBeUndefined();
    expect(stderr).toContain("fake-worker: prepare failed (reported)");
    expect(stderr.includes(`prepare --for image exited with code ${exit}`)).toBe(saysSo);
  });

  test("with neither bundle/worker.mjs nor dist/worker/cli.js, a clear error and exit 1", async () => {
    const s = await sandbox([]);
    const { code, stderr } = await runEntrypoint(s.env);
    expect(code).toBe(1);
    expect(stderr).toBe(
      `[entrypoint] ERROR: no worker in WORKER_DIR=${s.workerDir} (neither bundle/worker.mjs nor dist/worker/cli.js)\n`,
    );
  });

  test.each([
    [
      "a line that is not NAME=value (not shown: it may hold a secret)",
      ["GOOD=1", "not a setting secret-value"],
    ],
    ["a first line that is not a program", []],
  ])("prepare output with %s: exit 1, nothing started", async (_, lines) => {
    const s = await sandbox();
    const { code, stderr } = await runEntrypoint({
      ...s.env,
      FAKE_PREPARE_LINES: JSON.stringify(lines),
      ...(lines.length === 0 ? { FAKE_START_PROGRAM: "relative/worker.mjs" } : {}),
    });
    expect(code).toBe(1);
    expect(await s.recorded("start")).toBeUndefined();
    expect(stderr).toMatch(/\[entrypoint\] ERROR: prepare --for image (printed a line|named no program)/);
    expect(stderr).not.toContain("secret-value");
  });

  test("--help prints the header; an unknown argument is refused", async () => {
    const s = await sandbox();
    const help = await runEntrypoint(s.env, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("prepare --for image");
    expect(help.stdout).not.toMatch(/^#/m);
    expect(await s.recorded("prepare")).toBeUndefined();
    const unknown = await runEntrypoint(s.env, ["--bogus"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("unknown argument: --bogus");
  });
});
