import { createHmac, createPublicKey, verify as cryptoVerify } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import nacl from "tweetnacl";
import { signatureHeaders, WebhookSender } from "../../handlers/webhook.js";
import { silentLogger } from "../../lib/logger.js";

/** Standard Webhooks v1, written from the spec: base64 HMAC-SHA256 of `${id}.${timestamp}.${body}`. */
function standardWebhooksV1(secret: string, id: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const mac = createHmac("sha256", key);
  mac.update(Buffer.from(`${id}.${timestamp}.${body}`, "utf8"));
  return `v1,${mac.digest("base64")}`;
}

/** The signatures in a webhook-signature header, by version. */
function parseSignatures(header: string | undefined): { version: string; signature: string }[] {
  if (header === undefined) return [];
  return header.split(" ").map((part) => {
    const [version, signature] = part.split(",", 2);
    return { version: version!, signature: signature! };
  });
}

// A fixed Ed25519 seed (32 bytes) for repeatable keys.
const SEED = Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 7 + 3) & 0xff));
const KEYPAIR = nacl.sign.keyPair.fromSeed(SEED);

function verifyV1a(
  content: string,
  signatureB64: string,
  publicKey: Uint8Array = KEYPAIR.publicKey,
): boolean {
  const sig = Buffer.from(signatureB64, "base64");
  return nacl.sign.detached.verify(Buffer.from(content, "utf8"), sig, publicKey);
}

