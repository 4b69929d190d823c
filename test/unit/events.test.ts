import { Emitter } from "../../lib/events.js";
import type { Logger } from "../../lib/logger.js";

interface TestEvents {
  created: { id: string };
  finished: number;
}

/** A logger that records what is logged at error level (the emitter logs nothing else). */
function recordingLogger() {
  const errors: { fields: Record<string, unknown>; message: string }[] = [];
  const logger = {
    error: (fields: Record<string, unknown>, message: string) => void errors.push({ fields, message }),
  } as unknown as Pick<Logger, "error">;
  return { logger, errors };
}

describe("Emitter", () => {
  test("calls each listener of an event with its payload, in the order they were added", () => {
    const events = new Emitter<TestEvents>(recordingLogger().logger);
    const seen: string[] = [];
    events.on("created", ({ id }) => void seen.push(`a ${id}`));
    events.on("created", ({ id }) => void seen.push(`b ${id}`));
    events.on("finished", (n) => void seen.push(`finished ${n}`));
    events.emit("created", { id: "j1" });
    events.emit("finished", 3);
    expect(seen).toEqual(["a j1", "b j1", "finished 3"]);
  });

  test("a listener that throws is logged with the event's name, and the others still run", () => {
    const { logger, errors } = recordingLogger();
    const events = new Emitter<TestEvents>(logger);
    const seen: string[] = [];
    events.on("created", () => {
      throw new Error("broken listener (fake)");
    });
    events.on("created", ({ id }) => void seen.push(id));
    expect(() => events.emit("created", { id: "j1" })).not.toThrow();
    expect(seen).toEqual(["j1"]);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.fields).toMatchObject({ stage: "events", event: "created" });
    expect((errors[0]!.fields.err as Error).message).toBe("broken listener (fake)");
    expect(errors[0]!.message).toMatch(/created/);
  });

  test("a listener whose promise rejects is logged, never an unhandled rejection", async () => {
    const { logger, errors } = recordingLogger();
    const events = new Emitter<TestEvents>(logger);
    let rejected!: () => void;
    const logged = new Promise<void>((resolve) => (rejected = resolve));
    events.on("finished", async () => {
      await Promise.resolve();
      throw new Error("async listener failed (fake)");
    });
    events.on("finished", () => void setImmediate(rejected));
    events.emit("finished", 1);
    await logged;
    expect(errors.map((e) => (e.fields.err as Error).message)).toEqual(["async listener failed (fake)"]);
  });

  test("off() and the function on() returns remove the listener; an event without listeners is a no-op", () => {
    const events = new Emitter<TestEvents>(recordingLogger().logger);
    const seen: number[] = [];
    const a = (n: number) => void seen.push(n);
    const b = (n: number) => void seen.push(n * 10);
    events.on("finished", a);
    const offB = events.on("finished", b);
    events.emit("finished", 1);
    events.off("finished", a);
    events.emit("finished", 2);
    offB();
    events.emit("finished", 3);
    expect(seen).toEqual([1, 10, 20]);
    expect(events.listenerCount("finished")).toBe(0);
    expect(() => events.emit("created", { id: "nobody listens" })).not.toThrow();
  });

  test("a listener removed while an event is emitted still hears that event, not the next", () => {
    const events = new Emitter<TestEvents>(recordingLogger().logger);
    const seen: string[] = [];
    const second = (n: number) => void seen.push(`second ${n}`);
    events.on("finished", (n) => {
      seen.push(`first ${n}`);
      events.off("finished", second);
    });
    events.on("finished", second);
    events.emit("finished", 1);
    events.emit("finished", 2);
    expect(seen).toEqual(["first 1", "second 1", "first 2"]);
  });
});
