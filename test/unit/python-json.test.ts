import { execFileSync } from "node:child_process";
import { pythonJsonDumps, pythonJsonString } from "../../worker/auth/python-json.js";
import { urlMessage } from "../../worker/auth/signature.js";

/**
 * Runs Python's json.dumps(..., indent=4, sort_keys=True) on each case. Cases travel as JSON on stdin and the
 * answers come back as a JSON list of strings, so no byte is lost on the way. `floatKeys` turns the integral
 * values of those keys into Python floats, as the router holds them.
 */
function pythonDumps(cases: { value: unknown; floatKeys?: string[] }[]): string[] {
  const script = `
import json, sys

def floats(v, keys):
    if isinstance(v, dict):
        return {k: (float(x) if k in keys and isinstance(x, int) and not isinstance(x, bool) else floats(x, keys))
                for k, x in v.items()}
    if isinstance(v, list):
        return [floats(x, keys) for x in v]
    return v

cases = json.load(sys.stdin)
out = [json.dumps(floats(c["value"], set(c.get("floatKeys", []))), indent=4, sort_keys=True) for c in cases]
sys.stdout.write(json.dumps(out))
`;
  const stdout = execFileSync("python3", ["-c", script], {
    input: JSON.stringify(cases),
    encoding: "utf8",
    timeout: 20_000,
  });
  return JSON.parse(stdout) as string[];
}

const URLS = [
  "https://example.com",
  "http://127.0.0.1:3000/",
  "https://203.0.113.7:41234/route/?a=1&b=two#frag",
  "https://example.com/caf\u00e9",
  "https://\u4f8b\u3048.jp/\u00fc\u00df",
  "https://example.com/\u{1F600}/\u{1F1EB}\u{1F1F7}",
  'https://example.com/"quoted"',
  "https://example.com/back\\slash\\\\double",
  "https://example.com/ctl\u0000\u0001\u0007\b\t\n\u000b\f\r\u001b\u001f",
  "https://example.com/del\u007fx",
  "https://example.com/c1\u0080\u009f\u00a0",
  "https://example.com/bmp-edge\ufeff\uffff",
  "https://example.com/lone\ud800surrogate\udfff",
  "https://example.com/printable ~!@#$%^&*()_+`-={}[]|:;'<>,.?/",
  "",
];

describe("urlMessage matches Python's json.dumps({'url': url}, indent=4, sort_keys=True)", () => {
  let expected: string[];
  beforeAll(() => {
    expected = pythonDumps(URLS.map((url) => ({ value: { url } })));
  });

  test.each(URLS.map((url, i) => [JSON.stringify(url), i] as const))("%s", (_name, i) => {
    const url = URLS[i]!;
    expect(urlMessage(url)).toBe(expected[i]);
  });

  test("the message is pure ASCII, so its UTF-8 bytes equal Python's", () => {
    for (const [i, url] of URLS.entries()) {
      const bytes = Buffer.from(urlMessage(url), "utf8");
      expect(bytes.equals(Buffer.from(expected[i]!, "utf8"))).toBe(true);
      expect([...bytes].every((b) => b >= 0x0a && b <= 0x7e)).toBe(true);
    }
  });

  test("the layout is a four-space indented one-key object", () => {
    expect(urlMessage("https://a.example")).toBe('{\n    "url": "https://a.example"\n}');
  });
});

describe("pythonJsonString", () => {
  test("escapes with Python's short forms and lowercase \\uXXXX", () => {
    expect(pythonJsonString('a"b\\c\n\r\t\b\f')).toBe('"a\\"b\\\\c\\n\\r\\t\\b\\f"');
    expect(pythonJsonString("\u0000\u001f\u007f\u00e9\u00ff")).toBe('"\\u0000\\u001f\\u007f\\u00e9\\u00ff"');
    expect(pythonJsonString("\u{1F600}")).toBe('"\\ud83d\\ude00"');
    expect(pythonJsonString("/")).toBe('"/"');
  });
});