describe("signatureHeaders", () => {
  const id = "msg_2b8V3iXG0bE1x4mZ";
  const timestamp = 1_700_000_000;
  const body = JSON.stringify({ request_id: "r-1", status: "completed", text: "caf\u00e9 \u{1F600}" });

  test("without signing only id and timestamp are set", () => {
    expect(signatureHeaders(id, timestamp, body, {})).toEqual({
      "webhook-id": id,
      "webhook-timestamp": "1700000000",
    });
    expect(signatureHeaders(id, timestamp, body, { secret: "", signingKey: "" })).toEqual({
      "webhook-id": id,
      "webhook-timestamp": "1700000000",
    });
  });

  describe("v1 (HMAC-SHA256)", () => {
    test("matches the Standard Webhooks specification's example", () => {
      // From the Standard Webhooks spec / reference libraries.
      const headers = signatureHeaders("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}', {
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
      });
      expect(headers["webhook-signature"]).toBe("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    });

    test("matches an independent implementation with a whsec_ secret", () => {
      const secret = `whsec_${Buffer.from("0123456789abcdef0123456789abcdef").toString("base64")}`;
      const headers = signatureHeaders(id, timestamp, body, { secret });
      expect(headers["webhook-id"]).toBe(id);
      expect(headers["webhook-timestamp"]).toBe(String(timestamp));
      expect(headers["webhook-signature"]).toBe(standardWebhooksV1(secret, id, timestamp, body));
    });

    test("the key is the base64-decoded secret, not its text", () => {
      const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
      const asText = createHmac("sha256", secret).update(`${id}.${timestamp}.${body}`).digest("base64");
      const sig = parseSignatures(signatureHeaders(id, timestamp, body, { secret })["webhook-signature"]);
      expect(sig).toHaveLength(1);
      expect(sig[0]!.signature).not.toBe(asText);
    });

    test("a secret without the whsec_ prefix is used as UTF-8 text", () => {
      const secret = "plain text secret";
      const expected = createHmac("sha256", Buffer.from(secret, "utf8"))
        .update(`${id}.${timestamp}.${body}`)
        .digest("base64");
      expect(signatureHeaders(id, timestamp, body, { secret })["webhook-signature"]).toBe(`v1,${expected}`);
    });

    test("changes with the id, the timestamp and the body", () => {
      const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
      const base = signatureHeaders(id, timestamp, body, { secret })["webhook-signature"];
      expect(signatureHeaders(`${id}x`, timestamp, body, { secret })["webhook-signature"]).not.toBe(base);
      expect(signatureHeaders(id, timestamp + 1, body, { secret })["webhook-signature"]).not.toBe(base);
      expect(signatureHeaders(id, timestamp, `${body} `, { secret })["webhook-signature"]).not.toBe(base);
    });
  });

  describe("v1a (Ed25519)", () => {
    const content = `${id}.${timestamp}.${body}`;

    test("a 32-byte seed signs content that tweetnacl verifies with the public key", () => {
      const headers = signatureHeaders(id, timestamp, body, { signingKey: SEED.toString("base64") });
      const sigs = parseSignatures(headers["webhook-signature"]);
      expect(sigs.map((s) => s.version)).toEqual(["v1a"]);
      expect(Buffer.from(sigs[0]!.signature, "base64")).toHaveLength(64);
      expect(verifyV1a(content, sigs[0]!.signature)).toBe(true);
    });

    test("node's own Ed25519 verifier agrees", () => {
      const headers = signatureHeaders(id, timestamp, body, { signingKey: SEED.toString("base64") });
      const sig = parseSignatures(headers["webhook-signature"])[0]!.signature;
      const publicKey = createPublicKey({
        key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(KEYPAIR.publicKey).toString("base64url") },
        format: "jwk",
      });
      expect(cryptoVerify(null, Buffer.from(content, "utf8"), publicKey, Buffer.from(sig, "base64"))).toBe(
        true,
      );
    });

    test("a 64-byte secret key and a whsk_ prefix give the same signature", () => {
      const fromSeed = signatureHeaders(id, timestamp, body, { signingKey: SEED.toString("base64") });
      const fromSecret = signatureHeaders(id, timestamp, body, {
        signingKey: Buffer.from(KEYPAIR.secretKey).toString("base64"),
      });
      const prefixed = signatureHeaders(id, timestamp, body, {
        signingKey: `whsk_${SEED.toString("base64")}`,
      });
      expect(fromSecret["webhook-signature"]).toBe(fromSeed["webhook-signature"]);
      expect(prefixed["webhook-signature"]).toBe(fromSeed["webhook-signature"]);
    });

    test("does not verify for other content or another key", () => {
      const headers = signatureHeaders(id, timestamp, body, { signingKey: SEED.toString("base64") });
      const sig = parseSignatures(headers["webhook-signature"])[0]!.signature;
      expect(verifyV1a(`${id}.${timestamp + 1}.${body}`, sig)).toBe(false);
      expect(verifyV1a(`${id}.${timestamp}.${body}x`, sig)).toBe(false);
      const other = nacl.sign.keyPair.fromSeed(new Uint8Array(32).fill(9));
      expect(verifyV1a(content, sig, other.publicKey)).toBe(false);
    });

    test.each([
      ["16 bytes", Buffer.alloc(16, 1).toString("base64")],
      ["33 bytes", Buffer.alloc(33, 1).toString("base64")],
      ["63 bytes", Buffer.alloc(63, 1).toString("base64")],
    ])("a key of the wrong length is refused (%s)", (_name, signingKey) => {
      expect(() => signatureHeaders(id, timestamp, body, { signingKey })).toThrow(/32 or 64 bytes/);
    });
  });

  test("with both, the header carries v1 then v1a, space-separated, and both verify", () => {
    const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const headers = signatureHeaders(id, timestamp, body, { secret, signingKey: SEED.toString("base64") });
    const sigs = parseSignatures(headers["webhook-signature"]);
    expect(sigs.map((s) => s.version)).toEqual(["v1", "v1a"]);
    expect(`v1,${sigs[0]!.signature}`).toBe(standardWebhooksV1(secret, id, timestamp, body));
    expect(verifyV1a(`${id}.${timestamp}.${body}`, sigs[1]!.signature)).toBe(true);
  });
});

describe("WebhookSender", () => {
  let server: Server;
  let url: string;
  const seen: { headers: IncomingHttpHeaders; body: string }[] = [];
  /** "/endless" answers 200 and then a body that never ends; anything else answers 200 "ok". */
  beforeAll(async () => {
    server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        seen.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
        if (req.url !== "/endless") return void res.end("ok");
        res.writeHead(200);
        const timer = setInterval(() => res.write(Buffer.alloc(16 * 1024, 97)), 5);
        res.on("close", () => clearInterval(timer));
      });
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const sender = (timeoutMs = 2_000) =>
    new WebhookSender({ timeoutMs, maxAttempts: 1, allowPrivate: true, logger: silentLogger() });
  const versions = (h: IncomingHttpHeaders) =>
    parseSignatures(h["webhook-signature"] as string | undefined).map((s) => s.version);

  test("a caller's destination is signed with the caller's secret alone; the operator's with the operator's keys", async () => {
    const s = sender();
    seen.length = 0;
    const caller = await s.send({
      to: { kind: "caller", url: `${url}/caller`, secret: "caller secret" },
      body: { a: 1 },
      requestId: "r1",
    });
    const operator = await s.send({
      to: {
        kind: "operator",
        url: `${url}/operator`,
        signing: { secret: "operator secret", signingKey: SEED.toString("base64") },
      },
      body: { a: 1 },
      requestId: "r1",
    });
    expect([caller.status, operator.status]).toEqual(["delivered", "delivered"]);
    const [atCaller, atOperator] = seen;
    expect(versions(atCaller!.headers)).toEqual(["v1"]);
    const id = String(atCaller!.headers["webhook-id"]);
    const ts = Number(atCaller!.headers["webhook-timestamp"]);
    expect(atCaller!.headers["webhook-signature"]).toBe(
      signatureHeaders(id, ts, atCaller!.body, { secret: "caller secret" })["webhook-signature"],
    );
    expect(versions(atOperator!.headers)).toEqual(["v1", "v1a"]);
  });

  test("a receiver's endless body does not hold the delivery: only the status is read", async () => {
    const record = await sender(30_000).send({
      to: { kind: "caller", url: `${url}/endless` },
      body: {},
      requestId: "r2",
    });
    expect(record).toEqual({ status: "delivered", attempts: 1, http_status: 200 });
  });

  test("a failure is recorded with its attempts and the reason, the URL reduced to its host", async () => {
    const record = await sender().send({
      to: { kind: "caller", url: "http://127.0.0.1:9/secret-path-token" },
      body: {},
      requestId: "r3",
    });
    expect(record).toMatchObject({ status: "failed", attempts: 1 });
    expect(record.error).toBeDefined();
    expect(record.error).not.toContain("secret-path-token");
  });
});
