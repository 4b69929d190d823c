import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import express, { type Express, type NextFunction, type Request, type Response } from "express";
import type { Admission } from "../admission.js";
import type { AuthData, ReplayGuard, SignatureVerifier } from "../auth/signature.js";
import type { Logger } from "../../lib/logger.js";
import type { RequestTracker } from "../reporter/tracker.js";
import { numeric } from "../../lib/numbers.js";
import { errorHandler, jsonBody } from "./body.js";
import { attachWork } from "./generate-routes.js";

const AUTH_FIELDS = ["cost", "endpoint", "reqnum", "request_idx", "signature", "url"] as const;

export interface RoutedDeps {
  logger: Logger;
  maxBodyBytes: number;
  unsecured: boolean;
  legacySignatures: boolean;
  /** Undefined until the public key is fetched: signed requests get 401 meanwhile (as upstream). */
  verifier: () => SignatureVerifier | undefined;
  replay: ReplayGuard;
  admission: Admission;
  tracker: RequestTracker;
  sessions: SessionStore;
  masterToken: string;
  /** The file /pyworker/update creates (upstream's `/.force_update`): the start script updates the worker on it. */
  updateFlagFile: string;
  /** Generation routes; they read what `attachWork` hands them. */
  generate: express.Router;
  health: express.Router;
  /** Routes whose requests count as work (admission, reports). */
  workRoutes: readonly string[];
  /** Workload of a request's payload, before it is parsed in full (for admission and reports). */
  workloadOf: (payload: unknown) => number;
}

export interface Session {
  id: string;
  auth: AuthData;
  lifetime: number;
  expiration: number;
  createdAt: number;
  onCloseRoute: string | null;
  onClosePayload: unknown;
}

/**
 * Sessions as upstream keeps them: created through /session/create, extended by each request that names them.
 * `onClose` hears every session that ends (/session/end or expiry).
 */
export class SessionStore {
  readonly sessions = new Map<string, Session>();
  constructor(
    readonly maxSessions: number,
    private readonly onClose: (s: Session) => void = () => undefined,
  ) {}

  create(auth: AuthData, payload: Record<string, unknown>, now: number): Session | undefined {
    if (this.maxSessions > 0 && this.sessions.size >= this.maxSessions) return undefined;
    const lifetime = numeric(payload.lifetime ?? 60) || 60;
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
    };
    this.sessions.set(id, s);
    return s;
  }

  expire(now: number): Session[] {
    const gone = [...this.sessions.values()].filter((s) => s.expiration <= now);
    for (const s of gone) this.end(s.id);
    return gone;
  }

  end(id: string): void {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    this.onClose(s);
  }
}

/**
 * The routed port: the router's envelope `{auth_data, payload, session_id}`. Checks in upstream's order:
 * invalid JSON 422, missing fields 422, unknown session 410, bad signature 401 (empty body), replayed reqnum 401,
 * overload 429 (empty body); then the route answers. The bare `{input}` form is refused (422) unless UNSECURED.
 */
