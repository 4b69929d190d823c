/**
 * Bodies that cost little to send and could cost a worker much to read, and a client that sends exactly the headers
 * it is given: what test/integration/security-http.test.ts checks the answers to, and what
 * benchmark/bench/hostile-bodies.ts times /health under. Defined once, so that both speak of the same attacks.
 */
import { request as httpRequest } from "node:http";

export interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/**
 * One HTTP request on its own connection with exactly the headers given (Host and Origin included, which fetch will
 * not let a caller set). An event stream is not read: its status and headers are the answer.
 */
export function sendRaw(
  base: string,
  path: string,
  opts: {
    method?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    timeoutMs?: number;
  } = {},
): Promise<RawAnswer> {
  const url = new URL(path, base);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: opts.method ?? "GET",
        headers: opts.headers,
        agent: false,
        timeout: timeoutMs,
      },
      (res) => {
        const answer = { status: res.statusCode ?? 0, headers: res.headers, text: "" };
        if (String(res.headers["content-type"]).startsWith("text/event-stream")) {
          res.destroy();
          return resolve(answer);
        }
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ ...answer, text: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error(`no answer to ${path} within ${timeoutMs} ms`)));
    req.end(opts.body);
  });
}

/** The headers of a JSON body sent whole (its length declared). */
export const jsonHeaders = (body: Buffer): Record<string, string> => ({
  "content-type": "application/json",
  "content-length": String(body.length),
});

/** `[{},{},...]` just under a body limit of `maxBytes`: millions of objects from 16 MiB. */
export function emptyObjects(maxBytes: number): Buffer {
  const n = Math.floor((maxBytes - 2) / 3);
  return Buffer.from(`[${"{},".repeat(n - 1)}{}]`);
}

/** 100,000 `[` then 100,000 `]`: far deeper than any JSON depth limit, in 200 KB. */
export const deepArrays = (): Buffer => Buffer.from(`${"[".repeat(100_000)}${"]".repeat(100_000)}`);

/** A signed request whose auth_data.url is `routed` and 15 MiB more (the signature covers the short one). */
export const longSignedUrl = (authData: Record<string, unknown>, routed: string): Buffer =>
  Buffer.from(
    JSON.stringify({
      auth_data: { ...authData, url: `${routed}/${"\u00e9x".repeat(5 * 1024 * 1024)}` },
      payload: { input: { workflow_json: "nope" } },
    }),
  );

/**
 * Two requests (a wrong signature) whose auth_data.endpoint, then an unknown auth_data field, is 3,000 arrays
 * nested 58 deep: within MAX_JSON_DEPTH and MAX_JSON_VALUES, and rendered with Python's indentation about 45 million
 * characters, twice (cost as int and as float), for one 350 KB request (what SIGNATURE_LEGACY would verify).
 */
export function legacyNestedAuth(authData: Record<string, unknown>): Buffer[] {
  const nest = `${"[".repeat(58)}${"]".repeat(58)}`;
  const nested = () => JSON.parse(`[${Array(3_000).fill(nest).join(",")}]`) as unknown;
  const auth = { ...authData, signature: "QUJD" };
  return [
    { ...auth, endpoint: nested() },
    { ...auth, extra: nested() },
  ].map((a) => Buffer.from(JSON.stringify({ auth_data: a, payload: { input: { workflow_json: "nope" } } })));
}
