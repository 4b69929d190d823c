import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { runInstallScript } from "../../scripts/services/install.js";
import { runPrepare } from "../../worker/commands/prepare.js";
import { cleanUp, npmEnv, sink, tempDir, workerRepository } from "../harness/prepare.js";
import { freePort } from "../../scripts/services/child.js";

/**
 * `prepare --for stock-template` beside the stock image's API wrapper, run by a real supervisord (the tools venv's)
 * as Vast's image runs it: program `api-wrapper`, which first converts the provisioned workflows and only then
 * binds the local API's port. prepare waits for that conversion, stops the wrapper (supervisorctl stop api-wrapper)
 * and gives the port to the worker.
 */

const run = promisify(execFile);
let toolsBin: string;

beforeAll(async () => {
  toolsBin = await runInstallScript("install-tools.sh");
}, 600_000);

const supervisors: ChildProcess[] = [];
afterEach(async () => {
  for (const s of supervisors.splice(0)) {
    s.kill("SIGTERM");
    if (s.exitCode === null) await new Promise((r) => s.once("exit", r));
  }
  await cleanUp();
});

/** Resolves once supervisorctl says the program is RUNNING (supervisord's start has no event to await). */
async function untilRunning(ctl: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await run(ctl, ["status", "api-wrapper"]).catch((e: { stdout: string }) => e);
    if (/^api-wrapper\s+RUNNING/.test(status.stdout)) return;
    if (Date.now() > deadline)
      throw new Error(`api-wrapper not RUNNING after ${timeoutMs} ms: ${status.stdout}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function listensOn(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

/** A supervisord whose `api-wrapper` runs `command`; returns the PATH folder holding a supervisorctl bound to it. */
async function supervisor(dir: string, command: string): Promise<{ bin: string; ctl: string }> {
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
      `command=${command}`,
      "autorestart=unexpected",
      "startsecs=0",
      "stopasgroup=true",
      "",
    ].join("\n"),
  );
  // On the image supervisorctl finds /etc/supervisor/supervisord.conf by itself; here it is told where.
  const bin = join(dir, "bin");
  await mkdir(bin);
  const ctl = join(bin, "supervisorctl");
  await writeFile(ctl, `#!/bin/sh\nexec ${toolsBin}/supervisorctl -c ${conf} "$@"\n`, { mode: 0o755 });
  supervisors.push(spawn(join(toolsBin, "supervisord"), ["-c", conf], { stdio: "ignore" }));
  await untilRunning(ctl);
  return { bin, ctl };
}

async function clone() {
  const dir = await tempDir("prepare-supervisor-");
  const root = await workerRepository(join(dir, "vast-pyworker"), { bundle: true });
  const workspace = join(dir, "workspace");
  await mkdir(join(workspace, "ComfyUI"), { recursive: true });
  return { dir, root, env: { ...npmEnv(dir), WORKSPACE: workspace } };
}

test("the stock API wrapper holding the port is stopped (supervisorctl stop api-wrapper) and the worker gets its port", async () => {
  const c = await clone();
  const port = await freePort();
  const { bin, ctl } = await supervisor(c.dir, `${toolsBin}/python -m http.server ${port} --bind 127.0.0.1`);
  const deadline = Date.now() + 30_000;
  while (!(await listensOn(port))) {
    if (Date.now() > deadline) throw new Error("the wrapper never listened");
    await new Promise((r) => setTimeout(r, 100));
  }
  const stdout = sink();
  const stderr = sink();
  const code = await runPrepare({
    target: "stock-template",
    env: { ...c.env, API_PORT: String(port), PATH: `${bin}:${process.env.PATH}` },
    root: c.root,
    stdout,
    stderr,
  });
  expect(code).toBe(0);
  expect(stdout.text().split("\n")).toContain(`API_PORT=${port}`);
  expect(stderr.text()).toContain("stopped the stock API wrapper (supervisorctl stop api-wrapper)");
  const status = await run(ctl, ["status", "api-wrapper"]).catch((e: { stdout: string }) => e);
  expect(status.stdout).toMatch(/^api-wrapper\s+STOPPED/);
}, 120_000);

test("while the wrapper converts the provisioned workflows (running, its port not bound yet), prepare waits, then stops it", async () => {
  const c = await clone();
  const port = await freePort();
  const go = join(c.dir, "conversion-done");
  // The wrapper's program: convert-workflows.sh first (here: until the test says it is done), then the server.
  const { bin, ctl } = await supervisor(
    c.dir,
    `bash -c 'while [ ! -e ${go} ]; do sleep 0.1; done; exec ${toolsBin}/python -m http.server ${port} --bind 127.0.0.1'`,
  );
  const stdout = sink();
  const stderr = sink();
  let settled = false;
  const prepared = runPrepare({
    target: "stock-template",
    env: { ...c.env, API_PORT: String(port), PATH: `${bin}:${process.env.PATH}` },
    root: c.root,
    stdout,
    stderr,
  }).finally(() => (settled = true));
  await new Promise<void>((resolve) => {
    const check = () => stderr.text().includes("is still converting the provisioned workflows") && resolve();
    stderr.on("data", check);
    check();
  });
  expect(settled).toBe(false);
  await writeFile(go, "");
  expect(await prepared).toBe(0);
  expect(stderr.text()).toContain("the stock API wrapper finished converting");
  expect(stderr.text()).toContain("stopped the stock API wrapper");
  expect(stdout.text().split("\n")).toContain(`API_PORT=${port}`);
  const status = await run(ctl, ["status", "api-wrapper"]).catch((e: { stdout: string }) => e);
  expect(status.stdout).toMatch(/^api-wrapper\s+STOPPED/);
}, 120_000);
