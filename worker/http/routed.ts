import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import type { Express, NextFunction, Request, RequestHandler, Response } from "express";
import type { Admission } from "../admission.js";
import { isOwnUrl, type AuthData, type ReplayGuard, type SignatureVerifier } from "../auth/signature.js";
import { bearerToken, sameAuth, tokenMatches } from "../auth/token.js";
import type { DownloadPrice } from "../load-signal.js";
import { DEFAULT_WORKLOAD } from "../workload.js";
import type { Logger } from "../../lib/logger.js";
import { asVerified, type RequestTracker, type VerifiedAuth } from "../reporter/tracker.js";
import { numeric } from "../../lib/numbers.js";
import { BadRequestError, NotReadyError } from "../../lib/errors.js";
import { errorHandler, jsonBody, sendError, strictApp, type JsonShapeLimits } from "./body.js";
import { attachWork, type GenerateRouteKey } from "./generate-routes.js";
import {
  ROUTED_ROUTES,
  routeKey,
  type RouteHandlers,
  type RoutedAuth,
  type RoutedRoute,
  type RoutedRouteKey,
} from "./route-table.js";

/**
 * A session's workload is the `cost` in its auth_data, which /session/create does not verify (as upstream): bound
 * it as a request's workload is bounded, so that a caller cannot make the reported load absurd.
 */
function sessionCost(auth: VerifiedAuth): number {
  const cost = numeric(auth.cost);
  return Number.isFinite(cost) ? Math.min(DEFAULT_WORKLOAD * 100, Math.max(0, cost)) : 0;
}

const AUTH_FIELDS = ["cost", "endpoint", "reqnum", "request_idx", "signature", "url"] as const;

export interface RoutedDeps {
  logger: Logger;
  /** ROUTED_MAX_BODY_BYTES: smaller than the local API's, since anyone on the internet may send it. */
  maxBodyBytes: number;
  /** MAX_JSON_DEPTH and MAX_JSON_VALUES: checked before a body is parsed, so before any auth. */
  jsonShape: JsonShapeLimits;
  unsecured: boolean;
  legacySignatures: boolean;
  /** The URL this worker reports in /worker_status/: a signed auth_data.url must name it (unless checkUrl is off). */
  advertisedUrl: string;
  checkUrl: boolean;
  /** Refuses (throws a 400 error) a caller-chosen callback URL that the address policy forbids. */
  checkCallbackUrl: (url: string) => void;
  /**
   * Undefined until the public key is fetched. Meanwhile a routed request gets 503 not_ready (upstream answers 401):
   * the router may still route to a worker it saw ready before a restart, and the client never retries a 401.
   */
  verifier: () => SignatureVerifier | undefined;
  replay: ReplayGuard;
  admission: Admission;
  tracker: RequestTracker;
  sessions: SessionStore;
  /** SESSION_MAX_LIFETIME_S: a session's lifetime at most. */
  sessionMaxLifetimeS: number;
  masterToken: string;
  /** The file /pyworker/update creates (upstream's `/.force_update`): the start script updates the worker on it. */
  updateFlagFile: string;
  /** Generation routes; they read what `attachWork` hands them. Reached only through ROUTED_ROUTES. */
  generate: RouteHandlers<GenerateRouteKey & RoutedRouteKey>;
  health: RouteHandlers<"GET /health" | "GET /ready">;
  /** POST /models/prefetch: the local API's handler, behind the envelope's signature. */
  models: RouteHandlers<"POST /models/prefetch">;
  /** Workload of a request's payload, before it is parsed in full (for admission and reports). */
  workloadOf: (payload: unknown) => number;
  /** The download part of its price (sizes asked of the sources: LoadSignal.downloadPrice); none without. */
  downloadOf?: (payload: unknown) => Promise<DownloadPrice>;
}

export interface Session {
  id: string;
  auth: VerifiedAuth;
  lifetime: number;
  expiration: number;
  createdAt: number;
  onCloseRoute: string | null;
  onClosePayload: unknown;
  /** Its entry in the request tracker (an open session is a request in flight, as upstream reports it). */
  trackKey: number;
}

/**
 * Sessions as upstream keeps them: created through /session/create, extended by each authenticated request that
 * names them, never to more than `maxLifetimeS` past that request. `onClose` hears every session that ends
 * (/session/end or expiry).
 */
export class SessionStore {
  readonly sessions = new Map<string, Session>();
  constructor(
    readonly maxSessions: number,
    private readonly tracker: RequestTracker,
    private readonly onClose: (s: Session) => void = () => undefined,
    private readonly maxLifetimeS: number,
  ) {}