export function createRoutedApp(deps: RoutedDeps): Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  app.use("/", deps.health);
  app.use(jsonBody(deps.maxBodyBytes));

  app.post("/session/create", (req, res) => {
    const body = req.body as Record<string, unknown>;
    const auth = body?.auth_data as AuthData | undefined;
    const payload = body?.payload as Record<string, unknown> | undefined;
    if (!auth || typeof auth !== "object" || !payload || typeof payload !== "object") {
      res.status(422).json({ error: "auth_data and payload are required" });
      return;
    }
    const now = Date.now() / 1000;
    const session = deps.sessions.create(auth, payload, now);
    if (!session) {
      deps.tracker.rejected(auth, numeric(auth.cost) || 0);
      res.status(429).end();
      return;
    }
    res.status(201).json({ session_id: session.id, expiration: session.expiration });
  });

  const sessionLookup = (req: Request, res: Response) => {
    const body = req.body as Record<string, unknown>;
    if (typeof body?.session_id !== "string") {
      res.status(422).json({ error: "missing session_id" });
      return undefined;
    }
    const session = deps.sessions.sessions.get(body.session_id);
    if (!session) return null;
    if (JSON.stringify(body.session_auth) !== JSON.stringify(session.auth)) {
      res.status(401).json({ error: "session_auth is not valid" });
      return undefined;
    }
    return session;
  };
  app.post("/session/get", (req, res) => {
    const s = sessionLookup(req, res);
    if (s === undefined) return;
    if (s === null) return void res.status(400).json({ error: "session does not exist" });
    res.json({
      session_id: s.id,
      auth_data: s.auth,
      lifetime: s.lifetime,
      expiration: s.expiration,
      created_at: s.createdAt,
      on_close_route: s.onCloseRoute,
      on_close_payload: s.onClosePayload,
    });
  });
  app.post("/session/health", (req, res) => {
    const s = sessionLookup(req, res);
    if (s === undefined) return;
    res.json({ ok: s !== null });
  });
  app.post("/session/end", (req, res) => {
    const s = sessionLookup(req, res);
    if (s === undefined) return;
    const id = String((req.body as Record<string, unknown>).session_id);
    if (s === null) return void res.status(400).json({ error: `session with id ${id} not found` });
    deps.sessions.end(id);
    res.json({ ended: true, removed_session: id });
  });
  app.post("/pyworker/update", async (req, res) => {
    const header = req.get("authorization") ?? "";
    const token = header.replace(/^Bearer\s+/i, "");
    if (token !== deps.masterToken) return void res.status(401).json({ error: "unauthorized" });
    try {
      await writeFile(deps.updateFlagFile, "");
    } catch (err) {
      deps.logger.error({ stage: "update", err }, `could not write ${deps.updateFlagFile}`);
      return void res.status(500).json({ error: `failed to write ${deps.updateFlagFile}` });
    }
    deps.logger.info({ stage: "update", file: deps.updateFlagFile }, "update requested: flag file written");
    res.json({ ok: true });
  });

  app.use((req: Request, res: Response, next: NextFunction) => envelope(deps, req, res, next));
  app.use("/", deps.generate);
  app.use(errorHandler({ invalidJsonStatus: 422, maxBodyBytes: deps.maxBodyBytes }));
  return app;
}

function envelope(deps: RoutedDeps, req: Request, res: Response, next: NextFunction): void {
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
  if (Object.keys(errors).length > 0) {
    res.status(422).json(errors);
    return;
  }
  const authData = auth as AuthData;
  const sessionId = env.session_id;
  const isWork = deps.workRoutes.includes(req.path);
  const workload = isWork ? deps.workloadOf(env.payload) : 0;
  if (sessionId !== undefined && sessionId !== null) {
    const session = typeof sessionId === "string" ? deps.sessions.sessions.get(sessionId) : undefined;
    if (!session) {
      res.status(410).json({ error: "invalid session" });
      return;
    }
    session.expiration += session.lifetime;
  }
  if (!deps.unsecured) {
    const verifier = deps.verifier();
    const ok = verifier?.verify(authData, deps.legacySignatures) ?? false;
    const reqnum = numeric(authData.reqnum);
    const inSession = sessionId !== undefined && sessionId !== null;
    const replay =
      ok && !inSession
        ? Number.isFinite(reqnum)
          ? deps.replay.check(reqnum)
          : { ok: false as const, reason: "reqnum is not a number" }
        : { ok: true as const };
    if (!ok || !replay.ok) {
      deps.logger.warn(
        {
          stage: "auth",
          request_idx: JSON.stringify(authData.request_idx),
          reqnum: JSON.stringify(authData.reqnum),
          path: req.path,
        },
        ok ? `refused: ${(replay as { reason: string }).reason}` : "refused: bad or missing signature",
      );
      if (isWork) deps.tracker.rejected(authData, workload);
      res.status(401).end();
      return;
    }
    if (!inSession) deps.replay.record(reqnum);
  }
  if (isWork && !deps.admission.admits()) {
    deps.tracker.rejected(authData, workload);
    res.status(429).end();
    return;
  }
  attachWork(req, { payload: env.payload, workload });
  if (isWork) deps.tracker.track(authData, workload, res);
  next();
}

/** What the vastai client sends under VAST_DEBUG_WORKER_URL: `{request_idx, url}` only. */
function isDebugAuth(auth: unknown): boolean {
  if (auth === null || typeof auth !== "object") return false;
  const keys = Object.keys(auth);
  return keys.every((k) => k === "request_idx" || k === "url") && "url" in auth;
}
