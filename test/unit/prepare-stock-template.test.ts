import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { runPrepare } from "../../worker/commands/prepare.js";
import { autoscaler, cleanUp, git, npmEnv, sink, tempDir, workerRepository } from "../harness/prepare.js";

/**
 * `prepare --for stock-template` (worker/commands/prepare.ts), what worker.py runs on Vast's stock template where
 * this repository is PYWORKER_REPO: the clone's program (its bundle, or a build of its sources with real npm, once),
 * ComfyUI's folders, the local API's port, the certificate start_server.sh signed, the stock program's stop window
 * and log file. The stock API wrapper under a real supervisord is test/integration/prepare-supervisor.test.ts's.
 */

const TEST_TIMEOUT_MS = 120_000;

const listeners: Server[] = [];
afterEach(async () => {
  for (const server of listeners.splice(0)) await new Promise((r) => server.close(r));
  await cleanUp();
});

interface Clone {
  dir: string;
  root: string;
  workspace: string;
  env: Record<string, string>;
}

/** A clone of the worker (with a bundle of its sources unless told otherwise), a workspace with ComfyUI in it. */
async function clone(opts: { bundle?: boolean } = {}): Promise<Clone> {
  const dir = await tempDir("prepare-stock-");
  const root = await workerRepository(join(dir, "vast-pyworker"), { bundle: opts.bundle ?? true });
  const workspace = join(dir, "workspace");
  await mkdir(join(workspace, "ComfyUI"), { recursive: true });
  // Any free port for the local API: 18288 may be taken on a busy machine.
  return {
    dir,
    root,
    workspace,
    env: { ...npmEnv(dir), WORKSPACE: workspace, API_PORT: String(await freePort()) },
  };
}

async function freePort(): Promise<number> {
  const server = await listening(0);
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  listeners.splice(listeners.indexOf(server), 1);
  return port;
}

function listening(port: number): Promise<Server> {
  const server = createServer();
  listeners.push(server);
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

async function prepare(c: Clone, env: Record<string, string> = c.env) {
  const stdout = sink();
  const stderr = sink();
  const code = await runPrepare({ target: "stock-template", env, root: c.root, stdout, stderr });
  const lines = stdout.text().split("\n").filter(Boolean);
  const messages = stderr
    .text()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => (JSON.parse(l) as { msg: string }).msg);
  return {
    code,
    lines,
    program: lines[0],
    vars: Object.fromEntries(lines.slice(1).map((l) => l.split(/=(.*)/s).slice(0, 2))),
    stdout: stdout.text(),
    stderr: stderr.text(),
    messages,
  };
}

test("a clone whose bundle is its sources runs the bundle; ComfyUI, the API port, the stop window and the log file as worker.py set them", async () => {
  const c = await clone();
  const run = await prepare(c);
  expect(run.code).toBe(0);
  expect(run.program).toBe(join(c.root, "bundle", "worker.mjs"));
  expect(run.vars).toEqual({
    COMFYUI_BASE_DIR: join(c.workspace, "ComfyUI"),
    API_PORT: c.env.API_PORT,
    STOP_WAIT_S: "10",
    LOG_FILE: join(c.workspace, "comfyui-worker.log"),
  });
  expect(existsSync(join(c.root, "node_modules"))).toBe(false);
});

test(
  "a clone whose sources changed since its bundle is built once with npm; a later start reuses the build until a source changes, a new one included",
  async () => {
    const c = await clone();
    await writeFile(join(c.root, "worker", "cli.ts"), "// a fork's change\n");
    git(c.root, "commit", "-q", "-am", "fork");
    const first = await prepare(c);
    expect(first.code).toBe(0);
    expect(first.program).toBe(join(c.root, "dist", "worker", "cli.js"));
    expect(
      first.messages.some((m) =>
        m.startsWith("not running the bundle (changed since the bundle was built: worker/cli.ts)"),
      ),
    ).toBe(true);
    expect(first.messages.filter((m) => /^npm .* done$/.test(m))).toHaveLength(3);
    const npmSaw = JSON.parse(await readFile(join(c.root, "build-env.json"), "utf8")) as Record<
      string,
      string
    >;
    expect(npmSaw.API_PORT).toBeUndefined();

    const again = await prepare(c);
    expect(again.code).toBe(0);
    expect(again.program).toBe(first.program);
    expect(again.messages.some((m) => m.startsWith("up to date in"))).toBe(true);
    expect(again.messages.some((m) => m.startsWith("npm"))).toBe(false);

    // A file the bundle never knew, in a folder of its sources: built again.
    await writeFile(join(c.root, "worker", "new.ts"), "// new\n");
    git(c.root, "add", "-A");
    git(c.root, "commit", "-q", "-m", "new file");
    const rebuilt = await prepare(c);
    expect(rebuilt.messages.filter((m) => /^npm .* done$/.test(m))).toHaveLength(3);
    // An untracked file the build writes, or a change outside the sources' folders, is not a source.
    await mkdir(join(c.root, "test"));
    await writeFile(join(c.root, "test", "a.test.ts"), "// a test\n");
    git(c.root, "add", "-A");
    git(c.root, "commit", "-q", "-m", "a test");
    await writeFile(join(c.root, "worker", "untracked-output.js"), "// written by a build\n");
    expect((await prepare(c)).messages.some((m) => m.startsWith("up to date in"))).toBe(true);
  },
  TEST_TIMEOUT_MS,
);

