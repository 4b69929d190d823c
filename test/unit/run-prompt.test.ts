import {
  partialRunNote,
  runPrompt,
  skippedOutputs,
  type PromptEvent,
  type RunPromptOptions,
} from "../../handlers/comfyui/run-prompt.js";
import type { ComfyCapabilities } from "../../handlers/comfyui/types.js";
import { CancelledError, ComfyUnavailableError, ExecutionError } from "../../lib/errors.js";
import { FakeComfyClient, FakeComfyEvents, successEntry } from "./fakes.js";

/** A ComfyUI with the jobs API and the atomic cancel route (0.33.0 has both). */
const NEWER: ComfyCapabilities = { jobsApi: true, atomicCancel: true, featureFlags: {} };

const WORKFLOW = { "1": { class_type: "EmptyImage", inputs: {} } };
/** Long enough that a test finishing well within its own timeout proves an event, not the poll, ended the wait. */
const NEVER_POLLS = 600_000;
const QUICK = 10_000;

function setup(overrides: Partial<RunPromptOptions> = {}) {
  const client = new FakeComfyClient();
  const events = new FakeComfyEvents();
  const heard: PromptEvent[] = [];
  const opts: RunPromptOptions = {
    client: client.asClient(),
    events: events.asEvents(),
    clientId: "fake-client",
    promptId: "prompt-1",
    workflow: WORKFLOW,
    signal: new AbortController().signal,
    pollMs: NEVER_POLLS,
    onEvent: (event) => heard.push(event),
    ...overrides,
  };
  return { client, events, heard, opts };
}

