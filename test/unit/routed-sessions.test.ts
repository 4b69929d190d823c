import { RequestTracker, asVerified } from "../../worker/reporter/tracker.js";
import { ROUTED_ROUTES, routeKey } from "../../worker/http/route-table.js";
import { SessionStore, sessionLifetime } from "../../worker/http/routed.js";
import { BadRequestError } from "../../lib/errors.js";

describe("sessionLifetime", () => {
  test("absent is upstream's 60 s; a positive number is kept up to the maximum, then shortened to it", () => {
    expect(sessionLifetime(undefined, 3600)).toBe(60);
    expect(sessionLifetime(null, 3600)).toBe(60);
    expect(sessionLifetime(null, 30)).toBe(30);
    expect(sessionLifetime(0.5, 3600)).toBe(0.5);
    expect(sessionLifetime("90", 3600)).toBe(90);
    expect(sessionLifetime(3600, 3600)).toBe(3600);
    expect(sessionLifetime(86_400, 3600)).toBe(3600);
    expect(sessionLifetime(Number.MAX_VALUE, 3600)).toBe(3600);
  });

  test("Infinity, NaN, zero, negatives and non-numbers are a client mistake (400)", () => {
    for (const bad of [Infinity, -Infinity, NaN, 0, -0, -1, "x", "", [], {}, true]) {
      expect(() => sessionLifetime(bad, 3600)).toThrow(BadRequestError);
    }
  });
});

describe("SessionStore.extend", () => {
  test("adds the lifetime (as upstream) but never past the maximum from now", () => {
    const store = new SessionStore(10, new RequestTracker(() => 0), () => undefined, 100);
    const s = store.create(asVerified({ request_idx: 1 }), {}, 60, 1_000)!;
    expect(s.expiration).toBe(1_060);
    store.extend(s, 1_000);
    expect(s.expiration).toBe(1_100);
    store.extend(s, 1_000);
    expect(s.expiration).toBe(1_100);
    store.extend(s, 1_050);
    expect(s.expiration).toBe(1_150);
  });
});

describe("the routed route table", () => {
  test("declares each method and path once, with only GET or POST, and only POSTs count as work", () => {
    const keys = ROUTED_ROUTES.map(routeKey);
    expect(new Set(keys).size).toBe(keys.length);
    for (const route of ROUTED_ROUTES) {
      expect(["GET", "POST"]).toContain(route.method);
      if (route.work) expect([route.method, route.auth]).toEqual(["POST", "signed-envelope"]);
      if (route.auth === "open") expect(route.method).toBe("GET");
    }
    expect(ROUTED_ROUTES.filter((r) => r.work).map(routeKey)).toEqual([
      "POST /generate/sync",
      "POST /generate",
      "POST /generate/stream",
    ]);
  });
});
