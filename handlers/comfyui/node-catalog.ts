import type { ComfyClient } from "./client.js";
import type { ObjectInfoNode } from "./types.js";

/** ComfyUI's /object_info, fetched once and again after ComfyUI restarts (custom nodes may have changed). */
export class NodeCatalog {
  private info: Promise<Record<string, ObjectInfoNode>> | undefined;

  constructor(private readonly client: ComfyClient) {}

  get(signal?: AbortSignal): Promise<Record<string, ObjectInfoNode>> {
    if (!this.info) {
      const pending = this.client.objectInfo(signal);
      this.info = pending;
      pending.catch(() => {
        if (this.info === pending) this.info = undefined;
      });
    }
    return this.info;
  }

  invalidate(): void {
    this.info = undefined;
  }
}
