import type { LoadSignal } from "../load-signal.js";
import type { RouteHandlers } from "./route-table.js";

export interface DebugDeps {
  load: () => ReturnType<LoadSignal["state"]>;
  maxPerf: () => number;
}

/**
 * GET /debug/load on the local API port: the score and what the cost model learned, per workflow shape (fixed
 * seconds, seconds per sampling unit, how many jobs it rests on, and whether it is a fit or a scaled single size).
 */
export function debugRoutes(deps: DebugDeps): RouteHandlers<"GET /debug/load"> {
  return {
    "GET /debug/load": (_req, res) => {
      const state = deps.load();
      res.json({
        max_perf: deps.maxPerf(),
        live_score: state.liveScore ?? null,
        measurements: state.measurements,
        benchmark: state.benchmark,
        shapes: state.shapes.map((s) => ({
          shape: s.shape,
          source: s.source,
          samples: s.samples,
          fixed_s: s.fixedS,
          per_unit_s: s.perUnitS,
          last_seen_ms: s.lastSeenMs,
        })),
      });
    },
  };
}