  /** A new session of `lifetime` seconds (see sessionLifetime); undefined when every slot is taken. */
  create(
    auth: VerifiedAuth,
    payload: Record<string, unknown>,
    lifetime: number,
    now: number,
  ): Session | undefined {
    if (this.maxSessions > 0 && this.sessions.size >= this.maxSessions) return undefined;
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const id = [...randomBytes(13)].map((b) => alphabet[b % alphabet.length]).join("");
    const s: Session = {
      id,
      auth,
      lifetime,
      expiration: now + lifetime,
      createdAt: now,
      onCloseRoute: typeof payload.on_close_route === "string" ? payload.on_close_route : null,
      onClosePayload: payload.on_close_payload ?? null,
      trackKey: this.tracker.openSession(auth, sessionCost(auth)),
    };
    this.sessions.set(id, s);
    return s;
  }

  /**
   * A request in the session was authenticated: upstream adds the lifetime to the expiration; that sum is bounded
   * here, so that a busy session still ends SESSION_MAX_LIFETIME_S after its last request at the latest.
   */
  extend(session: Session, now: number): void {
    session.expiration = Math.min(session.expiration + session.lifetime, now + this.maxLifetimeS);
  }

  /** Ends a session (its on_close_route hears of it); false when there was none. */
  close(id: string): boolean {
    const s = this.sessions.get(id);
    if (!s) return false;
    this.sessions.delete(id);
    this.tracker.closeSession(s.trackKey);
    this.onClose(s);
    return true;
  }

  expire(now: number): Session[] {
    const gone = [...this.sessions.values()].filter((s) => s.expiration <= now);
    for (const s of gone) this.close(s.id);
    return gone;
  }

  /** Workload of the open sessions. */
  workload(): number {
    return this.tracker.sessionWorkload([...this.sessions.values()].map((s) => s.trackKey));
  }
}

/**
 * The lifetime a /session/create asks for, in seconds: 60 when absent (as upstream), at most `maxS` (a longer
 * one is shortened to it: the 201's `expiration` and /session/get say so). Anything but a positive finite
 * number (1e309 parses to Infinity, -1, "x") is a client mistake.
 */
export function sessionLifetime(requested: unknown, maxS: number): number {
  if (requested === undefined || requested === null) return Math.min(60, maxS);
  const lifetime = numeric(requested);
  if (!Number.isFinite(lifetime) || lifetime <= 0) {
    throw new BadRequestError(
      `lifetime must be a positive number of seconds (at most SESSION_MAX_LIFETIME_S=${maxS}), ` +
        `got ${String(JSON.stringify(requested)).slice(0, 40)}`,
    );
  }
  return Math.min(lifetime, maxS);
}

/**
 * The routed port: every route of `routes` (ROUTED_ROUTES in route-table.ts; PLAIN_HTTP_ROUTES, a part of them,
 * for the plain-HTTP port) with its auth policy in front of its handler, and the bare 404 for every other method
 * and path. The envelope routes check in upstream's order: invalid JSON
 * 422, missing fields or a payload that is not an object 422, unknown session 410, bad signature 401 (empty
 * body), replayed reqnum 401, overload 429 (empty body); then the route answers. The bare `{input}` form is
 * refused (422) unless UNSECURED.
 */
