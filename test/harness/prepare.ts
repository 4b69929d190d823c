import { execFile, execFileSync, spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { PassThrough } from "node:stream";
import { fileURLToPath } from "node:url";
import { got, type Got } from "got";
import { sourceFingerprint } from "../../lib/bundle-fingerprint.js";
import { createPrepareLog, type PrepareContext } from "../../worker/prepare/context.js";
import { selfSignedCert } from "./tls.js";

/**
 * Real parts for the tests of `prepare` (worker/commands/prepare.ts): git repositories made with git and served
 * over git's smart HTTP (git http-backend, behind Basic authentication), npm run for real on packages without
 * dependencies (so `npm ci` needs no registry), a certificate authority and a stand-in of Vast's console that signs
 * requests with the real openssl, a recording /worker_status/ receiver.
 */

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const RUN_TIMEOUT_MS = 60_000;

/** Everything a test made, undone by cleanUp() (call it from afterEach). */
const made = { dirs: [] as string[], servers: [] as Server[] };

export async function cleanUp(): Promise<void> {
  for (const server of made.servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  for (const dir of made.dirs.splice(0)) await rm(dir, { recursive: true, force: true });
}

export async function tempDir(prefix = "prepare-test-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  made.dirs.push(dir);
  return dir;
}

export function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", ["-c", "user.name=test", "-c", "user.email=test@example.invalid", ...args], {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: RUN_TIMEOUT_MS,
  });
}

export interface WorkerRepoOptions {
  /** package.json's name (this worker's by default). */
  name?: string;
  /** A committed bundle built from these sources (prepare then runs it, and npm never runs). */
  bundle?: boolean;
  /** `npm run build` fails (exit 2). */
  buildFails?: boolean;
  /** A line that makes this version of the sources different from another. */
  marker?: string;
}

/**
 * A git repository (committed, on branch main) of a package shaped like this worker: package.json, a lock with no
 * dependencies, a build that writes dist/worker/cli.js and records the environment npm gave it (build-env.json).
 */
export async function workerRepository(dir: string, opts: WorkerRepoOptions = {}): Promise<string> {
  await mkdir(join(dir, "worker"), { recursive: true });
  const name = opts.name ?? "comfyui-serverless-worker";
  await writeFile(
    join(dir, "package.json"),
    JSON.stringify({ name, version: "1.0.0", private: true, scripts: { build: "node build.mjs" } }, null, 2),
  );
  await writeFile(
    join(dir, "package-lock.json"),
    JSON.stringify(
      {
        name,
        version: "1.0.0",
        lockfileVersion: 3,
        requires: true,
        packages: { "": { name, version: "1.0.0" } },
      },
      null,
      2,
    ),
  );
  await writeFile(
    join(dir, "build.mjs"),
    [
      'import { mkdirSync, writeFileSync } from "node:fs";',
      'writeFileSync("build-env.json", JSON.stringify(process.env));',
      opts.buildFails ? 'console.error("build: failing as asked"); process.exit(2);' : "",
      'mkdirSync("dist/worker", { recursive: true });',
      'writeFileSync("dist/worker/cli.js", "// built by npm run build\\n");',
      "",
    ].join("\n"),
  );
  await writeFile(join(dir, "worker", "cli.ts"), `// the worker ${opts.marker ?? ""}\n`);
  if (opts.bundle) {
    await mkdir(join(dir, "bundle"), { recursive: true });
    await writeFile(join(dir, "bundle", "worker.mjs"), "// the bundle\n");
    const manifest = sourceFingerprint(dir, ["worker/cli.ts", "package-lock.json"]);
    await writeFile(join(dir, "bundle", "manifest.json"), JSON.stringify(manifest, null, 2));
  }
  git(dir, "init", "-q", "-b", "main");
  git(dir, "add", "-A");
  git(dir, "commit", "-q", "-m", "worker");
  return dir;
}

export interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

type Handler = (req: Recorded) => { status: number; body: string | Buffer; headers?: Record<string, string> };

function listen(server: Server, scheme: "http" | "https"): Promise<string> {
  made.servers.push(server);
  return new Promise((r) =>
    server.listen(0, "127.0.0.1", () => r(`${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}`)),
  );
}

function recording(handler: Handler, seen: Recorded[]) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (d: Buffer) => chunks.push(d));
    req.on("end", () => {
      const recorded = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        body: Buffer.concat(chunks),
      };
      seen.push(recorded);
      const answer = handler(recorded);
      res.writeHead(answer.status, { "content-type": "text/plain", ...answer.headers }).end(answer.body);
    });
  };
}

/** A local HTTP server answering with `handler`; `seen` lists each request. */
export async function serve(handler: Handler): Promise<{ url: string; seen: Recorded[] }> {
  const seen: Recorded[] = [];
  return { url: await listen(createServer(recording(handler, seen)), "http"), seen };
}

/** A recording /worker_status/ (the autoscaler): each report's body, parsed. */
export async function autoscaler(): Promise<{ url: string; reports: () => any[] }> {
  const { url, seen } = await serve(() => ({ status: 200, body: "{}" }));
  return {
    url,
    reports: () =>
      seen.filter((r) => r.url === "/worker_status/").map((r) => JSON.parse(r.body.toString()) as unknown),
  };
}

export interface Ca {
  crt: string;
  key: string;
  pem: string;
}

/** A certificate authority for 127.0.0.1 made with the real openssl: the TLS server's own certificate too. */
export async function makeCa(dir: string): Promise<Ca> {
  const crt = join(dir, "test-ca.crt");
  const key = join(dir, "test-ca.key");
  selfSignedCert({ cn: "127.0.0.1", ip: "127.0.0.1", key, crt });
  return { crt, key, pem: await readFile(crt, "utf8") };
}

