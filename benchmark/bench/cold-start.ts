/**
 * Cold start, side by side: from the start command to the router emulator hearing Ready (the first /worker_status/
 * with max_perf > 0), for this repository as the stock template's PYWORKER_REPO (`python3 -m worker` in a fresh
 * clone) and for upstream's comfyui-json PyWorker on PyPI `vastai` 1.9.1 (benchmark/bench/comfyui_json_worker.py), on
 * the same ComfyUI with the same model-free benchmark workflow. Each repetition makes a fresh venv for each side (as
 * start_server.sh does: a Python 3.10 venv, `pip install`), starts it (first start), stops it, and starts it again
 * in the same clone and venv (restart).
 *
 * Part of `npm run bench` (this section alone: BENCH_ONLY=cold); `tsx benchmark/bench/cold-start.ts` runs it on parts
 * of its own and prints the section. BENCH_COLD_REPEATS (3) repetitions; BENCH_COLD_WORKTREE=true overlays the
 * working tree's uncommitted files on the clone (a measurement of what is about to be committed; the section says so).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { cpus, homedir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { freePort } from "../../scripts/services/child.js";
import { repoRoot } from "../../scripts/services/paths.js";
import { codeVersion } from "./sections.js";
import { s3Env, startParts, startWorker, workerEnv, type BenchParts } from "./parts.js";
import { oldestPython } from "../../scripts/services/python.js";
import { fmt, median, spread } from "./stats.js";

const run = promisify(execFile);
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
const repeats = Number(process.env.BENCH_COLD_REPEATS ?? 3);
const overlayWorktree = /^(1|true|yes)$/i.test(process.env.BENCH_COLD_WORKTREE ?? "");
/** pip's cache for both sides' installs, warmed by an untimed install before the timed ones. */
const pipCache = join(homedir(), ".cache", "comfyui-worker", "bench-pip-cache");
const UPSTREAM_REQUIREMENT = "vastai==1.9.1";
const READY_TIMEOUT_MS = 600_000;

type Side = "ours" | "upstream";
type Start = "first" | "restart";

export interface StartTiming {
  /** Seconds from the start command to its WORKER_PORT accepting connections. */
  listenS: number;
  /** Seconds from the start command to the first benchmark prompt starting in ComfyUI; undefined when none ran. */
  benchStartS: number | undefined;
  /** Seconds from the first benchmark prompt's start to the last one's end, ComfyUI's own timestamps. */
  benchS: number | undefined;
  benchRuns: number;
  /** Seconds from the start command to the router emulator receiving the first report with max_perf > 0. */
  readyS: number;
  maxPerf: number;
  /** Ours: which path `prepare` took (bundle or build), from its log. */
  path: string;
}

export interface ColdStartRun {
  side: Side;
  /** Ours: `git clone` of the repository, seconds (local, so not what a clone from GitHub costs). */
  cloneS?: number;
  /** Venv creation plus `pip install`, seconds. */
  venvS: number;
  first: StartTiming;
  restart: StartTiming;
}

/** The benchmark workflow both sides run: an 8×8 EmptyImage saved as PNG, unique per run (`__RANDOM_INT__`). */
function benchWorkflow(tag: string) {
  return {
    "1": { class_type: "EmptyImage", inputs: { width: 8, height: 8, batch_size: 1, color: 0 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: `${tag}-__RANDOM_INT__` } },
  };
}

async function seconds<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const value = await f();
  return [(performance.now() - t0) / 1000, value];
}

/** Resolves with the time (ms, Date.now) something first accepts a connection on the port, polling every 20 ms. */
async function firstListening(port: number, child: ChildProcess, deadline: number): Promise<number> {
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => resolve(false));
    });
    if (ok) return Date.now();
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited before listening`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The benchmark prompts of `tag` started since `since` (ComfyUI's history): first start, last end (ms), count. */
async function benchmarkWindow(
  comfyUrl: string,
  tag: string,
  since: number,
): Promise<{ start: number; end: number; runs: number }> {
  const res = await fetch(`${comfyUrl}/history?max_items=200`, { signal: AbortSignal.timeout(30_000) });
  const history = (await res.json()) as Record<
    string,
    { prompt: unknown[]; status?: { messages?: [string, { timestamp?: number }][] } }
  >;
  let start = Infinity;
  let end = -Infinity;
  let runs = 0;
  for (const item of Object.values(history)) {
    if (!JSON.stringify(item.prompt[2]).includes(tag)) continue;
    const messages = item.status?.messages ?? [];
    const started = messages.find(([type]) => type === "execution_start")?.[1].timestamp ?? -Infinity;
    if (started < since) continue;
    runs++;
    start = Math.min(start, started);
    for (const [type, data] of messages)
      if (type === "execution_success") end = Math.max(end, data.timestamp ?? -Infinity);
  }
  return { start, end, runs };
}

function exited(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms`)), timeoutMs);
    child.once("exit", () => (clearTimeout(timer), resolve()));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  child.kill("SIGTERM");
  await exited(child, 90_000).catch(() => {
    child.kill("SIGKILL");
    return exited(child, 10_000);
  });
}

