import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { repoRoot } from "./worker.js";

/**
 * Headless Chromium for the browser tests: Debian's `chromium`, installed by scripts/install-chromium.sh when
 * missing (as the stack installs its tools), driven by playwright-core, which downloads no browser.
 */
export async function launchChromium(): Promise<Browser> {
  const path = execFileSync(join(repoRoot, "scripts", "install-chromium.sh"), {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    timeout: 600_000,
  }).trim();
  return chromium.launch({
    executablePath: path,
    headless: true,
    // Root in a container has no user namespace for the sandbox; the page is our own, on loopback.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60_000,
  });
}

/** Where tests leave screenshots (gitignored). */
export const artifactsDir = join(repoRoot, "test-artifacts");
