import { checkCallbackUrl, CallbackAddressError } from "../../handlers/preprocess/address-policy.js";
import { safeComponent } from "../../handlers/outputs.js";
import { isSafeKey, resolveS3 } from "../../handlers/storage/s3.js";
import { redactUrl } from "../../lib/redact.js";
import { isOwnUrl } from "../../worker/auth/signature.js";
import { bearerToken, sameAuth, tokenMatches } from "../../worker/auth/token.js";

/** The small pure checks behind issue 9's fixes; the attacks themselves are in test/integration/security.test.ts. */

describe("isOwnUrl", () => {
  const own = "http://203.0.113.5:40123";
  test.each([
    [own, true],
    [`${own}/`, true],
    ["HTTP://203.0.113.5:40123", true],
    ["http://203.0.113.5:40124", false],
    ["https://203.0.113.5:40123", false],
    ["http://203.0.113.6:40123", false],
    ["http://203.0.113.5", false],
    ["not a url", false],
    ["ftp://203.0.113.5:40123", false],
  ])("%s -> %s", (claimed, ok) => expect(isOwnUrl(claimed, own)).toBe(ok));
  test("a non-string is never this worker", () => expect(isOwnUrl(42, own)).toBe(false));
  test("the default port is the same port written or not", () =>
    expect(isOwnUrl("https://w.example:443/", "https://w.example")).toBe(true));
});

describe("tokens", () => {
  test("an unset expected token matches nothing, not even an empty one", () => {
    expect(tokenMatches("", "")).toBe(false);
    expect(tokenMatches("x", "")).toBe(false);
  });
  test("only the exact token matches", () => {
    expect(tokenMatches("tok", "tok")).toBe(true);
    expect(tokenMatches("tok ", "tok")).toBe(false);
    expect(tokenMatches("to", "tok")).toBe(false);
  });
  test("bearerToken reads 'Bearer x' and the bare token, as upstream", () => {
    expect(bearerToken("Bearer abc")).toBe("abc");
    expect(bearerToken("abc")).toBe("abc");
    expect(bearerToken(undefined)).toBe("");
  });
  test("sameAuth compares by value, not key order", () => {
    expect(sameAuth({ a: 1, b: { c: 2 } }, { b: { c: 2 }, a: 1 })).toBe(true);
    expect(sameAuth({ a: 1 }, { a: 2 })).toBe(false);
    expect(sameAuth(null, null)).toBe(false);
    expect(sameAuth(undefined, undefined)).toBe(false);
  });
});

describe("safeComponent and isSafeKey", () => {
  test.each([
    ["../../../../tmp/x_text_0.txt", "__.._.._.._tmp_x_text_0.txt"],
    ["..", "_"],
    [".hidden", "_hidden"],
    ["a/b\\c", "a_b_c"],
    ["ComfyUI_00001_.png", "ComfyUI_00001_.png"],
    ["", "output"],
    ["nul\u0000byte", "nul_byte"],
  ])("%j -> %j", (input, out) => {
    const safe = safeComponent(input);
    expect(safe).toBe(out);
    expect(safe).toMatch(/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/);
  });
  test("long names are bounded", () => expect(safeComponent("a".repeat(5000)).length).toBe(200));
  test.each([
    ["id/file.png", true],
    ["id/../x", false],
    ["/abs", false],
    ["id//x", false],
    ["id/./x", false],
    ["id/x\u0001", false],
    ["id\\x", false],
    ["a".repeat(1025), false],
  ])("key %j safe: %s", (key, ok) => expect(isSafeKey(key)).toBe(ok));
});

