/**
 * The differences from upstream's worker library (vastai 1.9.1) that we keep on purpose, each with its reason.
 * The conformance harness fails on any difference not matched here; docs/upstream.md's "Differences from upstream"
 * section mirrors this list (test/unit/docs.test.ts keeps both in step).
 */
export interface DeliberateDifference {
  id: string;
  /** Observation keys (step.what) this difference explains. */
  keys: RegExp;
  /** When set, the difference is explained only for these values (reference's, ours). */
  applies?: (reference: string, ours: string) => boolean;
  reason: string;
}

export const DELIBERATE_DIFFERENCES: readonly DeliberateDifference[] = [
  {
    id: "health-routes",
    keys: /^health\.GET \/(health|ready)\.status$/,
    reason:
      "ours answers GET /health (liveness) and GET /ready (readiness) on the routed port for container and " +
      "load-balancer health checks; upstream's library has no such routes (404).",
  },
  {
    id: "unsigned-not-reported",
    keys: /^((signature|session)\.reports\.sum\(rej_load\)|signature\.reports\.last\.num_requests_recieved\(\+\)|signature\.deleted\[[^\]]+\])$/,
    applies: (reference, ours) => ours === "(none)" || Number(ours) < Number(reference),
    reason:
      "a request refused with 401 (its signature does not verify for this worker) counts nowhere in ours: not in " +
      "rej_load, not as received, no /delete_requests/ entry (in a session it does not extend the session " +
      "either). Upstream counts it as a rejected request and reports its caller-chosen request_idx, so an " +
      "anonymous flood would raise the load the autoscaler scales on and fill /delete_requests/.",
  },
  {
    id: "learned-workload",
    keys: /\.(reports\.sum\((new_load|rej_load|cur_perf)\)|in-flight-report\.cur_load)$/,
    applies: (reference, ours) => Number(ours) < Number(reference),
    reason:
      "ours weighs a request by its predicted execution time (the cost model learned per workflow shape: a " +
      "millisecond model-free job weighs 1, the floor), where upstream counts every request as 100; a request " +
      "refused with 429 adds that estimate to rej_load, never the caller's own figure. So the load sums and " +
      "cur_load fall below upstream's, and cur_load / max_perf stays the expected drain time.",
  },
  {
    id: "signed-session-create",
    keys: /^session\.((create|end)-unsigned\.|deleted\[unsigned\]$|reports\.last\.num_requests_recieved\(\+\)$)/,
    reason:
      "ours refuses a /session/create whose signature does not verify for this worker (401); upstream checks " +
      "nothing there, so anyone could fill every session slot and inflate the reported load. The unsigned " +
      "session then does not exist (its /session/end is a 400) and is never reported.",
  },
  {
    id: "own-request-keys",
    keys: /^reqnum\.reports\.last\.num_requests_recieved\(\+\)$/,
    applies: (reference, ours) => Number(ours) > Number(reference),
    reason:
      "ours keys requests by a counter of its own; upstream keys them by reqnum, which the router's signature " +
      "does not cover, so two requests under one reqnum (a replay, or an edited one) count once there.",
  },
  {
    id: "client-mistakes-4xx",
    keys: /^session\.create-no-auth_data\./,
    reason:
      "a /session/create without auth_data is a 422 naming what is missing; upstream's handler raises on it and " +
      "drops the connection (or answers 500, which the client retries forever).",
  },
  {
    id: "upstream-counter-race",
    keys: /\.reports\.sum\((new_load|rej_load|cur_perf)\)$/,
    applies: (reference, ours) =>
      Number(reference) < Number(ours) && (Number(ours) - Number(reference)) % 100 === 0,
    reason:
      "upstream zeroes its interval counters after the /worker_status/ POST returns (metrics.py " +
      "__send_metrics_and_reset), losing whatever was counted while the report was in flight; ours subtracts " +
      "only what the delivered report carried. So upstream's sums may fall short of ours by whole requests.",
  },
];

/** The deliberate difference that explains `key` having these two values, if any. */
export function explain(key: string, reference: string, ours: string): DeliberateDifference | undefined {
  return DELIBERATE_DIFFERENCES.find((d) => d.keys.test(key) && (d.applies?.(reference, ours) ?? true));
}