test(
  "two starts at once in one clone: one builds, the other waits for it and finds the build up to date",
  async () => {
    const c = await clone({ bundle: false });
    const [a, b] = await Promise.all([prepare(c), prepare(c)]);
    expect([a.code, b.code]).toEqual([0, 0]);
    const builds = [a, b].filter((r) => r.messages.includes("npm ci done"));
    expect(builds).toHaveLength(1);
    const other = a === builds[0] ? b : a;
    expect(other.messages.some((m) => m.startsWith("waiting for another start's build"))).toBe(true);
    expect(other.messages.some((m) => m.startsWith("up to date in"))).toBe(true);
    expect(existsSync(join(c.root, ".bootstrap", "lock"))).toBe(false);
  },
  TEST_TIMEOUT_MS,
);

test("a build that fails is reported with worker.py's prefix, and stdout stays empty", async () => {
  const c = await clone({ bundle: false });
  await writeFile(join(c.root, "build.mjs"), 'console.error("tsc: 3 errors"); process.exit(2);\n');
  const { url, reports } = await autoscaler();
  const run = await prepare(c, { ...c.env, REPORT_ADDR: url, CONTAINER_ID: "16", MASTER_TOKEN: "token-16" });
  expect(run.code).toBe(1);
  expect(run.stdout).toBe("");
  expect(run.stderr).toContain("tsc: 3 errors");
  expect(reports()).toEqual([
    expect.objectContaining({
      id: 16,
      mtoken: "token-16",
      error_msg: "worker bootstrap failed: npm run build failed (exit 2)",
    }),
  ]);
});

describe("ComfyUI's folders", () => {
  test.each([
    ["COMFYUI_BASE_DIR", { COMFYUI_BASE_DIR: "/srv/comfy" }],
    ["COMFYUI_INPUT_DIR and COMFYUI_OUTPUT_DIR", { COMFYUI_INPUT_DIR: "/i", COMFYUI_OUTPUT_DIR: "/o" }],
    ["COMFYUI_ARGS' --base-directory", { COMFYUI_ARGS: "--port 18190 --base-directory /srv/comfy" }],
  ])("given by %s: left to the worker", async (_what, given) => {
    const c = await clone();
    const run = await prepare(c, { ...c.env, ...given });
    expect(run.code).toBe(0);
    expect(run.vars.COMFYUI_BASE_DIR).toBeUndefined();
  });

  test("WORKSPACE_DIR stands for WORKSPACE; the log file goes beside start_server.sh's", async () => {
    const c = await clone();
    const { WORKSPACE: workspace, ...env } = c.env;
    const run = await prepare(c, { ...env, WORKSPACE_DIR: workspace! });
    expect(run.vars.COMFYUI_BASE_DIR).toBe(join(c.workspace, "ComfyUI"));
    expect(run.vars.LOG_FILE).toBe(join(c.workspace, "comfyui-worker.log"));
    const own = await prepare(c, { ...c.env, LOG_FILE: "/var/log/mine.log", STOP_WAIT_S: "30" });
    expect(own.vars.LOG_FILE).toBeUndefined();
    expect(own.vars.STOP_WAIT_S).toBeUndefined();
  });

  test("nowhere to be found: exit 1, reported, naming where it looked", async () => {
    const c = await clone();
    const { url, reports } = await autoscaler();
    const run = await prepare(c, { ...c.env, WORKSPACE: join(c.dir, "elsewhere"), REPORT_ADDR: url });
    expect(run.code).toBe(1);
    expect(reports().map((r) => r.error_msg)).toEqual([
      `worker bootstrap failed: ComfyUI not found in ${join(c.dir, "elsewhere", "ComfyUI")}, /workspace/ComfyUI, /opt/workspace-internal/ComfyUI; set COMFYUI_BASE_DIR`,
    ]);
  });
});

describe("the local API's port", () => {
  test("taken, with no supervisor to free it: the next free port, and the log says so", async () => {
    const c = await clone();
    const wanted = Number(c.env.API_PORT);
    await listening(wanted);
    const run = await prepare(c);
    expect(run.code).toBe(0);
    const chosen = Number(run.vars.API_PORT);
    expect(chosen).toBeGreaterThan(wanted);
    expect(chosen).toBeLessThanOrEqual(wanted + 99);
    expect(run.messages).toContain(
      `127.0.0.1:${wanted} is taken (the stock API wrapper?) and was not freed; local API on 127.0.0.1:${chosen}`,
    );
  });

  test("API_ENABLED=false: no port is chosen", async () => {
    const c = await clone();
    const run = await prepare(c, { ...c.env, API_ENABLED: "false" });
    expect(run.code).toBe(0);
    expect(run.vars.API_PORT).toBeUndefined();
  });
});

describe("USE_SSL", () => {
  test("the pair start_server.sh signed is passed on; without it the start stops and the autoscaler is told", async () => {
    const c = await clone();
    const cert = join(c.dir, "instance.crt");
    const key = join(c.dir, "instance.key");
    const { url, reports } = await autoscaler();
    const env = {
      ...c.env,
      USE_SSL: "true",
      WORKER_SSL_CERT_FILE: cert,
      WORKER_SSL_KEY_FILE: key,
      REPORT_ADDR: url,
    };
    const missing = await prepare(c, env);
    expect(missing.code).toBe(1);
    expect(reports()).toEqual([
      expect.objectContaining({
        url: "https://127.0.0.1:3000",
        error_msg: `worker bootstrap failed: USE_SSL=true but ${cert} is missing or empty (start_server.sh signs it)`,
      }),
    ]);
    await writeFile(cert, "certificate");
    await writeFile(key, "key");
    const signed = await prepare(c, env);
    expect(signed.code).toBe(0);
    expect(signed.vars).toMatchObject({ WORKER_SSL_CERT_FILE: cert, WORKER_SSL_KEY_FILE: key });
  });
});