describe("pythonJsonDumps matches Python's json.dumps(..., indent=4, sort_keys=True)", () => {
  const cases: { name: string; value: unknown; floatKeys?: string[] }[] = [
    { name: "scalars", value: { s: "x", t: true, f: false, n: null, i: 0, neg: -17 } },
    { name: "empty containers", value: { a: {}, b: [], c: [{}, []] } },
    { name: "top-level list", value: [1, "two", [3, [4, { five: 5 }]], null] },
    { name: "top-level scalars list", value: [true, false, null, "", 0] },
    {
      name: "nested dicts sorted at every level",
      value: { z: { b: 1, a: { d: [1, 2], c: "x" } }, a: [{ y: 1, x: 2 }], m: { "": "empty key" } },
    },
    {
      name: "keys sorted by code point",
      value: { b: 1, a: 2, B: 3, _: 4, "10": 5, "9": 6, "\u00e9": 7, "\u00e0": 8, "a b": 9, A: 10 },
    },
    { name: "non-ASCII keys and values", value: { "cl\u00e9": "val\u00fc\u{1F600}", 'k"\\\n': 'v"\\\n' } },
    {
      name: "floats",
      value: {
        half: 0.5,
        neg: -2.25,
        tenth: 0.1,
        sum: 0.1 + 0.2,
        big: 123456.789,
        small: 0.0001,
        tiny: 1e-7,
        smaller: 1.5e-10,
        huge: 1.5e300,
        max: Number.MAX_VALUE,
        min: Number.MIN_VALUE,
        pi: Math.PI,
      },
    },
    { name: "large integers", value: { a: 2 ** 32 - 1, b: Number.MAX_SAFE_INTEGER, c: -(2 ** 40) } },
    {
      name: "floatKeys render integral values as floats",
      value: { cost: 100, reqnum: 100, nested: { cost: 0, other: 3 }, list: [{ cost: -5 }] },
      floatKeys: ["cost"],
    },
    {
      name: "floatKeys leave non-integral values and other keys alone",
      value: { cost: 1.25, weight: 2, endpoint: "e" },
      floatKeys: ["cost", "weight"],
    },
    {
      name: "a legacy auth_data",
      value: {
        cost: 100,
        endpoint: "my-endpoint",
        reqnum: 1234,
        request_idx: 9,
        url: "https://203.0.113.7:41234",
      },
      floatKeys: ["cost"],
    },
  ];

  let expected: string[];
  beforeAll(() => {
    expected = pythonDumps(cases.map(({ value, floatKeys }) => ({ value, floatKeys: floatKeys ?? [] })));
  });

  test.each(cases.map((c, i) => [c.name, i] as const))("%s", (_name, i) => {
    const c = cases[i]!;
    expect(pythonJsonDumps(c.value, new Set(c.floatKeys ?? []))).toBe(expected[i]);
  });

  test("without floatKeys integral numbers stay ints", () => {
    expect(pythonJsonDumps({ cost: 100 })).toBe('{\n    "cost": 100\n}');
    expect(pythonJsonDumps({ cost: 100 }, new Set(["cost"]))).toBe('{\n    "cost": 100.0\n}');
  });

  test("other indents match Python's", () => {
    const value = { b: [1, { c: 2 }], a: "x" };
    const script =
      "import json,sys; v=json.load(sys.stdin); sys.stdout.write(json.dumps([json.dumps(v, indent=i, sort_keys=True) for i in (0, 2)]))";
    const [zero, two] = JSON.parse(
      execFileSync("python3", ["-c", script], {
        input: JSON.stringify(value),
        encoding: "utf8",
        timeout: 20_000,
      }),
    ) as string[];
    expect(pythonJsonDumps(value, new Set(), 0)).toBe(zero);
    expect(pythonJsonDumps(value, new Set(), 2)).toBe(two);
  });

  test("non-finite numbers render as Python writes them (NaN, Infinity, -Infinity)", () => {
    // JSON.stringify cannot carry these; Python's json.loads reads its own literals.
    const script =
      "import json,sys; sys.stdout.write(json.dumps(json.dumps(json.load(sys.stdin), indent=4, sort_keys=True)))";
    const python = JSON.parse(
      execFileSync("python3", ["-c", script], {
        input: '{"c": -Infinity, "b": Infinity, "a": NaN}',
        encoding: "utf8",
        timeout: 20_000,
      }),
    ) as string;
    expect(pythonJsonDumps({ c: -Infinity, b: Infinity, a: NaN })).toBe(python);
  });
});

describe("floats in exponent form, as Python writes them", () => {
  test.each([
    [0.00001, "1e-05"],
    [0.0001, "0.0001"],
    [1.5e16, "1.5e+16"],
    [1e16, "1e+16"],
    [123456789012345.6, "123456789012345.6"],
    [2.5e-7, "2.5e-07"],
  ])("%p", (n, expected) => {
    const python = execFileSync("python3", [
      "-c",
      `import json; print(json.dumps(float(${JSON.stringify(n)})), end="")`,
    ]).toString();
    expect(python).toBe(expected);
    expect(pythonJsonDumps({ x: n }, new Set(["x"]))).toBe(`{\n    "x": ${expected}\n}`);
  });

  test("integral floats get .0 below 1e16 and keys sort by code point", () => {
    expect(pythonJsonDumps({ cost: 100 }, new Set(["cost"]))).toBe('{\n    "cost": 100.0\n}');
    expect(pythonJsonDumps({ "\uffff": 1, "\u{1F600}": 2 })).toBe(
      '{\n    "\\uffff": 1,\n    "\\ud83d\\ude00": 2\n}',
    );
  });
});
