import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";
import { ComfyEvents, isEvent } from "../../handlers/comfyui/events.js";
import type { ComfyEvent } from "../../handlers/comfyui/types.js";
import { silentLogger } from "./fakes.js";

describe("ComfyUI's WebSocket frames", () => {
  test("isEvent: an object with a string type and an object data, whatever else it carries", () => {
    expect(
      isEvent({ type: "executed", data: { prompt_id: "p", node: "9", output: {}, asset_ids: ["a"] } }),
    ).toBe(true);
    expect(isEvent({ type: "status", data: {}, sid: "x", extra: 1 })).toBe(true);
    for (const frame of [
      null,
      5,
      "text",
      [],
      { type: 1, data: {} },
      { type: "x" },
      { type: "x", data: null },
    ])
      expect(isEvent(frame)).toBe(false);
    expect(isEvent({ type: "x", data: [] })).toBe(false);
  });

  test("frames that are not events are skipped, extra keys reach the listener, and the socket stays up", async () => {
    // A loopback server playing ComfyUI: what a newer (or a broken) ComfyUI may send, then a prompt's event.
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await once(server, "listening");
    server.on("connection", (socket) => {
      socket.send("null");
      socket.send("not json");
      socket.send(JSON.stringify({ type: "executing", data: null }));
      socket.send(Buffer.from([0, 0, 0, 1, 1, 2, 3]), { binary: true });
      socket.send(
        JSON.stringify({
          type: "executed",
          data: { prompt_id: "p1", node: "9", output: { images: [] }, asset_ids: ["a1"] },
          added_by_a_newer_comfyui: true,
        }),
      );
    });
    const events = new ComfyEvents({
      url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws?clientId=test`,
      logger: silentLogger(),
    });
    try {
      const heard = new Promise<ComfyEvent>((resolve) => events.subscribe("p1", resolve));
      events.start();
      const event = await heard;
      expect(event).toEqual({
        type: "executed",
        data: { prompt_id: "p1", node: "9", output: { images: [] }, asset_ids: ["a1"] },
        added_by_a_newer_comfyui: true,
      });
      expect(events.connected).toBe(true);
    } finally {
      events.stop();
      for (const client of server.clients) client.terminate();
      await new Promise((resolve) => server.close(resolve));
    }
  }, 10_000);
});
