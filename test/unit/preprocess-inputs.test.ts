import { jest } from "@jest/globals";
import { mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CancelledError, InputError, InvalidWorkflowError } from "../../lib/errors.js";
import type { ObjectInfoNode, Workflow } from "../../handlers/comfyui/types.js";
import { InputDownloader } from "../../handlers/preprocess/downloads.js";
import { fileNameProblem } from "../../handlers/preprocess/file-names.js";
import { planDownloads, prepareWorkflow } from "../../handlers/preprocess/index.js";
import { InputCache } from "../../handlers/preprocess/input-cache.js";
import { Slots } from "../../handlers/preprocess/slots.js";

const NODES: Record<string, ObjectInfoNode> = {
  LoadImage: { input: { required: { image: [["example.png"], { image_upload: true }] } } },
  LoadImageOutput: {
    input: { required: { image: ["COMBO", { remote: { route: "/internal/files/output" } }] } },
  },
  CheckpointLoaderSimple: {
    input: { required: { ckpt_name: [["sd15/model.safetensors", "other.ckpt"]] } },
  },
  CLIPTextEncode: { input: { required: { text: ["STRING", { multiline: true }] } } },
  SaveImage: { output_node: true, input: { required: { filename_prefix: ["STRING", {}] } } },
};

const PNG = Buffer.from(
  "89504e470d0a1a0a0000000d4948445200000001000000010806000000" +
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201d5e6b0f70000000049454e44ae426082",
  "hex",
);
const dataUri = (tag: string) => `data:image/png;tag=${tag};base64,${PNG.toString("base64")}`;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "preprocess-inputs-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const downloader = (over: Partial<ConstructorParameters<typeof InputDownloader>[0]> = {}) =>
  new InputDownloader({
    inputDir: dir,
    allowPrivate: false,
    maxBytes: 1024 * 1024,
    timeoutMs: 5_000,
    cacheMaxBytes: 1024 * 1024,
    cacheMaxFiles: 100,
    maxPerJob: 64,
    concurrency: 8,
    ...over,
  });

describe("fileNameProblem: a file input names a plain file of the input folder", () => {
  test.each([
    ["example.png", undefined],
    ["url_0123456789abcdef0123456789abcdef.png", undefined],
    ["photo..png", undefined],
    ["x [output]", "annotation"],
    ["x[temp]", "annotation"],
    ["x [INPUT] ", "annotation"],
    ["a/b.png", "separator"],
    ["..\\output\\x.png", "separator"],
    ["/etc/hostname", "separator"],
    ["..", "folder"],
    [".", "folder"],
    ["C:x.png", "absolute"],
    ["a\0b", "NUL"],
    ["", "empty"],
  ])("%j", (value, problem) => {
    const found = fileNameProblem(value);
    if (problem === undefined) expect(found).toBeUndefined();
    else expect(found).toMatch(new RegExp(problem, "i"));
  });
});