describe("resolveS3: the operator's keys stay with the operator's target", () => {
  const env = {
    accessKeyId: "OPKEY",
    secretAccessKey: "opsecret",
    endpointUrl: "https://s3.operator.example",
    bucketName: "op-bucket",
    region: "us-east-1",
  };
  test("no override uses the operator's settings", () => {
    expect(resolveS3(env, undefined)).toMatchObject({ accessKeyId: "OPKEY", bucketName: "op-bucket" });
    expect(resolveS3(env, { bucketName: "", endpointUrl: " " })).toMatchObject({ accessKeyId: "OPKEY" });
  });
  test("repeating the operator's own values is not an override", () => {
    expect(resolveS3(env, { bucketName: "op-bucket", region: "us-east-1" })).toMatchObject({
      accessKeyId: "OPKEY",
      callerEndpoint: false,
    });
  });
  test.each([
    [{ endpointUrl: "https://evil.example" }, /s3\.access_key_id .*s3\.endpoint_url/],
    [{ bucketName: "other" }, /s3\.access_key_id .*s3\.bucket_name/],
    [{ region: "eu-west-3" }, /s3\.access_key_id .*s3\.region/],
    [{ endpointUrl: "https://evil.example", accessKeyId: "MINE" }, /s3\.secret_access_key/],
    [{ accessKeyId: "MINE" }, /s3\.secret_access_key .*one key/],
    [{ secretAccessKey: "mine" }, /s3\.access_key_id .*one key/],
  ])("%j is refused naming the missing field", (request, message) => {
    expect(() => resolveS3(env, request)).toThrow(message);
  });
  test("with both of the caller's keys, the caller's target is used with them only", () => {
    const t = resolveS3(env, {
      endpointUrl: "https://s3.caller.example",
      accessKeyId: "MINE",
      secretAccessKey: "mine",
      bucketName: "b",
    });
    expect(t).toMatchObject({
      endpointUrl: "https://s3.caller.example",
      accessKeyId: "MINE",
      secretAccessKey: "mine",
      callerEndpoint: true,
    });
  });
  test("a caller's endpoint on a private address is refused when the policy says so", () => {
    const request = { endpointUrl: "http://169.254.169.254", accessKeyId: "MINE", secretAccessKey: "mine" };
    expect(() => resolveS3(env, request, { allowPrivate: false })).toThrow(/s3\.endpoint_url/);
    expect(resolveS3(env, request, { allowPrivate: true })).toMatchObject({ callerEndpoint: true });
  });
});

describe("checkCallbackUrl", () => {
  test.each([
    "http://127.0.0.1:18188/interrupt",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:7f00:1]/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://a.localhost/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://10.1.2.3/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http://user:pw@example.com/",
    "not a url",
  ])("refuses %s", (url) => {
    expect(() => checkCallbackUrl(url, false)).toThrow(CallbackAddressError);
  });
  test.each(["https://hooks.example.com/x", "http://203.0.114.1:8080/hook"])("allows %s", (url) => {
    expect(() => checkCallbackUrl(url, false)).not.toThrow();
  });
  test("WEBHOOK_ALLOW_PRIVATE lets private addresses through, never other schemes or credentials", () => {
    expect(() => checkCallbackUrl("http://127.0.0.1:9/", true)).not.toThrow();
    expect(() => checkCallbackUrl("file:///etc/passwd", true)).toThrow(CallbackAddressError);
    expect(() => checkCallbackUrl("http://u:p@127.0.0.1/", true)).toThrow(CallbackAddressError);
  });
  test("the error names the field and is a 400", () => {
    try {
      checkCallbackUrl("http://127.0.0.1/", false, "on_close_route");
      throw new Error("not refused");
    } catch (err) {
      expect((err as CallbackAddressError).httpStatus).toBe(400);
      expect((err as Error).message).toMatch(/^on_close_route: /);
    }
  });
});

describe("redactUrl", () => {
  test("keeps scheme, host and port only", () => {
    expect(redactUrl("https://hooks.slack.com/services/T0/B0/SECRET?x=1#y")).toBe("https://hooks.slack.com");
    expect(redactUrl("http://u:pw@127.0.0.1:8080/p")).toBe("http://127.0.0.1:8080");
    expect(redactUrl("garbage")).toBe("(not a URL)");
    expect(redactUrl(undefined)).toBeUndefined();
  });
});
