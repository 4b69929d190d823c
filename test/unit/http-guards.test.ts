import type { Request, Response } from "express";
import { JsonShapeScanner } from "../../worker/http/body.js";
import { originGuard } from "../../worker/http/local.js";
import { legacyMessages } from "../../worker/auth/signature.js";
import { pythonJsonString } from "../../worker/auth/python-json.js";
import { CrossSiteRequestError, MisdirectedRequestError } from "../../lib/errors.js";
import { loadConfig } from "../../config/index.js";

describe("JsonShapeScanner", () => {
  const scan = (text: string | string[], limits = { maxDepth: 64, maxValues: 1_000_000 }) => {
    const s = new JsonShapeScanner(limits);
    for (const part of Array.isArray(text) ? text : [text]) {
      const passed = s.push(Buffer.from(part, "utf8"));
      if (passed) return passed;
    }
    return undefined;
  };
  /** The exact count: values (not keys) of a parsed document. */
  const count = (v: unknown): number =>
    v !== null && typeof v === "object"
      ? 1 + Object.values(v as Record<string, unknown>).reduce<number>((n, x) => n + count(x), 0)
      : 1;

  test.each([
    ['{"a":1,"b":[true,false,null],"c":{"d":"x,y:{z}"}}'],
    ['[-1.5e+10, "esc\\"aped\\\\", {"k\\"ey": "v"}, []]'],
    ['{"é": "ünïcødé ☃ 😀", "n": [0, 1, 2]}'],
    ["  [ 1 , 2 ,\n\t3 ]  "],
  ])("counts exactly the values of %s (keys not counted)", (text) => {
    const n = count(JSON.parse(text));
    expect(scan(text, { maxDepth: 64, maxValues: n })).toBeUndefined();
    expect(scan(text, { maxDepth: 64, maxValues: n - 1 })).toBe("values");
  });

  test("counts across chunk boundaries, inside strings and escapes too", () => {
    const text = '{"a":"x\\"y","bb":[12345,true],"c":{}}';
    const n = count(JSON.parse(text));
    for (let cut = 1; cut < text.length; cut++) {
      const parts = [text.slice(0, cut), text.slice(cut)];
      expect([cut, scan(parts, { maxDepth: 64, maxValues: n })]).toEqual([cut, undefined]);
      expect([cut, scan(parts, { maxDepth: 64, maxValues: n - 1 })]).toEqual([cut, "values"]);
    }
  });

  test("refuses nesting past maxDepth, not at it; brackets inside strings do not count", () => {
    expect(scan(`${"[".repeat(8)}${"]".repeat(8)}`, { maxDepth: 8, maxValues: 100 })).toBeUndefined();
    expect(scan(`${"[".repeat(9)}${"]".repeat(9)}`, { maxDepth: 8, maxValues: 100 })).toBe("depth");
    expect(scan(`["${"[{".repeat(50)}"]`, { maxDepth: 2, maxValues: 100 })).toBeUndefined();
  });

  test("stops early on the issue's `[{},{},...]`", () => {
    const s = new JsonShapeScanner({ maxDepth: 64, maxValues: 1000 });
    expect(s.push(Buffer.from(`[${"{},".repeat(5000)}{}]`))).toBe("values");
  });
});

