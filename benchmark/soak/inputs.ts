import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";

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
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;

  constructor() {
    this.server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0]!;
      this.served.set(path, (this.served.get(path) ?? 0) + 1);
      req.resume();
      res.writeHead(200, { "content-type": "image/png", "content-length": RED_PIXEL_PNG.length });
      res.end(RED_PIXEL_PNG);
    });
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
  }

  /** A URL of its own for `key` (each one is a new entry of a worker's input cache). */
  url(key: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/image/${encodeURIComponent(key)}.png`;
  }

  async start(): Promise<this> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
