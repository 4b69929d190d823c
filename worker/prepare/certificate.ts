import { createPrivateKey, generateKeyPair, X509Certificate, type KeyObject } from "node:crypto";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import type { ImagePrepare } from "../../config/prepare.js";
import { doublingDelay } from "../../lib/backoff.js";
import { redactText, redactUrl } from "../../lib/redact.js";
import { retry } from "../../lib/retry.js";
import { errorText, PrepareError, type PrepareContext } from "./context.js";
import { certificateRequest } from "./csr.js";

/** Each signing request's deadline (curl -m 30 upstream). */
const SIGN_TIMEOUT_MS = 30_000;

/**
 * Whether a certificate and key can serve: both there, the certificate not expired and its public key the key's.
 * Any reason it cannot (no file, not PEM, another key) is a no.
 */
export async function pairUsable(certFile: string, keyFile: string, now = Date.now()): Promise<boolean> {
  try {
    const cert = new X509Certificate(await readFile(certFile));
    const key = createPrivateKey(await readFile(keyFile));
    return Date.parse(cert.validTo) > now && cert.checkPrivateKey(key);
  } catch {
    return false;
  }
}

/**
 * USE_SSL in our image: a fresh key and a certificate for it signed by Vast's console at each start (as
 * upstream's start_server.sh: the request names the instance), retried with doubling waits; the pair on disk is
 * replaced only once the answer is checked. If that fails, a pair already on disk that can still serve; else the
 * start cannot serve HTTPS, and that is thrown.
 */
export async function ensureCertificate(config: ImagePrepare, ctx: PrepareContext): Promise<void> {
  if (!config.ssl.use) return;
  const { cert, key } = config.ssl;
  const { signUrl, containerId, attempts } = config.certificate;
  if (containerId === undefined) {
    ctx.log.info("certificate", "no CONTAINER_ID (set by Vast): not asking the console for a certificate");
  } else {
    ctx.log.info("certificate", `getting a fresh ${cert} signed by ${signUrl} for instance ${containerId}`);
    if (await signPair(config, containerId, ctx)) {
      ctx.log.info("certificate", `certificate signed (${cert}, ${key})`);
      return;
    }
  }
  if (await pairUsable(cert, key)) {
    ctx.log.info(
      "certificate",
      `using the certificate already in ${cert} (its key matches and it has not expired)`,
    );
    return;
  }
  throw new PrepareError(
    "certificate_unavailable",
    `ssl: no usable certificate for USE_SSL=true: signing by ${redactUrl(signUrl)} ${containerId === undefined ? "was not asked (no CONTAINER_ID)" : `failed after ${attempts} attempts`} and ${cert}/${key} are not a valid pair`,
  );
}

/** Signs a new pair and moves it in place; false (each attempt's failure logged) when no attempt gave one. */
async function signPair(config: ImagePrepare, containerId: string, ctx: PrepareContext): Promise<boolean> {
  const { cert, key } = config.ssl;
  const { signUrl, attempts, retryDelayMs } = config.certificate;
  const pair = await promisify(generateKeyPair)("rsa", { modulusLength: 2048 });
  const request = certificateRequest({
    subject: [
      ["C", "US"],
      ["ST", "CA"],
      ["CN", "pyworker.vast.ai"],
    ],
    altNameIps: ["0.0.0.0"],
    publicKey: pair.publicKey,
    privateKey: pair.privateKey,
  });
  const newKey = `${key}.new`;
  const newCert = `${cert}.new`;
  try {
    const signed = await retry(
      async () => {
        const answer = await ctx.http.post(`${signUrl}?instance_id=${containerId}`, {
          body: request,
          headers: { "content-type": "application/octet-stream" },
          timeout: { request: SIGN_TIMEOUT_MS },
          retry: { limit: 0 },
        });
        if (!answerFits(answer.body, pair.privateKey)) {
          throw new Error("the console's answer is not a valid certificate for the new key");
        }
        return answer.body;
      },
      {
        attempts,
        delayMs: (attempt) => doublingDelay(attempt - 1, retryDelayMs, Number.MAX_SAFE_INTEGER),
        onFailure: (err, attempt) =>
          ctx.log.warn("certificate", `attempt ${attempt}: signing failed: ${redactText(errorText(err))}`),
      },
    ).catch(() => undefined);
    if (signed === undefined) return false;
    await writeFile(newKey, pair.privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    await writeFile(newCert, signed, { mode: 0o644 });
    await rename(newKey, key);
    await rename(newCert, cert);
    return true;
  } finally {
    await rm(newKey, { force: true });
    await rm(newCert, { force: true });
  }
}

function answerFits(body: string, key: KeyObject): boolean {
  try {
    const cert = new X509Certificate(body);
    return Date.parse(cert.validTo) > Date.now() && cert.checkPrivateKey(key);
  } catch {
    return false;
  }
}
