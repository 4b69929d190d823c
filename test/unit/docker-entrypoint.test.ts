import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { selfSignedCert } from "../harness/tls.js";

/**
 * scripts/docker-entrypoint.sh, run for real with bash in temp folders. The programs it starts are fakes written
 * here (fake-node, fake-python3, fake-git, fake-npm, fake-openssl, fake-nvidia-smi), passed through the
 * entrypoint's overrides (NODE, COMFYUI_PYTHON, GIT, NPM, OPENSSL, NVIDIA_SMI). Each fake appends what it did to
 * one shared log, FAKE_ORDER_LOG (fake-npm, which sees only npm's environment, finds it beside its own folder).
 * curl is the real one, against local HTTP servers.
 */

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ENTRYPOINT = join(repoRoot, "scripts", "docker-entrypoint.sh");
const TEST_TIMEOUT_MS = 20_000;
const RUN_TIMEOUT_MS = 15_000;

const FAKES: Record<string, string> = {
  // The worker (a Node script, so that it handles SIGINT as the real worker does: bash ignores SIGINT in background
  // jobs, and Node resets that at start-up, a bash script cannot). Records its arguments, folder, pid and environment,
  // waits for ComfyUI (as the real worker watches its health; here: the file each fake-python3 adds a line to once
  // started; one line per URL of COMFYUI_URLS), then runs until SIGTERM/SIGINT, or exits at once with
  // FAKE_NODE_EXIT_AFTER_READY. With FAKE_NODE_DRAIN_UNTIL_USR2=1, a signal starts a drain (every further one is
  // recorded too) that ends when SIGUSR2 comes.
  "fake-node": `#!/usr/bin/env node
const fs = require("node:fs");
const path = require("node:path");
const env = process.env;
fs.appendFileSync(env.FAKE_ORDER_LOG, "worker " + process.argv.slice(2).join(" ") + "\\n");
console.log("fake-node: started");
fs.writeFileSync(path.join(env.FAKE_RECORD_DIR, "worker.cwd"), process.cwd() + "\\n");
fs.writeFileSync(path.join(env.FAKE_RECORD_DIR, "worker.pid"), process.pid + "\\n");
fs.writeFileSync(
  path.join(env.FAKE_RECORD_DIR, "worker.env"),
  Object.entries(env).map(([k, v]) => k + "=" + v + "\\n").join(""),
);
const exit = () => process.exit(Number(env.FAKE_NODE_EXIT_CODE || 0));
if (env.FAKE_NODE_DRAIN_UNTIL_USR2) process.on("SIGUSR2", exit);
let signals = 0;
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    fs.appendFileSync(env.FAKE_ORDER_LOG, "worker got " + signal + "\\n");
    // Synchronously, as a draining worker logs: this throws (and the exit code shows it) if its output is gone.
    fs.writeSync(1, "fake-node: got " + signal + "\\n");
    if (!env.FAKE_NODE_DRAIN_UNTIL_USR2) return exit();
    if (signals++ === 0) fs.writeSync(1, "fake-node: draining\\n");
  });
}
const ready = path.join(env.FAKE_RECORD_DIR, "comfyui.ready");
const backends = (env.COMFYUI_URLS || "").split(",").filter(Boolean).length;
const started = () => fs.readFileSync(ready, "utf8").split("\\n").filter(Boolean).length;
const deadline = Date.now() + 10000;
const poll = setInterval(() => {
  if (fs.existsSync(ready) && (backends <= 1 || started() >= backends)) {
    clearInterval(poll);
    if (env.FAKE_NODE_EXIT_AFTER_READY) process.exit(Number(env.FAKE_NODE_EXIT_AFTER_READY));
    console.log("fake-node: running");
    setInterval(() => {}, 60000);
  } else if (Date.now() > deadline) {
    console.error("fake-node: ComfyUI never started");
    process.exit(99);
  }
}, 20);
`,
  // ComfyUI's python: records its arguments and folder, in comfyui.<pid> its CUDA_VISIBLE_DEVICES and arguments
  // (one a line), and in comfyui.<pid>.program how it was called and the first folder of its PATH; writes to its
  // log, in comfyui.<pid>.preload its LD_PRELOAD, runs until SIGTERM (or ignores it with FAKE_COMFYUI_IGNORE_TERM=1, so that only SIGKILL ends it). SIGUSR1
  // is a crash: it exits with 134 (as on SIGABRT), leaving nothing behind.
  "fake-python3": `#!/usr/bin/env bash
echo "comfyui $* (in $PWD)" >> "$FAKE_ORDER_LOG"
{ echo "\${CUDA_VISIBLE_DEVICES-<unset>}"; printf '%s\\n' "$@"; } > "$FAKE_RECORD_DIR/comfyui.$$"
printf '%s\\n' "$0" "\${PATH%%:*}" > "$FAKE_RECORD_DIR/comfyui.$$.program"
echo "\${LD_PRELOAD-<unset>}" > "$FAKE_RECORD_DIR/comfyui.$$.preload"
echo "fake ComfyUI log line (CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES-<unset>}): $*"
echo $$ > "$FAKE_RECORD_DIR/comfyui.pid"
if [ "\${FAKE_COMFYUI_IGNORE_TERM:-}" = 1 ]; then
  trap '' TERM
  echo $$ >> "$FAKE_RECORD_DIR/comfyui.ready"
  exec sleep 60
fi
trap 'echo "comfyui got SIGTERM" >> "$FAKE_ORDER_LOG"; kill "$sleeper" 2>/dev/null; exit 0' TERM
trap 'kill "$sleeper" 2>/dev/null; exit 134' USR1
# Ready only once its sleep is known to the traps: a signal in between would leave the sleep holding the log pipe.
sleep 60 & sleeper=$!
echo $$ >> "$FAKE_RECORD_DIR/comfyui.ready"
while :; do wait "$sleeper"; sleep 60 & sleeper=$!; done
`,
  // git: "clone ... <repo> <dir>" makes <dir> a source folder with a package.json named FAKE_GIT_PACKAGE_NAME (this
  // worker's name by default; empty: a Python repository without one) and a note of the repository. With
  // FAKE_GIT_FAIL=1 it fails as git does when the server refuses, quoting the repository's URL.
  "fake-git": `#!/usr/bin/env bash
echo "git $*" >> "$FAKE_ORDER_LOG"
[ "$1" = clone ] || exit 0
if [ "\${FAKE_GIT_FAIL:-}" = 1 ]; then
  echo "fatal: unable to access '\${@: -2:1}': The requested URL returned error: 403" >&2
  exit 128
fi
dest="\${@: -1}"
repo="\${@: -2:1}"
mkdir -p "$dest"
if [ "\${FAKE_GIT_PACKAGE_NAME-comfyui-serverless-worker}" != "" ]; then
  printf '{\\n  "name": "%s",\\n  "version": "1.0.0"\\n}\\n' "\${FAKE_GIT_PACKAGE_NAME-comfyui-serverless-worker}" > "$dest/package.json"
else
  echo "# a Python PyWorker" > "$dest/worker.py"
fi
echo "$repo" > "$dest/cloned-from"
`,
  // npm: records the command and folder in the sandbox's order.log, and its arguments and environment in
  // records/npm.<n>.argv and .env; prints its environment, as a package's install script could (a telemetry
  // beacon sends it away instead); "run build" writes dist/worker/cli.js (or fails: a file npm-fail-build in the
  // sandbox). npm runs with npm's environment only, so all it knows of the sandbox is where it is itself.
  "fake-npm": `#!/usr/bin/env bash
sandbox="$(dirname "$(dirname "$0")")"
echo "npm $* (in $PWD)" >> "$sandbox/order.log"
n=$(ls "$sandbox/records" | grep -c '^npm\\..*\\.argv$')
printf '%s\\n' "$@" > "$sandbox/records/npm.$n.argv"
env > "$sandbox/records/npm.$n.env"
env
[ -f package.json ] || { echo "fake-npm: no package.json in $PWD" >&2; exit 1; }
if [ "$1 $2" = "run build" ]; then
  if [ -f "$sandbox/npm-fail-build" ]; then echo "fake-npm: build failed" >&2; exit 2; fi
  mkdir -p dist/worker
  echo "// built by fake-npm" > dist/worker/cli.js
fi
`,
  // nvidia-smi -L: FAKE_GPU_COUNT GPUs; without it, what nvidia-smi says on a machine without a driver.
  "fake-nvidia-smi": `#!/usr/bin/env bash
[ "$1" = -L ] || exit 2
if [ "\${FAKE_GPU_COUNT:-0}" = 0 ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  exit 9
fi
for ((i = 0; i < FAKE_GPU_COUNT; i++)); do echo "GPU $i: NVIDIA H200 (UUID: GPU-fake-$i)"; done
`,
  // ldconfig -p: the libraries of the system; tcmalloc's only with FAKE_TCMALLOC (its path).
  "fake-ldconfig": `#!/usr/bin/env bash
[ "$1" = -p ] || exit 2
echo "2 libs found in cache \\\`/etc/ld.so.cache'"
[ -z "\${FAKE_TCMALLOC:-}" ] || printf '\\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => %s\\n' "$FAKE_TCMALLOC"
printf '\\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\\n'
`,
  // openssl: "req ... -keyout K -out R" writes a fake key and a fake certificate request.
  "fake-openssl": `#!/usr/bin/env bash
echo "openssl $*" >> "$FAKE_ORDER_LOG"
while [ $# -gt 0 ]; do
  case "$1" in
    -keyout) echo "FAKE KEY" > "$2"; shift ;;
    -out) echo "FAKE CSR" > "$2"; shift ;;
  esac
  shift
done
`,
};

