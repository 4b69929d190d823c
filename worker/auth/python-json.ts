/**
 * Python's `json.dumps(obj, indent=4, sort_keys=True)` (ensure_ascii on), for the values found in auth_data:
 * the exact bytes the Vast router signs. Differences from JSON.stringify: every character outside ' '..'~' is
 * escaped as \uXXXX (non-ASCII included, UTF-16 units, lowercase hex), keys are sorted by code point, and the
 * separators are ", " / ": " with 4-space indentation. `floatKeys` renders those integral numbers as Python
 * floats (100 -> 100.0), for fields the router held as floats.
 */
export function pythonJsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    for (let i = 0; i < ch.length; i++) {
      const c = ch.charCodeAt(i);
      if (c === 0x22) out += '\\"';
      else if (c === 0x5c) out += "\\\\";
      else if (c === 0x0a) out += "\\n";
      else if (c === 0x0d) out += "\\r";
      else if (c === 0x09) out += "\\t";
      else if (c === 0x08) out += "\\b";
      else if (c === 0x0c) out += "\\f";
      else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, "0")}`;
      else out += String.fromCharCode(c);
    }
  }
  return `${out}"`;
}

function pythonNumber(n: number, asFloat: boolean): string {
  if (!Number.isFinite(n)) return n > 0 ? "Infinity" : n < 0 ? "-Infinity" : "NaN";
  if (Number.isInteger(n)) return asFloat ? `${n}.0` : String(n);
  // Python's repr and JS's shortest round-trip agree on digits; exponent formats differ only at extremes.
  return String(n).replace(/e([+-])(\d)$/, "e$10$2");
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
    const entries = Object.entries(v as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    );
    if (entries.length === 0) return "{}";
    return `{\n${entries.map(([k, x]) => `${pad}${pythonJsonString(k)}: ${render(x, depth + 1, k)}`).join(",\n")}\n${close}}`;
  };
  return render(value, 0);
}
