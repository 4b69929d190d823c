import { readFile } from "node:fs/promises";
import { createServer as createHttpServer, type RequestListener, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { FrozenConfig } from "../config/index.js";
import type { Logger } from "../lib/logger.js";

/** The worker's three ports: routed (TLS with USE_SSL), plain HTTP for /session/end, and the local API. */
export interface Listeners {
  /** Listens on every port, in order, and logs where; the first that cannot listen rejects. */
  listen(logger: Logger): Promise<void>;
  /** Closes every port, dropping its open connections. */
  close(): Promise<void>;
  routedUrl(): string;
  plainHttpUrl(): string | undefined;
  apiUrl(): string | undefined;
}

export function createListeners(
  config: FrozenConfig,
  apps: { routed: RequestListener; plainHttp: RequestListener; local: RequestListener | undefined },
): Listeners {
  let routed: Server | undefined;
  let plainHttp: Server | undefined;
  let local: Server | undefined;
  const url = (s: Server | undefined) => {
    const a = s?.address() as AddressInfo | null | undefined;
    return a ? `http://127.0.0.1:${a.port}` : undefined;
  };
  const self: Listeners = {
    async listen(logger) {
      routed = config.worker.useSsl
        ? createHttpsServer(
            { cert: await readFile(config.worker.sslCert), key: await readFile(config.worker.sslKey) },
            apps.routed,
          )
        : createHttpServer(apps.routed);
      await listen(routed, config.worker.port, config.worker.host);
      // On the routed port's host, as upstream binds both of its listeners alike.
      plainHttp = createHttpServer(apps.plainHttp);
      await listen(plainHttp, config.plainHttp.port, config.worker.host);
      if (apps.local) {
        local = createHttpServer(apps.local);
        await listen(local, config.api.port, config.api.host);
      }
      logger.info(
        {
          stage: "lifecycle",
          routed: self.routedUrl(),
          session_end_http: self.plainHttpUrl(),
          api: self.apiUrl() ?? "disabled",
          // Signed requests must name this URL (AUTH_CHECK_URL=false turns the check off).
          signed_url_expected: config.autoscaler.checkUrl
            ? config.worker.publicUrl
            : "any (AUTH_CHECK_URL=false)",
        },
        "listening",
      );
    },
    async close() {
      await Promise.all(
        [routed, plainHttp, local].map(
          (s) =>
            new Promise<void>((resolve) => {
              if (!s?.listening) return resolve();
              s.close(() => resolve());
              s.closeAllConnections();
            }),
        ),
      );
    },
    routedUrl() {
      const a = routed?.address() as AddressInfo | null | undefined;
      return `${config.worker.useSsl ? "https" : "http"}://127.0.0.1:${a?.port ?? config.worker.port}`;
    },
    plainHttpUrl: () => url(plainHttp),
    apiUrl: () => url(local),
  };
  return self;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
