import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  legacyMessages,
  ReplayGuard,
  SignatureVerifier,
  urlMessage,
  type AuthData,
} from "../../worker/auth/signature.js";

// Keys and vectors made by openssl and Python, not by our code: see test/fixtures/keys/README.md.
const keys = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "keys");
const publicPem = readFileSync(join(keys, "router-public.pem"), "utf8");

interface UrlVector {
  url: string;
  message: string;
  signature: string;
}
interface LegacyVector {
  name: string;
  message: string;
  auth_data: AuthData & { signature: string; url: string };
}
const vectors = JSON.parse(readFileSync(join(keys, "signature-vectors.json"), "utf8")) as {
  url: UrlVector[];
  forged: UrlVector[];
  legacy: LegacyVector[];
};

/** Flips one base64 character of a signature into another valid one. */
function tamper(signature: string, at = 10): string {
  const c = signature[at] === "A" ? "B" : "A";
  return signature.slice(0, at) + c + signature.slice(at + 1);
}

describe("SignatureVerifier with the committed openssl vectors", () => {
  let verifier: SignatureVerifier;
  beforeEach(() => {
    verifier = new SignatureVerifier(publicPem);
  });

  test("the vectors cover the awkward URLs", () => {
    expect(vectors.url.length).toBeGreaterThanOrEqual(6);
    expect(vectors.url.some((v) => /[^\x20-\x7e]/.test(v.url))).toBe(true);
    expect(vectors.legacy.map((v) => v.name).sort()).toEqual(["cost-float", "cost-int"]);
  });

  test.each(vectors.url.map((v) => [JSON.stringify(v.url), v] as const))(
    "urlMessage gives the signed bytes and verify accepts %s",
    (_name, v) => {
      expect(urlMessage(v.url)).toBe(v.message);
      expect(verifier.verifyMessage(v.message, v.signature)).toBe(true);
      expect(verifier.verify({ url: v.url, signature: v.signature }, false)).toBe(true);
      expect(verifier.verify({ url: v.url, signature: v.signature }, true)).toBe(true);
    },
  );

  test("extra fields in auth_data do not matter to the url scheme", () => {
    const v = vectors.url[0]!;
    const auth: AuthData = { url: v.url, signature: v.signature, cost: 250, reqnum: 9, endpoint: "x" };
    expect(verifier.verify(auth, false)).toBe(true);
  });

  test("whitespace around the signature is tolerated", () => {
    const v = vectors.url[0]!;
    expect(verifier.verify({ url: v.url, signature: ` ${v.signature}\n` }, false)).toBe(true);
  });

  test.each(vectors.forged.map((v) => [v.url, v] as const))(
    "refuses a signature made by another key (%s)",
    (_name, v) => {
      expect(verifier.verifyMessage(v.message, v.signature)).toBe(false);
      expect(verifier.verify({ url: v.url, signature: v.signature }, false)).toBe(false);
      expect(verifier.verify({ url: v.url, signature: v.signature }, true)).toBe(false);
    },
  );

  test("refuses an altered URL", () => {
    const v = vectors.url[0]!;
    for (const url of [`${v.url}/`, v.url.replace("41234", "41235"), v.url.toUpperCase(), ` ${v.url}`]) {
      expect(verifier.verify({ url, signature: v.signature }, false)).toBe(false);
      expect(verifier.verify({ url, signature: v.signature }, true)).toBe(false);
    }
  });

  test("refuses a URL signed for another vector", () => {
    const [a, b] = vectors.url;
    expect(verifier.verify({ url: a!.url, signature: b!.signature }, true)).toBe(false);
  });

  test("refuses a tampered signature", () => {
    const v = vectors.url[0]!;
    expect(verifier.verify({ url: v.url, signature: tamper(v.signature) }, true)).toBe(false);
    expect(verifier.verify({ url: v.url, signature: v.signature.slice(4) }, true)).toBe(false);
  });

  test.each([
    ["empty", ""],
    ["not base64", "not base64 at all!"],
    ["base64url alphabet", "ab-c_d"],
    ["too much padding", "QUJD==="],
    ["padding in the middle", "QQ==QUJD"],
    ["just padding", "=="],
  ])("refuses a bad base64 signature (%s)", (_name, signature) => {
    const v = vectors.url[0]!;
    expect(verifier.verifyMessage(v.message, signature)).toBe(false);
    expect(verifier.verify({ url: v.url, signature }, true)).toBe(false);
  });

  test("refuses base64url of a valid signature", () => {
    const v = vectors.url.find((x) => /[+/]/.test(x.signature))!;
    const url64 = v.signature.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    expect(verifier.verify({ url: v.url, signature: url64 }, true)).toBe(false);
  });

  test("refuses missing or non-string signature and url", () => {
    const v = vectors.url[0]!;
    expect(verifier.verify({ url: v.url }, true)).toBe(false);
    expect(verifier.verify({ url: v.url, signature: null }, true)).toBe(false);
    expect(verifier.verify({ url: v.url, signature: Buffer.from(v.signature, "base64") }, true)).toBe(false);
    expect(verifier.verify({ signature: v.signature }, true)).toBe(false);
    expect(verifier.verify({ url: 42, signature: v.signature }, true)).toBe(false);
  });

  describe("legacy all-fields scheme", () => {
    test.each(vectors.legacy.map((v) => [v.name, v] as const))(
      "%s: our candidate messages include Python's bytes",
      (_name, v) => {
        expect(legacyMessages(v.auth_data)).toContain(v.message);
      },
    );

    test.each(vectors.legacy.map((v) => [v.name, v] as const))(
      "%s: accepted only when legacy=true",
      (_name, v) => {
        expect(verifier.verify({ ...v.auth_data }, true)).toBe(true);
        expect(verifier.verify({ ...v.auth_data }, false)).toBe(false);
      },
    );

    test("__request_id is not part of the signed fields", () => {
      const v = vectors.legacy[0]!;
      expect(verifier.verify({ ...v.auth_data, __request_id: "something else" }, true)).toBe(true);
      const { __request_id: _dropped, ...without } = v.auth_data;
      expect(verifier.verify(without, true)).toBe(true);
    });

    test.each([
      ["cost", 101],
      ["reqnum", 43],
      ["endpoint", "other-endpoint"],
      ["request_idx", 8],
      ["url", "https://203.0.113.7:41235"],
    ] as const)("refuses a changed %s", (field, value) => {
      for (const v of vectors.legacy) {
        expect(verifier.verify({ ...v.auth_data, [field]: value }, true)).toBe(false);
      }
    });

    test("refuses an added field", () => {
      const v = vectors.legacy[0]!;
      expect(verifier.verify({ ...v.auth_data, extra: 1 }, true)).toBe(false);
    });

    test("legacyMessages renders cost both ways only when they differ", () => {
      const base = { url: "u", signature: "s", __request_id: "r" };
      const both = legacyMessages({ ...base, cost: 100 });
      expect(both).toHaveLength(2);
      expect(both[0]).toContain('"cost": 100,');
      expect(both[1]).toContain('"cost": 100.0,');
      expect(both.every((m) => !m.includes("signature") && !m.includes("__request_id"))).toBe(true);
      expect(legacyMessages({ ...base, cost: 1.5 })).toHaveLength(1);
      expect(legacyMessages({ ...base })).toHaveLength(1);
    });
  });

  test("a malformed public key is refused at construction", () => {
    expect(
      () => new SignatureVerifier("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
    ).toThrow();
  });
});

describe("ReplayGuard", () => {
  test("accepts anything at first", () => {
    const guard = new ReplayGuard(10);
    expect(guard.check(0)).toEqual({ ok: true });
    expect(guard.check(-5)).toEqual({ ok: true });
    expect(guard.check(1e9)).toEqual({ ok: true });
  });

  test("check alone does not record", () => {
    const guard = new ReplayGuard(10);
    expect(guard.check(5).ok).toBe(true);
    expect(guard.check(5).ok).toBe(true);
  });

  test("refuses a recorded reqnum", () => {
    const guard = new ReplayGuard(10);
    guard.record(5);
    const r = guard.check(5);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/5 was already used/);
    expect(guard.check(6).ok).toBe(true);
    expect(guard.check(4).ok).toBe(true);
  });

  test("refuses numbers more than window below the highest, accepts the rest", () => {
    const guard = new ReplayGuard(10);
    guard.record(100);
    expect(guard.check(90).ok).toBe(true); // exactly window below
    expect(guard.check(95).ok).toBe(true);
    expect(guard.check(101).ok).toBe(true);
    const r = guard.check(89);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/89 is too old \(highest seen 100\)/);
  });

  test("the highest only grows: a lower record does not lower the bar", () => {
    const guard = new ReplayGuard(10);
    guard.record(100);
    guard.record(95);
    expect(guard.check(89).ok).toBe(false);
    guard.record(200);
    expect(guard.check(189).ok).toBe(false);
    expect(guard.check(190).ok).toBe(true);
  });

  test("window 0 refuses everything below the highest", () => {
    const guard = new ReplayGuard(0);
    guard.record(7);
    expect(guard.check(6).ok).toBe(false);
    expect(guard.check(8).ok).toBe(true);
  });

  test("memory is bounded by remember: the oldest entries are forgotten", () => {
    const guard = new ReplayGuard(1_000_000, 3);
    for (const n of [1, 2, 3, 4]) guard.record(n);
    expect(guard.check(1).ok).toBe(true); // forgotten, still within the window
    expect(guard.check(2).ok).toBe(false);
    expect(guard.check(3).ok).toBe(false);
    expect(guard.check(4).ok).toBe(false);
  });

  test("many records keep at most remember entries", () => {
    const guard = new ReplayGuard(10, 50);
    for (let n = 0; n < 10_000; n++) guard.record(n);
    expect((guard as any).seen.size).toBeLessThanOrEqual(50);
    expect((guard as any).order.length).toBeLessThanOrEqual(50);
    expect(guard.check(9_999).ok).toBe(false);
    const remembered = guard.check(9_950);
    expect(!remembered.ok && remembered.reason).toMatch(/already used/);
    const forgotten = guard.check(9_949);
    expect(!forgotten.ok && forgotten.reason).toMatch(/too old/);
    expect(guard.check(10_000).ok).toBe(true);
  });
});
