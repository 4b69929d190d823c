import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeConfig, loadConfig } from "../../config/index.js";
import type { ObjectInfoNode, Workflow } from "../../handlers/comfyui/types.js";
import { planDownloads } from "../../handlers/preprocess/index.js";
import { ModelCache } from "../../handlers/preprocess/model-cache.js";
import {
  MODEL_DIRS,
  modelFileName,
  modelFolder,
  parseModelReference,
} from "../../handlers/preprocess/model-folders.js";
import { ModelReferenceError, ModelTooLargeError, NotModelInputError } from "../../lib/errors.js";

const HF = { hfEndpoint: "https://hub.example" };

describe("the models folder of an input", () => {
  test.each([
    ["CheckpointLoaderSimple", "ckpt_name", "checkpoints", "checkpoints"],
    ["LoraLoader", "lora_name", "loras", "loras"],
    ["LoraLoaderModelOnly", "lora_name", "loras", "loras"],
    ["VAELoader", "vae_name", "vae", "vae"],
    ["ControlNetLoader", "control_net_name", "controlnet", "controlnet"],
    ["UNETLoader", "unet_name", "diffusion_models", "unet"],
    ["CLIPLoader", "clip_name", "text_encoders", "text_encoders"],
    ["DualCLIPLoader", "clip_name2", "text_encoders", "text_encoders"],
    ["CLIPVisionLoader", "clip_name", "clip_vision", "clip_vision"],
    ["UpscaleModelLoader", "model_name", "upscale_models", "upscale_models"],
    ["SomeCustomLoader", "lora_name", "loras", "loras"],
  ])("%s.%s is a file of %s (written to models/%s)", (classType, input, folder, dir) => {
    expect(modelFolder(classType, input)).toEqual({ folder, dir });
    expect(MODEL_DIRS).toContain(dir);
  });

  test.each([
    ["LoadImage", "image"],
    ["SomeCustomNode", "model_name"],
    ["CLIPTextEncode", "text"],
  ])("%s.%s is not a models input", (classType, input) => {
    expect(modelFolder(classType, input)).toBeUndefined();
  });
});

describe("model references", () => {
  const sha = "ab".repeat(32);

  test("https with #sha256: the fragment is the checksum, not part of the file's identity", () => {
    const ref = parseModelReference(
      `https://files.example/m/tiny.safetensors?sig=SECRET#sha256=${sha.toUpperCase()}`,
      HF,
    );
    expect(ref.source).toEqual({ kind: "url", url: "https://files.example/m/tiny.safetensors?sig=SECRET" });
    expect(ref.sha256).toBe(sha);
    expect(ref.shown).toBe("https://files.example/m/tiny.safetensors");
    expect(ref.stem).toMatch(/^od-[0-9a-f]{16}-$/);
    expect(parseModelReference("https://files.example/m/tiny.safetensors?sig=SECRET", HF).stem).toBe(
      ref.stem,
    );
    expect(parseModelReference("https://files.example/m/tiny.safetensors?sig=OTHER", HF).stem).not.toBe(
      ref.stem,
    );
    expect(modelFileName(ref)).toBe(`${ref.stem}tiny.safetensors`);
  });

  test("s3://bucket/key and hf://org/repo/path@revision", () => {
    expect(parseModelReference("s3://models-bucket/loras/a b.safetensors", HF).source).toEqual({
      kind: "s3",
      bucket: "models-bucket",
      key: "loras/a b.safetensors",
    });
    expect(parseModelReference("hf://org/repo/sub/dir/w.safetensors@v1.0", HF).source).toEqual({
      kind: "hf",
      url: "https://hub.example/org/repo/resolve/v1.0/sub/dir/w.safetensors",
    });
    expect(parseModelReference("hf://org/repo/w.safetensors", HF).source).toEqual({
      kind: "hf",
      url: "https://hub.example/org/repo/resolve/main/w.safetensors",
    });
    // A name with odd characters becomes a plain file name.
    const odd = parseModelReference("s3://models-bucket/loras/a b.safetensors", HF);
    expect(modelFileName(odd)).toBe(`${odd.stem}a_b.safetensors`);
  });

  test.each([
    ["ftp://x/y.safetensors", /starts with https/],
    ["https://user:pw@files.example/x.safetensors", /credentials/],
    ["https://files.example/x.safetensors#md5=abc", /sha256=<64 hex/],
    ["s3://b/", /s3:\/\/<bucket>\/<key>/],
    ["hf://org/repo", /hf:\/\/<org>/],
    ["hf://org/repo/../x.safetensors", /hf:\/\/<org>/],
  ])("%s is refused (model_bad_reference)", (value, message) => {
    expect(() => parseModelReference(value, HF)).toThrow(ModelReferenceError);
    expect(() => parseModelReference(value, HF)).toThrow(message);
  });

  test("a file without a model extension takes the Content-Disposition's name, else is refused", () => {
    const ref = parseModelReference("https://civitai.example/api/download/models/1234", HF);
    expect(modelFileName(ref, "detail-tweaker.safetensors")).toBe(`${ref.stem}detail-tweaker.safetensors`);
    expect(() => modelFileName(ref)).toThrow(/names no model file/);
    expect(() => modelFileName(ref, "page.html")).toThrow(ModelReferenceError);
  });
});