/**
 * Runs `command` with `env` in `cwd` and times it to Ready: the listening port, the benchmark prompts tagged `tag`
 * in ComfyUI, and the router's first report from container `id` with max_perf > 0 received after the start.
 * Returns with the process still running (the caller stops it).
 */
async function timeStart(
  parts: BenchParts,
  router: RouterEmulator,
  command: {
    argv: string[];
    cwd: string;
    env: Record<string, string>;
    port: number;
    id: number;
    tag: string;
  },
): Promise<{ timing: StartTiming; child: ChildProcess; output: () => string }> {
  const t0 = Date.now();
  const child = spawn(command.argv[0]!, command.argv.slice(1), {
    cwd: command.cwd,
    env: command.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  child.stdout!.on("data", (d: Buffer) => (text += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (text += d.toString()));
  const output = () => text;
  const readyReport = () =>
    router.reports.find(
      (r) =>
        r.at >= t0 &&
        r.path === "/worker_status/" &&
        Number(r.body.id) === command.id &&
        // The emulator's (and the router's) ready: a score and no error.
        Number(r.body.max_perf ?? 0) > 0 &&
        !r.body.error_msg,
    );
  try {
    const listening = firstListening(command.port, child, t0 + READY_TIMEOUT_MS);
    const died = exited(child, READY_TIMEOUT_MS).then(() => {
      throw new Error(`exited (${child.exitCode ?? child.signalCode}) before Ready`);
    });
    await Promise.race([router.waitFor(() => readyReport() !== undefined, READY_TIMEOUT_MS), died]);
    died.catch(() => undefined);
    const listenAt = await listening;
    const report = readyReport()!;
    const window = await benchmarkWindow(parts.comfyUrl, command.tag, t0);
    const ran = window.runs > 0;
    const timing: StartTiming = {
      listenS: (listenAt - t0) / 1000,
      benchStartS: ran ? (window.start - t0) / 1000 : undefined,
      benchS: ran ? (window.end - window.start) / 1000 : undefined,
      benchRuns: window.runs,
      readyS: (report.at - t0) / 1000,
      maxPerf: Number(report.body.max_perf),
      path:
        /"msg":"(bundle built from these sources[^"]*|not running the bundle[^"]*)"/.exec(text)?.[1] ?? "",
    };
    return { timing, child, output };
  } catch (err) {
    if (child.exitCode === null) child.kill("SIGKILL");
    throw new Error(`${(err as Error).message}; its output:\n${text.slice(-4_000)}`);
  }
}

/**
 * A clone of the repository's HEAD (the committed bundle). With BENCH_COLD_WORKTREE, the working tree's files on top
 * and bundle/ rebuilt from them (`npm run bundle` into the clone), as the commit of those files will have it.
 */
async function cloneRepo(into: string): Promise<void> {
  await run("git", ["clone", "--quiet", "--no-hardlinks", repoRoot, into]);
  if (!overlayWorktree) return;
  const { stdout } = await run("git", ["ls-files", "-z", "-mo", "--exclude-standard"], {
    cwd: repoRoot,
    maxBuffer: 64 * 2 ** 20,
  });
  for (const file of stdout.split("\0").filter(Boolean)) {
    await mkdir(dirname(join(into, file)), { recursive: true });
    await copyFile(join(repoRoot, file), join(into, file)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw e; // deleted in the working tree
    });
  }
}

/** With BENCH_COLD_WORKTREE, the clone's bundle/ rebuilt from the working tree's sources (not timed). */
async function rebundle(clone: string): Promise<void> {
  if (!overlayWorktree) return;
  await run(process.execPath, ["--import", "tsx", "scripts/bundle.ts", "--dir", join(clone, "bundle")], {
    cwd: repoRoot,
  });
}

/** start_server.sh's venv: Python 3.10, then pip installs `args` (pip's cache in `pipCache`). */
async function makeVenv(venv: string, args: string[]): Promise<void> {
  // start_server.sh's venv is Python 3.10 (uv's managed one).
  await run(oldestPython(), ["-m", "venv", venv]);
  await run(join(venv, "bin", "pip"), ["install", "--quiet", "--disable-pip-version-check", ...args], {
    env: { ...process.env, PIP_CACHE_DIR: pipCache },
    timeout: 600_000,
    maxBuffer: 64 * 2 ** 20,
  });
}

/** What the instance's environment holds for both: Vast's variables, the stock image's, the endpoint's S3. */
function instanceEnv(
  parts: BenchParts,
  router: RouterEmulator,
  venv: string,
  ports: { worker: number; http: number },
  id: number,
): Record<string, string> {
  return {
    // start_server.sh activates the venv: its bin first.
    PATH: `${join(venv, "bin")}:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: homedir(),
    REPORT_ADDR: router.url,
    MASTER_TOKEN: `token-${id}`,
    CONTAINER_ID: String(id),
    PUBLIC_IPADDR: "127.0.0.1",
    WORKER_PORT: String(ports.worker),
    WORKER_HTTP_PORT: String(ports.http),
    [`VAST_TCP_PORT_${ports.worker}`]: String(ports.worker),
    USE_SSL: "false",
    PYTHONUNBUFFERED: "1",
    ...s3Env(parts),
  };
}

async function measureOurs(parts: BenchParts, router: RouterEmulator, rep: number): Promise<ColdStartRun> {
  const dir = await mkdtemp(join(parts.dir, `cold-ours-${rep}-`));
  const clone = join(dir, "vast-pyworker");
  const venv = join(dir, "worker-env");
  const [cloneS] = await seconds(() => cloneRepo(clone));
  await rebundle(clone);
  const [venvS] = await seconds(() => makeVenv(venv, ["-r", join(clone, "requirements.txt")]));
  // The stock image's layout: $WORKSPACE/ComfyUI, COMFYUI_ARGS with ComfyUI's port.
  const workspace = join(dir, "workspace");
  await mkdir(workspace);
  await symlink(parts.comfyBaseDir, join(workspace, "ComfyUI"));
  const id = 7000 + rep;
  const tag = `cold-ours-${rep}-${Date.now()}`;
  const bench = join(dir, "benchmark.json");
  await writeFile(bench, JSON.stringify(benchWorkflow(tag)));
  const ports = { worker: await freePort(), http: await freePort() };
  const env = {
    ...instanceEnv(parts, router, venv, ports, id),
    WORKSPACE: workspace,
    COMFYUI_ARGS: `--disable-auto-launch --enable-cors-header --port ${new URL(parts.comfyUrl).port}`,
    // Vast's stock API wrapper holds 18288 there; here no program does, so a free port stands for it.
    API_PORT: String(await freePort()),
    BENCHMARK_JSON_PATH: bench,
  };
  const command = {
    argv: [join(venv, "bin", "python3"), "-m", "worker"],
    cwd: clone,
    env,
    port: ports.worker,
    id,
    tag,
  };
  const timings: StartTiming[] = [];
  for (const start of ["first", "restart"] as Start[]) {
    const { timing, child } = await timeStart(parts, router, command);
    timings.push(timing);
    log(`ours ${rep + 1}/${repeats} ${start}: ${JSON.stringify(timing)}`);
    await stop(child);
  }
  // Each repetition's clone and venv take about 250 MB; a failed one stays for a look.
  await rm(dir, { recursive: true, force: true });
  return { side: "ours", cloneS, venvS, first: timings[0]!, restart: timings[1]! };
}

async function measureUpstream(
  parts: BenchParts,
  router: RouterEmulator,
  rep: number,
): Promise<ColdStartRun> {
  const dir = await mkdtemp(join(parts.dir, `cold-upstream-${rep}-`));
  const venv = join(dir, "worker-env");
  const [venvS] = await seconds(() => makeVenv(venv, [UPSTREAM_REQUIREMENT]));
  // pyworker's layout: workers/comfyui-json/worker.py in the clone, run from the clone's root (where the library
  // keeps its .has_benchmark between starts).
  const server = join(dir, "vast-pyworker");
  const workerDir = join(server, "workers", "comfyui-json");
  await mkdir(workerDir, { recursive: true });
  await copyFile(
    join(repoRoot, "benchmark", "bench", "comfyui_json_worker.py"),
    join(workerDir, "worker.py"),
  );
  // The image's API wrapper has been running since the instance booted: its log already says BACKENDS_READY.
  const modelLog = join(dir, "api-wrapper.log");
  await writeFile(modelLog, "BACKENDS_READY\n");
  const id = 8000 + rep;
  const tag = `cold-upstream-${rep}-${Date.now()}`;
  const bench = join(dir, "benchmark.json");
  await writeFile(bench, JSON.stringify(benchWorkflow(tag)));
  const ports = { worker: await freePort(), http: await freePort() };
  const env = {
    ...instanceEnv(parts, router, venv, ports, id),
    MODEL_SERVER_URL: "", // set below, once the wrapper listens
    MODEL_LOG_FILE: modelLog,
    COMFYUI_URL: parts.comfyUrl,
    BENCHMARK_JSON_PATH: bench,
  };
  const command = {
    argv: [join(venv, "bin", "python3"), "-m", "workers.comfyui-json.worker"],
    cwd: server,
    env,
    port: ports.worker,
    id,
    tag,
  };
  // The ComfyUI API wrapper that upstream's worker forwards to: this repository's local API in that role (it runs the
  // workflow on ComfyUI and uploads to S3, as the wrapper does), up before the start, as the image's is. One per
  // repetition: it answers a request_id it has seen with that job, and upstream's benchmark ids are random 1000-99999.
  const wrapper = await startWorker(
    workerEnv(parts, { ...s3Env(parts), API_PORT: String(await freePort()) }),
  );
  try {
    env.MODEL_SERVER_URL = wrapper.worker.apiUrl()!;
    const timings: StartTiming[] = [];
    for (const start of ["first", "restart"] as Start[]) {
      const { timing, child } = await timeStart(parts, router, command);
      timings.push(timing);
      log(`upstream ${rep + 1}/${repeats} ${start}: ${JSON.stringify(timing)}`);
      await stop(child);
    }
    await rm(dir, { recursive: true, force: true });
    return { side: "upstream", venvS, first: timings[0]!, restart: timings[1]! };
  } finally {
    await wrapper.worker.stop(5_000);
  }
}

/** Measures both sides `repeats` times (alternating which goes first) and returns the section for BENCHMARKS.md. */
export async function coldStartSection(parts: BenchParts): Promise<string> {
  const code = await codeVersion();
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  try {
    log("cold start: warming pip's cache (an untimed install of each side's requirements)");
    const warm = await mkdtemp(join(parts.dir, "cold-pip-warm-"));
    await makeVenv(join(warm, "ours"), ["-r", join(repoRoot, "requirements.txt")]);
    await makeVenv(join(warm, "upstream"), [UPSTREAM_REQUIREMENT]);
    await rm(warm, { recursive: true, force: true });
    const runs: ColdStartRun[] = [];
    for (let i = 0; i < repeats; i++) {
      log(`cold start ${i + 1}/${repeats}: fresh venvs, first start and restart of each side`);
      const order = i % 2 === 0 ? (["ours", "upstream"] as Side[]) : (["upstream", "ours"] as Side[]);
      for (const side of order)
        runs.push(
          side === "ours" ? await measureOurs(parts, router, i) : await measureUpstream(parts, router, i),
        );
    }
    if (router.problems.length > 0) log(`report shape problems: ${router.problems.slice(0, 5).join("; ")}`);
    const { stdout: python } = await run(oldestPython(), ["--version"]);
    return section(runs, {
      python: python.trim(),
      source:
        overlayWorktree && code.dirty
          ? `HEAD ${code.head} with the working tree's uncommitted files on top, bundle/ rebuilt from them by \`npm run bundle\``
          : `HEAD ${code.head}`,
    });
  } finally {
    await router.close();
  }
}

