import { execFileSync } from "node:child_process";
import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Got } from "got";
import { runPrepare } from "../../worker/commands/prepare.js";
import {
  autoscaler,
  bareClone,
  cleanUp,
  git,
  gitHttp,
  makeCa,
  npmEnv,
  prepareCli,
  repoRoot,
  serve,
  serveTls,
  signCsr,
  sink,
  tempDir,
  trusting,
  workerRepository,
} from "../harness/prepare.js";
import { selfSignedCert } from "../harness/tls.js";

/**
 * `prepare --for image` (worker/commands/prepare.ts), what scripts/docker-entrypoint.sh runs before the worker in
 * our image: the PYWORKER_REPO install (real git, over smart HTTP where a token rides in the URL; real npm on a
 * package without dependencies), the USE_SSL certificate (a local console that signs with openssl), provisioning
 * (real scripts), and the failure report (a local /worker_status/).
 */

const TEST_TIMEOUT_MS = 120_000;

afterEach(cleanUp);

interface Sandbox {
  dir: string;
  workerDir: string;
  env: Record<string, string>;
}

/** An image: a worker in WORKER_DIR (tsc's build, as the Dockerfile leaves it), a workspace, Vast's files. */
async function sandbox(): Promise<Sandbox> {
  const dir = await tempDir();
  const workerDir = join(dir, "opt", "worker");
  await mkdir(join(workerDir, "dist", "worker"), { recursive: true });
  await mkdir(join(dir, "tmp"));
  await writeFile(join(workerDir, "dist", "worker", "cli.js"), "// the image's worker\n");
  await writeFile(join(workerDir, "image-worker"), "");
  return {
    dir,
    workerDir,
    env: {
      ...npmEnv(dir),
      TMPDIR: join(dir, "tmp"),
      WORKER_DIR: workerDir,
      WORKSPACE: join(dir, "workspace"),
      LOG_DIR: join(dir, "log"),
      PROVISIONING_MARKER: join(dir, "provisioning_complete"),
      PROVISIONING_FLAG: join(dir, "provisioning"),
    },
  };
}

interface Outcome {
  code: number;
  /** stdout's lines: the program, then NAME=value. */
  lines: string[];
  stdout: string;
  /** The log (JSON lines) and what child programs printed. */
  stderr: string;
  messages: string[];
}

async function prepare(env: Record<string, string>, http?: Got): Promise<Outcome> {
  const stdout = sink();
  const stderr = sink();
  const code = await runPrepare({
    target: "image",
    env,
    root: repoRoot,
    stdout,
    stderr,
    ...(http && { http }),
  });
  const messages = stderr
    .text()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => (JSON.parse(l) as { msg: string }).msg);
  return {
    code,
    lines: stdout.text().split("\n").filter(Boolean),
    stdout: stdout.text(),
    stderr: stderr.text(),
    messages,
  };
}

const markersIn = async (dir: string) => (await readdir(dir)).filter((f) => f.startsWith(".installed-from-"));

