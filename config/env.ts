/** Small typed readers over an environment map. Each failure names the variable. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
  }
}

export type Env = Readonly<Record<string, string | undefined>>;

export class EnvReader {
  constructor(private readonly env: Env) {}

  /** The raw value, with empty strings treated as unset. */
  raw(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === "" ? undefined : v.trim();
  }

  /** Whether the variable is set at all, even to an empty string (which some variables read as "none"). */
  present(name: string): boolean {
    return this.env[name] !== undefined;
  }

  string(name: string, fallback: string): string {
    return this.raw(name) ?? fallback;
  }

  optional(name: string): string | undefined {
    return this.raw(name);
  }

  int(name: string, fallback: number, { min = -Infinity, max = Infinity } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (!/^-?\d+$/.test(v)) throw new ConfigError(name, `expected an integer, got ${JSON.stringify(v)}`);
    const n = Number(v);
    if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
    return n;
  }

  number(name: string, fallback: number, { min = -Infinity, max = Infinity } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new ConfigError(name, `expected a number, got ${JSON.stringify(v)}`);
    if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
    return n;
  }

  bool(name: string, fallback: boolean): boolean {
    const v = this.raw(name)?.toLowerCase();
    if (v === undefined) return fallback;
    if (["1", "true", "yes", "on"].includes(v)) return true;
    if (["0", "false", "no", "off"].includes(v)) return false;
    throw new ConfigError(name, `expected true or false, got ${JSON.stringify(v)}`);
  }

  url(name: string, fallback?: string): string | undefined {
    const v = this.raw(name) ?? fallback;
    return v === undefined ? undefined : checkUrl(name, v);
  }

  /** A comma-separated list (empty entries dropped); undefined when unset. */
  list(name: string): string[] | undefined {
    const v = this.raw(name);
    return v === undefined
      ? undefined
      : v
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
  }

  /** A comma-separated list of distinct http(s) URLs; undefined when unset. */
  urlList(name: string): string[] | undefined {
    const urls = this.list(name)?.map((v) => checkUrl(name, v));
    if (urls === undefined) return undefined;
    const twice = urls.find((u, i) => urls.indexOf(u) !== i);
    if (twice !== undefined) throw new ConfigError(name, `${twice} is listed twice`);
    return urls;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(v)) {
      throw new ConfigError(name, `expected one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`);
    }
    return v as T;
  }
}

function checkUrl(name: string, v: string): string {
  let parsed: URL;
  try {
    parsed = new URL(v);
  } catch {
    throw new ConfigError(name, `not a URL: ${JSON.stringify(v)}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ConfigError(name, `expected an http(s) URL, got ${JSON.stringify(v)}`);
  }
  return v.replace(/\/+$/, "");
}
