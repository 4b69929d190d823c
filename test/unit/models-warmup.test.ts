import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeConfig, loadConfig } from "../../config/index.js";
import { configError } from "../harness/config-error.js";
import { MODEL_FOLDER_DIRS, parseModelsList } from "../../config/models.js";
import { MODEL_DIRS, parseModelReference } from "../../handlers/preprocess/model-folders.js";
import { ModelPrefetch, parsePrefetchRequest } from "../../handlers/preprocess/model-prefetch.js";
import { ModelFetcher } from "../../handlers/preprocess/models.js";
import { BadRequestError, ModelReferenceError } from "../../lib/errors.js";
import { Janitor } from "../../worker/janitor.js";
import { silentLogger } from "./fakes.js";

const noFile = (path: string): string => {
  throw Object.assign(new Error(`ENOENT ${path}`), { code: "ENOENT" });
};

describe("MODELS", () => {
  test("entries are <folder>=<reference>, separated by newlines or commas; duplicates once", () => {
    const sha = "a".repeat(64);
    expect(
      parseModelsList(
        `checkpoints=https://host/x.safetensors#sha256=${sha},loras=hf://org/repo/file.safetensors\n` +
          "  vae = s3://bucket/vae.safetensors \n\n,loras=hf://org/repo/file.safetensors",
        noFile,
      ),
    ).toEqual([
      { folder: "checkpoints", ref: `https://host/x.safetensors#sha256=${sha}` },
      { folder: "loras", ref: "hf://org/repo/file.safetensors" },
      { folder: "vae", ref: "s3://bucket/vae.safetensors" },
    ]);
    expect(parseModelsList(undefined, noFile)).toEqual([]);
  });

  test("@<file> holds one entry a line: commas stay in the reference, # lines and blank lines are skipped", () => {
    const files: Record<string, string> = {
      "/etc/models.txt":
        "# the operator's list\ncheckpoints=https://host/a.safetensors?sig=a,b\r\n\n  diffusion_models=hf://o/r/u.sft@v2\n",
    };
    expect(parseModelsList("@/etc/models.txt", (p) => files[p] ?? noFile(p))).toEqual([
      { folder: "checkpoints", ref: "https://host/a.safetensors?sig=a,b" },
      { folder: "diffusion_models", ref: "hf://o/r/u.sft@v2" },
    ]);
    expect(configError(() => parseModelsList("@/missing", noFile)).message).toBe(
      "MODELS: cannot read /missing: ENOENT",
    );
  });

  test("a malformed entry fails naming MODELS and the entry, never quoting a reference", () => {
    const cases: [string, RegExp][] = [
      ["https://host/x.safetensors?token=SECRET", /^MODELS: entry 1 is not <folder>=<reference>/],
      ["loras=https://h/a.safetensors,=https://h/b.safetensors?token=SECRET", /^MODELS: entry 2 is not/],
      ["Loras=https://h/a.safetensors", /^MODELS: entry 1 is not/],
      [
        "unet=https://h/a.safetensors?token=SECRET",
        /^MODELS: entry 1: unet is not a models folder: one of checkpoints, loras/,
      ],
      [
        "loras=ftp://h/a.safetensors?token=SECRET",
        /^MODELS: entry 1 \(loras\): a reference starts with https:\/\//,
      ],
      ["loras=", /^MODELS: entry 1 is not/],
    ];
    for (const [value, message] of cases) {
      const err = configError(() => parseModelsList(value, noFile));
      expect([value, err.variable]).toEqual([value, "MODELS"]);
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain("SECRET");
    }
  });

  test("the folder names are the models folders' table, the one the loaders' inputs use", () => {
    expect(new Set(Object.values(MODEL_FOLDER_DIRS))).toEqual(new Set(MODEL_DIRS));
    for (const folder of Object.keys(MODEL_FOLDER_DIRS)) {
      expect(parseModelsList(`${folder}=hf://o/r/m.safetensors`, noFile)).toHaveLength(1);
    }
  });

  test("loadConfig reads it once, frozen; the banner shows no query; it needs a models folder", () => {
    const c = loadConfig(
      {
        COMFYUI_BASE_DIR: "/opt/comfy",
        UNSECURED: "true",
        MODELS: "loras=https://user:pw@host/l.safetensors?X-Amz-Signature=SECRET",
      },
      "/srv/worker",
    );
    expect(c.models.warm).toEqual([
      { folder: "loras", ref: "https://user:pw@host/l.safetensors?X-Amz-Signature=SECRET" },
    ]);
    expect(Object.isFrozen(c.models.warm[0])).toBe(true);
    const banner = JSON.stringify(describeConfig(c));
    expect(banner).toContain("loras=https://host/l.safetensors");
    expect(banner).not.toMatch(/SECRET|pw@/);
    const err = configError(() =>
      loadConfig(
        {
          COMFYUI_INPUT_DIR: "/in",
          COMFYUI_OUTPUT_DIR: "/out",
          UNSECURED: "true",
          MODELS: "loras=https://host/l.safetensors",
        },
        "/",
      ),
    );
    expect(err.message).toMatch(/^MODELS: needs ComfyUI's models folder/);
    expect(() =>
      loadConfig({ COMFYUI_BASE_DIR: "/opt/comfy", UNSECURED: "true", MODELS: "nope" }, "/"),
    ).toThrow(/^MODELS: /);
  });
});

describe("POST /models/prefetch's body", () => {
  test('is {"models": [{"folder", "ref"}]}, bounded', () => {
    expect(parsePrefetchRequest({ models: [{ folder: "loras", ref: "hf://o/r/a.safetensors" }] })).toEqual([
      { folder: "loras", ref: "hf://o/r/a.safetensors" },
    ]);
    for (const bad of [
      undefined,
      null,
      {},
      { models: [] },
      { models: "loras=hf://o/r/a.safetensors" },
      { models: [{ folder: "loras" }] },
      { models: [null] },
      { models: Array.from({ length: 33 }, () => ({ folder: "loras", ref: "hf://o/r/a.safetensors" })) },
    ]) {
      expect(() => parsePrefetchRequest(bad)).toThrow(BadRequestError);
    }
  });
});

describe("ModelPrefetch", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "prefetch-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const fetcher = (modelsDir: string) =>
    new ModelFetcher({
      modelsDir,
      dirs: MODEL_DIRS,
      maxBytes: 1_000,
      cacheMaxBytes: 1_000,
      timeoutMs: 1_000,
      allowPrivate: false,
      hfEndpoint: "https://hub.example",
    });

  test("an unknown folder or a malformed reference is refused before anything is fetched", async () => {
    const p = new ModelPrefetch({
      fetcher: fetcher(dir),
      modelsDir: dir,
      hfEndpoint: "https://hub.example",
      logger: silentLogger(),
    });
    await expect(p.prefetch([{ folder: "unet", ref: "hf://o/r/a.safetensors" }])).rejects.toThrow(
      /"unet" is not a models folder/,
    );
    await expect(
      p.prefetch([{ folder: "loras", ref: "https://h/a.safetensors?t=SECRET#sha256=nope" }]),
    ).rejects.toThrow(ModelReferenceError);
    const msg = await p.warm([{ folder: "loras", ref: "https://h/a.safetensors?t=SECRET#sha256=nope" }]);
    expect(msg).toMatch(
      /^MODELS: loras=https:\/\/h\/a\.safetensors: the reference's fragment must be .*\(model_bad_reference\)$/,
    );
    expect(msg).not.toContain("SECRET");
    expect(await readdir(dir)).toEqual([]);
  });

  test("MODELS stay pinned after the warm-up: disk care and callers' downloads never evict them; a prefetch's do", async () => {
    const models = join(dir, "models");
    const ref = (name: string) => `https://models.example/${name}.safetensors`;
    for (const name of ["operator", "caller"]) {
      const { stem } = parseModelReference(ref(name), { hfEndpoint: "https://hub.example" });
      await mkdir(join(models, "loras"), { recursive: true });
      await writeFile(join(models, "loras", `${stem}${name}.safetensors`), Buffer.alloc(10));
    }
    const f = fetcher(models);
    const p = new ModelPrefetch({
      fetcher: f,
      modelsDir: models,
      hfEndpoint: "https://hub.example",
      logger: silentLogger(),
    });
    expect(await p.warm([{ folder: "loras", ref: ref("operator") }])).toBeUndefined();
    expect(await p.prefetch([{ folder: "loras", ref: ref("caller") }])).toMatchObject([{ cached: true }]);
    expect((await f.evictOne())?.file).toMatch(/caller\.safetensors$/);
    expect(await f.evictOne()).toBeUndefined();
  });

  test("without a models folder every reference is refused", async () => {
    const p = new ModelPrefetch({
      fetcher: undefined,
      modelsDir: undefined,
      hfEndpoint: "https://hub.example",
      logger: silentLogger(),
    });
    await expect(p.prefetch([{ folder: "loras", ref: "hf://o/r/a.safetensors" }])).rejects.toThrow(
      /COMFYUI_MODELS_DIR/,
    );
    expect(await p.warm([])).toBeUndefined();
  });
});

