import type { FrozenConfig } from "../config/index.js";
import { SessionCloseNotifier } from "../handlers/session-close.js";
import type { Logger } from "../lib/logger.js";
import { SessionStore } from "./http/routed.js";
import type { RequestTracker } from "./reporter/tracker.js";

/** Upstream's limit of open sessions on one worker. */
const MAX_SESSIONS = 10;
/** Expired sessions go every 5 s, as upstream's GC loop. */
const SWEEP_INTERVAL_MS = 5_000;

export interface WorkerSessions {
  store: SessionStore;
  /** Starts removing expired sessions (each one's on_close callback is sent); idempotent. */
  startSweeping(): void;
  stopSweeping(): void;
}

/** The routed port's sessions: the store, the notifier of their on_close callbacks, and the sweep of expired ones. */
export function createSessions(deps: {
  config: FrozenConfig;
  tracker: RequestTracker;
  logger: Logger;
  now: () => number;
}): WorkerSessions {
  const { config, logger } = deps;
  const notifier = new SessionCloseNotifier({ allowPrivate: config.webhook.allowPrivate, logger });
  const store = new SessionStore(
    MAX_SESSIONS,
    deps.tracker,
    (s) => void notifier.notify(s),
    config.autoscaler.sessionMaxLifetimeS,
  );
  let sweep: NodeJS.Timeout | undefined;
  return {
    store,
    startSweeping() {
      sweep ??= setInterval(() => {
        for (const gone of store.expire(deps.now() / 1000)) {
          logger.info({ stage: "session", session_id: gone.id }, "session expired");
        }
      }, SWEEP_INTERVAL_MS).unref();
    },
    stopSweeping() {
      clearInterval(sweep);
    },
  };
}
