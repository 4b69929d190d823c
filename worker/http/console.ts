import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { RequestHandler, Response } from "express";
import type { ConsoleFeed } from "../console/feed.js";
import type { RouteHandlers } from "./route-table.js";

export interface ConsoleRoutesDeps {
  feed: ConsoleFeed;
  /** The worker's installation folder: misc/workflows/ (the page's examples). */
  root: string;
  /** The page's files (lib/install.ts `installLayout().console`: web/console/ or the bundle's copy). */
  page: { index: string; style: string; app: string };
}

// Only what the page needs: its own files, the worker's own outputs, and the loopback API it calls.
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' http: https: data:; " +
  "media-src 'self' http: https:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/**
 * The operator page on the local API port only: GET / (the page), /console/* (its script and style, the event
 * stream, output files, example workflows). Read-only: the page's "try a workflow" form posts to
 * /generate/stream like any other caller of the local API.
 */
export function consoleRoutes(
  deps: ConsoleRoutesDeps,
): RouteHandlers<
  | "GET /"
  | "GET /console/style.css"
  | "GET /console/app.js"
  | "GET /console/events"
  | "GET /console/output/:id/:index"
  | "GET /console/workflows"
  | "GET /console/workflows/:name"
> {
  const examples = join(deps.root, "misc", "workflows");

  const page = (res: Response, type: string) => {
    res.setHeader("content-type", type);
    res.setHeader("cache-control", "no-store");
    res.setHeader("content-security-policy", CSP);
    res.setHeader("x-content-type-options", "nosniff");
  };

  const file =
    (path: string, type: string): RequestHandler =>
    async (_req, res) => {
      if (!existsSync(path)) {
        res
          .status(503)
          .type("text/plain")
          .send(`${path} is missing: build the page with \`npm run build:console\``);
        return;
      }
      page(res, type);
      res.send(await readFile(path));
    };

  const events: RequestHandler = (_req, res) => {
    res.status(200);
    res.setHeader("content-type", "text/event-stream; charset=utf-8");
    res.setHeader("cache-control", "no-store");
    res.setHeader("x-accel-buffering", "no");
    res.flushHeaders();
    const detach = deps.feed.attach({
      send: (event, data) => {
        if (res.destroyed) throw new Error("the page went away");
        res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      },
    });
    // A comment now and then keeps tunnels and proxies from closing an idle stream.
    const keepalive = setInterval(() => res.write(": keepalive\n\n"), 15_000);
    keepalive.unref();
    res.on("close", () => {
      clearInterval(keepalive);
      detach();
    });
  };

  // A job's output by its index: only files the worker itself listed as that job's outputs, never a caller's path.
  const output: RequestHandler = (req, res) => {
    const { id, index } = req.params as { id: string; index: string };
    const path = /^\d+$/.test(index) ? deps.feed.outputPath(id, Number(index)) : undefined;
    if (!path) {
      res.status(404).type("text/plain").send("no such output");
      return;
    }
    res.setHeader("cache-control", "private, max-age=3600");
    res.setHeader("x-content-type-options", "nosniff");
    res.sendFile(path, { dotfiles: "allow" }, (err) => {
      if (err && !res.headersSent) res.status(404).type("text/plain").send("output file is gone");
    });
  };

  const workflows: RequestHandler = async (_req, res) => {
    const names = (await readdir(examples).catch(() => [] as string[])).filter((n) => n.endsWith(".json"));
    res.setHeader("cache-control", "no-store");
    res.json(names.sort());
  };

  const workflow: RequestHandler = async (req, res) => {
    const names = await readdir(examples).catch(() => [] as string[]);
    // Looked up among the folder's own names, so that no request names a path.
    const name = names.find((n) => n === req.params.name && n.endsWith(".json"));
    if (!name) {
      res.status(404).type("text/plain").send("no such example");
      return;
    }
    res.type("application/json").send(await readFile(join(examples, name)));
  };

  return {
    "GET /": file(deps.page.index, "text/html; charset=utf-8"),
    "GET /console/style.css": file(deps.page.style, "text/css; charset=utf-8"),
    "GET /console/app.js": file(deps.page.app, "text/javascript; charset=utf-8"),
    "GET /console/events": events,
    "GET /console/output/:id/:index": output,
    "GET /console/workflows": workflows,
    "GET /console/workflows/:name": workflow,
  };
}