describe("planning model references", () => {
  const NODES: Record<string, ObjectInfoNode> = {
    CheckpointLoaderSimple: { input: { required: { ckpt_name: [["own.safetensors"]] } } },
    LoadImage: { input: { required: { image: [["example.png"], { image_upload: true }] } } },
    CLIPTextEncode: { input: { required: { text: ["STRING", { multiline: true }] } } },
  };

  test("a reference in a models input is a model download; in a text input it stays text", () => {
    const wf: Workflow = {
      "1": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "s3://bucket/tiny.safetensors" } },
      "2": { class_type: "CLIPTextEncode", inputs: { text: "hf://org/repo/x.safetensors" } },
    };
    const planned = planDownloads(wf, NODES, 8);
    expect(planned.map((p) => [p.nodeId, p.input, p.model])).toEqual([
      ["1", "ckpt_name", { folder: "checkpoints", dir: "checkpoints" }],
    ]);
  });

  test("s3:// or hf:// in a file input of no models folder is not_a_model_input", () => {
    const wf: Workflow = { "1": { class_type: "LoadImage", inputs: { image: "s3://bucket/x.png" } } };
    expect(() => planDownloads(wf, NODES, 8)).toThrow(NotModelInputError);
    expect(() => planDownloads(wf, NODES, 8)).toThrow(/node 1 \(LoadImage\) input "image"/);
  });

  test("model references count against MAX_INPUT_URLS", () => {
    const wf: Workflow = {
      "1": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "https://a.example/1.safetensors" } },
      "2": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "https://a.example/2.safetensors" } },
    };
    expect(() => planDownloads(wf, NODES, 1)).toThrow(/above MAX_INPUT_URLS=1/);
  });
});