describe("PYWORKER_REPO", () => {
  test(
    "installs the worker once (clone, npm ci, build, prune, swap); the marker skips it next time; another ref installs again",
    async () => {
      const s = await sandbox();
      const repo = await workerRepository(join(s.dir, "src"));
      git(repo, "tag", "v9");
      const env = { ...s.env, PYWORKER_REPO: `file://${repo}`, PYWORKER_REF: "v9" };

      const first = await prepare(env);
      expect(first.code).toBe(0);
      expect(first.lines[0]).toBe(join(s.workerDir, "dist", "worker", "cli.js"));
      expect(first.messages.filter((m) => /^npm .* done$/.test(m))).toEqual([
        "npm ci done",
        "npm run build done",
        "npm prune --omit=dev done",
      ]);
      // The installed worker replaced the image's, nothing is left beside it, and a private marker says so.
      const installed = await readdir(s.workerDir);
      expect(installed).toEqual(expect.arrayContaining(["build-env.json", "package.json", "dist"]));
      expect(installed).not.toContain("image-worker");
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
      const markers = await markersIn(s.workerDir);
      expect(markers).toEqual([
        `.installed-from-${createHash("sha256").update(`file://${repo}#v9`).digest("hex").slice(0, 16)}`,
      ]);
      expect((await stat(join(s.workerDir, markers[0]!))).mode & 0o777).toBe(0o600);

      const second = await prepare(env);
      expect(second.code).toBe(0);
      expect(
        second.messages.some((m) => m.includes("already installed") && m.includes("skipping the install")),
      ).toBe(true);
      expect(second.messages.some((m) => m.startsWith("npm"))).toBe(false);
      expect(second.lines[0]).toBe(first.lines[0]);

      // Another ref is another install.
      await writeFile(join(repo, "worker", "cli.ts"), "// v10\n");
      git(repo, "commit", "-q", "-am", "v10");
      git(repo, "tag", "v10");
      const third = await prepare({ ...env, PYWORKER_REF: "v10" });
      expect(third.code).toBe(0);
      expect(third.messages).toContain("npm ci done");
      expect(await readFile(join(s.workerDir, "worker", "cli.ts"), "utf8")).toBe("// v10\n");
      expect(await markersIn(s.workerDir)).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a repository whose committed bundle is its sources installs without npm, and the bundle is the program; a full commit id is fetched",
    async () => {
      const s = await sandbox();
      const repo = await workerRepository(join(s.dir, "src"), { bundle: true });
      const commit = git(repo, "rev-parse", "HEAD").trim();
      const run = await prepare({ ...s.env, PYWORKER_REPO: `file://${repo}`, PYWORKER_REF: commit });
      expect(run.code).toBe(0);
      expect(run.lines[0]).toBe(join(s.workerDir, "bundle", "worker.mjs"));
      expect(run.messages).toContain("its bundle was built from its sources: nothing to build");
      const installed = await readdir(s.workerDir);
      expect(installed).not.toContain("node_modules");
      expect(installed).not.toContain("build-env.json");
      expect(installed).not.toContain("image-worker");
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a failed install exits 1 with nothing on stdout, leaves the worker that was there, and is reported to /worker_status/",
    async () => {
      const s = await sandbox();
      const repo = await workerRepository(join(s.dir, "src"), { buildFails: true });
      const { url, reports } = await autoscaler();
      const run = await prepare({
        ...s.env,
        PYWORKER_REPO: `file://${repo}`,
        CONTAINER_ID: "42",
        MASTER_TOKEN: "token-42",
        PUBLIC_IPADDR: "203.0.113.7",
        VAST_TCP_PORT_3000: "41000",
        // The first address does not answer: the next one is told.
        REPORT_ADDR: `http://127.0.0.1:1,${url}`,
      });
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr).toContain("build: failing as asked");
      expect(reports()).toEqual([
        {
          id: 42,
          mtoken: "token-42",
          version: "1.1.0",
          url: "http://203.0.113.7:41000",
          error_msg: expect.stringMatching(
            /^worker install from file:\/\/ failed at: npm run build \(npm run build failed \(exit 2\)\) \(the worker in .* is unchanged\)$/,
          ),
        },
      ]);
      expect((await readdir(s.workerDir)).sort()).toEqual(["dist", "image-worker"]);
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
    },
    TEST_TIMEOUT_MS,
  );

  test.each([
    [
      "the seed template's default (Vast's PyWorker), not even cloned",
      "https://github.com/vast-ai/pyworker",
      "Vast's Python PyWorker",
    ],
    ["a repository that is not this worker", "", "it is not this worker (its package.json names pyworker"],
  ])(
    "a foreign PYWORKER_REPO, %s, is logged and ignored: the image's worker runs",
    async (_what, given, says) => {
      const s = await sandbox();
      const url = given || `file://${await workerRepository(join(s.dir, "src"), { name: "pyworker" })}`;
      const run = await prepare({ ...s.env, PYWORKER_REPO: url, PYWORKER_REF: "main" });
      expect(run.code).toBe(0);
      expect(run.messages.some((m) => m.startsWith("ignoring PYWORKER_REPO=") && m.includes(says))).toBe(
        true,
      );
      expect(run.lines[0]).toBe(join(s.workerDir, "dist", "worker", "cli.js"));
      expect((await readdir(s.workerDir)).sort()).toEqual(["dist", "image-worker"]);
      expect(await readdir(dirname(s.workerDir))).toEqual(["worker"]);
    },
    TEST_TIMEOUT_MS,
  );
});

test(
  "a token in PYWORKER_REPO or PROVISIONING_SCRIPT reaches no log, marker or report; npm runs without the worker's secrets",
  async () => {
    const s = await sandbox();
    const repo = await workerRepository(join(s.dir, "src"));
    const projects = join(s.dir, "git-host");
    await mkdir(projects);
    bareClone(repo, projects, "comfyui-worker");
    const host = await gitHttp(projects, { user: "deploy", password: "repo-password" });
    const scripts = await serve((req) =>
      req.url === "/provision.sh?token=script-token" &&
      req.headers.authorization === `Basic ${Buffer.from("user:script-password").toString("base64")}`
        ? { status: 200, body: `echo "provisioned" > ${JSON.stringify(join(s.dir, "provisioned"))}\n` }
        : { status: 403, body: "no" },
    );
    const { url: reportAddr, reports } = await autoscaler();
    // Each secret a distinct word, so that any trace of one is found wherever it lands.
    const secrets = {
      PYWORKER_REPO: `${host.url.replace("://", "://deploy:repo-password@")}/repo-token/comfyui-worker.git`,
      PROVISIONING_SCRIPT: `${scripts.url.replace("://", "://user:script-password@")}/provision.sh?token=script-token#script-fragment`,
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
    const env: Record<string, string> = {
      ...s.env,
      ...secrets,
      REPORT_ADDR: reportAddr,
      // What npm may see besides its own settings: the network's.
      HTTPS_PROXY: "http://proxy.invalid:3128",
    };

    const first = await prepare(env);
    expect(first.code).toBe(0);
    expect(existsSync(join(s.dir, "provisioned"))).toBe(true);
    expect(leaks(first.stdout + first.stderr)).toEqual([]);
    // The sources as the log shows them: scheme and host.
    expect(first.messages).toContain(`installing from ${host.url} into ${s.workerDir}`);
    expect(first.messages).toContain(`downloading and running ${scripts.url}`);

    // The markers: private to their owner, and without the token.
    const markers = await markersIn(s.workerDir);
    expect(markers).toHaveLength(1);
    for (const file of [join(s.workerDir, markers[0]!), env.PROVISIONING_MARKER!]) {
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      expect(leaks(await readFile(file, "utf8"))).toEqual([]);
    }

    // npm's build saw npm's environment only: no secret, no name of one; the proxy and npm's settings.
    const npmSaw = JSON.parse(await readFile(join(s.workerDir, "build-env.json"), "utf8")) as Record<
      string,
      string
    >;
    expect(leaks(JSON.stringify(npmSaw))).toEqual([]);
    for (const name of [...Object.keys(secrets), "REPORT_ADDR", "WORKER_DIR", "PROVISIONING_MARKER"]) {
      expect(npmSaw[name]).toBeUndefined();
    }
    expect(npmSaw.HTTPS_PROXY).toBe(env.HTTPS_PROXY);
    expect(npmSaw.npm_config_cache).toBe(env.npm_config_cache);

    // A failure quotes the repository (git's own message does): logged and reported without the token.
    await rm(join(s.workerDir, markers[0]!));
    const refused = await gitHttp(projects, { user: "deploy", password: "repo-password", refuse: true });
    const failed = await prepare({
      ...env,
      PYWORKER_REPO: `${refused.url.replace("://", "://deploy:repo-password@")}/repo-token/comfyui-worker.git`,
    });
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/fatal: unable to access 'http:\/\/127\.0\.0\.1:\d+'/);
    expect(reports().map((r) => r.error_msg)).toEqual([
      expect.stringMatching(
        /^worker install from http:\/\/127\.0\.0\.1:\d+ failed at: git clone \(exit 128\)/,
      ),
    ]);
    expect(reports()[0].mtoken).toBe(secrets.MASTER_TOKEN);
    expect(leaks(failed.stdout + failed.stderr + reports()[0].error_msg)).toEqual([]);
  },
  TEST_TIMEOUT_MS,
);

test("markers an earlier version wrote with the full URL, readable by anyone, are rewritten redacted and private", async () => {
  const s = await sandbox();
  const repo = "https://deploy:repo-password@example.invalid/me/comfyui-worker.git";
  const script = "https://scripts.example/provision.sh?token=script-token";
  const key = createHash("sha256").update(`${repo}#v9`).digest("hex").slice(0, 16);
  const installMarker = join(s.workerDir, `.installed-from-${key}`);
  await writeFile(installMarker, `${repo}\nv9\n`, { mode: 0o644 });
  await writeFile(s.env.PROVISIONING_MARKER!, `${script}\n`, { mode: 0o644 });
  const run = await prepare({
    ...s.env,
    PYWORKER_REPO: repo,
    PYWORKER_REF: "v9",
    PROVISIONING_SCRIPT: script,
  });
  expect(run.code).toBe(0);
  expect(run.messages.some((m) => m.includes("already installed"))).toBe(true);
  expect(run.messages.some((m) => m.startsWith("already done"))).toBe(true);
  expect(await readFile(installMarker, "utf8")).toBe("https://example.invalid\nv9\n");
  expect(await readFile(s.env.PROVISIONING_MARKER!, "utf8")).toBe("https://scripts.example\n");
  for (const file of [installMarker, s.env.PROVISIONING_MARKER!]) {
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  }
});

describe("USE_SSL", () => {
  async function pairMatches(crt: string, key: string): Promise<boolean> {
    const fromCert = new X509Certificate(await readFile(crt)).publicKey.export({
      type: "spki",
      format: "pem",
    });
    const fromKey = createPublicKey(await readFile(key)).export({ type: "spki", format: "pem" });
    return fromCert === fromKey;
  }

  test(
    "a fresh pair signed by the console at every start: the request names the instance, the key stays private",
    async () => {
      const s = await sandbox();
      const ca = await makeCa(s.dir);
      const console = await serveTls(ca, (req) => ({ status: 200, body: signCsr(ca, s.dir, req.body) }));
      const env = {
        ...s.env,
        USE_SSL: "true",
        CONTAINER_ID: "42",
        WORKER_SSL_CERT_FILE: join(s.dir, "instance.crt"),
        WORKER_SSL_KEY_FILE: join(s.dir, "instance.key"),
        VAST_SIGN_CERT_URL: `${console.url}/api/v0/sign_cert/`,
      };
      const first = await prepare(env, trusting(ca));
      expect(first.code).toBe(0);
      expect(console.seen.map((r) => [r.method, r.url, r.headers["content-type"]])).toEqual([
        ["POST", "/api/v0/sign_cert/?instance_id=42", "application/octet-stream"],
      ]);
      expect(console.seen[0]!.body.toString()).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----\n/);
      expect(await pairMatches(env.WORKER_SSL_CERT_FILE, env.WORKER_SSL_KEY_FILE)).toBe(true);
      expect((await stat(env.WORKER_SSL_KEY_FILE)).mode & 0o777).toBe(0o600);
      const firstKey = await readFile(env.WORKER_SSL_KEY_FILE, "utf8");

      const second = await prepare(env, trusting(ca));
      expect(second.code).toBe(0);
      expect(console.seen).toHaveLength(2);
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
      const ca = await makeCa(s.dir);
      const other = join(s.dir, "other");
      await mkdir(other);
      selfSignedCert({ cn: "someone else", key: join(other, "k"), crt: join(other, "c") });
      const wrongCert = await readFile(join(other, "c"), "utf8");
      let attempts = 0;
      // A console that fails, then answers a certificate that is not for the new key.
      const console = await serveTls(ca, () =>
        ++attempts % 2 ? { status: 500, body: "console down" } : { status: 200, body: wrongCert },
      );
      const { url, reports } = await autoscaler();
      const env = {
        ...s.env,
        USE_SSL: "true",
        CONTAINER_ID: "42",
        MASTER_TOKEN: "token-42",
        PUBLIC_IPADDR: "203.0.113.7",
        VAST_TCP_PORT_3000: "41000",
        REPORT_ADDR: url,
        WORKER_SSL_CERT_FILE: join(s.dir, "instance.crt"),
        WORKER_SSL_KEY_FILE: join(s.dir, "instance.key"),
        VAST_SIGN_CERT_URL: `${console.url}/api/v0/sign_cert/`,
        CERT_SIGN_ATTEMPTS: "3",
        CERT_RETRY_DELAY: "0",
      };
      const failed = await prepare(env, trusting(ca));
      expect(failed.code).toBe(1);
      expect(failed.stdout).toBe("");
      expect(console.seen).toHaveLength(3);
      expect(failed.messages.filter((m) => m.startsWith("attempt "))).toEqual([
        expect.stringMatching(/^attempt 1: signing failed: Request failed with status code 500/),
        "attempt 2: signing failed: the console's answer is not a valid certificate for the new key",
        expect.stringMatching(/^attempt 3: signing failed: Request failed with status code 500/),
      ]);
      expect(reports()).toEqual([
        {
          id: 42,
          mtoken: "token-42",
          version: "1.1.0",
          url: "https://203.0.113.7:41000",
          error_msg: `ssl: no usable certificate for USE_SSL=true: signing by ${console.url} failed after 3 attempts and ${env.WORKER_SSL_CERT_FILE}/${env.WORKER_SSL_KEY_FILE} are not a valid pair`,
        },
      ]);
      expect(existsSync(env.WORKER_SSL_KEY_FILE)).toBe(false);

      // A pair from an earlier start, still valid: kept, with a line saying so.
      selfSignedCert({ cn: "earlier", key: env.WORKER_SSL_KEY_FILE, crt: env.WORKER_SSL_CERT_FILE });
      const kept = await prepare(env, trusting(ca));
      expect(kept.code).toBe(0);
      expect(kept.messages.some((m) => m.startsWith("using the certificate already in"))).toBe(true);

      // A certificate whose key is not the one on disk is not kept.
      execFileSync("openssl", ["genpkey", "-algorithm", "RSA", "-out", env.WORKER_SSL_KEY_FILE], {
        stdio: "ignore",
      });
      const mismatched = await prepare(env, trusting(ca));
      expect(mismatched.code).toBe(1);
      expect(reports()).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("provisioning", () => {
  test("a local script runs once: a private marker says so, and the next start skips it", async () => {
    const s = await sandbox();
    const script = join(s.dir, "provision.sh");
    const ran = join(s.dir, "ran");
    await writeFile(
      script,
      `echo "provisioning (WORKSPACE=$WORKSPACE)" >> ${JSON.stringify(ran)}\necho on-stdout\n`,
    );
    const env: Record<string, string> = { ...s.env, PROVISIONING_SCRIPT: script };
    const first = await prepare(env);
    expect(first.code).toBe(0);
    expect(await readFile(ran, "utf8")).toBe(`provisioning (WORKSPACE=${s.env.WORKSPACE})\n`);
    // What the script prints is log, never prepare's answer.
    expect(first.stderr).toContain("on-stdout\n");
    expect(first.lines.every((l) => !l.includes("on-stdout"))).toBe(true);
    expect((await stat(env.PROVISIONING_MARKER!)).mode & 0o777).toBe(0o600);
    const second = await prepare(env);
    expect(second.code).toBe(0);
    expect(await readFile(ran, "utf8")).toBe(`provisioning (WORKSPACE=${s.env.WORKSPACE})\n`);
    expect(second.messages.some((m) => m.startsWith("already done"))).toBe(true);
  });

  test("an http URL is downloaded, run and removed", async () => {
    const s = await sandbox();
    const ran = join(s.dir, "ran");
    const host = await serve((req) =>
      req.url === "/provision.sh"
        ? { status: 200, body: `echo "from $0" > ${JSON.stringify(ran)}\n` }
        : { status: 404, body: "" },
    );
    const run = await prepare({ ...s.env, PROVISIONING_SCRIPT: `${host.url}/provision.sh` });
    expect(run.code).toBe(0);
    expect(host.seen.map((r) => r.url)).toEqual(["/provision.sh"]);
    expect(await readFile(ran, "utf8")).toMatch(new RegExp(`^from ${s.env.TMPDIR}/provisioning\\.`));
    expect(await readdir(s.env.TMPDIR!)).toEqual([]);
  });

  test.each([
    ["a script that fails", "local", /failed \(exit 3\)/],
    ["a URL that answers 404", "url", /could not download http:\/\/127\.0\.0\.1:\d+;/],
    ["a path that does not exist", "missing", /no such file \(or not readable\)/],
  ])(
    "%s: logged as an error, not fatal (the worker starts), and tried again at the next start",
    async (_what, kind, message) => {
      const s = await sandbox();
      let target = join(s.dir, "no-such-script.sh");
      if (kind === "local") {
        target = join(s.dir, "provision.sh");
        await writeFile(target, "exit 3\n");
      } else if (kind === "url") {
        target = `${(await serve(() => ({ status: 404, body: "gone" }))).url}/provision.sh`;
      }
      const env: Record<string, string> = { ...s.env, PROVISIONING_SCRIPT: target };
      for (let start = 0; start < 2; start++) {
        const run = await prepare(env);
        expect(run.code).toBe(0);
        const error = run.stderr.split("\n").find((l) => l.includes('"level":50'));
        expect(JSON.parse(error!).msg).toMatch(message);
        expect(JSON.parse(error!).msg).toMatch(/starting the worker anyway/);
        expect(existsSync(env.PROVISIONING_MARKER!)).toBe(false);
      }
    },
    TEST_TIMEOUT_MS,
  );

  test("under supervisor, the wait lasts while Vast's provisioning flag is there, and PROVISIONING_SCRIPT is Vast's to run", async () => {
    const s = await sandbox();
    const script = join(s.dir, "provision.sh");
    await writeFile(script, `touch ${JSON.stringify(join(s.dir, "ran"))}\n`);
    await writeFile(s.env.PROVISIONING_FLAG!, "");
    const stdout = sink();
    const stderr = sink();
    const env = { ...s.env, WORKER_UNDER_SUPERVISOR: "true", PROVISIONING_SCRIPT: script };
    let settled = false;
    const run = runPrepare({ target: "image", env, root: repoRoot, stdout, stderr }).finally(
      () => (settled = true),
    );
    await new Promise<void>((resolve) => {
      const check = () => stderr.text().includes("waiting for the image's provisioning") && resolve();
      stderr.on("data", check);
      check();
    });
    expect(settled).toBe(false);
    await rm(s.env.PROVISIONING_FLAG!);
    expect(await run).toBe(0);
    expect(stderr.text()).toContain("the image's provisioning finished");
    expect(existsSync(join(s.dir, "ran"))).toBe(false);
  });
});

describe("what the worker starts with", () => {
  test("the image's defaults where nothing is set: ComfyUI started by the worker, its log in LOG_DIR, the score in the workspace", async () => {
    const s = await sandbox();
    const run = await prepare(s.env);
    expect(run.code).toBe(0);
    expect(run.lines).toEqual([
      join(s.workerDir, "dist", "worker", "cli.js"),
      "COMFYUI_LAUNCH=true",
      `LOG_FILE=${join(s.env.LOG_DIR!, "comfyui-worker.log")}`,
      `BENCHMARK_CACHE_FILE=${join(s.env.WORKSPACE!, ".has_benchmark")}`,
    ]);
  });

  test("what the operator set is left alone; a seed's custom benchmark in the workspace is used", async () => {
    const s = await sandbox();
    const seed = join(s.env.WORKSPACE!, "vast-pyworker", "workers", "comfyui-json", "misc", "benchmark.json");
    await mkdir(dirname(seed), { recursive: true });
    await writeFile(seed, "{}");
    const run = await prepare({
      ...s.env,
      COMFYUI_LAUNCH: "false",
      LOG_FILE: "/var/log/mine.log",
      BENCHMARK_CACHE_FILE: "/tmp/score",
    });
    expect(run.lines.slice(1)).toEqual([`BENCHMARK_JSON_PATH=${seed}`]);
    const own = await prepare({ ...s.env, BENCHMARK_JSON_PATH: "/mine.json" });
    expect(own.lines.some((l) => l.startsWith("BENCHMARK_JSON_PATH="))).toBe(false);
  });

  test("no worker in WORKER_DIR: exit 1, reported", async () => {
    const s = await sandbox();
    await rm(join(s.workerDir, "dist"), { recursive: true });
    const { url, reports } = await autoscaler();
    const run = await prepare({ ...s.env, REPORT_ADDR: url });
    expect(run.code).toBe(1);
    expect(reports().map((r) => r.error_msg)).toEqual([
      `no worker in WORKER_DIR=${s.workerDir} (no bundle built from its sources, no dist/worker/cli.js)`,
    ]);
  });
});

describe("the command line, as docker-entrypoint.sh runs it", () => {
  test(
    "exit 0: stdout is the program, then NAME=value lines, nothing else (the log is on stderr)",
    async () => {
      const s = await sandbox();
      const script = join(s.dir, "provision.sh");
      await writeFile(script, "echo provisioning-says-hello\n");
      const run = await prepareCli("image", { ...s.env, PROVISIONING_SCRIPT: script });
      expect(run.code).toBe(0);
      expect(run.stdout).toBe(
        [
          join(s.workerDir, "dist", "worker", "cli.js"),
          "COMFYUI_LAUNCH=true",
          `LOG_FILE=${join(s.env.LOG_DIR!, "comfyui-worker.log")}`,
          `BENCHMARK_CACHE_FILE=${join(s.env.WORKSPACE!, ".has_benchmark")}`,
          "",
        ].join("\n"),
      );
      expect(run.stderr).toContain("provisioning-says-hello");
      expect(run.stderr).toMatch(/"stage":"prepare:provisioning"/);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "exit 1 on a setting it cannot use: the message names the variable, and the autoscaler is told",
    async () => {
      const s = await sandbox();
      const { url, reports } = await autoscaler();
      const run = await prepareCli("image", {
        ...s.env,
        CERT_SIGN_ATTEMPTS: "0",
        REPORT_ADDR: url,
        CONTAINER_ID: "7",
      });
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(reports()).toEqual([
        expect.objectContaining({
          id: 7,
          error_msg: expect.stringMatching(/^configuration error: CERT_SIGN_ATTEMPTS: /),
        }),
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  test("--for is required and names its choices", async () => {
    const run = await prepareCli("elsewhere", { PATH: process.env.PATH ?? "" });
    expect(run.code).not.toBe(0);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain("Allowed choices are image, stock-template");
  });
});