interface Sandbox {
  dir: string;
  workerDir: string;
  comfyDir: string;
  logDir: string;
  records: string;
  tmp: string;
  orderLog: string;
  env: Record<string, string>;
}

const sandboxes: string[] = [];
const servers: Server[] = [];
const groups: number[] = [];

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // the group has ended
  }
}

async function sandbox(): Promise<Sandbox> {
  const dir = await mkdtemp(join(tmpdir(), "entrypoint-test-"));
  sandboxes.push(dir);
  const s: Sandbox = {
    dir,
    workerDir: join(dir, "opt", "worker"),
    comfyDir: join(dir, "ComfyUI"),
    logDir: join(dir, "log"),
    records: join(dir, "records"),
    tmp: join(dir, "tmp"),
    orderLog: join(dir, "order.log"),
    env: {},
  };
  const bin = join(dir, "bin");
  for (const d of [join(s.workerDir, "dist", "worker"), s.comfyDir, s.records, s.tmp, bin]) {
    await mkdir(d, { recursive: true });
  }
  await writeFile(join(s.workerDir, "dist", "worker", "cli.js"), "// the image's worker\n");
  await writeFile(join(s.workerDir, "image-worker"), "");
  await writeFile(join(s.comfyDir, "main.py"), "# ComfyUI\n");
  for (const [name, text] of Object.entries(FAKES)) {
    await writeFile(join(bin, name), text);
    await chmod(join(bin, name), 0o755);
  }
  s.env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: dir,
    TMPDIR: s.tmp,
    WORKER_DIR: s.workerDir,
    COMFYUI_DIR: s.comfyDir,
    LOG_DIR: s.logDir,
    NODE: join(bin, "fake-node"),
    COMFYUI_PYTHON: join(bin, "fake-python3"),
    GIT: join(bin, "fake-git"),
    NPM: join(bin, "fake-npm"),
    OPENSSL: join(bin, "fake-openssl"),
    NVIDIA_SMI: join(bin, "fake-nvidia-smi"),
    LDCONFIG: join(bin, "fake-ldconfig"),
    FAKE_ORDER_LOG: s.orderLog,
    FAKE_RECORD_DIR: s.records,
    WORKSPACE: join(dir, "workspace"),
    PROVISIONING_MARKER: join(dir, "provisioning_complete"),
    PROVISIONING_FLAG: join(dir, "provisioning"),
    API_WRAPPER_BENCHMARK: join(dir, "api-wrapper", "pyworker_benchmark.json"),
  };
  return s;
}

interface Run {
  pid: number;
  kill(signal: NodeJS.Signals): void;
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout contains `text`; rejects if the entrypoint ends first. */
  waitForStdout(text: string): Promise<void>;
  /** Resolves once stderr (the entrypoint's own lines) contains `text` `times` times; rejects if it ends first. */
  waitForStderr(text: string, times?: number): Promise<void>;
  /** The exit, once every output is read. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
}

function runEntrypoint(env: Record<string, string>, args: string[] = []): Run {
  const started = Date.now();
  // Its own process group, so that whatever it started can be ended together if a test goes wrong.
  const child = spawn("bash", [ENTRYPOINT, ...args], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  groups.push(child.pid!);
  let out = "";
  let err = "";
  const waiters: { met: () => boolean; resolve: () => void }[] = [];
  const check = () => {
    for (const w of waiters.filter((w) => w.met())) w.resolve();
  };
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    check();
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
    check();
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>(
    (resolveDone, rejectDone) => {
      const timer = setTimeout(() => {
        killGroup(child.pid!);
        rejectDone(
          new Error(`the entrypoint ran past ${RUN_TIMEOUT_MS} ms\nstdout:\n${out}\nstderr:\n${err}`),
        );
      }, RUN_TIMEOUT_MS);
      child.on("close", (code, signal) => {
        clearTimeout(timer);
        resolveDone({ code, signal, ms: Date.now() - started });
      });
    },
  );
  const waitFor = (what: string, met: () => boolean) =>
    new Promise<void>((resolveWait, rejectWait) => {
      if (met()) return resolveWait();
      waiters.push({ met, resolve: resolveWait });
      void done.then(
        () => rejectWait(new Error(`the entrypoint ended before printing ${what}:\n${err}`)),
        rejectWait,
      );
    });
  return {
    pid: child.pid!,
    kill: (signal) => child.kill(signal),
    stdout: () => out,
    stderr: () => err,
    waitForStdout: (text) => waitFor(JSON.stringify(text), () => out.includes(text)),
    waitForStderr: (text, times = 1) =>
      waitFor(`${JSON.stringify(text)} ${times} times`, () => err.split(text).length > times),
    done,
  };
}

async function lines(file: string): Promise<string[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text.split("\n").filter(Boolean);
}

/** A fake ComfyUI that started: its pid, CUDA_VISIBLE_DEVICES (undefined: unset) and arguments. */
interface ComfyStart {
  pid: number;
  gpu: string | undefined;
  args: string[];
}

/** The fake ComfyUIs started in a sandbox (their comfyui.<pid> records), by port. */
async function comfyStarts(s: Sandbox): Promise<ComfyStart[]> {
  const starts: ComfyStart[] = [];
  for (const file of await readdir(s.records)) {
    const pid = /^comfyui\.(\d+)$/.exec(file)?.[1];
    if (pid === undefined) continue;
    const [gpu, ...args] = (await readFile(join(s.records, file), "utf8")).split("\n").slice(0, -1);
    starts.push({ pid: Number(pid), gpu: gpu === "<unset>" ? undefined : gpu, args });
  }
  return starts.sort((a, b) => Number(lastFlag(a.args, "--port")) - Number(lastFlag(b.args, "--port")));
}

/** A flag's value as ComfyUI's argparse takes it: the last one wins. */
function lastFlag(args: string[], flag: string): string | undefined {
  const at = args.lastIndexOf(flag);
  return at < 0 ? undefined : args[at + 1];
}

async function serve(handler: (req: IncomingMessage, body: string) => { status: number; body: string }) {
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      const answer = handler(req, body);
      res.writeHead(answer.status, { "content-type": "text/plain" }).end(answer.body);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A certificate authority for 127.0.0.1 made with the real openssl: the TLS server's own certificate, too. */
function makeCa(dir: string): { crt: string; key: string } {
  const crt = join(dir, "test-ca.crt");
  const key = join(dir, "test-ca.key");
  selfSignedCert({ cn: "127.0.0.1", ip: "127.0.0.1", key, crt });
  return { crt, key };
}

/** Like serve(), over HTTPS with the CA's certificate (a local stand-in for console.vast.ai or a script host). */
async function serveTls(
  ca: { crt: string; key: string },
  handler: (req: IncomingMessage, body: string) => { status: number; body: string },
) {
  const server = createTlsServer(
    { cert: await readFile(ca.crt), key: await readFile(ca.key) },
    (req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString("latin1")));
      req.on("end", () => {
        const answer = handler(req, body);
        res.writeHead(answer.status, { "content-type": "text/plain" }).end(answer.body);
      });
    },
  );
  servers.push(server as unknown as Server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** What Vast's console does with a certificate request: signs it (here with the test CA, real openssl). */
function signCsr(ca: { crt: string; key: string }, dir: string, csr: string): string {
  const file = join(dir, `request-${Date.now()}-${Math.random()}.csr`);
  execFileSync("bash", ["-c", 'cat > "$1"', "_", file], { input: Buffer.from(csr, "latin1") });
  return execFileSync(
    "openssl",
    ["x509", "-req", "-in", file, "-CA", ca.crt, "-CAkey", ca.key, "-CAcreateserial", "-days", "1"],
    { stdio: ["ignore", "pipe", "ignore"] },
  ).toString();
}

async function pairMatches(crt: string, key: string): Promise<boolean> {
  const fromCert = new X509Certificate(await readFile(crt)).publicKey.export({ type: "spki", format: "pem" });
  const fromKey = createPublicKey(await readFile(key)).export({ type: "spki", format: "pem" });
  return fromCert === fromKey;
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err: any) {
    return err.code === "ESRCH";
  }
}

/**
 * Ended: gone, or a zombie that its new parent has not collected yet (a process whose parent died is collected by
 * PID 1, whenever that gets to it).
 */
function processEnded(pid: number): boolean {
  if (processGone(pid)) return true;
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.startsWith("Z");
  } catch {
    return true;
  }
}