describe("runPrompt", () => {
  test(
    "completes on the execution events: the end wakes it at once, history is read once",
    async () => {
      const { client, events, heard, opts } = setup();
      client.onQueue = (id) => {
        events.send(id, "execution_start", { timestamp: 1_000 });
        events.send(id, "execution_cached", { nodes: ["0"] });
        events.send(id, "executing", { node: "1" });
        events.send(id, "progress", { node: "1", value: 1, max: 2 });
        events.send(id, "executed", { node: "1", output: { images: [] } });
        client.finish(id, successEntry({ "1": { images: [] } }));
        events.send(id, "executing", { node: null });
      };
      const run = await runPrompt(opts);
      expect(run.history.outputs).toEqual({ "1": { images: [] } });
      expect(run.details).toMatchObject({
        prompt_id: "prompt-1",
        started_at: 1_000,
        nodes_executed: ["1"],
        cached_nodes: ["0"],
        current_node: null,
        error: null,
        interrupted: false,
        reconciled_from_history: false,
      });
      expect(run.details.progress_updates).toMatchObject([{ node: "1", value: 1, max: 2 }]);
      expect(heard.map((e) => e.type)).toEqual(["cached", "executing", "progress", "executed"]);
      expect(client.queued).toEqual([{ promptId: "prompt-1", workflow: WORKFLOW }]);
      expect(client.historyCalls).toBe(1);
      expect(events.listened()).toEqual([]);
    },
    QUICK,
  );

  test("falls back to polling /history when the events never come, and says so", async () => {
    const { client, events, opts } = setup({ pollMs: 5 });
    let polledBeforeEnd = 0;
    client.onQueue = (id) => {
      // The prompt ends after a few polls, and the WebSocket tells nothing about it.
      const poll = client.history;
      Object.assign(client, {
        history: async (promptId: string) => {
          if (++polledBeforeEnd === 3) client.finish(id);
          return poll(promptId);
        },
      });
    };
    const run = await runPrompt(opts);
    expect(run.details.reconciled_from_history).toBe(true);
    expect(run.details.completed_at).not.toBeNull();
    expect(polledBeforeEnd).toBe(3);
    expect(events.listened()).toEqual([]);
  });

  test(
    "the socket reconnecting wakes it to read /history (an end sent during the gap is not lost)",
    async () => {
      const { client, events, opts } = setup();
      client.onQueue = (id) => {
        client.finish(id);
        events.emit("open");
      };
      const run = await runPrompt(opts);
      expect(run.details.reconciled_from_history).toBe(true);
    },
    QUICK,
  );

  test(
    "an execution_error becomes an ExecutionError naming the node, with ComfyUI's details",
    async () => {
      const { client, events, opts } = setup();
      const error = {
        node_id: "3",
        node_type: "KSampler",
        exception_message: "mat1 and mat2 shapes cannot be multiplied\n",
        exception_type: "RuntimeError",
      };
      client.onQueue = (id) => {
        events.send(id, "executing", { node: "3" });
        events.send(id, "execution_error", error);
        client.finish(id, {
          prompt: [],
          outputs: {},
          status: { status_str: "error", completed: false, messages: [["execution_error", error]] },
        });
      };
      const failure = await runPrompt(opts).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(ExecutionError);
      const err = failure as ExecutionError;
      expect(err.message).toBe(
        "ComfyUI failed at node 3 (KSampler): mat1 and mat2 shapes cannot be multiplied",
      );
      expect(err.retryable).toBe(false);
      const details = err.details as {
        execution_details: { error: unknown; nodes_executed: string[] };
        comfyui_response: { status: { status_str: string } };
      };
      expect(details.execution_details.error).toMatchObject(error);
      expect(details.execution_details.nodes_executed).toEqual(["3"]);
      expect(details.comfyui_response.status.status_str).toBe("error");
    },
    QUICK,
  );

  test("an error learned only from /history is reported the same way", async () => {
    const { client, opts } = setup({ pollMs: 5 });
    const error = { node_id: "9", node_type: "SaveImage", exception_message: "disk full" };
    client.onQueue = (id) =>
      client.finish(id, {
        prompt: [],
        outputs: {},
        status: { status_str: "error", completed: false, messages: [["execution_error", error]] },
      });
    await expect(runPrompt(opts)).rejects.toThrow(
      new ExecutionError("ComfyUI failed at node 9 (SaveImage): disk full"),
    );
  });

  test(
    "an abort interrupts this prompt and removes it from the queue, rejecting with the reason",
    async () => {
      const controller = new AbortController();
      const { client, events, opts } = setup({ signal: controller.signal });
      const reason = new CancelledError("Cancelled by the caller");
      client.onQueue = (id) => {
        events.send(id, "executing", { node: "1" });
        queueMicrotask(() => controller.abort(reason));
      };
      await expect(runPrompt(opts)).rejects.toBe(reason);
      expect(client.interrupted).toEqual(["prompt-1"]);
      expect(client.deleted).toEqual(["prompt-1"]);
      expect(events.listened()).toEqual([]);
    },
    QUICK,
  );

  test("a prompt that a restarted ComfyUI lost (not queued, no history) is ComfyUnavailableError", async () => {
    const { client, opts } = setup({ pollMs: 1 });
    client.onQueue = (id) => client.forget(id);
    const failure = await runPrompt(opts).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ComfyUnavailableError);
    expect((failure as ComfyUnavailableError).retryable).toBe(true);
    expect((failure as Error).message).toMatch(/lost the prompt/);
  });

  test("ComfyUI not answering /history is tolerated for a moment, then fails the prompt as retryable", async () => {
    let t = 0;
    const { client, opts } = setup({ pollMs: 1, unavailableAfterMs: 3, now: () => t });
    let calls = 0;
    Object.assign(client, {
      history: async () => {
        calls++;
        t += 1;
        throw new ComfyUnavailableError("ComfyUI did not answer GET /history (fake)");
      },
    });
    await expect(runPrompt(opts)).rejects.toBeInstanceOf(ComfyUnavailableError);
    // The first failure starts the clock; it gives up once 3 ms of the fake clock have passed since.
    expect(calls).toBe(4);
  });

  describe("on a ComfyUI with the jobs API and atomic cancel", () => {
    test("a prompt whose events never come is seen finished by the jobs API: /history is read once, at the end", async () => {
      const { client, events, opts } = setup({ pollMs: 5, capabilities: NEWER });
      let polls = 0;
      client.onQueue = (id) => {
        const job = client.job;
        Object.assign(client, {
          job: async (promptId: string) => {
            if (++polls === 3) client.finish(id, successEntry({ "9": { images: [] } }));
            return job(promptId);
          },
        });
      };
      const run = await runPrompt(opts);
      expect(run.history.outputs).toEqual({ "9": { images: [] } });
      expect(run.details.reconciled_from_history).toBe(true);
      expect(client.jobCalls).toBe(3);
      expect(client.historyCalls).toBe(1);
      expect(events.listened()).toEqual([]);
    });

    test("a prompt the jobs API does not know (a restarted ComfyUI) is ComfyUnavailableError at the first read", async () => {
      const { client, opts } = setup({ pollMs: 1, capabilities: NEWER });
      client.onQueue = (id) => client.forget(id);
      await expect(runPrompt(opts)).rejects.toThrow(/lost the prompt/);
      expect(client.jobCalls).toBe(1);
    });

    test("a failed job is read from its history entry, as on an older ComfyUI", async () => {
      const { client, opts } = setup({ pollMs: 1, capabilities: NEWER });
      const error = { node_id: "9", node_type: "SaveImage", exception_message: "disk full" };
      client.onQueue = (id) =>
        client.finish(id, {
          prompt: [],
          outputs: {},
          status: { status_str: "error", completed: false, messages: [["execution_error", error]] },
        });
      await expect(runPrompt(opts)).rejects.toThrow(
        new ExecutionError("ComfyUI failed at node 9 (SaveImage): disk full"),
      );
    });

    test("a job whose history entry is gone meanwhile stands in with the job's own copy", async () => {
      const { client, opts } = setup({ pollMs: 1, capabilities: NEWER });
      client.onQueue = (id) => client.finish(id, successEntry({ "3": { images: [] } }));
      Object.assign(client, { history: async () => undefined });
      const run = await runPrompt(opts);
      expect(run.history.outputs).toEqual({ "3": { images: [] } });
    });

    test(
      "an abort cancels through the atomic route alone (no /interrupt that could hit the next prompt)",
      async () => {
        const controller = new AbortController();
        const { client, events, opts } = setup({ signal: controller.signal, capabilities: NEWER });
        const reason = new CancelledError("Cancelled by the caller");
        client.onQueue = (id) => {
          events.send(id, "executing", { node: "1" });
          queueMicrotask(() => controller.abort(reason));
        };
        await expect(runPrompt(opts)).rejects.toBe(reason);
        expect(client.cancelled).toEqual(["prompt-1"]);
        expect(client.interrupted).toEqual([]);
        expect(client.deleted).toEqual([]);
      },
      QUICK,
    );
  });

  test(
    "a 200 with node_errors is a partial run: it runs, and the details name the outputs that will not come",
    async () => {
      const { client, events, opts } = setup();
      client.nodeErrors = {
        "8": {
          errors: [{ type: "value_bigger_than_max", message: "Value 999 bigger than max of 31" }],
          dependent_outputs: ["9", "12"],
          class_type: "ImageBlur",
        },
        "12": { errors: [], dependent_outputs: ["12"], class_type: "SaveImage" },
      };
      client.onQueue = (id) => {
        client.finish(id, successEntry({ "3": { images: [] } }));
        events.send(id, "executing", { node: null });
      };
      const run = await runPrompt(opts);
      expect(run.details.node_errors).toEqual(client.nodeErrors);
      expect(run.details.skipped_outputs).toEqual(["9", "12"]);
    },
    QUICK,
  );
});

describe("partial runs", () => {
  test("skippedOutputs: every node's dependent_outputs, once each, in node-id order; nothing for none", () => {
    expect(skippedOutputs({})).toEqual([]);
    expect(skippedOutputs(undefined)).toEqual([]);
    expect(
      skippedOutputs({
        "5": { dependent_outputs: ["10", "9"] },
        "7": { dependent_outputs: ["9"], errors: [], class_type: "X", extra: true } as never,
        "8": { errors: [] },
      }),
    ).toEqual(["9", "10"]);
  });

  test("partialRunNote: says which output nodes were skipped, and nothing for a whole run", () => {
    expect(partialRunNote(undefined)).toBe("");
    expect(partialRunNote({ skipped_outputs: [] })).toBe("");
    expect(partialRunNote({ skipped_outputs: ["9", "12"] })).toMatch(/^; output node\(s\) 9, 12 skipped/);
  });
});
