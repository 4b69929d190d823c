/**
 * Builds bundle/: the worker and its dependencies in one file (worker.mjs), the operator page's and the /docs
 * page's files, and manifest.json (the fingerprint of the sources it was built from). A fresh clone runs it with
 * Node alone: no npm, no compiler, no registry.
 *
 *   npm run bundle          # rebuild bundle/ (commit it with the sources that changed)
 *   npm run bundle:check    # exit 1 unless bundle/ is byte for byte what the sources build (CI; `npm test`)
 *   tsx scripts/bundle.ts --check --dir <folder>   # compare another folder (tests)
 */
import { readdirSync, readFileSync, rmSync, mkdirSync, writeFileSync, statSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { parseArgs } from "node:util";
import { build, type Metafile } from "esbuild";
import { sourceFingerprint } from "../lib/bundle-fingerprint.js";
import {
  BUNDLED_ASSETS,
  BUNDLE_DIR,
  BUNDLE_MANIFEST,
  BUNDLE_PROGRAM,
  installLayout,
} from "../lib/install.js";
import { SWAGGER_UI_FILES } from "../worker/http/docs.js";
import { repoRoot } from "./services/paths.js";

/**
 * What goes into the bundle besides the TypeScript esbuild reads: the lock (every dependency's version, esbuild's
 * too), this recipe, the compiler settings esbuild follows, and the page's static files.
 */
const RECIPE = [
  "package-lock.json",
  "scripts/bundle.ts",
  "tsconfig.json",
  "web/console/tsconfig.json",
  "web/console/index.html",
  "web/console/style.css",
];
// swagger-ui-dist is Apache-2.0: its licence and notice travel with the two files served from it.
const SWAGGER_UI_LICENSES = ["LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"];

/** Files of the bundle (path relative to bundle/, with /) to their bytes. */
export type BundleFiles = Map<string, Uint8Array>;

function sourcesOf(metafile: Metafile): string[] {
  return Object.keys(metafile.inputs).filter((path) => !path.startsWith("node_modules/"));
}

export async function buildBundle(root: string): Promise<BundleFiles> {
  const files: BundleFiles = new Map();
  const worker = await build({
    absWorkingDir: root,
    entryPoints: ["worker/cli.ts"],
    outfile: join(BUNDLE_DIR, BUNDLE_PROGRAM),
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    // Whitespace and syntax only: a third of the size goes, while a stack trace still names the functions and
    // variables of the code that threw (minified identifiers would make every production trace a puzzle).
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: "eof",
    define: { "import.meta.workerBundle": "true" },
    // ws loads these optional native speed-ups in a try/catch; neither is installed.
    external: ["bufferutil", "utf-8-validate"],
    // The CommonJS packages (express, pino, ...) call require() for Node's own modules: give them one.
    banner: {
      js: 'import { createRequire as __bundleRequire } from "node:module";\nconst require = __bundleRequire(import.meta.url);',
    },
    metafile: true,
    write: false,
    logLevel: "warning",
  });
  const page = await build({
    absWorkingDir: root,
    entryPoints: ["web/console/app.ts"],
    outfile: join(BUNDLE_DIR, BUNDLED_ASSETS.console.app),
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minifyWhitespace: true,
    minifySyntax: true,
    metafile: true,
    write: false,
    logLevel: "warning",
  });
  for (const out of [...worker.outputFiles, ...page.outputFiles]) {
    files.set(relative(join(root, BUNDLE_DIR), out.path).split(sep).join("/"), out.contents);
  }
  files.set(BUNDLED_ASSETS.console.index, readFileSync(join(root, "web", "console", "index.html")));
  files.set(BUNDLED_ASSETS.console.style, readFileSync(join(root, "web", "console", "style.css")));
  const swagger = installLayout(import.meta.url, false).swaggerUi;
  for (const name of [...SWAGGER_UI_FILES, ...SWAGGER_UI_LICENSES]) {
    files.set(`${BUNDLED_ASSETS.swaggerUi}/${name}`, readFileSync(join(swagger, name)));
  }
  const sources = [...sourcesOf(worker.metafile), ...sourcesOf(page.metafile), ...RECIPE];
  const manifest = sourceFingerprint(root, sources);
  files.set(BUNDLE_MANIFEST, Buffer.from(JSON.stringify(manifest, null, 2) + "\n"));
  return files;
}

function filesIn(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir, { recursive: true, encoding: "utf8" });
  } catch {
    return [];
  }
  return names.filter((name) => statSync(join(dir, name)).isFile()).map((name) => name.split(sep).join("/"));
}

/** The files of `dir` that differ from the fresh build, are missing from it, or are not in it. */
export function differences(built: BundleFiles, dir: string): string[] {
  const found: string[] = [];
  for (const [name, bytes] of built) {
    let have: Buffer | undefined;
    try {
      have = readFileSync(join(dir, name));
    } catch {
      found.push(`${name} (missing)`);
      continue;
    }
    if (!have.equals(bytes)) found.push(`${name} (differs)`);
  }
  for (const name of filesIn(dir)) if (!built.has(name)) found.push(`${name} (not built from the sources)`);
  return found.sort();
}

function writeBundle(built: BundleFiles, dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  for (const [name, bytes] of built) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), bytes);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { check: { type: "boolean", default: false }, dir: { type: "string" } },
  });
  const dir = values.dir ?? join(repoRoot, BUNDLE_DIR);
  const built = await buildBundle(repoRoot);
  const size = [...built.values()].reduce((sum, bytes) => sum + bytes.length, 0);
  if (!values.check) {
    writeBundle(built, dir);
    console.log(
      `bundle: ${built.size} files, ${(size / 1e6).toFixed(2)} MB in ${relative(process.cwd(), dir) || "."}`,
    );
    return;
  }
  const stale = differences(built, dir);
  if (stale.length === 0) {
    console.log(`bundle: ${relative(process.cwd(), dir) || "."} is what the sources build`);
    return;
  }
  console.error(
    `bundle: ${dir} is stale: it is not what the sources build now:\n  ${stale.join("\n  ")}\n` +
      "Run `npm run bundle` and commit bundle/ with the sources.",
  );
  process.exit(1);
}

await main();
