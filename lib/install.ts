import { createRequire } from "node:module";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

declare global {
  interface ImportMeta {
    /** Replaced by `true` where scripts/bundle.ts builds bundle/worker.mjs; absent from sources and dist/. */
    readonly workerBundle?: true;
  }
}

/** The committed bundle's folder in the installation, and its files that are not the program. */
export const BUNDLE_DIR = "bundle";
export const BUNDLE_PROGRAM = "worker.mjs";
export const BUNDLE_MANIFEST = "manifest.json";
/** The CLI as `npm run build` (tsc) writes it: what an installation runs when its bundle is not its sources'. */
export const DIST_PROGRAM = "dist/worker/cli.js";

/** Where the worker finds what it reads from files at run time. */
export interface InstallLayout {
  /** The installation folder (the clone): misc/, the benchmark cache. */
  root: string;
  /** True when this code runs from bundle/worker.mjs. */
  bundled: boolean;
  /** The operator page's three files. */
  console: { index: string; style: string; app: string };
  /** The folder with swagger-ui-dist's swagger-ui.css and swagger-ui-bundle.js (the /docs page). */
  swaggerUi: string;
}

/** The files of the built assets, relative to the bundle's folder: what scripts/bundle.ts writes there. */
export const BUNDLED_ASSETS = {
  console: { index: "console/index.html", style: "console/style.css", app: "console/app.js" },
  swaggerUi: "swagger-ui",
} as const;

/**
 * The layout of the installation this module was loaded from: sources run by tsx (lib/install.ts), tsc's output
 * (dist/lib/install.js, with node_modules beside it) or the bundle (bundle/worker.mjs, nothing else needed).
 */
export function installLayout(
  moduleUrl: string = import.meta.url,
  bundled = import.meta.workerBundle === true,
): InstallLayout {
  const up = resolve(dirname(fileURLToPath(moduleUrl)), "..");
  if (bundled) {
    const dir = join(up, BUNDLE_DIR);
    return {
      root: up,
      bundled,
      console: {
        index: join(dir, BUNDLED_ASSETS.console.index),
        style: join(dir, BUNDLED_ASSETS.console.style),
        app: join(dir, BUNDLED_ASSETS.console.app),
      },
      swaggerUi: join(dir, BUNDLED_ASSETS.swaggerUi),
    };
  }
  const root = basename(up) === "dist" ? dirname(up) : up;
  const page = join(root, "web", "console");
  return {
    root,
    bundled,
    console: {
      index: join(page, "index.html"),
      style: join(page, "style.css"),
      app: join(page, "build", "app.js"),
    },
    swaggerUi: dirname(createRequire(moduleUrl).resolve("swagger-ui-dist/package.json")),
  };
}
