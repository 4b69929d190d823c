import type { Express, RequestHandler } from "express";
import {
  CrossSiteRequestError,
  MethodNotAllowedError,
  MisdirectedRequestError,
  RouteNotFoundError,
} from "../../lib/errors.js";
import { errorHandler, jsonBody, sendError, strictApp, type JsonShapeLimits } from "./body.js";
import { attachWork } from "./generate-routes.js";
import { LOCAL_ROUTES, routeKey, type LocalRouteKey, type RouteHandlers } from "./route-table.js";

export interface LocalDeps {
  maxBodyBytes: number;
  jsonShape: JsonShapeLimits;
  /** API_ALLOWED_HOSTS: host names answered besides loopback's (lower case, no port). */
  allowedHosts: readonly string[];
  /**
   * A handler for every route of LOCAL_ROUTES: generation, health, /docs, /metrics, /debug/load and the operator
   * page at / (this port only, never the routed one).
   */
  handlers: RouteHandlers<LocalRouteKey>;
}

/** The names loopback is reached by; any port (an SSH tunnel may forward another local port to this one). */
export const LOOPBACK_HOSTS: readonly string[] = ["localhost", "127.0.0.1", "[::1]"];

/** A Host header's name and port as a URL would read them (`localhost:18288`, `[::1]`), or undefined. */
function parseHost(host: string | undefined): { name: string; host: string } | undefined {
  if (!host || /[/?#@\s\\]/.test(host)) return undefined;
  try {
    const url = new URL(`http://${host}`);
    return { name: url.hostname, host: url.host };
  } catch {
    return undefined;
  }
}

/**
 * The local API answers its operator only. It has no authentication, so a web page the operator has open must not
 * reach it: a DNS-rebinding page addresses it under the page's own name (refused by Host: 421), and any other page
 * sends a foreign Origin or `Sec-Fetch-Site: cross-site`/`same-site` (refused: 403). Requests without those headers
 * (curl, the health check, a same-origin page's GETs) pass. Applies to every route, the event stream included.
 */
export function originGuard(allowedHosts: readonly string[]): RequestHandler {
  const allowed = new Set([...LOOPBACK_HOSTS, ...allowedHosts]);
  return (req, _res, next) => {
    const hostHeader = req.headers.host;
    const target = parseHost(hostHeader);
    if (!target || !allowed.has(target.name)) {
      return next(
        new MisdirectedRequestError(
          `this API answers only requests addressed to ${[...allowed].join(", ")} (add names with API_ALLOWED_HOSTS), not ${JSON.stringify(String(hostHeader ?? "").slice(0, 100))}`,
        ),
      );
    }
    // Allowed: the page's own requests (same-origin) and ones a person made (none: typed, bookmarked); curl sends
    // no such header. Any other value, a future one included, is refused.
    const site = req.get("sec-fetch-site")?.toLowerCase();
    if (site !== undefined && site !== "same-origin" && site !== "none") {
      return next(
        new CrossSiteRequestError(`requests from another site's page are refused (Sec-Fetch-Site: ${site})`),
      );
    }
    const origin = req.get("origin");
    if (origin !== undefined && !sameHost(origin, target.host)) {
      return next(
        new CrossSiteRequestError(
          `requests from another site's page are refused: Origin ${JSON.stringify(origin.slice(0, 100))} is not ${target.host}`,
        ),
      );
    }
    next();
  };
}

/** Whether an Origin header names the host (and port) the request was addressed to ("null" never does). */
function sameHost(origin: string, host: string): boolean {
  try {
    const url = new URL(origin);
    return (url.protocol === "http:" || url.protocol === "https:") && url.host === host;
  } catch {
    return false;
  }
}

/**
 * The local API port (127.0.0.1:18288 by default): bare `{input}` requests for interactive use over an SSH tunnel,
 * as the template's API wrapper, plus /docs and the operator page at /. No signatures, no admission control:
 * instead only its operator's requests are answered (`originGuard`, before anything else), and bodies are read
 * only as `application/json`, which a web page cannot send to another site without the browser asking first.
 * Built from LOCAL_ROUTES: a body is read only on a declared route that takes one, so an unknown path is 404 (not
 * 415) whatever its body, and a declared path with another method 405.
 */
export function createLocalApp(deps: LocalDeps): Express {
  const app = strictApp();
  app.use(originGuard(deps.allowedHosts));
  const body = jsonBody(deps.maxBodyBytes, deps.jsonShape);
  const handOver: RequestHandler = (req, _res, next) => {
    attachWork(req, { payload: req.body as unknown });
    next();
  };
  const methods = new Map<string, string[]>();
  for (const route of LOCAL_ROUTES) {
    const chain = [...(route.body === "json" ? [body, handOver] : []), deps.handlers[routeKey(route)]];
    // A GET route answers HEAD too (Express's own rule).
    if (route.method === "GET") app.get(route.path, ...chain);
    else app.post(route.path, ...chain);
    methods.set(route.path, [...(methods.get(route.path) ?? []), route.method]);
  }
  for (const [path, declared] of methods) {
    const allow = declared.flatMap((m) => (m === "GET" ? ["GET", "HEAD"] : [m])).join(", ");
    app.all(path, (req, res) => {
      res.set("allow", allow);
      sendError(res, new MethodNotAllowedError(`${req.path} takes ${allow}, not ${req.method}`));
    });
  }
  app.use((req, res) => {
    sendError(res, new RouteNotFoundError(`no route ${req.method} ${req.path.slice(0, 200)} on this port`));
  });
  app.use(errorHandler({ invalidJsonStatus: 400, maxBodyBytes: deps.maxBodyBytes }));
  return app;
}
