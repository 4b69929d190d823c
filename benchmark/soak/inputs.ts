import { createServer } from "node:http";
import { LoopbackServer } from "./loopback.js";

/** A 1x1 red PNG: the soak's `data:` and URL inputs. */
export const RED_PIXEL_PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
  "base64",
);

/**
 * The server of the soak's URL inputs (a LoadImage whose image is an http URL): every GET answers the PNG and is
 * counted. The workers reach it on loopback (INPUT_URL_ALLOW_PRIVATE=true in the fleet).
 */
export class InputServer {
  /** GETs answered, by path. */
  readonly served = new Map<string, number>();
  private readonly http: LoopbackServer;

  constructor() {
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0]!;
      this.served.set(path, (this.served.get(path) ?? 0) + 1);
      req.resume();
      res.writeHead(200, { "content-type": "image/png", "content-length": RED_PIXEL_PNG.length });
      res.end(RED_PIXEL_PNG);
    });
    this.http = new LoopbackServer(server);
  }

  /** A URL of its own for `key` (each one is a new entry of a worker's input cache). */
  url(key: string): string {
    return `${this.http.origin}/image/${encodeURIComponent(key)}.png`;
  }

  async start(): Promise<this> {
    await this.http.start();
    return this;
  }

  stop(): Promise<void> {
    return this.http.stop();
  }
}
