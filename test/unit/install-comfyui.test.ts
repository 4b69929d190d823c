import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "../../scripts/services/paths.js";

/**
 * COMFYUI_SOURCE that is not a ComfyUI tree is refused, naming it, before anything is installed (the cache stays
 * untouched). A real tree is installed by the 0.33.0 leg of CI (see .ci/run).
 */
const run = promisify(execFile);
let cache: string;

beforeEach(async () => {
  cache = await mkdtemp(join(tmpdir(), "install-comfyui-"));
});
afterEach(() => rm(cache, { recursive: true, force: true }));

async function install(source: string): Promise<{ code: number; stderr: string }> {
  return run("bash", [join(repoRoot, "scripts", "install-comfyui.sh")], {
    env: { ...process.env, COMFY_WORKER_CACHE: join(cache, "cache"), COMFYUI_SOURCE: source },
    timeout: 60_000,
  }).then(
    ({ stderr }) => ({ code: 0, stderr }),
    (err: { code: number; stderr: string }) => ({ code: err.code, stderr: err.stderr }),
  );
}

test("a COMFYUI_SOURCE that does not exist is named", async () => {
  const { code, stderr } = await install(join(cache, "nowhere.tar.gz"));
  expect(code).not.toBe(0);
  expect(stderr).toContain(`COMFYUI_SOURCE: no such file or folder: ${join(cache, "nowhere.tar.gz")}`);
});

test("a folder without main.py is not taken for a ComfyUI tree", async () => {
  const dir = join(cache, "not-comfy");
  await mkdir(dir);
  await writeFile(join(dir, "README.md"), "hello");
  const { code, stderr } = await install(dir);
  expect(code).not.toBe(0);
  expect(stderr).toContain(`COMFYUI_SOURCE: ${dir} has no main.py (not a ComfyUI tree)`);
});

test("a tarball without a ComfyUI tree is refused and leaves no version folder", async () => {
  const dir = join(cache, "pkg");
  await mkdir(join(dir, "a"), { recursive: true });
  await mkdir(join(dir, "b"));
  await writeFile(join(dir, "a", "main.py"), "");
  const tarball = join(cache, "two-folders.tar.gz");
  await run("tar", ["-czf", tarball, "-C", dir, "a", "b"]);
  const { code, stderr } = await install(tarball);
  expect(code).not.toBe(0);
  expect(stderr).toContain(`COMFYUI_SOURCE: ${tarball} does not hold a ComfyUI tree`);
  const { stdout } = await run("find", [join(cache, "cache"), "-maxdepth", "1", "-name", "comfyui*"]);
  expect(stdout).toBe("");
});
