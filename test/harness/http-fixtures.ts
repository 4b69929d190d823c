import { once } from "node:events";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from "node:net";

export interface Received {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

/** A real HTTP server on 127.0.0.1 that records requests and answers with `handler` (200 "ok" by default). */
export class RecordingServer {
  readonly received: Received[] = [];
  private waiters: { n: number; resolve: () => void }[] = [];
  private server: Server;
  handler: (req: Received, res: ServerResponse) => void = (_req, res) => void res.end("ok");

  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const r: Received = {
          method: req.method ?? "",
          url: req.url ?? "",
          headers: req.headers,
          body: Buffer.concat(chunks).toString("utf8"),
        };
        this.received.push(r);
        this.handler(r, res);
        this.waiters = this.waiters.filter((w) => {
          if (this.received.length >= w.n) w.resolve();
          return this.received.length < w.n;
        });
      });
    });
  }

  async start(): Promise<this> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    return this;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Resolves once `n` requests have arrived in all. */
  waitFor(n: number): Promise<void> {
    if (this.received.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A tiny PNG (1x1 red pixel), for URL and data: inputs. */
export const RED_PIXEL_PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
  "base64",
);

/** An image URL whose download the test holds open; see startHeldImage(). */
export interface HeldImage {
  /** A URL of this server's PNG (any path serves it). */
  url(name?: string): string;
  /** Resolves once the first request for it has arrived: the job that loads it is in flight. */
  requested(): Promise<void>;
  /** Sends the body of every held download, and of each later one at once. */
  release(): void;
  /** Releases what is held (the jobs loading it complete), then closes the server. */
  stop(): Promise<void>;
}

/**
 * A PNG whose download is held: its headers go out at once, its body only when the test calls `release()`. A job
 * that loads it stays in flight (downloading its input) exactly as long as the test needs, however fast the
 * machine, where a "slow" workflow is a guess about the CPU.
 */
export async function startHeldImage(): Promise<HeldImage> {
  const server = await new RecordingServer().start();
  const held: ServerResponse[] = [];
  let released = false;
  server.handler = (_req, res) => {
    res.writeHead(200, { "content-type": "image/png", "content-length": RED_PIXEL_PNG.length });
    if (released) return void res.end(RED_PIXEL_PNG);
    res.flushHeaders();
    held.push(res);
  };
  const release = () => {
    released = true;
    for (const res of held.splice(0)) res.end(RED_PIXEL_PNG);
  };
  return {
    url: (name = "held.png") => `${server.url}/${name}`,
    requested: () => server.waitFor(1),
    release,
    stop: () => {
      release();
      return server.stop();
    },
  };
}

/** A TCP proxy to a real server; see startSlowProxy(). */
export interface SlowProxy {
  url: string;
  port: number;
  /** Resolves once `n` connections have arrived in all. */
  connections(n: number): Promise<void>;
  /** Connects every held connection, and each later one at once (with `"until-released"`). */
  release(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy to a real server that holds every new connection for `delay` ms, or until the test calls
 * `release()`, before connecting it: a slow network path to a real part (here S3), for tests of what overlaps
 * with uploads.
 */
export async function startSlowProxy(
  target: URL,
  delay: number | "until-released",
  port = 0,
): Promise<SlowProxy> {
  const sockets = new Set<Socket>();
  const held: (() => void)[] = [];
  let released = false;
  let arrived = 0;
  let waiters: { n: number; resolve: () => void }[] = [];
  const server = createTcpServer((client) => {
    sockets.add(client);
    client.pause();
    arrived++;
    waiters = waiters.filter((w) => (arrived >= w.n ? void w.resolve() : true));
    let closed = false;
    const start = () => {
      if (closed) return;
      const upstream = connect(Number(target.port), target.hostname, () => {
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      sockets.add(upstream);
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.on("close", () => upstream.destroy());
    };
    if (typeof delay === "number") {
      const timer = setTimeout(start, delay);
      client.on("close", () => clearTimeout(timer));
    } else if (released) start();
    else held.push(start);
    client.on("close", () => (closed = true));
  });
  server.listen(port, "127.0.0.1");
  await once(server, "listening");
  const bound = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${bound}`,
    port: bound,
    connections: (n) =>
      arrived >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve })),
    release: () => {
      released = true;
      for (const start of held.splice(0)) start();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** An HTTP proxy to a real server; see startLaggingProxy(). */
export interface LaggingProxy {
  url: string;
  close(): Promise<void>;
}

/**
 * An HTTP proxy to a real server that forwards each request whose path `lags` picks only after `lagMs`, the others
 * at once, headers as they came (a signed S3 request stays valid): one kind of request made slow on demand, which
 * a real S3 cannot be asked for.
 */
export async function startLaggingProxy(
  target: URL,
  lagMs: number,
  lags: (path: string) => boolean,
): Promise<LaggingProxy> {
  const timers = new Set<NodeJS.Timeout>();
  const server = createServer((req, res) => {
    const forward = () => {
      const upstream = request(
        {
          host: target.hostname,
          port: target.port,
          method: req.method,
          path: req.url,
          headers: req.headers,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      req.pipe(upstream);
    };
    if (!lags(req.url ?? "")) return forward();
    const timer = setTimeout(() => {
      timers.delete(timer);
      forward();
    }, lagMs);
    timers.add(timer);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const t of timers) clearTimeout(t);
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