describe("originGuard", () => {
  const run = (headers: Record<string, string>, allowed: string[] = []) => {
    let passed: unknown = "not called";
    const req = {
      headers,
      get: (name: string) => headers[name.toLowerCase()],
    } as unknown as Request;
    originGuard(allowed)(req, {} as Response, (err?: unknown) => (passed = err));
    return passed;
  };

  test.each([
    [{ host: "localhost:18288" }],
    [{ host: "127.0.0.1" }],
    [{ host: "[::1]:9000" }],
    [{ host: "LocalHost:1" }],
    [{ host: "localhost:9000", origin: "http://localhost:9000", "sec-fetch-site": "same-origin" }],
    [{ host: "127.0.0.1:80", origin: "http://127.0.0.1" }],
    [{ host: "localhost:18288", "sec-fetch-site": "none" }],
  ])("lets %j through", (headers) => {
    expect(run(headers)).toBeUndefined();
  });

  test.each([
    [{}],
    [{ host: "evil.example" }],
    [{ host: "localhost.evil.example:18288" }],
    [{ host: "127.0.0.2:18288" }],
    [{ host: "evil.example@localhost" }],
    [{ host: "localhost/x" }],
  ])("answers a foreign Host %j with 421", (headers) => {
    expect(run(headers)).toBeInstanceOf(MisdirectedRequestError);
  });

  test("API_ALLOWED_HOSTS adds names, any port", () => {
    expect(run({ host: "gpu.lan:8080" }, ["gpu.lan"])).toBeUndefined();
    expect(run({ host: "gpu.lan:8080" })).toBeInstanceOf(MisdirectedRequestError);
  });

  test.each([
    [{ host: "localhost:18288", origin: "https://evil.example" }],
    [{ host: "localhost:18288", origin: "null" }],
    [{ host: "localhost:18288", origin: "http://localhost:3000" }],
    [{ host: "localhost:18288", origin: "http://127.0.0.1:18288" }],
    [{ host: "localhost:18288", origin: "file://" }],
    [{ host: "localhost:18288", "sec-fetch-site": "cross-site" }],
    [{ host: "localhost:18288", "sec-fetch-site": "same-site" }],
    [{ host: "localhost:18288", "sec-fetch-site": "cross-origin-of-a-future-spec" }],
  ])("refuses a cross-site request %j with 403", (headers) => {
    expect(run(headers)).toBeInstanceOf(CrossSiteRequestError);
  });
});

describe("legacy rendering takes only the router's flat fields", () => {
  const base = {
    url: "http://1.2.3.4:5",
    cost: 100,
    endpoint: "e",
    reqnum: 1,
    request_idx: 2,
    signature: "s",
  };

  test("an unknown field, a nested value or a long string gives no candidate (nothing is rendered)", () => {
    expect(legacyMessages(base)).toHaveLength(2);
    expect(legacyMessages({ ...base, extra: 1 })).toEqual([]);
    expect(legacyMessages({ ...base, endpoint: { a: [1] } })).toEqual([]);
    expect(legacyMessages({ ...base, endpoint: [] })).toEqual([]);
    expect(legacyMessages({ ...base, endpoint: "x".repeat(2049) })).toEqual([]);
    expect(legacyMessages({ ...base, endpoint: null, __request_id: { any: "thing" } })).toHaveLength(2);
  });
});

describe("pythonJsonString", () => {
  test("escapes as Python's ensure_ascii does, unit by unit", () => {
    expect(pythonJsonString('a"b\\c\n\r\t\b\f\u0001\u007f é😀')).toBe(
      '"a\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u007f \\u00e9\\ud83d\\ude00"',
    );
  });
});

describe("API_ALLOWED_HOSTS, MAX_JSON_DEPTH, MAX_JSON_VALUES", () => {
  const base = { COMFYUI_BASE_DIR: "/opt/comfy", REPORT_ADDR: "https://report.example" };

  test("host names are read lower case; a scheme or port is refused naming the variable", () => {
    expect(loadConfig({ ...base, API_ALLOWED_HOSTS: "GPU.lan, [fd00::1]" }, "/srv").api.allowedHosts).toEqual(
      ["gpu.lan", "[fd00::1]"],
    );
    for (const bad of ["gpu.lan:8080", "http://gpu.lan", "a/b"]) {
      expect(() => loadConfig({ ...base, API_ALLOWED_HOSTS: bad }, "/srv")).toThrow(/^API_ALLOWED_HOSTS: /);
    }
  });

  test("the JSON limits are bounded", () => {
    expect(loadConfig({ ...base, MAX_JSON_VALUES: "1000000" }, "/srv").limits.jsonShape.maxValues).toBe(
      1_000_000,
    );
    expect(() => loadConfig({ ...base, MAX_JSON_DEPTH: "50000" }, "/srv")).toThrow(/^MAX_JSON_DEPTH: /);
    expect(() => loadConfig({ ...base, MAX_JSON_VALUES: "10" }, "/srv")).toThrow(/^MAX_JSON_VALUES: /);
  });
});