/** Like serve(), over HTTPS with the CA's certificate (a local stand-in for console.vast.ai). */
export async function serveTls(ca: Ca, handler: Handler): Promise<{ url: string; seen: Recorded[] }> {
  const seen: Recorded[] = [];
  const server = createTlsServer(
    { cert: await readFile(ca.crt), key: await readFile(ca.key) },
    recording(handler, seen),
  );
  return { url: await listen(server as unknown as Server, "https"), seen };
}

/** What Vast's console does with a certificate request: signs it (here with the test CA, real openssl). */
export function signCsr(ca: Ca, dir: string, csr: Buffer): string {
  const file = join(dir, `request-${process.hrtime.bigint()}.csr`);
  execFileSync("bash", ["-c", 'cat > "$1"', "_", file], { input: csr });
  return execFileSync(
    "openssl",
    ["x509", "-req", "-in", file, "-CA", ca.crt, "-CAkey", ca.key, "-CAcreateserial", "-days", "1"],
    { stdio: ["ignore", "pipe", "ignore"] },
  ).toString();
}

/** got trusting the test CA, as the machine's trust store trusts Vast's console. */
export function trusting(ca: Ca): Got {
  return got.extend({ https: { certificateAuthority: ca.pem } });
}

/**
 * git's smart HTTP for the bare repositories in `projectRoot`, as a git host serves them: behind Basic
 * authentication (`user:password`), under a first path segment that stands for a token in the URL (it is dropped
 * before git http-backend sees the path). `refuse` answers 403 to everything, as a host does to a revoked token.
 */
export async function gitHttp(
  projectRoot: string,
  opts: { user: string; password: string; refuse?: boolean },
): Promise<{ url: string; seen: string[] }> {
  const seen: string[] = [];
  const expected = `Basic ${Buffer.from(`${opts.user}:${opts.password}`).toString("base64")}`;
  const server = createServer((req, res) => {
    seen.push(req.url!);
    if (opts.refuse) return void res.writeHead(403).end("revoked");
    if (req.headers.authorization !== expected) {
      return void res.writeHead(401, { "www-authenticate": 'Basic realm="git"' }).end();
    }
    const url = new URL(req.url!, "http://host");
    const backend = spawn("git", ["http-backend"], {
      env: {
        PATH: process.env.PATH,
        GIT_PROJECT_ROOT: projectRoot,
        GIT_HTTP_EXPORT_ALL: "1",
        REQUEST_METHOD: req.method,
        PATH_INFO: url.pathname.replace(/^\/[^/]+/, ""),
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: req.headers["content-type"] ?? "",
        ...(req.headers["content-length"] && { CONTENT_LENGTH: req.headers["content-length"] }),
        ...(req.headers["content-encoding"] && { HTTP_CONTENT_ENCODING: req.headers["content-encoding"] }),
        REMOTE_USER: opts.user,
        REMOTE_ADDR: "127.0.0.1",
      },
      stdio: ["pipe", "pipe", "ignore"],
    });
    req.pipe(backend.stdin);
    const chunks: Buffer[] = [];
    backend.stdout.on("data", (d: Buffer) => chunks.push(d));
    backend.on("close", () => {
      const all = Buffer.concat(chunks);
      const end = all.indexOf("\r\n\r\n");
      const headers: Record<string, string> = {};
      let status = 200;
      for (const line of all.subarray(0, end).toString().split("\r\n")) {
        const [name, ...rest] = line.split(":");
        const value = rest.join(":").trim();
        if (name!.toLowerCase() === "status") status = Number(value.split(" ")[0]);
        else headers[name!] = value;
      }
      res.writeHead(status, headers).end(all.subarray(end + 4));
    });
  });
  return { url: await listen(server, "http"), seen };
}

/** A bare copy of a repository, for gitHttp's project root (as `<name>.git`). */
export function bareClone(repo: string, projectRoot: string, name: string): void {
  execFileSync("git", ["clone", "-q", "--bare", repo, join(projectRoot, `${name}.git`)], {
    timeout: RUN_TIMEOUT_MS,
  });
}

/** A context for prepare's steps whose log and child output are kept for the test to read. */
export function captureContext(
  env: Record<string, string | undefined>,
  http: Got = got,
): { ctx: PrepareContext; output: () => string; logs: () => any[] } {
  let text = "";
  const childOutput = new PassThrough();
  childOutput.on("data", (d: Buffer) => (text += d.toString()));
  const lines: any[] = [];
  const log = createPrepareLog({
    write: (line: string) => {
      text += line;
      lines.push(JSON.parse(line));
    },
  });
  return { ctx: { env, log, childOutput, http }, output: () => text, logs: () => lines };
}

/** A writable that keeps what is written, for runPrepare's stdout and stderr. */
export function sink(): PassThrough & { text: () => string } {
  let text = "";
  const stream = new PassThrough();
  stream.on("data", (d: Buffer) => (text += d.toString()));
  return Object.assign(stream, { text: () => text });
}

/** The CLI as the entrypoint and worker.py run it: `prepare --for <target>` from the sources, with `env` only. */
export function prepareCli(
  target: string,
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    execFile(
      process.execPath,
      ["--import", "tsx", join(repoRoot, "worker", "cli.ts"), "prepare", "--for", target],
      { cwd: repoRoot, env, timeout: RUN_TIMEOUT_MS },
      (err, stdout, stderr) =>
        resolveRun({ code: err ? (typeof err.code === "number" ? err.code : null) : 0, stdout, stderr }),
    );
  });
}

/** What npm needs to run offline here: its cache in the test's folder, no update check, PATH and HOME. */
export function npmEnv(dir: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: dir,
    npm_config_cache: join(dir, "npm-cache"),
    npm_config_offline: "true",
    npm_config_update_notifier: "false",
  };
}