/** A process's group and session (Linux: /proc/<pid>/stat). */
function groupAndSession(pid: number): { pgid: number; sid: number } {
  const [, , pgid, sid] = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return { pgid: Number(pgid), sid: Number(sid) };
}

/** Polls `check` every 20 ms, for processes that are not ours to wait on (no event tells when they end). */
async function waitUntil(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Waits until comfyui.ready has `count` lines (each fake ComfyUI adds its pid once up; no event tells) and returns
 * the pid on the last one.
 */
async function readyLines(s: Sandbox, count: number): Promise<number> {
  const file = join(s.records, "comfyui.ready");
  await waitUntil(
    `${count} lines in comfyui.ready`,
    () => readFileSync(file, "utf8").split("\n").length > count,
  );
  return Number((await lines(file)).at(-1));
}

afterEach(async () => {
  for (const pid of groups.splice(0)) killGroup(pid);
  for (const server of servers.splice(0)) await new Promise((r) => server.close(r));
  for (const dir of sandboxes.splice(0)) await rm(dir, { recursive: true, force: true });
});

describe("docker-entrypoint.sh", () => {
  test(
    "runs a local provisioning script before ComfyUI and the worker, and starts both as configured",
    async () => {
      const s = await sandbox();
      const script = join(s.dir, "provision.sh");
      await writeFile(script, `echo "provisioning (COMFYUI_DIR=$COMFYUI_DIR)" >> "$FAKE_ORDER_LOG"\n`);
      const run = runEntrypoint({
        ...s.env,
        PROVISIONING_SCRIPT: script,
        COMFYUI_ARGS: "--lowvram --preview-method auto",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      const { code } = await run.done;
      expect(code).toBe(0);

      const order = await lines(s.orderLog);
      expect(order[0]).toBe(`provisioning (COMFYUI_DIR=${s.comfyDir})`);
      expect(order).toContain(
        `comfyui main.py --listen 127.0.0.1 --port 18188 --disable-auto-launch --lowvram --preview-method auto (in ${s.comfyDir})`,
      );
      expect(order).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      // The worker ended by itself: ComfyUI is stopped after it.
      expect(order.at(-1)).toBe("comfyui got SIGTERM");
      // The entrypoint's own steps, in order, each one line on stderr.
      const steps = run
        .stderr()
        .split("\n")
        .filter((l) => l.startsWith("[entrypoint]"));
      const at = (text: string) => steps.findIndex((l) => l.includes(text));
      expect(at("provisioning: running")).toBeGreaterThanOrEqual(0);
      expect(at("provisioning: running")).toBeLessThan(at("comfyui: starting"));
      expect(at("comfyui: starting")).toBeLessThan(at("worker: starting"));
      expect(at("worker: starting")).toBeLessThan(at("comfyui: stopping"));

      expect(await readFile(join(s.logDir, "comfyui.log"), "utf8")).toContain("fake ComfyUI log line");
      expect((await readFile(join(s.records, "worker.cwd"), "utf8")).trim()).toBe(s.workerDir);
      const workerEnv = await lines(join(s.records, "worker.env"));
      expect(workerEnv).toContain(`COMFYUI_BASE_DIR=${s.comfyDir}`);
      expect(workerEnv).toContain("COMFYUI_URL=http://127.0.0.1:18188");
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["the image's venv has a python: that one, with the venv's bin first on ComfyUI's PATH", true],
    ["no venv: python3 from PATH", false],
  ])(
    "COMFYUI_PYTHON unset, %s",
    async (_what, withVenv) => {
      const s = await sandbox();
      const venvBin = join(s.dir, "venv", "bin");
      const pathBin = join(s.dir, "path-bin");
      await mkdir(venvBin, { recursive: true });
      await mkdir(pathBin);
      if (withVenv) await symlink(s.env.COMFYUI_PYTHON!, join(venvBin, "python"));
      await symlink(s.env.COMFYUI_PYTHON!, join(pathBin, "python3"));
      const { COMFYUI_PYTHON: _default, ...env } = s.env;
      const run = runEntrypoint({
        ...env,
        COMFYUI_VENV: dirname(venvBin),
        PATH: `${pathBin}:${env.PATH}`,
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      expect((await run.done).code).toBe(0);
      const started = await comfyStarts(s);
      expect(started).toHaveLength(1);
      expect(await lines(join(s.records, `comfyui.${started[0]!.pid}.program`))).toEqual(
        withVenv ? [join(venvBin, "python"), venvBin] : [join(pathBin, "python3"), pathBin],
      );
    },
    TEST_TIMEOUT_MS,
  );

  // A real library for the preload (the C library this test runs on), so that the loader has nothing to say.
  const libc = readFileSync("/proc/self/maps", "utf8")
    .split("\n")
    .map((l) => l.split(/\s+/).at(-1)!)
    .find((p) => /\/libc\.so\.6$/.test(p))!;
  test.each([
    [
      "tcmalloc installed: ComfyUI preloads it, as the image's own program does",
      { FAKE_TCMALLOC: libc },
      libc,
    ],
    ["tcmalloc not installed: no preload", {}, "<unset>"],
    ["COMFYUI_LD_PRELOAD empty: no preload", { FAKE_TCMALLOC: libc, COMFYUI_LD_PRELOAD: "" }, "<unset>"],
  ])(
    "%s; never the worker",
    async (_what, extra: Record<string, string>, expected) => {
      const s = await sandbox();
      const run = runEntrypoint({ ...s.env, ...extra, FAKE_NODE_EXIT_AFTER_READY: "0" });
      expect((await run.done).code).toBe(0);
      const started = await comfyStarts(s);
      expect(started).toHaveLength(1);
      expect(await lines(join(s.records, `comfyui.${started[0]!.pid}.preload`))).toEqual([expected]);
      const workerEnv = await lines(join(s.records, "worker.env"));
      expect(workerEnv.filter((l) => l.startsWith("LD_PRELOAD="))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "downloads a provisioning script from an http URL with curl, runs it, and removes the download",
    async () => {
      const s = await sandbox();
      const requests: string[] = [];
      const base = await serve((req) => {
        requests.push(`${req.method} ${req.url}`);
        return req.url === "/provision.sh"
          ? { status: 200, body: `echo "provisioning from $0" >> "$FAKE_ORDER_LOG"\n` }
          : { status: 404, body: "not found" };
      });
      const run = runEntrypoint({
        ...s.env,
        PROVISIONING_SCRIPT: `${base}/provision.sh`,
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      const { code } = await run.done;
      expect(code).toBe(0);
      expect(requests).toEqual(["GET /provision.sh"]);
      const order = await lines(s.orderLog);
      expect(order[0]).toMatch(new RegExp(`^provisioning from ${s.tmp}/provisioning\\.`));
      expect(order).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      expect(await readdir(s.tmp)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["a script that fails", "local", /provisioning: .*failed \(exit 3\)/],
    ["a URL that answers 404", "url", /provisioning: could not download/],
    ["a path that does not exist", "missing", /provisioning: no such file/],
  ])(
    "provisioning with %s: the failure is logged, not fatal: ComfyUI and the worker start, and it runs again next time",
    async (_what, kind, message) => {
      const s = await sandbox();
      let target = join(s.dir, "no-such-script.sh");
      if (kind === "local") {
        target = join(s.dir, "provision.sh");
        await writeFile(target, `echo "provisioning failing" >> "$FAKE_ORDER_LOG"\nexit 3\n`);
      } else if (kind === "url") {
        target = `${await serve(() => ({ status: 404, body: "gone" }))}/provision.sh`;
      }
      const env = { ...s.env, PROVISIONING_SCRIPT: target, FAKE_NODE_EXIT_AFTER_READY: "0" };
      const run = runEntrypoint(env);
      const { code } = await run.done;
      expect(code).toBe(0);
      expect(run.stderr()).toMatch(message);
      expect(run.stderr()).toMatch(
        /^\[entrypoint\] ERROR: provisioning: .*starting ComfyUI and the worker anyway/m,
      );
      const order = await lines(s.orderLog);
      if (kind === "local") expect(order[0]).toBe("provisioning failing");
      expect(order).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      expect(order.some((l) => l.startsWith("comfyui main.py"))).toBe(true);
      expect(await readdir(s.tmp)).toEqual([]);
      await expect(readFile(s.env.PROVISIONING_MARKER!)).rejects.toThrow();

      // Not marked done: the next start tries again.
      await rm(s.orderLog);
      const again = runEntrypoint(env);
      expect((await again.done).code).toBe(0);
      expect(again.stderr()).toMatch(message);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a provisioning script that succeeded runs once: the next start skips it",
    async () => {
      const s = await sandbox();
      const script = join(s.dir, "provision.sh");
      await writeFile(script, `echo "provisioning" >> "$FAKE_ORDER_LOG"\n`);
      const env = { ...s.env, PROVISIONING_SCRIPT: script, FAKE_NODE_EXIT_AFTER_READY: "0" };
      expect((await runEntrypoint(env).done).code).toBe(0);
      expect((await lines(s.orderLog))[0]).toBe("provisioning");
      await rm(s.orderLog);
      const again = runEntrypoint(env);
      expect((await again.done).code).toBe(0);
      expect(await lines(s.orderLog)).not.toContain("provisioning");
      expect(again.stderr()).toContain("provisioning: already done");
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["SIGTERM", "7", 7],
    ["SIGINT", "0", 0],
  ] as const)(
    "%s to the entrypoint reaches the worker; then ComfyUI is stopped and the worker's code returned",
    async (signal, workerCode, expected) => {
      const s = await sandbox();
      const run = runEntrypoint({ ...s.env, FAKE_NODE_EXIT_CODE: workerCode });
      await run.waitForStdout("fake-node: running");
      run.kill(signal);
      const { code } = await run.done;
      expect(code).toBe(expected);
      const order = await lines(s.orderLog);
      expect(order.slice(-2)).toEqual([`worker got ${signal}`, "comfyui got SIGTERM"]);
      expect(run.stderr()).toContain(`[entrypoint] received ${signal}: forwarding it to the worker`);
      expect(run.stderr()).toContain(`[entrypoint] worker: exited with code ${expected}`);
      const comfyPid = Number(await readFile(join(s.records, "comfyui.pid"), "utf8"));
      expect(processGone(comfyPid)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["COMFYUI_STOP_TIMEOUT", "soon"],
    ["COMFYUI_RESTART_MAX_DELAY", "-1"],
    ["CERT_SIGN_ATTEMPTS", "0"],
    ["CERT_RETRY_DELAY", "1.5"],
  ])(
    "%s=%s stops the start with a message naming it, before anything runs",
    async (name, value) => {
      const s = await sandbox();
      const run = runEntrypoint({ ...s.env, [name]: value });
      expect((await run.done).code).toBe(1);
      expect(run.stderr()).toMatch(new RegExp(`^\\[entrypoint\\] ERROR: ${name} must be`, "m"));
      expect(await lines(s.orderLog)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a ComfyUI that dies while the worker runs is started again, after 1 s, then 2 s; the stop ends the new one",
    async () => {
      const s = await sandbox();
      const run = runEntrypoint({ ...s.env, FAKE_NODE_EXIT_CODE: "5" });
      await run.waitForStdout("fake-node: running");
      const ready = (count: number) => readyLines(s, count);
      for (const [n, delay] of [
        [1, 1],
        [2, 2],
      ] as const) {
        process.kill(await ready(n), "SIGUSR1");
        await run.waitForStderr(`while the worker runs; starting it again in ${delay}s`);
        expect(run.stderr()).toMatch(
          new RegExp(`\\[entrypoint\\] comfyui: exited with code 134 after \\d+s while the worker runs`),
        );
      }
      await ready(3);
      const starts = await comfyStarts(s);
      expect(starts).toHaveLength(3);
      // The same ComfyUI each time.
      expect(new Set(starts.map((c) => JSON.stringify([c.gpu, c.args]))).size).toBe(1);
      run.kill("SIGTERM");
      expect((await run.done).code).toBe(5);
      expect((await lines(s.orderLog)).slice(-2)).toEqual(["worker got SIGTERM", "comfyui got SIGTERM"]);
      for (const { pid } of starts) expect(processGone(pid)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["a ComfyUI", {}, ["comfyui"]],
    [
      "each ComfyUI of COMFYUI_PER_GPU",
      { COMFYUI_PER_GPU: "true", FAKE_GPU_COUNT: "2" },
      ["comfyui-0", "comfyui-1"],
    ],
  ])(
    "%s that ignores SIGTERM is killed after COMFYUI_STOP_TIMEOUT; the worker's own exit code is kept",
    async (_what, extra, names) => {
      const s = await sandbox();
      const run = runEntrypoint({
        ...s.env,
        ...extra,
        COMFYUI_STOP_TIMEOUT: "1",
        FAKE_COMFYUI_IGNORE_TERM: "1",
        FAKE_NODE_EXIT_AFTER_READY: "3",
      });
      const { code, ms } = await run.done;
      expect(code).toBe(3);
      expect(ms).toBeGreaterThanOrEqual(1000);
      for (const name of names) {
        expect(run.stderr()).toContain(`[entrypoint] ${name}: still running after 1s, sending SIGKILL`);
      }
      const started = await comfyStarts(s);
      expect(started).toHaveLength(names.length);
      for (const { pid } of started) expect(processGone(pid)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "PYWORKER_REPO installs the worker once (clone, npm ci, build, prune, swap); the marker skips it next time",
    async () => {
      const s = await sandbox();
      const env = {
        ...s.env,
        PYWORKER_REPO: "https://example.invalid/me/comfyui-worker.git",
        PYWORKER_REF: "v9",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      };
      const first = runEntrypoint(env);
      expect((await first.done).code).toBe(0);
      const order = await lines(s.orderLog);
      const clone = order.find((l) => l.startsWith("git clone"));
      expect(clone).toMatch(
        /^git clone -q --depth 1 --branch v9 https:\/\/example\.invalid\/me\/comfyui-worker\.git \S+$/,
      );
      const cloneDir = clone!.split(" ").at(-1)!;
      expect(dirname(cloneDir)).toBe(dirname(s.workerDir));
      expect(order.filter((l) => l.startsWith("npm"))).toEqual([
        `npm ci --ignore-scripts --no-audit --no-fund (in ${cloneDir})`,
        `npm run build (in ${cloneDir})`,
        `npm prune --omit=dev --ignore-scripts --no-audit --no-fund (in ${cloneDir})`,
      ]);
      // The installed worker replaced the image's, and runs from WORKER_DIR.
      expect(order).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      const installed = await readdir(s.workerDir);
      expect(installed).toContain("cloned-from");
      expect(installed).not.toContain("image-worker");
      const markers = installed.filter((f) => f.startsWith(".installed-from-"));
      expect(markers).toHaveLength(1);
      expect((await readdir(dirname(s.workerDir))).sort()).toEqual(["worker"]);
      expect(first.stderr()).toMatch(/\[entrypoint\] worker: installed from/);

      await rm(s.orderLog);
      const second = runEntrypoint(env);
      expect((await second.done).code).toBe(0);
      const again = await lines(s.orderLog);
      expect(again.filter((l) => l.startsWith("git") || l.startsWith("npm"))).toEqual([]);
      expect(again).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      expect(second.stderr()).toMatch(/\[entrypoint\] worker: .* already installed .*skipping the install/);

      // Another ref is another install.
      await rm(s.orderLog);
      const third = runEntrypoint({ ...env, PYWORKER_REF: "v10" });
      expect((await third.done).code).toBe(0);
      expect((await lines(s.orderLog)).some((l) => l.startsWith("git clone -q --depth 1 --branch v10"))).toBe(
        true,
      );
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a failed worker install exits non-zero and leaves the image's worker as it was",
    async () => {
      const s = await sandbox();
      await writeFile(join(s.dir, "npm-fail-build"), "");
      const run = runEntrypoint({
        ...s.env,
        PYWORKER_REPO: "https://example.invalid/me/comfyui-worker.git",
      });
      const { code } = await run.done;
      expect(code).toBe(1);
      expect(run.stderr()).toMatch(/\[entrypoint\] ERROR: worker install from .* failed at: npm run build/);
      const order = await lines(s.orderLog);
      expect(order.some((l) => l.startsWith("git clone -q --depth 1 https://example.invalid/"))).toBe(true);
      expect(order.some((l) => l.startsWith("comfyui") || l.startsWith("worker"))).toBe(false);
      expect((await readdir(s.workerDir)).sort()).toEqual(["dist", "image-worker"]);
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a token in PYWORKER_REPO or PROVISIONING_SCRIPT reaches no log, marker or report; npm runs without install scripts and without the worker's secrets",
    async () => {
      const s = await sandbox();
      const provisioned: string[] = [];
      const scriptHost = await serve((req) => {
        provisioned.push(req.url!);
        return { status: 200, body: `echo "provisioning" >> "$FAKE_ORDER_LOG"\n` };
      });
      const reports: any[] = [];
      const autoscaler = await serve((req, body) => {
        reports.push({ path: req.url, body: JSON.parse(body) });
        return { status: 200, body: "{}" };
      });
      // Each secret a distinct word, so that any trace of one is found wherever it lands.
      const secrets = {
        PYWORKER_REPO:
          "https://deploy:repo-password@example.invalid/me/comfyui-worker.git?private_token=repo-token",
        PROVISIONING_SCRIPT: `${scriptHost.replace("://", "://user:script-password@")}/provision.sh?token=script-token#script-fragment`,
        MASTER_TOKEN: "master-token-value",
        S3_ACCESS_KEY_ID: "s3-access-key-value",
        S3_SECRET_ACCESS_KEY: "s3-secret-value",
        HF_TOKEN: "hf-token-value",
        WEBHOOK_SECRET: "webhook-secret-value",
        NODE_AUTH_TOKEN: "node-auth-token-value",
      };
      const words = [
        "repo-password",
        "repo-token",
        "comfyui-worker.git",
        "script-password",
        "script-token",
        "script-fragment",
        "provision.sh",
        ...Object.entries(secrets)
          .filter(([name]) => !name.startsWith("P"))
          .map(([, value]) => value),
      ];
      const leaks = (text: string) => words.filter((w) => text.includes(w));
      const env = {
        ...s.env,
        ...secrets,
        REPORT_ADDR: autoscaler,
        // What npm may see: its own settings and the network's.
        npm_config_cache: join(s.dir, "npm-cache"),
        HTTPS_PROXY: "http://proxy.invalid:3128",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      };

      const first = runEntrypoint(env);
      expect((await first.done).code).toBe(0);
      expect(provisioned).toEqual(["/provision.sh?token=script-token"]);
      expect(leaks(first.stdout() + first.stderr())).toEqual([]);
      // The sources as the log shows them: scheme and host.
      expect(first.stderr()).toContain("worker: installing from https://example.invalid into");
      expect(first.stderr()).toContain(`provisioning: downloading and running ${scriptHost}\n`);

      // The markers: private to their owner, and without the token.
      const markers = (await readdir(s.workerDir)).filter((f) => f.startsWith(".installed-from-"));
      expect(markers).toHaveLength(1);
      for (const file of [join(s.workerDir, markers[0]!), s.env.PROVISIONING_MARKER!]) {
        expect((await stat(file)).mode & 0o777).toBe(0o600);
        expect(leaks(await readFile(file, "utf8"))).toEqual([]);
      }

      // npm: no install scripts, and only npm's environment.
      const npmRuns = (await readdir(s.records)).filter((f) => /^npm\.\d+\.argv$/.test(f)).sort();
      expect(npmRuns).toHaveLength(3);
      for (const argvFile of npmRuns) {
        const argv = await lines(join(s.records, argvFile));
        if (argv[0] !== "run") expect(argv).toContain("--ignore-scripts");
        const npmEnv = await lines(join(s.records, argvFile.replace(/argv$/, "env")));
        const names = npmEnv
          .map((l) => l.split("=")[0]!)
          .filter((n) => n !== "_" && n !== "PWD" && n !== "SHLVL");
        expect(names.sort()).toEqual(["HOME", "HTTPS_PROXY", "PATH", "TMPDIR", "npm_config_cache"]);
        expect(leaks(npmEnv.join("\n"))).toEqual([]);
      }

      // A failure quotes the repository (git's own message does): reported and logged without the token.
      await rm(join(s.workerDir, markers[0]!));
      const failed = runEntrypoint({ ...env, FAKE_GIT_FAIL: "1" });
      expect((await failed.done).code).toBe(1);
      expect(failed.stderr()).toContain("fatal: unable to access 'https://example.invalid': ");
      expect(failed.stderr()).toContain("worker install from https://example.invalid failed at: git clone");
      expect(reports).toHaveLength(1);
      expect(reports[0].body.error_msg).toMatch(
        /^worker install from https:\/\/example\.invalid failed at: git clone/,
      );
      expect(leaks(failed.stdout() + failed.stderr() + reports[0].body.error_msg)).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "markers an earlier version wrote with the full URL, readable by anyone, are rewritten redacted and private at the next start",
    async () => {
      const s = await sandbox();
      const repo = "https://deploy:repo-password@example.invalid/me/comfyui-worker.git";
      const script = "https://scripts.example/provision.sh?token=script-token";
      const key = createHash("sha256").update(`${repo}#v9`).digest("hex").slice(0, 16);
      const installMarker = join(s.workerDir, `.installed-from-${key}`);
      await writeFile(installMarker, `${repo}\nv9\n`, { mode: 0o644 });
      await writeFile(s.env.PROVISIONING_MARKER!, `${script}\n`, { mode: 0o644 });
      const run = runEntrypoint({
        ...s.env,
        PYWORKER_REPO: repo,
        PYWORKER_REF: "v9",
        PROVISIONING_SCRIPT: script,
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      expect((await run.done).code).toBe(0);
      expect(run.stderr()).toContain("already installed");
      expect(run.stderr()).toContain("provisioning: already done");
      expect(await readFile(installMarker, "utf8")).toBe("https://example.invalid\nv9\n");
      expect(await readFile(s.env.PROVISIONING_MARKER!, "utf8")).toBe("https://scripts.example\n");
      for (const file of [installMarker, s.env.PROVISIONING_MARKER!]) {
        expect((await stat(file)).mode & 0o777).toBe(0o600);
      }
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["--dry-run", ["--dry-run"], {}],
    ["ENTRYPOINT_DRY_RUN=1", [], { ENTRYPOINT_DRY_RUN: "1" }],
  ] as const)(
    "%s prints the commands and runs none of them",
    async (_how, args, extra) => {
      const s = await sandbox();
      const script = join(s.dir, "provision.sh");
      await writeFile(script, `echo "provisioning" >> "$FAKE_ORDER_LOG"\n`);
      const run = runEntrypoint(
        {
          ...s.env,
          ...extra,
          PYWORKER_REPO: "https://example.invalid/me/comfyui-worker.git",
          PROVISIONING_SCRIPT: script,
        },
        [...args],
      );
      const { code } = await run.done;
      expect(code).toBe(0);
      const out = run.stdout();
      // The repository's URL as logs show it: scheme and host (its path, query or credentials may hold a token).
      expect(out).toMatch(/^\+ \S*fake-git clone -q --depth 1 https:\/\/example\.invalid /m);
      expect(out).toMatch(/only_npm_env \S*fake-npm ci --ignore-scripts --no-audit --no-fund/);
      expect(out).toContain(`+ bash ${script}`);
      expect(out).toContain("main.py --listen 127.0.0.1 --port 18188 --disable-auto-launch");
      expect(out).toContain(`${s.workerDir}/dist/worker/cli.js start`);
      expect(await lines(s.orderLog)).toEqual([]);
      expect((await readdir(s.workerDir)).sort()).toEqual(["dist", "image-worker"]);
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "USE_SSL=true: a fresh pair signed over https at every start; SSL_CERT_FILE (the CA list) is left alone, so an https provisioning URL works too",
    async () => {
      const s = await sandbox();
      const ca = makeCa(s.dir);
      const seen: string[] = [];
      const base = await serveTls(ca, (req, body) => {
        seen.push(req.url!);
        if (req.url === "/provision.sh")
          return { status: 200, body: `echo "provisioning over https" >> "$FAKE_ORDER_LOG"\n` };
        return { status: 200, body: signCsr(ca, s.dir, body) };
      });
      const env = {
        ...s.env,
        OPENSSL: "openssl",
        // The machine's CA list, as a system sets it; the entrypoint must not point it at the instance certificate.
        SSL_CERT_FILE: ca.crt,
        USE_SSL: "true",
        CONTAINER_ID: "42",
        WORKER_SSL_CERT_FILE: join(s.dir, "instance.crt"),
        WORKER_SSL_KEY_FILE: join(s.dir, "instance.key"),
        VAST_SIGN_CERT_URL: `${base}/api/v0/sign_cert/`,
        PROVISIONING_SCRIPT: `${base}/provision.sh`,
        FAKE_NODE_EXIT_AFTER_READY: "0",
      };
      const first = runEntrypoint(env);
      expect((await first.done).code).toBe(0);
      expect(seen).toEqual(["/api/v0/sign_cert/?instance_id=42", "/provision.sh"]);
      expect(await pairMatches(env.WORKER_SSL_CERT_FILE, env.WORKER_SSL_KEY_FILE)).toBe(true);
      expect((await lines(s.orderLog))[0]).toBe("provisioning over https");
      const workerEnv = await lines(join(s.records, "worker.env"));
      expect(workerEnv).toContain(`SSL_CERT_FILE=${ca.crt}`);
      expect(workerEnv).toContain(`WORKER_SSL_CERT_FILE=${env.WORKER_SSL_CERT_FILE}`);
      const firstKey = await readFile(env.WORKER_SSL_KEY_FILE, "utf8");

      // The next start signs a fresh pair (provisioning is done: it does not run again).
      const second = runEntrypoint(env);
      expect((await second.done).code).toBe(0);
      expect(seen).toEqual([
        "/api/v0/sign_cert/?instance_id=42",
        "/provision.sh",
        "/api/v0/sign_cert/?instance_id=42",
      ]);
      expect(await readFile(env.WORKER_SSL_KEY_FILE, "utf8")).not.toBe(firstKey);
      expect(await pairMatches(env.WORKER_SSL_CERT_FILE, env.WORKER_SSL_KEY_FILE)).toBe(true);
      expect((await readdir(s.dir)).filter((f) => /^instance\.(crt|key)\./.test(f))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "signing fails: retried, then a valid pair on disk is kept; without one the failure is reported to /worker_status/ and the start stops",
    async () => {
      const s = await sandbox();
      const ca = makeCa(s.dir);
      let attempts = 0;
      const base = await serveTls(ca, () => {
        attempts++;
        return { status: 500, body: "console down" };
      });
      const reports: any[] = [];
      const autoscaler = await serve((req, body) => {
        reports.push({ path: req.url, body: JSON.parse(body) });
        return { status: 200, body: "{}" };
      });
      const env = {
        ...s.env,
        OPENSSL: "openssl",
        SSL_CERT_FILE: ca.crt,
        USE_SSL: "true",
        CONTAINER_ID: "42",
        MASTER_TOKEN: "token-42",
        PUBLIC_IPADDR: "203.0.113.7",
        VAST_TCP_PORT_3000: "41000",
        REPORT_ADDR: `http://127.0.0.1:1,${autoscaler}`,
        WORKER_SSL_CERT_FILE: join(s.dir, "instance.crt"),
        WORKER_SSL_KEY_FILE: join(s.dir, "instance.key"),
        VAST_SIGN_CERT_URL: `${base}/api/v0/sign_cert/`,
        CERT_SIGN_ATTEMPTS: "3",
        CERT_RETRY_DELAY: "0",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      };
      const failed = runEntrypoint(env);
      expect((await failed.done).code).toBe(1);
      expect(attempts).toBe(3);
      expect(reports).toEqual([
        {
          path: "/worker_status/",
          body: {
            id: 42,
            mtoken: "token-42",
            version: "1.1.0",
            error_msg: expect.stringMatching(
              /^ssl: no usable certificate for USE_SSL=true: signing by .* failed after 3 attempts/,
            ),
            url: "https://203.0.113.7:41000",
          },
        },
      ]);
      expect(await lines(s.orderLog)).toEqual([]);

      // A pair from an earlier start, still valid: kept, with a line saying so.
      selfSignedCert({ cn: "earlier", key: env.WORKER_SSL_KEY_FILE, crt: env.WORKER_SSL_CERT_FILE });
      const kept = runEntrypoint(env);
      expect((await kept.done).code).toBe(0);
      expect(kept.stderr()).toContain("ssl: using the certificate already in");
      expect(await pairMatches(env.WORKER_SSL_CERT_FILE, env.WORKER_SSL_KEY_FILE)).toBe(true);

      // A certificate whose key is not the one on disk is not kept.
      execFileSync("openssl", ["genpkey", "-algorithm", "RSA", "-out", env.WORKER_SSL_KEY_FILE], {
        stdio: "ignore",
      });
      const mismatched = runEntrypoint(env);
      expect((await mismatched.done).code).toBe(1);
      expect(reports).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    ["the seed template's default (Vast's PyWorker)", "https://github.com/vast-ai/pyworker", false],
    ["a repository that is not this worker", "https://example.invalid/someone/my-pyworker.git", true],
  ])(
    "a foreign PYWORKER_REPO, %s, is logged and ignored: the image's worker runs",
    async (_what, repo, clones) => {
      const s = await sandbox();
      const run = runEntrypoint({
        ...s.env,
        PYWORKER_REPO: repo,
        PYWORKER_REF: "main",
        FAKE_GIT_PACKAGE_NAME: "",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      expect((await run.done).code).toBe(0);
      // Scheme and host only, as every URL the entrypoint prints.
      const shown = new URL(repo).origin;
      expect(run.stderr()).toContain(`[entrypoint] worker: ignoring PYWORKER_REPO=${shown} @ main: `);
      const order = await lines(s.orderLog);
      expect(order.some((l) => l.startsWith("git clone"))).toBe(clones);
      expect(order.some((l) => l.startsWith("npm"))).toBe(false);
      expect(order).toContain(`worker ${s.workerDir}/dist/worker/cli.js start`);
      expect((await readdir(s.workerDir)).sort()).toEqual(["dist", "image-worker"]);
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "under supervisor (our image): no ComfyUI and no provisioning of its own, the worker replaces the script; the seed's benchmark paths, COMFYUI_ARGS' port, the worker's log in LOG_DIR",
    async () => {
      const s = await sandbox();
      const seedBenchmark = join(
        s.env.WORKSPACE!,
        "vast-pyworker",
        "workers",
        "comfyui-json",
        "misc",
        "benchmark.json",
      );
      await mkdir(dirname(seedBenchmark), { recursive: true });
      await writeFile(seedBenchmark, "{}");
      await writeFile(join(s.records, "comfyui.ready"), "");
      const script = join(s.dir, "provision.sh");
      await writeFile(script, `echo "provisioning" >> "$FAKE_ORDER_LOG"\n`);
      // Vast's utils/environment.sh: what its programs load (here, one variable of the user's .env).
      const vastEnvironment = join(s.dir, "environment.sh");
      await writeFile(vastEnvironment, "set -a\nUSER_DOT_ENV_VARIABLE=from-workspace-env\nset +a\n");
      const run = runEntrypoint({
        ...s.env,
        VAST_ENVIRONMENT_SCRIPT: vastEnvironment,
        WORKER_UNDER_SUPERVISOR: "true",
        PROVISIONING_SCRIPT: script,
        COMFYUI_ARGS: "--disable-auto-launch --enable-cors-header --port 18190",
        // Without COMFYUI_PER_GPU, the GPUs do not matter: ComfyUI is supervisor's one program.
        FAKE_GPU_COUNT: "2",
      });
      await run.waitForStdout("fake-node: running");
      // exec: supervisor's own process is the worker.
      expect(Number(await readFile(join(s.records, "worker.pid"), "utf8"))).toBe(run.pid);
      // supervisor (stopasgroup) signals the whole group: the worker's log copier outlives the worker's drain.
      process.kill(-run.pid, "SIGTERM");
      expect((await run.done).code).toBe(0);
      expect(await lines(s.orderLog)).toEqual([
        `worker ${s.workerDir}/dist/worker/cli.js start`,
        "worker got SIGTERM",
      ]);
      const workerEnv = await lines(join(s.records, "worker.env"));
      expect(workerEnv).toContain(`BENCHMARK_JSON_PATH=${seedBenchmark}`);
      expect(workerEnv).toContain(`BENCHMARK_CACHE_FILE=${s.env.WORKSPACE}/.has_benchmark`);
      expect(workerEnv).toContain("COMFYUI_URL=http://127.0.0.1:18190");
      expect(workerEnv.some((l) => l.startsWith("COMFYUI_URLS="))).toBe(false);
      expect(workerEnv).toContain("USER_DOT_ENV_VARIABLE=from-workspace-env");
      expect(workerEnv.some((l) => l.startsWith("SSL_CERT_FILE="))).toBe(false);
      expect(run.stdout()).toContain("fake-node: started");
      const workerLog = await readFile(join(s.logDir, "comfyui-worker.log"), "utf8");
      expect(workerLog).toContain("fake-node: started");
      expect(workerLog).toContain("fake-node: got SIGTERM");
      expect(run.stdout()).toContain("fake-node: got SIGTERM");
    },
    TEST_TIMEOUT_MS,
  );

  describe("one ComfyUI per GPU (COMFYUI_PER_GPU)", () => {
    interface PerGpuCase {
      what: string;
      env: (s: Sandbox) => Record<string, string>;
      gpus: string[];
      port: number;
      /** Each ComfyUI's output folder; by default <ComfyUI>/output/gpu<i>. */
      outputs?: (s: Sandbox) => string[];
    }
    test.each<PerGpuCase>([
      {
        what: "nvidia-smi -L lists 2 GPUs",
        env: () => ({ FAKE_GPU_COUNT: "2" }),
        gpus: ["0", "1"],
        port: 18188,
      },
      {
        what: "nvidia-smi -L lists 4 GPUs",
        env: () => ({ FAKE_GPU_COUNT: "4" }),
        gpus: ["0", "1", "2", "3"],
        port: 18188,
      },
      {
        what: "CUDA_VISIBLE_DEVICES=2,5 (of 8)",
        env: () => ({ FAKE_GPU_COUNT: "8", CUDA_VISIBLE_DEVICES: "2,5" }),
        gpus: ["2", "5"],
        port: 18188,
      },
      {
        what: "COMFYUI_ARGS' port and output folder",
        env: (s) => ({
          FAKE_GPU_COUNT: "2",
          COMFYUI_ARGS: `--port 19000 --output-directory ${s.dir}/out --lowvram`,
        }),
        gpus: ["0", "1"],
        port: 19000,
        outputs: (s) => [`${s.dir}/out/gpu0`, `${s.dir}/out/gpu1`],
      },
      {
        what: "a COMFYUI_OUTPUT_DIR list",
        env: (s) => ({ FAKE_GPU_COUNT: "2", COMFYUI_OUTPUT_DIR: `${s.dir}/a,${s.dir}/b` }),
        gpus: ["0", "1"],
        port: 18188,
        outputs: (s) => [`${s.dir}/a`, `${s.dir}/b`],
      },
    ])(
      "COMFYUI_PER_GPU=true, $what: one ComfyUI per GPU (its port, GPU, output and temp folders, log; one input folder); the worker gets COMFYUI_URLS",
      async ({ env, gpus, port, outputs }) => {
        const s = await sandbox();
        const extra = env(s);
        const run = runEntrypoint({
          ...s.env,
          ...extra,
          COMFYUI_PER_GPU: "true",
          FAKE_NODE_EXIT_AFTER_READY: "0",
        });
        expect((await run.done).code).toBe(0);

        const input = join(s.comfyDir, "input");
        const folders = outputs?.(s) ?? gpus.map((_, i) => join(s.comfyDir, "output", `gpu${i}`));
        const urls = gpus.map((_, i) => `http://127.0.0.1:${port + i}`);
        const started = await comfyStarts(s);
        expect(started.map(({ gpu, args }) => ({ gpu, args }))).toEqual(
          gpus.map((gpu, i) => ({
            gpu,
            args: [
              "main.py",
              ...["--listen", "127.0.0.1", "--disable-auto-launch"],
              ...(extra.COMFYUI_ARGS ?? "").split(" ").filter(Boolean),
              ...["--port", String(port + i), "--input-directory", input, "--output-directory", folders[i]],
              ...["--temp-directory", join(s.comfyDir, "temp", `gpu${i}`)],
            ],
          })),
        );
        for (const [i, gpu] of gpus.entries()) {
          const log = await readFile(join(s.logDir, `comfyui-${i}.log`), "utf8");
          expect(log).toContain(`fake ComfyUI log line (CUDA_VISIBLE_DEVICES=${gpu}): `);
          expect(log).toContain(`--port ${port + i} `);
          await expect(readdir(folders[i]!)).resolves.toEqual([]);
        }
        await expect(readFile(join(s.logDir, "comfyui.log"))).rejects.toThrow();

        const workerEnv = await lines(join(s.records, "worker.env"));
        expect(workerEnv).toContain(`COMFYUI_URLS=${urls.join(",")}`);
        expect(workerEnv).toContain(`COMFYUI_OUTPUT_DIR=${folders.join(",")}`);
        expect(workerEnv).toContain(`COMFYUI_INPUT_DIR=${input}`);
        expect(workerEnv.filter((l) => l.startsWith("COMFYUI_URL="))).toEqual([]);
        // Each one stopped after the worker.
        expect((await lines(s.orderLog)).filter((l) => l === "comfyui got SIGTERM")).toHaveLength(
          gpus.length,
        );
        for (const { pid } of started) expect(processGone(pid)).toBe(true);
      },
      TEST_TIMEOUT_MS,
    );

    test.each([
      ["", (i: number, s: Sandbox) => (i === 0 ? [] : [`sqlite:///${s.comfyDir}/user/comfyui-gpu${i}.db`])],
      ["--database-url sqlite:///:memory:", () => ["sqlite:///:memory:"]],
    ])(
      "a ComfyUI with --database-url, COMFYUI_ARGS=%j: instances 1..N-1 get a database of their own unless COMFYUI_ARGS names one",
      async (args, expected) => {
        const s = await sandbox();
        await mkdir(join(s.comfyDir, "comfy"));
        await writeFile(
          join(s.comfyDir, "comfy", "cli_args.py"),
          'parser.add_argument("--database-url", type=str)\n',
        );
        const run = runEntrypoint({
          ...s.env,
          COMFYUI_ARGS: args,
          COMFYUI_PER_GPU: "true",
          FAKE_GPU_COUNT: "3",
          FAKE_NODE_EXIT_AFTER_READY: "0",
        });
        expect((await run.done).code).toBe(0);
        const started = await comfyStarts(s);
        expect(started).toHaveLength(3);
        for (const [i, { args: given }] of started.entries()) {
          // Every value the flag takes (ComfyUI takes the last).
          const dbs = given.flatMap((a, at) => (a === "--database-url" ? [given[at + 1]] : []));
          expect(dbs).toEqual(expected(i, s));
        }
        if (args === "") await expect(readdir(join(s.comfyDir, "user"))).resolves.toEqual([]);
      },
      TEST_TIMEOUT_MS,
    );

    test.each([
      ["COMFYUI_PER_GPU unset, 2 GPUs", { FAKE_GPU_COUNT: "2" }, undefined],
      ["COMFYUI_PER_GPU=true, 1 GPU", { COMFYUI_PER_GPU: "true", FAKE_GPU_COUNT: "1" }, undefined],
      ["COMFYUI_PER_GPU=true, no GPU (nvidia-smi fails)", { COMFYUI_PER_GPU: "true" }, undefined],
      [
        "COMFYUI_PER_GPU=true, CUDA_VISIBLE_DEVICES=3 (of 4)",
        { COMFYUI_PER_GPU: "true", FAKE_GPU_COUNT: "4", CUDA_VISIBLE_DEVICES: "3" },
        "3",
      ],
    ])(
      "%s: one ComfyUI and COMFYUI_URL, as without it",
      async (_what, extra, gpu) => {
        const s = await sandbox();
        const run = runEntrypoint({
          ...s.env,
          ...extra,
          FAKE_NODE_EXIT_AFTER_READY: "0",
        });
        expect((await run.done).code).toBe(0);
        expect((await comfyStarts(s)).map(({ gpu, args }) => ({ gpu, args }))).toEqual([
          { gpu, args: ["main.py", "--listen", "127.0.0.1", "--port", "18188", "--disable-auto-launch"] },
        ]);
        expect(await readFile(join(s.logDir, "comfyui.log"), "utf8")).toContain("fake ComfyUI log line");
        const workerEnv = await lines(join(s.records, "worker.env"));
        expect(workerEnv).toContain("COMFYUI_URL=http://127.0.0.1:18188");
        expect(workerEnv.filter((l) => /^COMFYUI_(URLS|OUTPUT_DIR|INPUT_DIR)=/.test(l))).toEqual([]);
      },
      TEST_TIMEOUT_MS,
    );

    test.each([
      [
        "COMFYUI_URL",
        { COMFYUI_URL: "http://127.0.0.1:18188" },
        "unset COMFYUI_URL (now http://127.0.0.1:18188)",
      ],
      ["COMFYUI_URLS", { COMFYUI_URLS: "http://127.0.0.1:18188" }, "unset COMFYUI_URLS"],
      [
        "--cuda-device in COMFYUI_ARGS",
        { COMFYUI_ARGS: "--cuda-device 1" },
        "remove --cuda-device from COMFYUI_ARGS",
      ],
      [
        "a COMFYUI_OUTPUT_DIR list of 3 for 2 GPUs",
        { COMFYUI_OUTPUT_DIR: "/a,/b,/c" },
        "lists 3 folders for 2 ComfyUIs",
      ],
      [
        "under supervisor, a setpriv without --pdeathsig",
        { WORKER_UNDER_SUPERVISOR: "true", SETPRIV: "false" },
        "'false --pdeathsig' does not work",
      ],
    ])(
      "COMFYUI_PER_GPU=true with %s: the start stops with the reason, before anything runs",
      async (_what, extra, message) => {
        const s = await sandbox();
        const run = runEntrypoint({ ...s.env, COMFYUI_PER_GPU: "true", FAKE_GPU_COUNT: "2", ...extra });
        expect((await run.done).code).toBe(1);
        expect(run.stderr()).toMatch(/^\[entrypoint\] ERROR: /m);
        expect(run.stderr()).toContain(message);
        expect(await lines(s.orderLog)).toEqual([]);
      },
      TEST_TIMEOUT_MS,
    );

    describe("under supervisor (our image): instance 0 is the image's `comfyui` program", () => {
      /** supervisor's program `comfyui-worker` with COMFYUI_PER_GPU=true; instance 0 (not started here) is up. */
      async function startSupervised(s: Sandbox, extra: Record<string, string>): Promise<Run> {
        await writeFile(join(s.records, "comfyui.ready"), "the image's comfyui\n");
        return runEntrypoint({
          ...s.env,
          VAST_ENVIRONMENT_SCRIPT: join(s.dir, "no-environment.sh"),
          WORKER_UNDER_SUPERVISOR: "true",
          COMFYUI_PER_GPU: "true",
          ...extra,
        });
      }
      const workerPid = async (s: Sandbox) => Number(await readFile(join(s.records, "worker.pid"), "utf8"));

      interface SupervisedCase {
        what: string;
        env: (s: Sandbox) => Record<string, string>;
        gpus: string[];
        port: number;
        /** The image's ComfyUI's output folder and --temp-directory (its temp folder's parent). */
        output: (s: Sandbox) => string;
        temp: (s: Sandbox) => string;
      }
      test.each<SupervisedCase>([
        {
          what: "2 GPUs, the image's COMFYUI_ARGS",
          env: () => ({
            FAKE_GPU_COUNT: "2",
            COMFYUI_ARGS: "--disable-auto-launch --enable-cors-header --port 18188",
          }),
          gpus: ["0", "1"],
          port: 18188,
          output: (s) => join(s.comfyDir, "output"),
          temp: (s) => join(s.comfyDir, "temp"),
        },
        {
          what: "4 GPUs, COMFYUI_ARGS' port, output and temp folders",
          env: (s) => ({
            FAKE_GPU_COUNT: "4",
            COMFYUI_ARGS: `--port 19000 --output-directory ${s.dir}/out --temp-directory ${s.dir}/scratch`,
          }),
          gpus: ["0", "1", "2", "3"],
          port: 19000,
          output: (s) => `${s.dir}/out`,
          temp: (s) => `${s.dir}/scratch`,
        },
        {
          what: "CUDA_VISIBLE_DEVICES=2,5 (of 8)",
          env: () => ({ FAKE_GPU_COUNT: "8", CUDA_VISIBLE_DEVICES: "2,5" }),
          gpus: ["2", "5"],
          port: 18188,
          output: (s) => join(s.comfyDir, "output"),
          temp: (s) => join(s.comfyDir, "temp"),
        },
      ])(
        "$what: instances 1..N-1 start here (port, GPU, folders beside the image's, log, each in a session of its own); the worker gets all N; supervisor's stop drains the worker, then stops them",
        async ({ env, gpus, port, output, temp }) => {
          const s = await sandbox();
          const extra = env(s);
          const run = await startSupervised(s, { ...extra, FAKE_NODE_DRAIN_UNTIL_USR2: "1" });
          await run.waitForStdout("fake-node: running");

          const input = join(s.comfyDir, "input");
          const folders = gpus.map((_, i) => (i === 0 ? output(s) : `${output(s)}-gpu${i}`));
          const started = await comfyStarts(s);
          expect(started.map(({ gpu, args }) => ({ gpu, args }))).toEqual(
            gpus.slice(1).map((gpu, j) => ({
              gpu,
              args: [
                "main.py",
                ...["--listen", "127.0.0.1", "--disable-auto-launch"],
                ...(extra.COMFYUI_ARGS ?? "").split(" ").filter(Boolean),
                ...["--port", String(port + j + 1), "--input-directory", input],
                ...["--output-directory", folders[j + 1], "--temp-directory", `${temp(s)}-gpu${j + 1}`],
              ],
            })),
          );
          for (const i of gpus.keys()) {
            const log = readFile(join(s.logDir, `comfyui-${i}.log`), "utf8");
            if (i === 0) await expect(log).rejects.toThrow();
            else await expect(log).resolves.toContain(`(CUDA_VISIBLE_DEVICES=${gpus[i]}): `);
          }
          await expect(readFile(join(s.logDir, "comfyui.log"))).rejects.toThrow();
          for (const folder of folders.slice(1)) await expect(readdir(folder)).resolves.toEqual([]);
          // Out of the program's process group (supervisor's stop signals it), the worker too; not the script itself.
          const worker = await workerPid(s);
          expect(worker).not.toBe(run.pid);
          for (const pid of [worker, ...started.map((c) => c.pid)])
            expect(groupAndSession(pid)).toEqual({ pgid: pid, sid: pid });
          expect(run.stderr()).toContain(
            `[entrypoint] comfyui-0: the image's \`comfyui\` program (127.0.0.1:${port}, GPU ${gpus[0]}, output ${folders[0]})`,
          );

          const workerEnv = await lines(join(s.records, "worker.env"));
          expect(workerEnv).toContain(
            `COMFYUI_URLS=${gpus.map((_, i) => `http://127.0.0.1:${port + i}`).join(",")}`,
          );
          expect(workerEnv).toContain(`COMFYUI_OUTPUT_DIR=${folders.join(",")}`);
          expect(workerEnv).toContain(`COMFYUI_INPUT_DIR=${input}`);
          expect(workerEnv.filter((l) => l.startsWith("COMFYUI_URL="))).toEqual([]);

          // supervisor's stop (stopasgroup): SIGTERM to the program's group. The worker gets it once (from the
          // script) and drains while its instances keep running; they are stopped once it has exited.
          process.kill(-run.pid, "SIGTERM");
          await run.waitForStdout("fake-node: draining");
          for (const { pid } of started) expect(processEnded(pid)).toBe(false);
          expect(await lines(s.orderLog)).not.toContain("comfyui got SIGTERM");
          process.kill(worker, "SIGUSR2");
          expect((await run.done).code).toBe(0);
          expect((await lines(s.orderLog)).filter((l) => / got SIG/.test(l))).toEqual([
            "worker got SIGTERM",
            ...gpus.slice(1).map(() => "comfyui got SIGTERM"),
          ]);
          for (const { pid } of started) expect(processGone(pid)).toBe(true);
        },
        TEST_TIMEOUT_MS,
      );

      test(
        "the worker exits by itself: its instances are stopped before the program ends (ports free for supervisor's restart), and the next start starts them afresh",
        async () => {
          const s = await sandbox();
          const env = { FAKE_GPU_COUNT: "4", FAKE_NODE_EXIT_AFTER_READY: "3" };
          const first = await startSupervised(s, env);
          expect((await first.done).code).toBe(3);
          const before = await comfyStarts(s);
          expect(before).toHaveLength(3);
          for (const { pid } of before) expect(processGone(pid)).toBe(true);
          expect(first.stderr()).toContain("[entrypoint] worker: exited with code 3");

          const again = await startSupervised(s, env);
          expect((await again.done).code).toBe(3);
          const after = (await comfyStarts(s)).filter((c) => !before.some((b) => b.pid === c.pid));
          expect(after.map((c) => lastFlag(c.args, "--port"))).toEqual(["18189", "18190", "18191"]);
          for (const { pid } of after) expect(processGone(pid)).toBe(true);
        },
        TEST_TIMEOUT_MS,
      );

      test(
        "an instance that dies while the worker runs is started again as it was (its GPU, port, folders, own session)",
        async () => {
          const s = await sandbox();
          const run = await startSupervised(s, { FAKE_GPU_COUNT: "3" });
          await run.waitForStdout("fake-node: running");
          const [one, two] = await comfyStarts(s);
          process.kill(two!.pid, "SIGUSR1");
          await run.waitForStderr("[entrypoint] comfyui-2: exited with code 134");
          await run.waitForStderr("[entrypoint] comfyui-2: starting in", 2);
          // The image's line, the two instances, the new one.
          await readyLines(s, 4);
          const now = await comfyStarts(s);
          const again = now.find((c) => c.pid !== one!.pid && c.pid !== two!.pid)!;
          expect({ gpu: again.gpu, args: again.args }).toEqual({ gpu: two!.gpu, args: two!.args });
          expect(groupAndSession(again.pid)).toEqual({ pgid: again.pid, sid: again.pid });
          expect(processEnded(one!.pid)).toBe(false);
          // supervisor's stop: the worker exits, then both instances are stopped.
          process.kill(-run.pid, "SIGTERM");
          expect((await run.done).code).toBe(0);
          for (const { pid } of now) expect(processGone(pid)).toBe(true);
        },
        TEST_TIMEOUT_MS,
      );

      test(
        "supervisor SIGKILLs the program's group (past stopwaitsecs): the instances and the worker die with the script",
        async () => {
          const s = await sandbox();
          const run = await startSupervised(s, { FAKE_GPU_COUNT: "4" });
          await run.waitForStdout("fake-node: running");
          const pids = [await workerPid(s), ...(await comfyStarts(s)).map((c) => c.pid)];
          expect(pids).toHaveLength(4);
          // Each fake ComfyUI leads its own group: afterEach ends what it leaves (its sleep).
          groups.push(...pids);
          process.kill(-run.pid, "SIGKILL");
          expect((await run.done).signal).toBe("SIGKILL");
          await waitUntil(`the worker and the instances end (pids ${pids.join(", ")})`, () =>
            pids.every(processEnded),
          );
        },
        TEST_TIMEOUT_MS,
      );

      test.each([
        ["1 GPU", { FAKE_GPU_COUNT: "1" }],
        ["CUDA_VISIBLE_DEVICES=3 (of 4)", { FAKE_GPU_COUNT: "4", CUDA_VISIBLE_DEVICES: "3" }],
      ])(
        "%s: as without COMFYUI_PER_GPU (no ComfyUI here, COMFYUI_URL, the worker replaces the script)",
        async (_what, extra) => {
          const s = await sandbox();
          const run = await startSupervised(s, { ...extra, FAKE_NODE_EXIT_AFTER_READY: "0" });
          expect((await run.done).code).toBe(0);
          expect(await workerPid(s)).toBe(run.pid);
          expect(await comfyStarts(s)).toEqual([]);
          const workerEnv = await lines(join(s.records, "worker.env"));
          expect(workerEnv).toContain("COMFYUI_URL=http://127.0.0.1:18188");
          expect(workerEnv.filter((l) => /^COMFYUI_(URLS|OUTPUT_DIR|INPUT_DIR)=/.test(l))).toEqual([]);
        },
        TEST_TIMEOUT_MS,
      );
    });
  });

  test(
    "COMFYUI_URLS set by the user (without COMFYUI_PER_GPU) is passed on without a COMFYUI_URL beside it",
    async () => {
      const s = await sandbox();
      const run = runEntrypoint({
        ...s.env,
        COMFYUI_URLS: "http://127.0.0.1:18188",
        FAKE_NODE_EXIT_AFTER_READY: "0",
      });
      expect((await run.done).code).toBe(0);
      const workerEnv = await lines(join(s.records, "worker.env"));
      expect(workerEnv).toContain("COMFYUI_URLS=http://127.0.0.1:18188");
      expect(workerEnv.filter((l) => l.startsWith("COMFYUI_URL="))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});
