import { chmod, open, rename, rm } from "node:fs/promises";

/**
 * Writes a file only its owner can read or write (0600), whole or not at all: the markers name where the worker
 * and the provisioning came from. An existing file of looser mode is replaced, not rewritten in place.
 */
export async function writePrivate(file: string, lines: readonly string[]): Promise<void> {
  const part = `${file}.new.${process.pid}`;
  try {
    const handle = await open(part, "w", 0o600);
    try {
      await handle.writeFile(lines.map((l) => `${l}\n`).join(""));
    } finally {
      await handle.close();
    }
    // The mode open() sets is masked by the umask; a looser one than 0600 is never wanted here.
    await chmod(part, 0o600);
    await rename(part, file);
  } catch (err) {
    await rm(part, { force: true });
    throw err;
  }
}