export function createRoutedApp(
  deps: RoutedDeps,
  routes: readonly (typeof ROUTED_ROUTES)[number][] = ROUTED_ROUTES,
): Express {
  const app = strictApp();
  /** What a route's auth policy established about the request, for its handler. */
  const sessionOf = new WeakMap<Request, Session | null>();
  const verifiedAuthOf = new WeakMap<Request, VerifiedAuth>();

  const policies: Record<RoutedAuth, (route: RoutedRoute) => RequestHandler> = {
    open: () => (_req, _res, next) => next(),
    "router-signature": () => (req, res, next) => {
      const body = req.body as Record<string, unknown>;
      const auth = body?.auth_data as AuthData | undefined;
      const payload = body?.payload as Record<string, unknown> | undefined;
      if (!auth || typeof auth !== "object" || !payload || typeof payload !== "object") {
        res.status(422).json({ error: "auth_data and payload are required" });
        return;
      }
      // Upstream creates sessions for anyone; unsigned callers could then hold every slot (and choose callbacks).
      if (!deps.unsecured) {
        if (refusedBeforeKey(deps, req, res)) return;
        const refusal = authRefusal(deps, auth, true);
        if (refusal !== undefined) {
          deps.logger.warn({ stage: "auth", path: req.path }, `refused: ${refusal}`);
          res.status(401).end();
          return;
        }
      }
      verifiedAuthOf.set(req, asVerified(auth));
      next();
    },
    "session-auth": () => (req, res, next) => {
      const body = req.body as Record<string, unknown>;
      if (typeof body?.session_id !== "string") {
        res.status(422).json({ error: "missing session_id" });
        return;
      }
      const session = deps.sessions.sessions.get(body.session_id);
      if (session && !sameAuth(body.session_auth, session.auth)) {
        res.status(401).json({ error: "session_auth is not valid" });
        return;
      }
      sessionOf.set(req, session ?? null);
      next();
    },
    "master-token": () => (req, res, next) => {
      // Constant-time; with MASTER_TOKEN unset nothing matches (upstream lets an empty bearer through).
      if (!tokenMatches(bearerToken(req.get("authorization")), deps.masterToken)) {
        return void res.status(401).json({ error: "unauthorized" });
      }
      next();
    },
    "signed-envelope": (route) => (req, res, next) => envelope(deps, route.work, req, res, next),
  };

  const createSession: RequestHandler = (req, res) => {
    const auth = verifiedAuthOf.get(req)!;
    const payload = (req.body as { payload: Record<string, unknown> }).payload;
    let lifetime: number;
    try {
      lifetime = sessionLifetime(payload.lifetime, deps.sessionMaxLifetimeS);
      if (payload.on_close_route !== undefined && payload.on_close_route !== null) {
        if (typeof payload.on_close_route !== "string") {
          throw new BadRequestError("on_close_route must be a URL string");
        }
        deps.checkCallbackUrl(payload.on_close_route);
      }
    } catch (err) {
      return sendError(res, err);
    }
    const session = deps.sessions.create(auth, payload, lifetime, Date.now() / 1000);
    if (!session) {
      // The worker's own figure, never the caller's unsigned `cost`.
      deps.tracker.rejected(auth, DEFAULT_WORKLOAD);
      res.status(429).end();
      return;
    }
    res.status(201).json({ session_id: session.id, expiration: session.expiration });
  };

  const handlers: Record<RoutedRouteKey, RequestHandler> = {
    "GET /health": deps.health["GET /health"],
    "GET /ready": deps.health["GET /ready"],
    "POST /session/create": createSession,
    "POST /session/get": (req, res) => {
      const s = sessionOf.get(req);
      if (!s) return void res.status(400).json({ error: "session does not exist" });
      res.json({
        session_id: s.id,
        auth_data: s.auth,
        lifetime: s.lifetime,
        expiration: s.expiration,
        created_at: s.createdAt,
        on_close_route: s.onCloseRoute,
        on_close_payload: s.onClosePayload,
      });
    },
    "POST /session/health": (req, res) => void res.json({ ok: Boolean(sessionOf.get(req)) }),
    "POST /session/end": (req, res) => {
      const id = String((req.body as Record<string, unknown>).session_id);
      if (!sessionOf.get(req)) return void res.status(400).json({ error: `session with id ${id} not found` });
      deps.sessions.close(id);
      res.json({ ended: true, removed_session: id });
    },
    "POST /pyworker/update": async (_req, res) => {
      try {
        await writeFile(deps.updateFlagFile, "");
      } catch (err) {
        deps.logger.error({ stage: "update", err }, `could not write ${deps.updateFlagFile}`);
        return void res.status(500).json({ error: `failed to write ${deps.updateFlagFile}` });
      }
      deps.logger.info({ stage: "update", file: deps.updateFlagFile }, "update requested: flag file written");
      res.json({ ok: true });
    },
    // The generation handlers shared with the local API (the same job whichever port its callers came through).
    "POST /generate/sync": deps.generate["POST /generate/sync"],
    "POST /generate": deps.generate["POST /generate"],
    "POST /generate/stream": deps.generate["POST /generate/stream"],
    "POST /result/:id": deps.generate["POST /result/:id"],
    "POST /cancel/:id": deps.generate["POST /cancel/:id"],
    "POST /models/prefetch": deps.models["POST /models/prefetch"],
  };

  const body = jsonBody(deps.maxBodyBytes, deps.jsonShape, { anyContentType: true, closeEarly: true });
  for (const route of routes) {
    const chain = [
      // Express answers HEAD with a GET route: only the declared method passes.
      exactMethod(route.method),
      ...(route.auth === "open" ? [] : [body]),
      policies[route.auth](route),
      handlers[routeKey(route)],
    ];
    if (route.method === "GET") app.get(route.path, ...chain);
    else app.post(route.path, ...chain);
  }
  // Any other method or path: the bare 404 upstream's server (aiohttp) answers, never a page of ours.
  app.use((_req: Request, res: Response) => void res.status(404).type("text/plain").send("404: Not Found"));
  app.use(
    errorHandler({
      invalidJsonStatus: 422,
      maxBodyBytes: deps.maxBodyBytes,
      limitName: "ROUTED_MAX_BODY_BYTES",
    }),
  );
  return app;
}

/** Lets only `method` through; anything else (HEAD on a GET route) goes on to the 404. */
function exactMethod(method: string): RequestHandler {
  return (req, _res, next) => (req.method === method ? next() : next("route"));
}

