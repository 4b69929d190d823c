import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError } from "../../config/env.js";
import { loadPrepareConfig, loadPrepareReport } from "../../config/prepare.js";
import { redactSource, redactText } from "../../lib/redact.js";
import { pairUsable } from "../../worker/prepare/certificate.js";
import { certificateRequest } from "../../worker/prepare/csr.js";
import { cleanUp, tempDir } from "../harness/prepare.js";
import { selfSignedCert } from "../harness/tls.js";

/** The small parts of `prepare` that its end-to-end tests (prepare-image, prepare-stock-template) rely on. */

afterEach(cleanUp);

// npm's environment allow-list is held by test/unit/bootstrap-secrets.test.ts (the secrets' tables live there).

test("text is logged with each URL in it redacted; a source shows a path as it is and a URL redacted", () => {
  expect(redactText("fatal: unable to access 'https://u:tok@h.example/x.git?t=1': 403")).toBe(
    "fatal: unable to access 'https://h.example': 403",
  );
  expect(redactText("see (https://a.example/b?token=x). done")).toBe("see (https://a.example). done");
  expect(redactText("a\nhttps://u:p@one.example/x\tthen https://two.example/y#f")).toBe(
    "a\nhttps://one.example\tthen https://two.example",
  );
  expect(redactText("no URL here: /opt/worker")).toBe("no URL here: /opt/worker");
  expect(redactSource("/opt/provision.sh")).toBe("/opt/provision.sh");
  expect(redactSource("https://user:secret@gist.example/me/raw/p.sh?token=t")).toBe("https://gist.example");
  // scp-like git syntax has no scheme (and its credentials are an SSH key): shown as it is.
  expect(redactSource("git@github.com:me/repo.git")).toBe("git@github.com:me/repo.git");
});

test("the certificate request is one openssl verifies, for the subject and address Vast's console signs", async () => {
  const dir = await tempDir();
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = certificateRequest({
    subject: [
      ["C", "US"],
      ["ST", "CA"],
      ["CN", "pyworker.vast.ai"],
    ],
    altNameIps: ["0.0.0.0"],
    publicKey,
    privateKey,
  });
  const file = join(dir, "request.csr");
  await writeFile(file, pem);
  const text = execFileSync("openssl", ["req", "-in", file, "-noout", "-verify", "-text"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  expect(text).toMatch(/Subject: C\s?=\s?US, ST\s?=\s?CA, CN\s?=\s?pyworker\.vast\.ai/);
  expect(text).toContain("IP Address:0.0.0.0");
  expect(text).toContain("sha256WithRSAEncryption");
  expect(text).toContain("Public-Key: (2048 bit)");
});

test("a pair on disk can serve only when both files are there, the key is the certificate's and it has not expired", async () => {
  const dir = await tempDir();
  const crt = join(dir, "instance.crt");
  const key = join(dir, "instance.key");
  expect(await pairUsable(crt, key)).toBe(false);
  selfSignedCert({ cn: "earlier", crt, key });
  expect(await pairUsable(crt, key)).toBe(true);
  // The certificate is valid for a day.
  expect(await pairUsable(crt, key, Date.now() + 2 * 86_400_000)).toBe(false);
  selfSignedCert({ cn: "other", crt: join(dir, "other.crt"), key });
  expect(await pairUsable(crt, key)).toBe(false);
  await writeFile(crt, "not a certificate");
  expect(await pairUsable(crt, key)).toBe(false);
});

describe("prepare's configuration", () => {
  test("the worker's own settings never stop it (S3, webhooks, REPORT_ADDR unset without UNSECURED)", () => {
    const env = { S3_ENDPOINT_URL: "not a url", WEBHOOK_URL: "ftp://x", MAX_BODY_BYTES: "lots" };
    expect(loadPrepareConfig(env, "image").target).toBe("image");
    expect(loadPrepareConfig(env, "stock-template").target).toBe("stock-template");
    expect(loadPrepareReport(env).addrs).toEqual([]);
  });

  test.each([
    ["image", "CERT_SIGN_ATTEMPTS", "0"],
    ["image", "CERT_RETRY_DELAY", "1.5"],
    ["image", "PROVISIONING_TIMEOUT_S", "soon"],
    ["image", "WORKER_UNDER_SUPERVISOR", "maybe"],
    ["image", "VAST_SIGN_CERT_URL", "console.vast.ai/sign"],
    ["image", "USE_SSL", "sometimes"],
    ["stock-template", "API_PORT", "70000"],
    ["stock-template", "COMFYUI_READY_TIMEOUT", "-1"],
  ] as const)("%s: %s=%s is refused with an error naming it", (target, name, value) => {
    let error: unknown;
    try {
      loadPrepareConfig({ [name]: value }, target);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).variable).toBe(name);
  });

  test("USE_SSL reads as the worker reads it (True is true), and the report names the worker as its reports do", () => {
    const env = {
      USE_SSL: "True",
      CONTAINER_ID: "42",
      MASTER_TOKEN: "m",
      PUBLIC_IPADDR: "203.0.113.7",
      VAST_TCP_PORT_3000: "41000",
      REPORT_ADDR: "https://run.vast.ai/, https://cloud.vast.ai/api/v0",
    };
    expect(loadPrepareConfig(env, "image").ssl.use).toBe(true);
    expect(loadPrepareReport(env)).toEqual({
      addrs: ["https://run.vast.ai", "https://cloud.vast.ai/api/v0"],
      identity: { containerId: 42, masterToken: "m", url: "https://203.0.113.7:41000" },
    });
  });

  test("the config is frozen", () => {
    const config = loadPrepareConfig({}, "image");
    expect(Object.isFrozen(config)).toBe(true);
    expect(config.target === "image" && Object.isFrozen(config.provisioning)).toBe(true);
  });
});
