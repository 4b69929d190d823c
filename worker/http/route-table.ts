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
] as const satisfies readonly RoutedRoute[];

/**
 * Everything the plain-HTTP port (WORKER_HTTP_PORT) answers: upstream serves /session/end there without TLS for
 * internal calls. The same handler and auth policy as the routed port's; anything else is the bare 404 too.
 */
export const PLAIN_HTTP_ROUTES = [
  { method: "POST", path: "/session/end", auth: "session-auth", work: false },
] as const satisfies readonly (typeof ROUTED_ROUTES)[number][];

type KeyOf<R> = R extends { method: infer M extends string; path: infer P extends string }
  ? `${M} ${P}`
  : never;
/** `METHOD /path` of a declared route: the key its handler is registered under. */
export type RoutedRouteKey = KeyOf<(typeof ROUTED_ROUTES)[number]>;

export function routeKey(route: RoutedRoute): RoutedRouteKey {
  return `${route.method} ${route.path}` as RoutedRouteKey;
}