async function envelope(
  deps: RoutedDeps,
  isWork: boolean,
  req: Request,
  res: Response,
  next: NextFunction,
): Promise<void> {
  const body = req.body as unknown;
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    res.status(422).json({ auth_data: "field missing", payload: "field missing" });
    return;
  }
  const env = body as Record<string, unknown>;
  const errors: Record<string, unknown> = {};
  const auth = env.auth_data;
  const debugAuth = deps.unsecured && isDebugAuth(auth);
  if (!("auth_data" in env)) errors.auth_data = "field missing";
  else if (!debugAuth) {
    const missing = AUTH_FIELDS.filter((k) => auth === null || typeof auth !== "object" || !(k in auth));
    if (missing.length > 0)
      errors.auth_data = Object.fromEntries(missing.map((k) => [k, "missing parameter"]));
  }
  if (!("payload" in env)) errors.payload = "field missing";
  else if (env.payload === null || typeof env.payload !== "object" || Array.isArray(env.payload))
    errors.payload = { data: "payload must be a dictionary" };
  if (Object.keys(errors).length > 0) {
    res.status(422).json(errors);
    return;
  }
  const sessionId = env.session_id;
  const inSession = sessionId !== undefined && sessionId !== null;
  const session =
    inSession && typeof sessionId === "string" ? deps.sessions.sessions.get(sessionId) : undefined;
  if (inSession && !session) {
    res.status(410).json({ error: "invalid session" });
    return;
  }
  if (!deps.unsecured) {
    if (refusedBeforeKey(deps, req, res)) return;
    const refusal = authRefusal(deps, auth as AuthData, inSession);
    if (refusal !== undefined) {
      const authData = auth as AuthData;
      deps.logger.warn(
        {
          stage: "auth",
          request_idx: JSON.stringify(authData.request_idx)?.slice(0, 64),
          reqnum: JSON.stringify(authData.reqnum)?.slice(0, 64),
          path: req.path,
        },
        `refused: ${refusal}`,
      );
      // Counted nowhere: an anonymous caller moves neither the session nor what the autoscaler hears.
      res.status(401).end();
      return;
    }
  }
  const verified = asVerified(auth as AuthData);
  if (session) deps.sessions.extend(session, Date.now() / 1000);
  const workload = isWork ? deps.workloadOf(env.payload) : 0;
  // Asked before admission (a HEAD for a model never seen, bounded): the job carries it in the load from its start.
  const download = isWork ? await deps.downloadOf?.(env.payload) : undefined;
  if (isWork && !deps.admission.admits()) {
    deps.tracker.rejected(verified, workload, inSession);
    res.status(429).end();
    return;
  }
  attachWork(req, { payload: env.payload, workload, ...(download && { download }) });
  if (isWork) deps.tracker.track(verified, workload, res, inSession);
  next();
}

/**
 * A signed route before the router's key is loaded: 503 not_ready, which the caller retries, rather than 401, which
 * it never does (a signature cannot be checked yet, not found bad). Counted nowhere, as a 401.
 */
function refusedBeforeKey(deps: RoutedDeps, req: Request, res: Response): boolean {
  if (deps.verifier() !== undefined) return false;
  deps.logger.warn({ stage: "auth", path: req.path }, "not ready: the router's public key is not loaded yet");
  res.setHeader("Retry-After", "1");
  sendError(res, new NotReadyError("the worker is starting: the router's public key is not loaded yet"));
  return true;
}

/**
 * Why a routed request is refused with 401, or undefined when it may go on. The signature must verify and name this
 * worker. Replay protection needs a signed reqnum: it applies only where the legacy scheme signed every field.
 * Under the url-only scheme nothing unsigned is recorded, so no edited field can make later requests fail.
 */
function authRefusal(deps: RoutedDeps, auth: AuthData, inSession: boolean): string | undefined {
  const scheme = deps.verifier()?.scheme(auth, deps.legacySignatures);
  if (scheme === undefined) return "bad or missing signature";
  if (deps.checkUrl && !isOwnUrl(auth.url, deps.advertisedUrl)) {
    return `signed for ${String(auth.url).slice(0, 200)}, not this worker (${deps.advertisedUrl})`;
  }
  if (scheme === "legacy" && !inSession) {
    const reqnum = numeric(auth.reqnum);
    if (!Number.isFinite(reqnum)) return "reqnum is not a number";
    const replay = deps.replay.check(reqnum);
    if (!replay.ok) return replay.reason;
    deps.replay.record(reqnum);
  }
  return undefined;
}

/** What the vastai client sends under VAST_DEBUG_WORKER_URL: `{request_idx, url}` only. */
function isDebugAuth(auth: unknown): boolean {
  if (auth === null || typeof auth !== "object") return false;
  const keys = Object.keys(auth);
  return keys.every((k) => k === "request_idx" || k === "url") && "url" in auth;
}