describe("disk care and the models cache", () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "janitor-models-"));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test("still below the bound after outputs, it deletes downloaded models no job uses, least recently used first", async () => {
    const models = join(root, "models");
    const [outputs, inputs] = [join(root, "output"), join(root, "input")];
    for (const d of [join(models, "loras"), join(models, "checkpoints"), outputs, inputs])
      await mkdir(d, { recursive: true });
    const stem = (n: number) => `od-${n.toString(16).padStart(16, "0")}-`;
    const place = async (file: string, age: number) => {
      await writeFile(join(models, file), Buffer.alloc(100));
      const t = new Date(Date.now() - age * 1000);
      await utimes(join(models, file), t, t);
    };
    await place(`loras/${stem(1)}old.safetensors`, 300);
    await place(`checkpoints/${stem(2)}used.safetensors`, 200);
    await place(`loras/${stem(3)}new.safetensors`, 100);
    await place("checkpoints/image-own.safetensors", 400);
    const f = new ModelFetcher({
      modelsDir: models,
      dirs: MODEL_DIRS,
      maxBytes: 1_000,
      cacheMaxBytes: 10_000,
      timeoutMs: 1_000,
      allowPrivate: false,
      hfEndpoint: "https://hub.example",
    });
    // A job uses this one.
    f.pin(`checkpoints/${stem(2)}used.safetensors`);
    const janitor = new Janitor({
      outputDir: outputs,
      inputDir: inputs,
      // Never reached: every rule runs to its end.
      minFreeBytes: Number.MAX_SAFE_INTEGER,
      maxAgeMs: 3_600_000,
      intervalMs: 60_000,
      logger: silentLogger(),
      activeIds: () => new Set(),
      pinnedInputs: () => new Set(),
      modelsDir: models,
      evictModel: () => f.evictOne(),
    });
    const report = await janitor.sweep();
    expect(report.removed).toEqual([
      { path: join(models, "loras", `${stem(1)}old.safetensors`), bytes: 100, reason: "model" },
      { path: join(models, "loras", `${stem(3)}new.safetensors`), bytes: 100, reason: "model" },
    ]);
    expect(await readdir(join(models, "loras"))).toEqual([]);
    expect((await readdir(join(models, "checkpoints"))).sort()).toEqual(
      [`${stem(2)}used.safetensors`, "image-own.safetensors"].sort(),
    );
    expect(await f.size()).toEqual({ files: 1, bytes: 100, reserved: 0 });
  });
});
