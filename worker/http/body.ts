import express, { type ErrorRequestHandler, type Express, type RequestHandler, type Response } from "express";
import { PayloadTooLargeError, toHttp } from "../../lib/errors.js";

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

/** JSON bodies whatever the Content-Type says (curl users forget it), bounded by MAX_BODY_BYTES. */
export function jsonBody(maxBodyBytes: number): RequestHandler {
  return express.json({ limit: maxBodyBytes, type: () => true, strict: true });
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
    sendError(res, err);
  };
}

/** Answers with the status and body `toHttp` maps the error to (429 has an empty body, as upstream). */
export function sendError(res: Response, err: unknown): void {
  const { status, body } = toHttp(err);
  if (body === undefined) res.status(status).end();
  else res.status(status).json(body);
}
