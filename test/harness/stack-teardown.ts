import { rm } from "node:fs/promises";

export default async function globalTeardown(): Promise<void> {
  await Promise.all((globalThis.__TEST_SERVICES__ ?? []).map((s) => s.stop()));
  if (process.env.TEST_TMP_ROOT && !process.env.TEST_KEEP_TMP) {
    await rm(process.env.TEST_TMP_ROOT, { recursive: true, force: true });
  }
}