describe("planDownloads: the whole workflow is judged before anything is fetched", () => {
  test("an unknown node type is ComfyUI's kind of refusal (invalid_workflow), whatever its inputs", () => {
    const wf: Workflow = { "7": { class_type: "NoSuchNode", inputs: { a: "data:,x" } } };
    const err = catchIt(() => planDownloads(wf, NODES, 64));
    expect(err).toBeInstanceOf(InvalidWorkflowError);
    expect((err as InvalidWorkflowError).httpStatus).toBe(400);
    expect((err as Error).message).toMatch(/NoSuchNode does not exist/);
    expect((err as InvalidWorkflowError).details).toMatchObject({ error: { details: "Node ID '#7'" } });
  });

  test("MAX_INPUT_URLS: 64 pass, 65 are a 400 naming the variable", () => {
    const wf = (n: number): Workflow =>
      Object.fromEntries(
        Array.from({ length: n }, (_, i) => [
          `${i}`,
          { class_type: "LoadImage", inputs: { image: dataUri(`${i}`) } },
        ]),
      );
    expect(planDownloads(wf(64), NODES, 64)).toHaveLength(64);
    const err = catchIt(() => planDownloads(wf(65), NODES, 64));
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/65 URL or data: inputs, above MAX_INPUT_URLS=64/);
  });

  test("a URL in a text input is text: not fetched, not counted", () => {
    const wf: Workflow = {
      "1": { class_type: "CLIPTextEncode", inputs: { text: "https://example.com/a.png" } },
    };
    expect(planDownloads(wf, NODES, 0)).toEqual([]);
  });

  test("file names: declared choices pass (a model in a subfolder), a name leaving the folder is a 400 naming node and input", () => {
    const ok: Workflow = {
      "1": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "sd15/model.safetensors" } },
      "2": { class_type: "LoadImage", inputs: { image: "not-yet-listed.png" } },
      "3": { class_type: "LoadImageOutput", inputs: { image: "plain.png" } },
    };
    expect(planDownloads(ok, NODES, 64)).toEqual([]);
    for (const [classType, image] of [
      ["LoadImage", "victim/x.png [output]"],
      ["LoadImage", "../output/victim/x.png"],
      ["LoadImage", "/etc/hostname"],
      ["LoadImageOutput", "x.png [output]"],
      ["CheckpointLoaderSimple", "../../secret.safetensors"],
    ] as const) {
      const input = classType === "CheckpointLoaderSimple" ? "ckpt_name" : "image";
      const err = catchIt(() =>
        planDownloads({ "9": { class_type: classType, inputs: { [input]: image } } }, NODES, 64),
      );
      expect(err).toBeInstanceOf(InputError);
      expect((err as Error).message).toContain(`node 9 (${classType}) input "${input}"`);
    }
  });
});

describe("prepareWorkflow", () => {
  test("a refused workflow fetches nothing and writes nothing", async () => {
    const d = downloader({ maxPerJob: 2 });
    const fetch = jest.spyOn(d, "fetch");
    const wf: Workflow = Object.fromEntries(
      [0, 1, 2].map((i) => [`${i}`, { class_type: "LoadImage", inputs: { image: dataUri(`${i}`) } }]),
    );
    await expect(prepareWorkflow(wf, { nonce: "r", nodes: NODES, downloader: d })).rejects.toThrow(
      /MAX_INPUT_URLS=2/,
    );
    expect(fetch).not.toHaveBeenCalled();
    expect(await readdir(dir)).toEqual([]);
  });

  test("downloads replace the values and output nodes get the request nonce", async () => {
    const d = downloader();
    const wf: Workflow = {
      "1": { class_type: "LoadImage", inputs: { image: dataUri("a") } },
      "2": { class_type: "SaveImage", inputs: { filename_prefix: "x" } },
    };
    const prepared = await prepareWorkflow(wf, { nonce: "req", nodes: NODES, downloader: d });
    expect(prepared.workflow["1"]!.inputs.image).toMatch(/^url_[0-9a-f]{32}\.png$/);
    expect(prepared.workflow["2"]!.inputs.worker_request_id).toBe("req");
    expect(prepared.inputFiles).toEqual([prepared.workflow["1"]!.inputs.image]);
  });
});

