import { createHash, timingSafeEqual } from "node:crypto";
import { isDeepStrictEqual } from "node:util";

/**
 * Compares a presented bearer token with the expected one in constant time (both are hashed first, so neither
 * length nor content leaks through timing). An unset expected token matches nothing: the route is closed.
 */
export function tokenMatches(presented: string, expected: string): boolean {
  if (expected === "") return false;
  const a = createHash("sha256").update(presented, "utf8").digest();
  const b = createHash("sha256").update(expected, "utf8").digest();
  return timingSafeEqual(a, b);
}

/** The bearer token of an Authorization header ("Bearer x" or the bare token, as upstream accepts). */
export function bearerToken(header: string | undefined): string {
  const h = header ?? "";
  return h.startsWith("Bearer ") ? h.slice("Bearer ".length) : h;
}

/** Session auth is compared by value (as upstream's dict equality), not by the key order of its JSON. */
export function sameAuth(presented: unknown, stored: unknown): boolean {
  return presented !== undefined && presented !== null && isDeepStrictEqual(presented, stored);
}
