import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Workflow } from "../../handlers/comfyui/types.js";
import { RANDOM_INT, seedRandomInts } from "../../handlers/preprocess/random-int.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const sd15 = () =>
  JSON.parse(readFileSync(join(root, "misc", "workflows", "sd15_text2image.json"), "utf8")) as Workflow;

/** A deterministic random source that hands out start, start+1, ... and counts its calls. */
function counter(start = 1) {
  const fn = Object.assign(() => start + fn.calls++, { calls: 0 });
  return fn;
}

describe("seedRandomInts", () => {
  test("the marker is the documented string", () => {
    expect(RANDOM_INT).toBe("__RANDOM_INT__");
  });

  test("a whole value becomes a number from the random source, each occurrence its own", () => {
    const wf: Workflow = {
      "1": { class_type: "KSampler", inputs: { seed: RANDOM_INT, noise_seed: RANDOM_INT } },
      "2": { class_type: "KSampler", inputs: { seed: RANDOM_INT } },
    };
    const random = counter();
    const out = seedRandomInts(wf, random);
    const values = [out["1"]!.inputs.seed, out["1"]!.inputs.noise_seed, out["2"]!.inputs.seed];
    expect(values.every((v) => typeof v === "number")).toBe(true);
    expect(new Set(values).size).toBe(3);
    expect([...values].sort()).toEqual([1, 2, 3]);
    expect(random.calls).toBe(3);
  });

  test("the default source gives integers in [0, 2^32-1]", () => {
    const inputs: Record<string, unknown> = {};
    for (let i = 0; i < 2000; i++) inputs[`seed${i}`] = RANDOM_INT;
    const out = seedRandomInts({ "1": { class_type: "X", inputs } });
    const values = Object.values(out["1"]!.inputs) as number[];
    expect(values).toHaveLength(2000);
    for (const v of values) {
      expect(Number.isInteger(v)).toBe(true);
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThanOrEqual(2 ** 32 - 1);
    }
    // 2000 draws from 2^32: some above 2^31 and some below (chance of failing ~2^-1999), and nearly all distinct.
    expect(values.some((v) => v >= 2 ** 31)).toBe(true);
    expect(values.some((v) => v < 2 ** 31)).toBe(true);
    expect(new Set(values).size).toBeGreaterThan(1990);
  });

  test("the extremes of the range pass through as they are", () => {
    const wf: Workflow = { "1": { class_type: "X", inputs: { a: RANDOM_INT, b: `s${RANDOM_INT}` } } };
    const lo = seedRandomInts(wf, () => 0);
    expect(lo["1"]!.inputs).toEqual({ a: 0, b: "s0" });
    const hi = seedRandomInts(wf, () => 2 ** 32 - 1);
    expect(hi["1"]!.inputs).toEqual({ a: 4294967295, b: "s4294967295" });
  });

  test("an embedded marker is replaced as text, each occurrence with its own value", () => {
    const wf: Workflow = {
      "1": {
        class_type: "SaveImage",
        inputs: { filename_prefix: `run_${RANDOM_INT}_x_${RANDOM_INT}`, text: `${RANDOM_INT} ` },
      },
    };
    const out = seedRandomInts(wf, counter(7));
    expect(out["1"]!.inputs.filename_prefix).toBe("run_7_x_8");
    expect(out["1"]!.inputs.text).toBe("9 ");
  });

  test("only the exact marker counts: near misses stay strings", () => {
    const wf: Workflow = {
      "1": {
        class_type: "X",
        inputs: { a: "__random_int__", b: "__RANDOM_INT_", c: "RANDOM_INT", d: "", e: " __RANDOM_INT__" },
      },
    };
    const random = counter(5);
    const out = seedRandomInts(wf, random);
    expect(out["1"]!.inputs).toEqual({
      a: "__random_int__",
      b: "__RANDOM_INT_",
      c: "RANDOM_INT",
      d: "",
      e: " 5",
    });
    expect(random.calls).toBe(1);
  });

  test("nested arrays and objects are walked", () => {
    const wf: Workflow = {
      "1": {
        class_type: "X",
        inputs: {
          list: [RANDOM_INT, "keep", [RANDOM_INT, { deep: RANDOM_INT }]],
          obj: { a: { b: `p-${RANDOM_INT}` }, n: 3, f: false, z: null },
        },
      },
    };
    const out = seedRandomInts(wf, counter(100));
    expect(out["1"]!.inputs).toEqual({
      list: [100, "keep", [101, { deep: 102 }]],
      obj: { a: { b: "p-103" }, n: 3, f: false, z: null },
    });
  });

  test("links and other values are untouched; class_type and _meta are kept", () => {
    const wf = sd15();
    const random = counter(42);
    const out = seedRandomInts(wf, random);
    expect(random.calls).toBe(1);
    expect(out["3"]!.inputs.seed).toBe(42);
    const { seed: _seed, ...rest } = out["3"]!.inputs;
    const { seed: _orig, ...origRest } = wf["3"]!.inputs;
    expect(rest).toEqual(origRest);
    expect(out["3"]!.inputs.model).toEqual(["4", 0]);
    expect(out["3"]!.inputs.latent_image).toEqual(["5", 0]);
    for (const id of ["4", "5", "6", "7", "8", "9"]) expect(out[id]).toEqual(wf[id]);
    for (const id of Object.keys(wf)) {
      expect(out[id]!.class_type).toBe(wf[id]!.class_type);
      expect(out[id]!._meta).toEqual(wf[id]!._meta);
    }
    expect(Object.keys(out)).toEqual(Object.keys(wf));
  });

  test("the input workflow is not mutated", () => {
    const wf: Workflow = {
      "1": {
        class_type: "X",
        inputs: { seed: RANDOM_INT, list: [RANDOM_INT, ["2", 0]], obj: { t: `a${RANDOM_INT}` } },
      },
      ...sd15(),
    };
    const before = structuredClone(wf);
    const out = seedRandomInts(wf, counter());
    expect(wf).toEqual(before);
    expect(out).not.toBe(wf);
    expect(out["1"]!.inputs).not.toBe(wf["1"]!.inputs);
    expect(out["1"]!.inputs.list).not.toBe(wf["1"]!.inputs.list);
    expect(out["1"]!.inputs.obj).not.toBe(wf["1"]!.inputs.obj);
    // Mutating the result leaves the argument alone.
    (out["1"]!.inputs.obj as any).t = "changed";
    (out["1"]!.inputs.list as any[]).push("more");
    expect(wf).toEqual(before);
  });

  test("a workflow without markers never calls the source", () => {
    const random = counter();
    const wf: Workflow = { "1": { class_type: "X", inputs: { seed: 5, text: "no marker" } } };
    expect(seedRandomInts(wf, random)).toEqual(wf);
    expect(random.calls).toBe(0);
  });
});
