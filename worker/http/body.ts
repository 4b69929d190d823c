import type { Readable, Transform } from "node:stream";
import { createBrotliDecompress, createGunzip, createInflate } from "node:zlib";
import express, {
  type ErrorRequestHandler,
  type Express,
  type Request,
  type RequestHandler,
  type Response,
} from "express";
import {
  BadRequestError,
  PayloadTooLargeError,
  UnsupportedMediaTypeError,
  WorkerError,
  toHttp,
} from "../../lib/errors.js";

/**
 * An Express app with the settings both ports share: no framework banner, no ETags, and exact routes, as
 * upstream's (/GENERATE/SYNC or /generate/sync/ must not reach work past the checks that guard /generate/sync).
 */
export function strictApp(): Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  app.set("case sensitive routing", true);
  app.set("strict routing", true);
  return app;
}

/** How much structure a JSON body may have: checked on its raw bytes before it is parsed. */
export interface JsonShapeLimits {
  /** MAX_JSON_DEPTH: objects and arrays nested at most this deep. */
  maxDepth: number;
  /** MAX_JSON_VALUES: values (objects, arrays, strings, numbers, literals; keys not counted) at most. */
  maxValues: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const OPEN_ARRAY = 0x5b;
const CLOSE_OBJECT = 0x7d;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

/** The bytes that start a number or a literal (true, false, null). */
function startsBareValue(c: number): boolean {
  return c === 0x2d || (c >= 0x30 && c <= 0x39) || c === 0x74 || c === 0x66 || c === 0x6e;
}

/** The bytes that end a number or a literal: whitespace, structure, a quote. */
function endsBareValue(c: number): boolean {
  return (
    c === 0x20 ||
    c === 0x09 ||
    c === 0x0a ||
    c === 0x0d ||
    c === COMMA ||
    c === COLON ||
    c === CLOSE_OBJECT ||
    c === CLOSE_ARRAY ||
    c === OPEN_OBJECT ||
    c === OPEN_ARRAY ||
    c === QUOTE
  );
}

/**
 * Counts a JSON text's values and nesting from its raw bytes, chunk by chunk as they arrive, so that a body whose
 * parse would cost far more than its size (a 16 MiB `[{},{},...]` is hundreds of megabytes of heap and seconds of
 * blocked event loop) is refused before any of it is materialised. UTF-8 is safe to scan byte by byte: no byte of
 * a multi-byte character equals a structural one. Malformed text is not judged here: the parse that follows
 * refuses it; the counts are exact for well-formed JSON.
 */
export class JsonShapeScanner {
  private depth = 0;
  private values = 0;
  private inString = false;
  private escaped = false;
  private inBareValue = false;
  /** A string that starts now is an object's key (keys are not values). */
  private expectKey = false;
  /** Per open container, whether it is an object (bounded by maxDepth: deeper is refused). */
  private readonly inObject: boolean[] = [];

  constructor(private readonly limits: JsonShapeLimits) {}

  /** Scans the next bytes; says which limit they pass, if one. */
  push(chunk: Uint8Array): "depth" | "values" | undefined {
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === BACKSLASH) this.escaped = true;
        else if (c === QUOTE) this.inString = false;
        continue;
      }
      if (this.inBareValue) {
        if (!endsBareValue(c)) continue;
        this.inBareValue = false;
      }
      if (c === QUOTE) {
        this.inString = true;
        if (this.expectKey) this.expectKey = false;
        else if (++this.values > this.limits.maxValues) return "values";
      } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
        if (++this.values > this.limits.maxValues) return "values";
        if (++this.depth > this.limits.maxDepth) return "depth";
        this.inObject.push(c === OPEN_OBJECT);
        this.expectKey = c === OPEN_OBJECT;
      } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
        this.depth = Math.max(0, this.depth - 1);
        this.inObject.pop();
        this.expectKey = false;
      } else if (c === COMMA) {
        this.expectKey = this.inObject[this.inObject.length - 1] === true;
      } else if (c === COLON) {
        this.expectKey = false;
      } else if (startsBareValue(c)) {
        this.inBareValue = true;
        if (++this.values > this.limits.maxValues) return "values";
      }
    }
    return undefined;
  }
}

/** A body-reading failure in body-parser's terms (`type`), which `errorHandler` maps to an answer. */
function bodyError(
  type: "entity.parse.failed" | "entity.too.large" | "encoding.unsupported" | "charset.unsupported",
) {
  return Object.assign(new Error(type), { type });
}

const DECODERS: Readonly<Record<string, () => Transform>> = {
  gzip: () => createGunzip(),
  "x-gzip": () => createGunzip(),
  deflate: () => createInflate(),
  br: () => createBrotliDecompress(),
};

/**
 * Reads a JSON body into `req.body`, bounded three ways before anything is parsed: bytes (`maxBodyBytes`, counted
 * after decompression), nesting depth and value count (`shape`, scanned as the bytes arrive, each chunk in its own
 * turn of the event loop). Only `application/json` is read unless `anyContentType` (the routed port, where
 * upstream reads any type as JSON and the router's client must keep working); anything else is 415. A request
 * without a body goes on with `req.body` unset; an empty one is `{}`; the top level must be an object or array.
 * A refused body is read off and discarded (at most another `maxBodyBytes`, then the connection is closed) so that
 * the client hears the answer; with `closeEarly` (the routed port, open to the internet), a Content-Length above
 * the limit is refused before a byte of the body is read, on a connection that closes so that the rest is not read
 * either. Chunked bodies are bounded while they are read either way.
 */