function section(runs: ColdStartRun[], opts: { source: string; python: string }): string {
  const of = (side: Side) => runs.filter((r) => r.side === side);
  const cell = (xs: (number | undefined)[]) => {
    const v = xs.filter((x): x is number => x !== undefined);
    return v.length === 0 ? "– | " : `${fmt(median(v), 2)} | ${spread(v, 2)}`;
  };
  const row = (what: string, f: (r: ColdStartRun) => number | undefined) =>
    `| ${what} | ${cell(of("ours").map(f))} | ${cell(of("upstream").map(f))} |`;
  const gap = of("ours").map(
    (r, i) => r.venvS + r.first.readyS - (of("upstream")[i]!.venvS + of("upstream")[i]!.first.readyS),
  );
  const paths = [...new Set(of("ours").flatMap((r) => [r.first.path, r.restart.path]))].join("; ");
  const clones = of("ours").map((r) => r.cloneS ?? NaN);
  const runsOf = (side: Side) => [...new Set(of(side).map((r) => r.first.benchRuns))].join(", ");
  return `## Cold start

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=cold\`) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, ${fmt(totalmem() / 2 ** 30, 0)} GiB; median of ${runs.length / 2} repetitions, spread min–max, seconds.

| phase, s | ours | spread | upstream (vastai 1.9.1, comfyui-json) | spread |
| --- | --- | --- | --- | --- |
${row("venv + pip install (pip's cache warm)", (r) => r.venvS)}
${row("first start: start command → worker port listening", (r) => r.first.listenS)}
${row("first start: start command → first benchmark prompt starts", (r) => r.first.benchStartS)}
${row("first start: benchmark (first prompt's start → last prompt's end)", (r) => r.first.benchS)}
${row("first start: start command → router hears Ready", (r) => r.first.readyS)}
${row("**first start, venv included → Ready**", (r) => r.venvS + r.first.readyS)}
${row("restart: start command → worker port listening", (r) => r.restart.listenS)}
${row("restart: start command → router hears Ready", (r) => r.restart.readyS)}

Ours minus upstream, first start with the venv, within each repetition (target < 10 s): ${fmt(median(gap), 2)} s
(${spread(gap, 2)}).

Method: one ComfyUI (CPU) and SeaweedFS as for the other sections, one router emulator for both. Each repetition
(the side that goes first alternates) makes a fresh venv per side as pyworker's \`start_server.sh\` does
(\`python3.10 -m venv\`, ${opts.python}, then its \`pip install\`; pip's cache was warmed by an untimed install of the
same requirements just before, so no package download is timed; PyPI was reachable). **Ours**: \`git clone\` of the
repository (${opts.source}; the clone's \`bundle/\` is what runs), \`pip install -r requirements.txt\` (the Node.js
wheel), then \`python3 -m worker\` in the clone (path taken: ${paths}) with the venv first on PATH and only the
instance's variables (Vast's, the stock image's \`WORKSPACE\` and \`COMFYUI_ARGS\`, the endpoint's \`S3_*\`, a free
\`API_PORT\`). **Upstream**: \`pip install ${UPSTREAM_REQUIREMENT}\`, then \`python3 -m workers.comfyui-json.worker\`
from the clone's root, with \`benchmark/bench/comfyui_json_worker.py\` as that file: what pyworker's
\`workers/comfyui-json/worker.py\` (commit 0e08881) configures (its handler, its benchmark of one warm-up and 8 runs, its log tail for \`BACKENDS_READY\` with
the readiness helper, the wrapper's \`/health\` as health check), with the wrapper's and ComfyUI's addresses and the
wrapper's log path taken from the environment. Its wrapper is this repository's local API in that role (a fresh one each repetition; it runs
the workflow and uploads the outputs as the image's API wrapper does), already up, its log already saying
\`BACKENDS_READY\`, as on an instance where the wrapper started at boot. Both run the same benchmark workflow (an
8×8 EmptyImage saved as PNG, unique per run) named by \`BENCHMARK_JSON_PATH\`; benchmark prompts per first start:
ours ${runsOf("ours")}, upstream ${runsOf("upstream")}. "Listening" is the first accepted connection on
\`WORKER_PORT\` (polled every 20 ms); the benchmark's span is read from ComfyUI's own timestamps; Ready is the first
\`/worker_status/\` with \`max_perf\` > 0 the emulator receives after the start command. The restart reuses the clone
and venv after a SIGTERM stop; both sides then read their cached benchmark score (\`.has_benchmark\`) instead of
benchmarking. Upstream's library sends its first report 1 s after its server starts, then one every 10 s unless a
request changed its load; marking itself loaded is no such change, so a benchmark that ends after that first report
waits for the next 10 s tick (a Ready figure above 10 s would show it). Not in the figures: the clone (ours: a local
\`git clone\`, ${fmt(median(clones), 2)} s, ${spread(clones, 2)}; one from GitHub costs more; upstream's clone of pyworker is
not reproduced).
`;
}

async function main(): Promise<void> {
  log("starting ComfyUI and S3");
  const parts = await startParts();
  try {
    process.stdout.write(await coldStartSection(parts));
  } finally {
    await parts.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) await main();
