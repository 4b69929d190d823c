import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { DELIBERATE_DIFFERENCES } from "../conformance/deliberate.js";

const root = join(import.meta.dirname, "..", "..");
const read = (path: string) => readFileSync(join(root, path), "utf8");

function filesUnder(dir: string, ext: RegExp): string[] {
  return readdirSync(join(root, dir)).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(join(root, path)).isDirectory()) return filesUnder(path, ext);
    return ext.test(name) && !name.endsWith(".d.ts") ? [path] : [];
  });
}

/**
 * The variables the worker's code reads: the names config/ passes to EnvReader (`e.int("NAME", ...)`, a template
 * such as `VAST_TCP_PORT_${port}` read as `VAST_TCP_PORT_<...>`), every `process.env.NAME` read in the TypeScript
 * (the benchmark's included; a `??=` default handed to a library is no read), and what worker.py reads of its
 * environment. Operating-system variables that worker.py passes on (PATH) are not configuration.
 */
function variablesTheCodeReads(): Set<string> {
  const names = new Set<string>();
  // scripts/services/python.ts: the bench's Python 3.10 is found there.
  const ts = [
    ...["config", "worker", "handlers", "lib", "benchmark"].flatMap((d) => filesUnder(d, /\.ts$/)),
    "scripts/services/python.ts",
  ];
  for (const file of ts) {
    const text = read(file);
    for (const m of text.matchAll(
      /\b\w+\.(?:int|bool|number|optional|list|string|url|urlList|oneOf|raw)\(\s*["`]([A-Z][A-Z0-9_]*)(\$\{)?/g,
    )) {
      names.add(m[2] ? `${m[1]}<>` : m[1]!);
    }
    for (const m of text.matchAll(
      /process\.env(?:\.([A-Z][A-Z0-9_]*)|\["([A-Z][A-Z0-9_]*)"\])(\s*\?\?=)?/g,
    )) {
      if (!m[3]) names.add((m[1] ?? m[2])!);
    }
  }
  const py = read("worker.py");
  for (const m of py.matchAll(
    /\b(?:env|os\.environ)(?:\.get\(\s*|\[)(f?)["']([A-Z][A-Z0-9_]*)(\{)?|os\.getenv\(\s*(f?)["']([A-Z][A-Z0-9_]*)(\{)?/g,
  )) {
    const name = m[2] ?? m[5]!;
    names.add(m[3] || m[6] ? `${name}<>` : name);
  }
  for (const os of ["PATH", "HOME", "TMPDIR"]) names.delete(os);
  return names;
}

/** The names in the first column of docs/configuration.md's tables, a template's `<...>` kept as `<>`. */
function variablesThePageLists(): Set<string> {
  const names = new Set<string>();
  for (const line of read("docs/configuration.md").split("\n")) {
    const cell = /^\|([^|]*)\|/.exec(line)?.[1];
    if (cell === undefined) continue;
    for (const m of cell.matchAll(/`([A-Z][A-Z0-9_]*)(<[A-Z_]+>)?`/g)) names.add(m[2] ? `${m[1]}<>` : m[1]!);
  }
  return names;
}

describe("the docs", () => {
  test("docs/configuration.md lists every variable the code reads, and none it does not", () => {
    const read = variablesTheCodeReads();
    const listed = variablesThePageLists();
    // The image's entrypoint (bash) reads a few of its own; the page may list those too.
    const entrypoint = readFileSync(join(root, "scripts", "docker-entrypoint.sh"), "utf8");
    const inEntrypoint = (name: string) => new RegExp(`\\$\\{?${name}\\b`).test(entrypoint);
    const missing = [...read].filter((n) => !listed.has(n)).sort();
    const extra = [...listed].filter((n) => !read.has(n) && !inEntrypoint(n)).sort();
    expect({ missing, extra }).toEqual({ missing: [], extra: [] });
  });

  test("docs/upstream.md's conformance list names each deliberate difference of the harness, and no other", () => {
    const page = read("docs/upstream.md");
    const list = page.slice(
      page.indexOf("## Differences from upstream (checked by the conformance harness)"),
    );
    const ids = [...list.matchAll(/^- \*\*([a-z0-9-]+)\*\*:/gm)].map((m) => m[1]);
    expect(ids.sort()).toEqual(DELIBERATE_DIFFERENCES.map((d) => d.id).sort());
  });

  test("every relative link in README.md and docs/*.md names a file that exists", () => {
    const pages = ["README.md", ...filesUnder("docs", /\.md$/)];
    const broken: string[] = [];
    for (const page of pages) {
      const text = read(page).replace(/```[\s\S]*?```/g, "");
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("#")) continue;
        const path = resolve(root, dirname(page), target.split("#")[0]!);
        if (!existsSync(path)) broken.push(`${page}: ${target} (${relative(root, path)})`);
      }
    }
    expect(broken).toEqual([]);
  });
});
