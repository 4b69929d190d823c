import { got } from "got";
import type { Logger } from "../../lib/logger.js";
import { retry } from "../../lib/retry.js";

export class PubkeyError extends Error {
  override readonly name = "PubkeyError";
}

/**
 * Fetches the router's public key (PEM) from `{addr}/pubkey/`: 10 s per attempt, 5 attempts with 1/2/4/8 s
 * between them, as upstream; unlike upstream, each address of a comma-separated REPORT_ADDR is tried in turn.
 */
export async function fetchPublicKey(
  addrs: readonly string[],
  opts: { logger: Logger; attempts?: number; timeoutMs?: number; baseDelayMs?: number; signal?: AbortSignal },
): Promise<string> {
  const attempts = opts.attempts ?? 5;
  let last = "no REPORT_ADDR";
  const fetchOnce = async (): Promise<string> => {
    for (const addr of addrs) {
      const url = `${addr}/pubkey/`;
      try {
        const res = await got(url, {
          timeout: { request: opts.timeoutMs ?? 10_000 },
          retry: { limit: 0 },
          throwHttpErrors: false,
          ...(opts.signal && { signal: opts.signal }),
        });
        // SPKI or PKCS#1 PEM: upstream's worker library (pycryptodome's RSA.import_key) takes either.
        if (res.statusCode === 200 && /-----BEGIN (RSA )?PUBLIC KEY-----/.test(res.body))
          return res.body.trim();
        last = `${url} answered ${res.statusCode}`;
      } catch (err) {
        last = `${url}: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    throw new PubkeyError(last);
  };
  try {
    return await retry(fetchOnce, {
      attempts,
      delayMs: (attempt) => (opts.baseDelayMs ?? 1_000) * 2 ** (attempt - 1),
      signal: opts.signal,
      onFailure: (_err, attempt) =>
        opts.logger.warn({ stage: "pubkey", attempt, attempts }, `public key fetch failed: ${last}`),
    });
  } catch (err) {
    if (opts.signal?.aborted) throw opts.signal.reason ?? err;
    throw new PubkeyError(`Failed to get Serverless public key after all retry attempts (${last})`);
  }
}
