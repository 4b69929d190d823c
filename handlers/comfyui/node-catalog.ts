import { untilAborted } from "../../lib/backoff.js";
import type { ObjectInfoNode } from "./types.js";

/**
 * ComfyUI's /object_info, fetched once and again after ComfyUI restarts (custom nodes may have changed). The fetch
 * is shared by every job waiting for it, so it runs under its own deadline, never a caller's signal: one caller
 * going away stops only its own wait.
 */
export class NodeCatalog {
  private info: Promise<Record<string, ObjectInfoNode>> | undefined;

  constructor(
    private readonly source: { objectInfo(signal?: AbortSignal): Promise<Record<string, ObjectInfoNode>> },
    private readonly timeoutMs: number,
  ) {}

  get(signal?: AbortSignal): Promise<Record<string, ObjectInfoNode>> {
    if (!this.info) {
      const pending = this.source.objectInfo(AbortSignal.timeout(this.timeoutMs));
      this.info = pending;
      pending.catch(() => {
        if (this.info === pending) this.info = undefined;
      });
    }
    return signal ? untilAborted(this.info, signal) : this.info;
  }

  invalidate(): void {
    this.info = undefined;
  }
}
