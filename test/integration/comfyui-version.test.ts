import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureComfyUI } from "../../scripts/services/comfyui.js";
import { stack } from "../harness/stack.js";

/**
 * The suite runs against whichever ComfyUI the install names (PyPI's 0.3.75 tree, or COMFYUI_SOURCE's): a leg meant
 * for one version must not pass on another by accident (a reused stack of the other version, a stale cache).
 */
test("the stack's ComfyUI is the version the install names", async () => {
  const { comfyDir } = await ensureComfyUI();
  const installed = /^__version__ = "(.+)"$/m.exec(
    await readFile(join(comfyDir, "comfyui_version.py"), "utf8"),
  );
  expect(installed?.[1]).toMatch(/^\d+\.\d+\.\d+/);
  const res = await fetch(`${stack().comfyUrl}/system_stats`, { signal: AbortSignal.timeout(10_000) });
  const stats = (await res.json()) as { system: { comfyui_version: string } };
  expect(stats.system.comfyui_version).toBe(installed![1]);
  if (process.env.COMFYUI_SOURCE === undefined || process.env.COMFYUI_SOURCE === "")
    expect(stats.system.comfyui_version).toBe("0.3.75");
});
