import { createPublicKey, verify, type KeyObject } from "node:crypto";
import { pythonJsonDumps } from "./python-json.js";

/** The auth_data the router attaches to each request (the whole /route/ answer). */
export interface AuthData {
  url?: unknown;
  signature?: unknown;
  cost?: unknown;
  endpoint?: unknown;
  reqnum?: unknown;
  request_idx?: unknown;
  [key: string]: unknown;
}

/** The bytes the current router signs: `json.dumps({"url": url}, indent=4, sort_keys=True)`. */
export function urlMessage(url: string): string {
  return pythonJsonDumps({ url });
}

/** The fields the legacy router signed: its /route/ answer, each a scalar. */
const LEGACY_SIGNED_FIELDS: ReadonlySet<string> = new Set([
  "cost",
  "endpoint",
  "reqnum",
  "request_idx",
  "url",
]);
/**
 * The longest string a signed field may hold: the router's are short (a worker's URL, an endpoint name, a base64
 * RSA signature), while rendering and checking a caller's 15 MiB one took seconds of blocked event loop.
 */
const MAX_SIGNED_STRING_CHARS = 2048;
/** Fields that travel with auth_data but were never part of the signed bytes. */
const LEGACY_UNSIGNED_FIELDS: ReadonlySet<string> = new Set(["signature", "__request_id"]);

/**
 * The legacy scheme signed every field but `signature` (and `__request_id`), sorted, indent=4. Python's router
 * may hold `cost` as a float (100.0) although JSON parsing loses that, so both renderings are candidates.
 * Only the router's own flat fields are rendered: any other field, or a field that is an object or array, yields
 * no candidate (so the request is refused) before anything is rendered, since a nested value renders with
 * indentation that grows with its depth (a small body would render hundreds of megabytes).
 */
export function legacyMessages(auth: AuthData): string[] {
  const fields: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(auth)) {
    if (LEGACY_UNSIGNED_FIELDS.has(key)) continue;
    if (!LEGACY_SIGNED_FIELDS.has(key) || !isScalar(value)) return [];
    fields[key] = value;
  }
  const asInt = pythonJsonDumps(fields);
  const asFloat = pythonJsonDumps(fields, new Set(["cost"]));
  return asInt === asFloat ? [asInt] : [asInt, asFloat];
}

function isScalar(value: unknown): boolean {
  if (typeof value === "string") return value.length <= MAX_SIGNED_STRING_CHARS;
  return value === null || typeof value === "number" || typeof value === "boolean";
}

export class SignatureVerifier {
  private readonly key: KeyObject;

  constructor(publicKeyPem: string) {
    this.key = createPublicKey(publicKeyPem);
  }

  /** RSASSA-PKCS1-v1_5 with SHA-256 over `message`; `signature` is standard base64. */
  verifyMessage(message: string, signature: string): boolean {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(signature.trim())) return false;
    try {
      return verify(
        "sha256",
        Buffer.from(message, "utf8"),
        this.key,
        Buffer.from(signature.trim(), "base64"),
      );
    } catch {
      return false;
    }
  }

  verify(auth: AuthData, legacy: boolean): boolean {
    return this.scheme(auth, legacy) !== undefined;
  }

  /**
   * Which scheme the signature verified under: "url" (only `url` is covered: every other field is the caller's
   * to edit), "legacy" (every field covered), or undefined when it did not verify.
   */
  scheme(auth: AuthData, legacy: boolean): "url" | "legacy" | undefined {
    if (typeof auth.signature !== "string" || typeof auth.url !== "string") return undefined;
    if (auth.signature.length > MAX_SIGNED_STRING_CHARS || auth.url.length > MAX_SIGNED_STRING_CHARS) {
      return undefined;
    }
    const signature = auth.signature;
    if (this.verifyMessage(urlMessage(auth.url), signature)) return "url";
    if (legacy && legacyMessages(auth).some((m) => this.verifyMessage(m, signature))) return "legacy";
    return undefined;
  }
}

/**
 * Whether a signed `auth_data.url` names this worker: the same scheme, host and port as the URL it advertises
 * (a trailing slash or path is ignored). The router signs the URL of the worker it chose, so a signature made for
 * another worker fails here.
 */
export function isOwnUrl(claimed: unknown, advertised: string): boolean {
  if (typeof claimed !== "string") return false;
  const origin = (u: string) => {
    try {
      const url = new URL(u);
      return url.protocol === "http:" || url.protocol === "https:" ? url.origin : undefined;
    } catch {
      return undefined;
    }
  };
  const a = origin(claimed);
  return a !== undefined && a === origin(advertised);
}

/**
 * Refuses replayed auth_data, which upstream accepts: a reqnum already seen, or one more than `window` below the
 * highest seen. Used only where the signature covers reqnum (SIGNATURE_LEGACY): under the url-only scheme reqnum
 * is the caller's to edit, and state built on it would let one edited request lock out every later one.
 */
export class ReplayGuard {
  private highest = -Infinity;
  private readonly seen = new Set<number>();
  private readonly order: number[] = [];

  constructor(
    private readonly window: number,
    private readonly remember = 10_000,
  ) {}

  check(reqnum: number): { ok: true } | { ok: false; reason: string } {
    if (this.seen.has(reqnum)) return { ok: false, reason: `reqnum ${reqnum} was already used` };
    if (reqnum < this.highest - this.window) {
      return { ok: false, reason: `reqnum ${reqnum} is too old (highest seen ${this.highest})` };
    }
    return { ok: true };
  }

  record(reqnum: number): void {
    this.highest = Math.max(this.highest, reqnum);
    this.seen.add(reqnum);
    this.order.push(reqnum);
    while (this.order.length > this.remember) this.seen.delete(this.order.shift()!);
  }
}
