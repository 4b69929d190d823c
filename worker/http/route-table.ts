import type { RequestHandler } from "express";

/**
 * How a routed route establishes who calls it, checked before its handler runs:
 * - `open`: nobody needs to be known (health checks of the platform and load balancers);
 * - `router-signature`: `{auth_data, payload}` whose auth_data carries the router's signature for this worker;
 * - `signed-envelope`: the router's envelope `{auth_data, payload, session_id}`, signed for this worker;
 * - `session-auth`: `{session_id, session_auth}`, session_auth equal to the auth_data the session was created with;
 * - `master-token`: `Authorization: Bearer <MASTER_TOKEN>`.
 */
export type RoutedAuth = "open" | "router-signature" | "signed-envelope" | "session-auth" | "master-token";

export interface RoutedRoute {
  method: "GET" | "POST";
  /** An Express path: exact, case-sensitive; `:name` matches one non-empty segment. */
  path: string;
  auth: RoutedAuth;
  /** Counts as work: admission control (429 when overloaded) and the load reported to the autoscaler. */
  work: boolean;
}

/**
 * Everything the routed port answers. It is internet-facing, so it is deny-by-default: a method and path pair not
 * listed here is the bare `404: Not Found` (upstream's aiohttp answer), whatever other routers of the worker know
 * (the local API's GET /result/{id}, /metrics, the operator page). HEAD and OPTIONS are not implied by GET.
 */
export const ROUTED_ROUTES = [
  { method: "GET", path: "/health", auth: "open", work: false },
  { method: "GET", path: "/ready", auth: "open", work: false },
  { method: "POST", path: "/session/create", auth: "router-signature", work: false },
  { method: "POST", path: "/session/get", auth: "session-auth", work: false },
  { method: "POST", path: "/session/health", auth: "session-auth", work: false },
  { method: "POST", path: "/session/end", auth: "session-auth", work: false },
  { method: "POST", path: "/pyworker/update", auth: "master-token", work: false },
  { method: "POST", path: "/generate/sync", auth: "signed-envelope", work: true },
  { method: "POST", path: "/generate", auth: "signed-envelope", work: true },
  { method: "POST", path: "/generate/stream", auth: "signed-envelope", work: true },
  { method: "POST", path: "/result/:id", auth: "signed-envelope", work: false },
  { method: "POST", path: "/cancel/:id", auth: "signed-envelope", work: false },
  // Downloads, not GPU work: neither admitted nor counted in the load.
  { method: "POST", path: "/models/prefetch", auth: "signed-envelope", work: false },
] as const satisfies readonly RoutedRoute[];

/**
 * Everything the plain-HTTP port (WORKER_HTTP_PORT) answers: upstream serves /session/end there without TLS for
 * internal calls. The same handler and auth policy as the routed port's; anything else is the bare 404 too.
 */
export const PLAIN_HTTP_ROUTES = [
  { method: "POST", path: "/session/end", auth: "session-auth", work: false },
] as const satisfies readonly (typeof ROUTED_ROUTES)[number][];

/**
 * How the local API port treats a request before its handler. It has no authentication, so every route answers
 * its operator only (`operator`: `originGuard` in local.ts; a foreign Host is 421, a foreign Origin or
 * Sec-Fetch-Site 403), checked before anything else, an unknown path included. Then its body:
 * - `none`: none is read (pages, documents, the event stream; a GET's body is ignored);
 * - `json`: `content-type: application/json` only (415 otherwise: a web page cannot send that to another site
 *   without the browser asking first), bounded by MAX_BODY_BYTES, MAX_JSON_DEPTH and MAX_JSON_VALUES.
 */
export interface LocalRoute {
  method: "GET" | "POST";
  /** An Express path, as in RoutedRoute. */
  path: string;
  auth: "operator";
  body: "none" | "json";
}

/**
 * Everything the local API port answers (HEAD is implied by GET here, for curl -I). A path not listed is 404
 * `route_not_found`; a listed path asked with another method is 405 `method_not_allowed` with `Allow`.
 */
export const LOCAL_ROUTES = [
  { method: "GET", path: "/health", auth: "operator", body: "none" },
  { method: "GET", path: "/ready", auth: "operator", body: "none" },
  { method: "POST", path: "/generate/sync", auth: "operator", body: "json" },
  { method: "POST", path: "/generate", auth: "operator", body: "json" },
  { method: "POST", path: "/generate/stream", auth: "operator", body: "json" },
  { method: "GET", path: "/result/:id", auth: "operator", body: "none" },
  { method: "POST", path: "/result/:id", auth: "operator", body: "json" },
  { method: "POST", path: "/cancel/:id", auth: "operator", body: "json" },
  { method: "POST", path: "/models/prefetch", auth: "operator", body: "json" },
  { method: "GET", path: "/openapi.json", auth: "operator", body: "none" },
  { method: "GET", path: "/docs", auth: "operator", body: "none" },
  { method: "GET", path: "/docs/", auth: "operator", body: "none" },
  { method: "GET", path: "/docs/assets/:file", auth: "operator", body: "none" },
  { method: "GET", path: "/metrics", auth: "operator", body: "none" },
  { method: "GET", path: "/debug/load", auth: "operator", body: "none" },
  // The operator page and what it reads.
  { method: "GET", path: "/", auth: "operator", body: "none" },
  { method: "GET", path: "/console/style.css", auth: "operator", body: "none" },
  { method: "GET", path: "/console/app.js", auth: "operator", body: "none" },
  { method: "GET", path: "/console/events", auth: "operator", body: "none" },
  { method: "GET", path: "/console/output/:id/:index", auth: "operator", body: "none" },
  { method: "GET", path: "/console/workflows", auth: "operator", body: "none" },
  { method: "GET", path: "/console/workflows/:name", auth: "operator", body: "none" },
] as const satisfies readonly LocalRoute[];

type KeyOf<R> = R extends { method: infer M extends string; path: infer P extends string }
  ? `${M} ${P}`
  : never;
/** `METHOD /path` of a declared route: the key its handler is registered under. */
export type RoutedRouteKey = KeyOf<(typeof ROUTED_ROUTES)[number]>;
export type LocalRouteKey = KeyOf<(typeof LOCAL_ROUTES)[number]>;
export type RouteKey = RoutedRouteKey | LocalRouteKey;

/** The handlers of some declared routes, by key: what each part of the worker contributes to the apps. */
export type RouteHandlers<K extends RouteKey> = { readonly [P in K]: RequestHandler };

export function routeKey<R extends RoutedRoute | LocalRoute>(route: R): KeyOf<R> {
  return `${route.method} ${route.path}` as KeyOf<R>;
}
