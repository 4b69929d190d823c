import { parsePrefetchRequest, type ModelPrefetch } from "../../handlers/preprocess/model-prefetch.js";
import { sendError } from "./body.js";
import { workOf } from "./generate-routes.js";
import type { RouteHandlers } from "./route-table.js";

/**
 * POST /models/prefetch, the same handler on both ports (signed like /generate on the routed one): warms the
 * models folder with `{"models": [{"folder", "ref"}]}` and answers each model's name, size and whether it was
 * cached, or the first failure's 4xx. The answer waits for the downloads; a caller that goes away leaves them
 * running (they are the cache's, and other jobs may be waiting on them).
 */
export function modelRoutes(d: { prefetch: ModelPrefetch }): RouteHandlers<"POST /models/prefetch"> {
  return {
    "POST /models/prefetch": async (req, res) => {
      try {
        const models = await d.prefetch.prefetch(parsePrefetchRequest(workOf(req)?.payload));
        res.json({ models });
      } catch (err) {
        sendError(res, err);
      }
    },
  };
}
