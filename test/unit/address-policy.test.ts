import {
  BlockedAddressError,
  CallbackAddressError,
  callbackGuards,
  inputGuards,
  isBlockedAddress,
} from "../../handlers/preprocess/address-policy.js";

describe("isBlockedAddress", () => {
  test.each([
    // IPv4 private, loopback, link-local and metadata
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "169.254.0.1",
    "0.0.0.0",
    "100.64.0.1",
    "100.127.255.255",
    "192.0.0.170",
    "192.0.2.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.20",
    "203.0.113.7",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
  ])("blocks IPv4 %s", (address) => {
    expect(isBlockedAddress(address)).toBe(true);
  });

  test.each([
    "::",
    "::1",
    "0:0:0:0:0:0:0:1",
    "fd00:ec2::254",
    "FD00:EC2::254",
    "fc00::1",
    "fdff:ffff::1",
    "fe80::1",
    "febf::1",
    "ff02::1",
    "2001:db8::1",
    "64:ff9b::a9fe:a9fe",
  ])("blocks IPv6 %s", (address) => {
    expect(isBlockedAddress(address)).toBe(true);
  });

  test.each([
    ["::ffff:127.0.0.1", "dotted loopback"],
    ["::ffff:7f00:1", "hex loopback"],
    ["::FFFF:7F00:0001", "hex loopback, upper case and zero-padded"],
    ["::ffff:169.254.169.254", "dotted metadata"],
    ["::ffff:a9fe:a9fe", "hex metadata"],
    ["::ffff:10.1.2.3", "dotted private"],
    ["::ffff:a01:203", "hex private"],
    ["::ffff:c0a8:101", "hex 192.168.1.1"],
    ["::ffff:0.0.0.0", "dotted zero"],
    ["0:0:0:0:0:ffff:7f00:1", "uncompressed hex loopback"],
    ["0000:0000:0000:0000:0000:ffff:127.0.0.1", "uncompressed dotted loopback"],
  ])("blocks IPv4-mapped %s (%s)", (address) => {
    expect(isBlockedAddress(address)).toBe(true);
  });

  test.each([
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.15.255.255",
    "172.32.0.1",
    "100.63.255.255",
    "100.128.0.1",
    "169.253.255.255",
    "192.169.0.1",
    "223.255.255.255",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:81c::200e",
    "::ffff:8.8.8.8",
    "::ffff:808:808",
    "::ffff:0101:0101",
  ])("allows public %s", (address) => {
    expect(isBlockedAddress(address)).toBe(false);
  });

  test.each([
    "",
    "localhost",
    "example.com",
    "not an ip",
    "[::1]",
    "127.0.0.1:80",
    "8.8.8.8 ",
    " 8.8.8.8",
    "8.8.8",
    "256.1.1.1",
    "127.1",
    "0x7f.0.0.1",
    "2130706433",
    "http://8.8.8.8/",
    "::ffff:",
    "gggg::1",
  ])("blocks a string that is not an IP address: %j", (address) => {
    expect(isBlockedAddress(address)).toBe(true);
  });
});

describe("one address policy for every caller-chosen URL", () => {
  const inputs = inputGuards(false);
  const callbacks = callbackGuards(false);
  const refusal = (guards: ReturnType<typeof inputGuards>, url: string, stage: "request" | "redirect") => {
    const hook = stage === "request" ? guards.hooks.beforeRequest[0]! : guards.hooks.beforeRedirect[0]!;
    try {
      hook({ url: new URL(url) });
      return undefined;
    } catch (err) {
      return err;
    }
  };

  test.each([
    "http://127.0.0.1/x",
    "http://localhost/x",
    "http://localhost./x",
    "http://api.localhost/x",
    "http://[::1]/x",
    "http://[::ffff:7f00:1]/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://2130706433/x",
    "http://0x7f000001/x",
    "file:///etc/passwd",
    "ftp://example.com/x",
  ])(
    "refuses %s for inputs (400 BlockedAddressError) and callbacks (400 CallbackAddressError), on requests and redirects",
    (url) => {
      for (const stage of ["request", "redirect"] as const) {
        expect(refusal(inputs, url, stage)).toBeInstanceOf(BlockedAddressError);
        expect(refusal(callbacks, url, stage)).toBeInstanceOf(CallbackAddressError);
      }
    },
  );

  test("an input URL may carry the caller's credentials; a callback's may not", () => {
    const url = "https://user:secret@example.com/x";
    expect(refusal(inputs, url, "redirect")).toBeUndefined();
    expect(refusal(callbacks, url, "redirect")).toBeInstanceOf(CallbackAddressError);
  });

  test("public names pass the literal check (their DNS answer is checked at connect time)", () => {
    for (const guards of [inputs, callbacks]) {
      expect(refusal(guards, "https://example.com/x", "request")).toBeUndefined();
      expect(guards.dnsLookup).toBeInstanceOf(Function);
    }
  });

  test("allowing private addresses still refuses other schemes and drops the DNS check", () => {
    for (const guards of [inputGuards(true), callbackGuards(true)]) {
      expect(refusal(guards, "http://127.0.0.1/x", "redirect")).toBeUndefined();
      expect(refusal(guards, "file:///etc/passwd", "redirect")).toBeInstanceOf(Error);
      expect(guards.dnsLookup).toBeUndefined();
    }
  });
});
