import { sign, type KeyObject } from "node:crypto";

/**
 * A PKCS#10 certificate request in PEM, as `openssl req -newkey rsa:2048 -sha256 -subj ... -addext
 * subjectAltName=...` writes it, built with node:crypto alone (Node has no request builder; its DER is short enough
 * to write out). The subject is a list of [attribute, value]; the names are IP addresses for subjectAltName.
 */
export function certificateRequest(opts: {
  subject: readonly [SubjectAttribute, string][];
  altNameIps: readonly string[];
  publicKey: KeyObject;
  privateKey: KeyObject;
}): string {
  const subject = seq(
    ...opts.subject.map(([attr, value]) =>
      set(seq(oid(ATTRIBUTES[attr]), attr === "C" ? tlv(0x13, Buffer.from(value, "ascii")) : utf8(value))),
    ),
  );
  const altNames = seq(...opts.altNameIps.map((ip) => tlv(0x87, Buffer.from(ip.split(".").map(Number)))));
  const extensionRequest = seq(
    oid(EXTENSION_REQUEST),
    set(seq(seq(oid(SUBJECT_ALT_NAME), tlv(0x04, altNames)))),
  );
  const info = seq(
    tlv(0x02, Buffer.from([0])),
    subject,
    opts.publicKey.export({ type: "spki", format: "der" }),
    tlv(0xa0, extensionRequest),
  );
  const signature = sign("sha256", info, opts.privateKey);
  const der = seq(
    info,
    seq(oid(SHA256_WITH_RSA), tlv(0x05, Buffer.alloc(0))),
    tlv(0x03, Buffer.concat([Buffer.from([0]), signature])),
  );
  const lines = der.toString("base64").match(/.{1,64}/g)!;
  return `-----BEGIN CERTIFICATE REQUEST-----\n${lines.join("\n")}\n-----END CERTIFICATE REQUEST-----\n`;
}

export type SubjectAttribute = "C" | "ST" | "CN";
const ATTRIBUTES: Record<SubjectAttribute, string> = { C: "2.5.4.6", ST: "2.5.4.8", CN: "2.5.4.3" };
const EXTENSION_REQUEST = "1.2.840.113549.1.9.14";
const SUBJECT_ALT_NAME = "2.5.29.17";
const SHA256_WITH_RSA = "1.2.840.113549.1.1.11";

function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const length =
    n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), length, body]);
}

const seq = (...parts: Buffer[]) => tlv(0x30, Buffer.concat(parts));
const set = (...parts: Buffer[]) => tlv(0x31, Buffer.concat(parts));
const utf8 = (text: string) => tlv(0x0c, Buffer.from(text, "utf8"));

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split(".").map(Number) as [number, number, ...number[]];
  const bytes = [40 * a + b];
  for (const n of rest) {
    const base128 = [n & 0x7f];
    for (let v = n >> 7; v > 0; v >>= 7) base128.unshift((v & 0x7f) | 0x80);
    bytes.push(...base128);
  }
  return tlv(0x06, Buffer.from(bytes));
}