export function jsonBody(
  maxBodyBytes: number,
  shape: JsonShapeLimits,
  opts: { anyContentType?: boolean; closeEarly?: boolean } = {},
): RequestHandler {
  return (req, res, next) => {
    if (!hasBody(req)) return next();
    const declared = Number(req.get("content-length") ?? NaN);
    if (opts.closeEarly && declared > maxBodyBytes) {
      res.set("connection", "close");
      return next(bodyError("entity.too.large"));
    }
    if (!opts.anyContentType && !req.is("application/json")) {
      const sent = req.get("content-type");
      return next(
        new UnsupportedMediaTypeError(
          `the request body must be JSON sent with content-type: application/json (got ${sent ? JSON.stringify(sent.slice(0, 100)) : "none"})`,
        ),
      );
    }
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.get("content-type") ?? "")?.[1]?.toLowerCase();
    if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
      return next(bodyError("charset.unsupported"));
    }
    const contentEncoding = (req.get("content-encoding") ?? "identity").trim().toLowerCase();
    const decoder = contentEncoding === "identity" ? undefined : DECODERS[contentEncoding];
    if (contentEncoding !== "identity" && !decoder) return next(bodyError("encoding.unsupported"));
    const decoding = decoder?.();
    const stream: Readable = decoding ? req.pipe(decoding) : req;

    const scanner = new JsonShapeScanner(shape);
    const chunks: Buffer[] = [];
    let received = 0;
    let settled = false;

    const detach = () => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onError);
      req.off("close", onClose);
    };
    /** Refuses the body: discards the rest of it, then answers (or closes the connection if it goes on). */
    const refuse = (err: unknown) => {
      if (settled) return;
      settled = true;
      detach();
      chunks.length = 0;
      if (decoding) {
        req.unpipe(decoding);
        decoding.destroy();
      }
      if (req.complete) return next(err);
      let discarded = 0;
      let answered = false;
      const answer = () => {
        if (answered) return;
        answered = true;
        next(err);
      };
      req.on("data", (chunk: Buffer) => {
        discarded += chunk.length;
        if (discarded > maxBodyBytes && !answered) {
          res.set("connection", "close");
          answer();
        }
      });
      req.once("end", answer);
      req.resume();
    };
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > maxBodyBytes) return refuse(bodyError("entity.too.large"));
      const passed = scanner.push(chunk);
      if (passed === "values") {
        return refuse(
          new PayloadTooLargeError(
            `request body has more than MAX_JSON_VALUES=${shape.maxValues} JSON values`,
          ),
        );
      }
      if (passed === "depth") {
        return refuse(new BadRequestError(`request body nests deeper than MAX_JSON_DEPTH=${shape.maxDepth}`));
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      if (settled) return;
      settled = true;
      detach();
      const text = Buffer.concat(chunks, received).toString("utf8");
      chunks.length = 0;
      try {
        req.body = parseStrict(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
      } catch {
        return next(bodyError("entity.parse.failed"));
      }
      next();
    };
    // A stream that fails (bad compressed data) is the caller's malformed body; a client that went away hears nothing.
    /** The client went away: nothing to answer, and nothing more to read or decode. */
    const abandon = () => {
      settled = true;
      detach();
      chunks.length = 0;
      decoding?.destroy();
    };
    const onError = () => {
      if (req.destroyed || res.destroyed) return abandon();
      refuse(bodyError("entity.parse.failed"));
    };
    const onClose = () => {
      if (!req.complete) abandon();
    };

    if (contentEncoding === "identity" && declared > maxBodyBytes)
      return refuse(bodyError("entity.too.large"));
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.on("error", onError);
    req.once("close", onClose);
  };
}

/** Whether the request carries a body (a length, even 0, or chunked), as body-parser judged it. */
function hasBody(req: Request): boolean {
  return (
    req.headers["transfer-encoding"] !== undefined || !Number.isNaN(Number(req.headers["content-length"]))
  );
}

/** JSON.parse, except that an empty body is `{}` and the top level must be an object or an array. */
function parseStrict(text: string): unknown {
  if (text.length === 0) return {};
  const first = /\S/.exec(text)?.[0];
  if (first !== "{" && first !== "[") throw new SyntaxError("the top level must be an object or an array");
  return JSON.parse(text);
}

/**
 * Maps body-parser failures: bad JSON is `invalidJsonStatus` (422 on the routed port, as upstream; 400 on the local
 * API) with `{"error": "invalid JSON"}`; a body above the limit is 413 naming it. Anything else goes through toHttp.
 */
export function errorHandler(opts: {
  invalidJsonStatus: number;
  maxBodyBytes: number;
  /** The variable that sets the limit, named in the 413. */
  limitName?: string;
}): ErrorRequestHandler {
  return (err, _req, res, _next) => {
    const type = (err as { type?: string }).type;
    if (type === "entity.parse.failed" || type === "encoding.unsupported" || type === "charset.unsupported") {
      res.status(opts.invalidJsonStatus).json({ error: "invalid JSON" });
      return;
    }
    if (type === "entity.too.large") {
      const e = new PayloadTooLargeError(
        `request body is larger than ${opts.limitName ?? "MAX_BODY_BYTES"}=${opts.maxBodyBytes}`,
      );
      res.status(413).json(e.toJSON());
      return;
    }
    // Express's own client errors (a path whose percent-encoding does not decode) carry a 4xx `status`: the
    // caller's mistake, never a 500 (which the Vast client retries forever).
    const status = (err as { status?: unknown }).status;
    if (!(err instanceof WorkerError) && typeof status === "number" && status >= 400 && status < 500) {
      sendError(res, new BadRequestError(err instanceof Error ? err.message : "bad request"));
      return;
    }
    sendError(res, err);
  };
}

/** Answers with the status and body `toHttp` maps the error to (429 has an empty body, as upstream). */
export function sendError(res: Response, err: unknown): void {
  const { status, body } = toHttp(err);
  if (body === undefined) res.status(status).end();
  else res.status(status).json(body);
}
