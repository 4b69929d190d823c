import type { RouteHandlers } from "./route-table.js";

export interface HealthState {
  /** Liveness: the process serves HTTP. */
  live(): boolean;
  /** Readiness, with the reasons it is not. */
  readiness(): { ready: boolean; reasons: string[]; details: Record<string, unknown> };
}

/** GET /health (liveness) and GET /ready (ComfyUI up, benchmark done, not overloaded, not draining). */
export function healthRoutes(state: HealthState): RouteHandlers<"GET /health" | "GET /ready"> {
  return {
    "GET /health": (_req, res) => {
      res.status(state.live() ? 200 : 503).json({ status: state.live() ? "ok" : "down" });
    },
    "GET /ready": (_req, res) => {
      const r = state.readiness();
      res.status(r.ready ? 200 : 503).json({ ready: r.ready, reasons: r.reasons, ...r.details });
    },
  };
}