describe("the model cache (LRU over the worker's downloads)", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "model-cache-"));
    await mkdir(join(dir, "checkpoints"));
    await mkdir(join(dir, "loras"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Writes `<dir>/<stem><name>` of `bytes` bytes, aged `age` seconds. */
  async function place(sub: string, stem: string, name: string, bytes: number, age: number): Promise<void> {
    const path = join(dir, sub, `${stem}${name}`);
    await writeFile(path, Buffer.alloc(bytes));
    const t = new Date(Date.now() - age * 1000);
    await utimes(path, t, t);
  }
  const stem = (n: number) => `od-${n.toString(16).padStart(16, "0")}-`;

  test("reserving evicts the least recently used unpinned downloads, never the image's own models", async () => {
    await place("checkpoints", stem(1), "a.safetensors", 40, 300);
    await place("loras", stem(2), "b.safetensors", 40, 200);
    await place("checkpoints", stem(3), "c.safetensors", 40, 100);
    await place("checkpoints", "", "image-own.safetensors", 500, 400);
    const pinned = new Set(["checkpoints/" + stem(1) + "a.safetensors"]);
    const cache = new ModelCache({
      modelsDir: dir,
      dirs: MODEL_DIRS,
      maxBytes: 130,
      isPinned: (f) => pinned.has(f),
    });
    expect(await cache.size()).toEqual({ files: 3, bytes: 120, reserved: 0 });
    // c was just used: b is now the oldest unpinned file.
    expect((await cache.lookup("checkpoints", stem(3)))?.name).toBe(`${stem(3)}c.safetensors`);
    const release = await cache.reserve(50, "the new model");
    expect(await readdir(join(dir, "loras"))).toEqual([]);
    expect((await readdir(join(dir, "checkpoints"))).sort()).toEqual(
      [`${stem(1)}a.safetensors`, `${stem(3)}c.safetensors`, "image-own.safetensors"].sort(),
    );
    expect(await cache.size()).toEqual({ files: 2, bytes: 80, reserved: 50 });
    release();
    release();
    expect(await cache.size()).toEqual({ files: 2, bytes: 80, reserved: 0 });
  });

  test("when pinned files and downloads under way leave no room, the download is refused before it starts", async () => {
    await place("checkpoints", stem(1), "a.safetensors", 60, 100);
    const cache = new ModelCache({ modelsDir: dir, dirs: MODEL_DIRS, maxBytes: 100, isPinned: () => true });
    await expect(cache.reserve(50, "m")).rejects.toThrow(ModelTooLargeError);
    await expect(cache.reserve(50, "m")).rejects.toThrow(/holds 60 bytes of models in use/);
    await expect(cache.reserve(101, "m")).rejects.toThrow(/above MODEL_CACHE_MAX_BYTES=100/);
    const held = await cache.reserve(40, "m");
    await expect(cache.reserve(1, "m")).rejects.toThrow(/40 bytes of downloads under way/);
    held();
    expect(await readdir(join(dir, "checkpoints"))).toEqual([`${stem(1)}a.safetensors`]);
  });

  test("a file removed behind its back is a miss", async () => {
    await place("checkpoints", stem(1), "a.safetensors", 10, 10);
    const cache = new ModelCache({ modelsDir: dir, dirs: MODEL_DIRS, maxBytes: 100, isPinned: () => false });
    expect(await cache.size()).toEqual({ files: 1, bytes: 10, reserved: 0 });
    await rm(join(dir, "checkpoints", `${stem(1)}a.safetensors`));
    expect(await cache.lookup("checkpoints", stem(1))).toBeUndefined();
    expect(await cache.size()).toEqual({ files: 0, bytes: 0, reserved: 0 });
  });
});

describe("the models settings", () => {
  const BASE = { COMFYUI_BASE_DIR: "/opt/comfy", UNSECURED: "true" };

  test("the models folder is ComfyUI's <base>/models unless COMFYUI_MODELS_DIR says; HF_TOKEN is masked", () => {
    const c = loadConfig({ ...BASE, HF_TOKEN: "hf_secret_token" }, "/srv/worker");
    expect(c.models).toEqual({
      dir: "/opt/comfy/models",
      maxBytes: 32 * 1024 ** 3,
      cacheMaxBytes: 64 * 1024 ** 3,
      timeoutMs: 3_600_000,
      hfEndpoint: "https://huggingface.co",
      hfToken: "hf_secret_token",
      warm: [],
    });
    expect(JSON.stringify(describeConfig(c))).not.toContain("hf_secret_token");
    const own = loadConfig(
      { ...BASE, COMFYUI_MODELS_DIR: "/data/models", MODEL_CACHE_MAX_BYTES: "1000" },
      "/",
    );
    expect([own.models.dir, own.models.cacheMaxBytes]).toEqual(["/data/models", 1000]);
  });

  test("a bad value names its variable", () => {
    expect(() => loadConfig({ ...BASE, MODEL_MAX_BYTES: "lots" }, "/")).toThrow(/MODEL_MAX_BYTES/);
    expect(() => loadConfig({ ...BASE, HF_ENDPOINT: "not a url" }, "/")).toThrow(/HF_ENDPOINT/);
  });
});
