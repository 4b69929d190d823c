import { EventEmitter, once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Response } from "express";
import { silentLogger } from "../../lib/logger.js";
import { AutoscalerReporter } from "../../worker/reporter/reporter.js";
import { asVerified, RequestTracker } from "../../worker/reporter/tracker.js";

/**
 * A recording autoscaler on loopback whose first /worker_status/ answer the test holds back: the reporter's tick
 * is then in flight when the worker stops.
 */
async function heldAutoscaler(firstStatusAnswer = 200) {
  const received: { path: string; body: any }[] = [];
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let held = false;
  const firstStatus = new EventEmitter();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = "";
    req.on("data", (d: Buffer) => (text += d.toString()));
    req.on("end", () => {
      received.push({ path: req.url ?? "", body: text ? JSON.parse(text) : undefined });
      const answer = () => res.writeHead(200, { "content-type": "application/json" }).end("{}");
      if (req.url === "/worker_status/" && !held) {
        held = true;
        firstStatus.emit("held");
        void released.then(() => res.writeHead(firstStatusAnswer).end());
        return;
      }
      // Anything sent while the first status is held means the stop did not wait for the tick: let the tick
      // go on, so that what it sends too is recorded.
      release();
      answer();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, received, release, firstStatus, close: () => server.close() };
}

/** A reporter to `url` whose tracker holds one finished request (424242), reporting only when made to. */
function finishedRequestReporter(url: string) {
  const tracker = new RequestTracker(() => Date.now() / 1000);
  const res = Object.assign(new EventEmitter(), { writableFinished: false, statusCode: 200 });
  tracker.track(asVerified({ request_idx: 424242, reqnum: 1, cost: 100 }), 100, res as unknown as Response);
  Object.assign(res, { writableFinished: true });
  res.emit("close");
  const reporter = new AutoscalerReporter({
    addrs: [url],
    containerId: 1,
    masterToken: "t",
    url: "http://127.0.0.1:1",
    tracker,
    state: { loadtime: () => 1, maxPerf: () => 1, errorMsg: () => "", currentLoad: () => 0 } as never,
    logger: silentLogger(),
    intervalMs: 600_000,
    heartbeatMs: 600_000,
    timeoutMs: 5_000,
    retryDelayMs: 10,
  });
  return { reporter };
}

test("a stop while a tick is in flight reports each finished request once, not by the tick and the last flush both", async () => {
  const autoscaler = await heldAutoscaler();
  try {
    const { reporter } = finishedRequestReporter(autoscaler.url);
    const held = once(autoscaler.firstStatus, "held");
    reporter.start();
    await held;
    const stopped = reporter.stop(() => reporter.flush());
    // A correct stop sends nothing while its tick is held: after a moment of silence, the tick is let go.
    const silence = setTimeout(autoscaler.release, 300);
    await stopped;
    clearTimeout(silence);
    const deleted = autoscaler.received.filter((r) => r.path === "/delete_requests/");
    expect(
      deleted.flatMap((r) => r.body.requests.map((q: { request_idx: number }) => q.request_idx)),
    ).toEqual([424242]);
  } finally {
    autoscaler.close();
  }
}, 30_000);

test("a stop cuts the tick in flight short after its current attempt: no retries hold up the last reports", async () => {
  const autoscaler = await heldAutoscaler(500);
  try {
    const { reporter } = finishedRequestReporter(autoscaler.url);
    const held = once(autoscaler.firstStatus, "held");
    reporter.start();
    await held;
    const stopped = reporter.stop(() => reporter.flush());
    const silence = setTimeout(autoscaler.release, 300);
    await stopped;
    clearTimeout(silence);
    // The tick's one attempt (answered 500, not tried again), then the last status and the last requests.
    expect(autoscaler.received.map((r) => r.path)).toEqual([
      "/worker_status/",
      "/worker_status/",
      "/delete_requests/",
    ]);
  } finally {
    autoscaler.close();
  }
}, 30_000);
