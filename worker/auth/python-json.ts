/**
 * Python's `json.dumps(obj, indent=4, sort_keys=True)` (ensure_ascii on), for the values found in auth_data:
 * the exact bytes the Vast router signs. Differences from JSON.stringify: every character outside ' '..'~' is
 * escaped as \uXXXX (non-ASCII included, UTF-16 units, lowercase hex), keys are sorted by code point, and the
 * separators are ", " / ": " with 4-space indentation. `floatKeys` renders those integral numbers as Python
 * floats (100 -> 100.0), for fields the router held as floats.
 */
export function pythonJsonString(s: string): string {
  // One regex pass over UTF-16 units (no `u` flag, so a surrogate pair is escaped unit by unit, as Python does):
  // a character loop with string concatenation took seconds for a 16 MiB string, which any caller can send.
  return `"${s.replace(NEEDS_ESCAPE, escapeUnit)}"`;
}

/** Everything but printable ASCII other than `"` and `\`. */
const NEEDS_ESCAPE = /[^ !#-[\]-~]/g;

const SHORT_ESCAPES: Readonly<Record<string, string>> = {
  '"': '\\"',
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\b": "\\b",
  "\f": "\\f",
};

function escapeUnit(unit: string): string {
  return SHORT_ESCAPES[unit] ?? `\\u${unit.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

/** Python's float repr: shortest round-trip digits (as JS), exponent form below 1e-4 or from 1e16 on. */
function pythonNumber(n: number, asFloat: boolean): string {
  if (!Number.isFinite(n)) return n > 0 ? "Infinity" : n < 0 ? "-Infinity" : "NaN";
  const isFloat = asFloat || !Number.isInteger(n);
  if (!isFloat) return String(n);
  if (n === 0) return Object.is(n, -0) ? "-0.0" : "0.0";
  const [mantissa = "", exp = "0"] = n.toExponential().split("e");
  const e = Number(exp);
  if (e < -4 || e >= 16) return `${mantissa}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  const plain = n.toFixed(Math.max(0, (mantissa.split(".")[1]?.length ?? 0) - e));
  return plain.includes(".") ? plain : `${plain}.0`;
}

/** Python sorts str keys by code point; JS's default sort compares UTF-16 units. */
function byCodePoint(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

export function pythonJsonDumps(
  value: unknown,
  floatKeys: ReadonlySet<string> = new Set(),
  indent = 4,
): string {
  const render = (v: unknown, depth: number, key?: string): string => {
    const pad = " ".repeat(indent * (depth + 1));
    const close = " ".repeat(indent * depth);
    if (v === null || v === undefined) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "number") return pythonNumber(v, key !== undefined && floatKeys.has(key));
    if (typeof v === "string") return pythonJsonString(v);
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      return `[\n${v.map((x) => pad + render(x, depth + 1)).join(",\n")}\n${close}]`;
    }
    const entries = Object.entries(v as Record<string, unknown>).sort(([a], [b]) => byCodePoint(a, b));
    if (entries.length === 0) return "{}";
    return `{\n${entries.map(([k, x]) => `${pad}${pythonJsonString(k)}: ${render(x, depth + 1, k)}`).join(",\n")}\n${close}}`;
  };
  return render(value, 0);
}