describe("InputDownloader", () => {
  test("a data: URI is not decoded for a job already cancelled", async () => {
    const d = downloader();
    const abort = new AbortController();
    abort.abort(new CancelledError("gone"));
    await expect(d.fetch(dataUri("c"), { expectImage: true, signal: abort.signal })).rejects.toThrow("gone");
    expect(await readdir(dir)).toEqual([]);
  });

  test("downloads beyond INPUT_DOWNLOAD_CONCURRENCY wait; a waiter's cancel ends only its own wait", async () => {
    const d = downloader({ concurrency: 1 });
    // Holds the one slot through the private queue: a data: URI decodes too fast to hold it.
    const slots = (d as unknown as { slots: Slots }).slots;
    const release = await slots.acquire();
    const abort = new AbortController();
    const waiting = d.fetch(dataUri("w"), { expectImage: true, signal: abort.signal });
    const other = d.fetch(dataUri("o"), { expectImage: true });
    // Both first look in the cache (no slot for that), then queue for the slot.
    const deadline = Date.now() + 5_000;
    while (d.waiting < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(d.waiting).toBe(2);
    abort.abort(new CancelledError("cancelled while waiting"));
    await expect(waiting).rejects.toThrow("cancelled while waiting");
    expect(d.waiting).toBe(1);
    release();
    await expect(other).resolves.toMatch(/^url_/);
    expect(await readdir(dir)).toHaveLength(1);
  });

  test("another job's cancel of a shared download does not fail this job", async () => {
    const d = downloader({ concurrency: 1 });
    const slots = (d as unknown as { slots: Slots }).slots;
    const release = await slots.acquire();
    const abort = new AbortController();
    const first = d.fetch(dataUri("s"), { expectImage: true, signal: abort.signal });
    const second = d.fetch(dataUri("s"), { expectImage: true });
    abort.abort(new CancelledError("first job cancelled"));
    await expect(first).rejects.toThrow("first job cancelled");
    release();
    await expect(second).resolves.toMatch(/^url_/);
  });
});

describe("InputCache: bounded by files and bytes, indexed in memory", () => {
  const cache = (over: Partial<ConstructorParameters<typeof InputCache>[0]> = {}) =>
    new InputCache({ dir, maxBytes: 1_000, maxFiles: 3, isPinned: () => false, ...over });
  const hash = (i: number) => i.toString(16).padStart(32, "0");
  const write = async (c: InputCache, i: number, bytes = 10) => {
    const name = `url_${hash(i)}.png`;
    await writeFile(join(dir, name), Buffer.alloc(bytes));
    await c.add(hash(i), name, bytes);
    return name;
  };

  test("past INPUT_CACHE_MAX_FILES the least recently used go, a pinned file stays", async () => {
    const pinned = new Set<string>();
    const c = cache({ isPinned: (n) => pinned.has(n) });
    pinned.add(await write(c, 1));
    await write(c, 2);
    await write(c, 3);
    expect(await c.lookup(hash(2))).toBe(`url_${hash(2)}.png`);
    await write(c, 4);
    // 1 is pinned, 2 was used just now: 3 goes.
    expect((await readdir(dir)).sort()).toEqual([1, 2, 4].map((i) => `url_${hash(i)}.png`));
    expect(await c.size()).toEqual({ files: 3, bytes: 30 });
  });

  test("past INPUT_CACHE_MAX_BYTES the oldest go until it fits", async () => {
    const c = cache({ maxFiles: 100 });
    await write(c, 1, 400);
    await write(c, 2, 400);
    await write(c, 3, 400);
    expect((await readdir(dir)).sort()).toEqual([2, 3].map((i) => `url_${hash(i)}.png`));
  });

  test("what an earlier run left is read once, oldest first; a file removed behind its back is a miss", async () => {
    for (const i of [1, 2]) {
      await writeFile(join(dir, `url_${hash(i)}.jpg`), Buffer.alloc(5));
      await utimes(join(dir, `url_${hash(i)}.jpg`), i, i);
    }
    await writeFile(join(dir, `url_${hash(3)}.png.abc.part`), "partial");
    await writeFile(join(dir, "example.png"), "not ours");
    const c = cache();
    expect(await c.size()).toEqual({ files: 2, bytes: 10 });
    await rm(join(dir, `url_${hash(2)}.jpg`));
    expect(await c.lookup(hash(2))).toBeUndefined();
    expect(await c.lookup(hash(1))).toBe(`url_${hash(1)}.jpg`);
    expect(await c.size()).toEqual({ files: 1, bytes: 5 });
  });
});

describe("Slots", () => {
  test("first come first served; the slot passes straight to the next waiter", async () => {
    const s = new Slots(1);
    const order: number[] = [];
    const first = await s.acquire();
    const a = s.acquire().then((r) => (order.push(1), r));
    const b = s.acquire().then((r) => (order.push(2), r));
    first();
    first(); // twice is once
    (await a)();
    (await b)();
    expect(order).toEqual([1, 2]);
    expect(s.waiting).toBe(0);
    const again = await s.acquire();
    again();
  });

  test("an aborted signal never takes a slot", async () => {
    const s = new Slots(1);
    const held = await s.acquire();
    await expect(s.acquire(AbortSignal.abort(new Error("already")))).rejects.toThrow("already");
    expect(s.waiting).toBe(0);
    held();
  });
});

function catchIt(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected a throw");
}
