import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { BlockList, isIP } from "node:net";
import { BadRequestError, InputError } from "../../lib/errors.js";

/**
 * Addresses a URL input may not reach unless INPUT_URL_ALLOW_PRIVATE=true: private, loopback, link-local
 * (cloud metadata lives at 169.254.169.254 and fd00:ec2::254), carrier-grade NAT, multicast and reserved ranges.
 */
const blocked = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  blocked.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
  ["2001:db8::", 32],
  ["64:ff9b::", 96],
  // IPv4-compatible (::a.b.c.d), 6to4 (2002::/16) and discard-only addresses can carry a private IPv4 inside.
  ["::", 96],
  ["2002::", 16],
  ["100::", 64],
] as const) {
  blocked.addSubnet(net, prefix, "ipv6");
}

export function isBlockedAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return blocked.check(address, "ipv4");
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped?.[1]) return blocked.check(mapped[1], "ipv4");
    const mappedHex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
    if (mappedHex?.[1] && mappedHex[2]) {
      const hi = parseInt(mappedHex[1], 16);
      const lo = parseInt(mappedHex[2], 16);
      return blocked.check(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, "ipv4");
    }
    return blocked.check(address, "ipv6");
  }
  return true;
}

/** A caller-chosen URL (webhook, session callback) that the address policy refuses. Client error: 400. */
export class CallbackAddressError extends BadRequestError {}

/** A URL input or model reference that the address policy refuses: an input error (400) naming it. */
export class BlockedAddressError extends InputError {}

/**
 * Submission-time check of a caller-chosen callback URL (a request's `webhook.url`, a session's `on_close_route`):
 * http(s) only, no credentials in it, and unless `allowPrivate` (WEBHOOK_ALLOW_PRIVATE=true) no literal private,
 * loopback, link-local or reserved address and no `localhost`. A host name is checked again at connect time
 * (`callbackGuards`), through DNS and every redirect. Throws CallbackAddressError (400) naming the field.
 */
export function checkCallbackUrl(url: string, allowPrivate: boolean, field = "webhook.url"): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CallbackAddressError(`${field} is not a URL`);
  }
  const reason = refusedTarget(u, { allowPrivate, allowCredentials: false });
  if (reason !== undefined) throw new CallbackAddressError(`${field}: ${reason}`);
}

/** What the policy lets a URL be: an input's may carry the caller's own credentials, a callback's may not. */
export interface TargetPolicy {
  /** Private, loopback, link-local and reserved addresses and `localhost` may be reached. */
  allowPrivate: boolean;
  allowCredentials: boolean;
}

/** Why a URL may not be fetched or called under the policy, or undefined. */
function refusedTarget(u: URL, policy: TargetPolicy): string | undefined {
  if (u.protocol !== "http:" && u.protocol !== "https:") return `unsupported scheme ${u.protocol}`;
  if (!policy.allowCredentials && (u.username !== "" || u.password !== ""))
    return "credentials in the URL are not allowed";
  if (policy.allowPrivate) return undefined;
  // A trailing dot is the same name to DNS ("localhost." is localhost).
  const host = u.hostname
    .replace(/^\[|\]$/g, "")
    .replace(/\.+$/, "")
    .toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return `address ${host} is not allowed`;
  // A bare number or dotted form (http://2130706433/) is an IPv4 address to the resolver too.
  if (/^[\d.]+$/.test(host) || /^0x/i.test(host) || host.includes(":")) {
    if (isIP(host) === 0 || isBlockedAddress(host))
      return `address ${host} is not allowed (private or reserved)`;
  }
  return undefined;
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/**
 * A dns.lookup that refuses a name resolving to any blocked address, with the error `refuse` makes: the check is on
 * the address actually connected to, so a public name pointing at a private address is caught.
 */
export function blockingLookup(refuse: (message: string) => Error) {
  return (hostname: string, options: object, callback: LookupCallback): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const list = addresses;
      const bad = list.find((a) => isBlockedAddress(a.address));
      if (bad) return callback(refuse(`${hostname} resolves to ${bad.address}, which is not allowed`), []);
      if ((options as { all?: boolean }).all) return callback(null, list);
      const first = list[0];
      if (!first) return callback(refuse(`${hostname} did not resolve`), []);
      callback(null, first.address, first.family);
    });
  };
}

/** The lookup of caller-chosen callbacks (webhooks, on_close_route): refusals are 400s. */
export const policyLookup = blockingLookup((message) => new CallbackAddressError(message));

/**
 * got options that enforce the policy at connect time: every request's and every redirect's URL is checked, and
 * unless private addresses are allowed the DNS answer too, so that a public name that resolves to (or redirects
 * to) a private address is refused. `refuse` makes the error, each caller's own class (and so its status).
 */
export function addressGuards(policy: TargetPolicy, refuse: (message: string) => Error) {
  const check = (url: URL | string | undefined) => {
    if (url === undefined) return;
    const reason = refusedTarget(typeof url === "string" ? new URL(url) : url, policy);
    if (reason !== undefined) throw refuse(reason);
  };
  return {
    dnsLookup: policy.allowPrivate ? undefined : blockingLookup(refuse),
    hooks: {
      beforeRequest: [(options: { url?: URL | string | undefined }) => check(options.url)],
      beforeRedirect: [(options: { url?: URL | string | undefined }) => check(options.url)],
    },
  };
}

/** The guards of caller-chosen callbacks (webhooks, on_close_route): refusals are 400s. */
export function callbackGuards(allowPrivate: boolean) {
  return addressGuards(
    { allowPrivate, allowCredentials: false },
    (message) => new CallbackAddressError(message),
  );
}

/**
 * got options under the address policy for a caller's URLs to fetch (inputs, models): the URL, every redirect and
 * the DNS answer are checked; a refusal is a BlockedAddressError (400).
 */
export function inputGuards(allowPrivate: boolean) {
  return addressGuards(
    { allowPrivate, allowCredentials: true },
    (message) => new BlockedAddressError(message),
  );
}
