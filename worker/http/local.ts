import type { Express, Router } from "express";
import { errorHandler, jsonBody, strictApp } from "./body.js";
import { attachWork } from "./generate-routes.js";

export interface LocalDeps {
  maxBodyBytes: number;
  generate: Router;
  health: Router;
  docs: Router;
  metrics?: Router;
  /** Read-only state for operators (the cost model). */
  debug?: Router;
  /** The operator page at / (this port only, never the routed one). */
  console?: Router;
}

/**
 * The local API port (127.0.0.1:18288 by default): bare `{input}` requests for interactive use over an SSH tunnel,
 * as the template's API wrapper, plus /docs and the operator page at /. No signatures, no admission control.
 */
export function createLocalApp(deps: LocalDeps): Express {
  const app = strictApp();
  app.use("/", deps.health);
  app.use("/", deps.docs);
  if (deps.metrics) app.use("/", deps.metrics);
  if (deps.debug) app.use("/", deps.debug);
  if (deps.console) app.use("/", deps.console);
  app.use(jsonBody(deps.maxBodyBytes));
  app.use((req, _res, next) => {
    attachWork(req, { payload: req.body as unknown });
    next();
  });
  app.use("/", deps.generate);
  app.use(errorHandler({ invalidJsonStatus: 400, maxBodyBytes: deps.maxBodyBytes }));
  return app;
}
