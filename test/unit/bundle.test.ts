import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { checkBundleSources, sourceFingerprint } from "../../lib/bundle-fingerprint.js";
import { installLayout } from "../../lib/install.js";
import { repoRoot } from "../harness/worker.js";

const run = promisify(execFile);
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "bundle-test-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function files(root: string, contents: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(contents)) {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

describe("sourceFingerprint", () => {
  test("changes when a listed source changes, not when another file does", async () => {
    await files(dir, { "worker/a.ts": "a", "lib/b.ts": "b", "README.md": "readme" });
    const listed = ["worker/a.ts", "lib/b.ts"];
    const before = sourceFingerprint(dir, listed);
    await writeFile(join(dir, "README.md"), "edited readme");
    expect(sourceFingerprint(dir, listed)).toEqual(before);
    await writeFile(join(dir, "lib/b.ts"), "b edited");
    const after = sourceFingerprint(dir, listed);
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect(after.files["worker/a.ts"]).toBe(before.files["worker/a.ts"]);
    expect(after.files["lib/b.ts"]).not.toBe(before.files["lib/b.ts"]);
  });

  test("is the same whatever the order of the list; a deleted source changes it", async () => {
    await files(dir, { "a.ts": "a", "b.ts": "b" });
    const one = sourceFingerprint(dir, ["a.ts", "b.ts"]);
    expect(sourceFingerprint(dir, ["b.ts", "a.ts", "a.ts"])).toEqual(one);
    await rm(join(dir, "b.ts"));
    const gone = sourceFingerprint(dir, ["a.ts", "b.ts"]);
    expect(gone.files["b.ts"]).toBe("missing");
    expect(gone.fingerprint).not.toBe(one.fingerprint);
  });
});

describe("checkBundleSources (what `worker.mjs bundle-check` answers worker.py)", () => {
  test("matches until a recorded source changes, and names it", async () => {
    await files(dir, { "worker/a.ts": "a", "package-lock.json": "{}", "notes.txt": "x" });
    const manifest = sourceFingerprint(dir, ["worker/a.ts", "package-lock.json"]);
    await files(dir, { "bundle/manifest.json": JSON.stringify(manifest) });
    expect(checkBundleSources(dir)).toEqual({ ok: true });
    await writeFile(join(dir, "notes.txt"), "unrelated edit");
    expect(checkBundleSources(dir)).toEqual({ ok: true });
    await writeFile(join(dir, "worker/a.ts"), "a fork's edit");
    expect(checkBundleSources(dir)).toEqual({
      ok: false,
      reason: "changed since the bundle was built: worker/a.ts",
    });
  });

  test("without a bundle it says so", () => {
    const result = checkBundleSources(dir);
    expect(result.ok).toBe(false);
    expect(!result.ok && result.reason).toMatch(/^no readable bundle\/manifest\.json/);
  });
});

describe("installLayout: the same files whether the worker runs from sources, dist/ or the bundle", () => {
  // This checkout's paths: resolving swagger-ui-dist needs its node_modules beside the module.
  const at = (path: string) => pathToFileURL(join(repoRoot, path)).href;

  test("sources (tsx) and dist/ (tsc) read the page from web/console and swagger-ui-dist from node_modules", () => {
    for (const module of ["lib/install.ts", "dist/lib/install.js"]) {
      expect(installLayout(at(module), false)).toEqual({
        root: repoRoot,
        bundled: false,
        console: {
          index: join(repoRoot, "web/console/index.html"),
          style: join(repoRoot, "web/console/style.css"),
          app: join(repoRoot, "web/console/build/app.js"),
        },
        swaggerUi: join(repoRoot, "node_modules/swagger-ui-dist"),
      });
    }
  });

  test("the bundle reads everything from bundle/, and misc/ from the clone", () => {
    expect(installLayout(at("bundle/worker.mjs"), true)).toEqual({
      root: repoRoot,
      bundled: true,
      console: {
        index: join(repoRoot, "bundle/console/index.html"),
        style: join(repoRoot, "bundle/console/style.css"),
        app: join(repoRoot, "bundle/console/app.js"),
      },
      swaggerUi: join(repoRoot, "bundle/swagger-ui"),
    });
  });
});

describe("npm run bundle / bundle:check", () => {
  const bundleScript = (...args: string[]) =>
    run(process.execPath, ["--import", "tsx", join(repoRoot, "scripts", "bundle.ts"), ...args], {
      cwd: repoRoot,
    });

  test("a build is reproducible, and the check fails on a stale bundle, telling to run `npm run bundle`", async () => {
    const out = join(dir, "bundle");
    await bundleScript("--dir", out);
    // A second build of the same sources is byte for byte the first.
    await expect(bundleScript("--check", "--dir", out)).resolves.toMatchObject({
      stdout: expect.stringContaining("is what the sources build"),
    });
    const manifest = JSON.parse(await readFile(join(out, "manifest.json"), "utf8")) as {
      files: Record<string, string>;
    };
    expect(Object.keys(manifest.files)).toEqual(
      expect.arrayContaining(["worker/cli.ts", "lib/install.ts", "web/console/app.ts", "package-lock.json"]),
    );
    expect(Object.keys(manifest.files).some((path) => path.startsWith("node_modules/"))).toBe(false);

    // Stale: the program differs (as when a source changed after the last `npm run bundle`), and a leftover file.
    await writeFile(
      join(out, "worker.mjs"),
      (await readFile(join(out, "worker.mjs"), "utf8")) + "\n// old\n",
    );
    await writeFile(join(out, "console", "old.js"), "");
    const failed = await bundleScript("--check", "--dir", out).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(failed?.code).toBe(1);
    expect(failed?.stderr).toContain("worker.mjs (differs)");
    expect(failed?.stderr).toContain("console/old.js (not built from the sources)");
    expect(failed?.stderr).toContain("Run `npm run bundle` and commit bundle/");
  }, 120_000);
});
