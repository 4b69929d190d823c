import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Workflow } from "../../handlers/comfyui/types.js";
import { DEFAULT_WORKLOAD, estimateWorkload, samplingCost } from "../../worker/workload.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const sd15 = () =>
  JSON.parse(readFileSync(join(root, "misc", "workflows", "sd15_text2image.json"), "utf8")) as Workflow;
const SD15_COST = 512 * 512 * 1 * 20;

/** The SD1.5 workflow with the latent's and the sampler's inputs changed. */
function sized(opts: { width?: unknown; height?: unknown; batch_size?: unknown; steps?: unknown }): Workflow {
  const wf = sd15();
  const { steps, ...latent } = opts;
  Object.assign(wf["5"]!.inputs, latent);
  if (steps !== undefined) wf["3"]!.inputs.steps = steps;
  return wf;
}

describe("samplingCost", () => {
  test("the SD1.5 text2image workflow costs 512*512*1*20", () => {
    expect(samplingCost(sd15())).toBe(SD15_COST);
    expect(SD15_COST).toBe(5_242_880);
  });

  test("scales linearly with width, height, batch and steps", () => {
    expect(samplingCost(sized({ width: 1024 }))).toBe(2 * SD15_COST);
    expect(samplingCost(sized({ height: 768 }))).toBe(1.5 * SD15_COST);
    expect(samplingCost(sized({ batch_size: 4 }))).toBe(4 * SD15_COST);
    expect(samplingCost(sized({ steps: 30 }))).toBe(1.5 * SD15_COST);
    expect(samplingCost(sized({ width: 768, height: 1024, batch_size: 2, steps: 10 }))).toBe(
      768 * 1024 * 2 * 10,
    );
  });

  test("numbers written as strings count; a missing or bad batch counts as 1", () => {
    expect(samplingCost(sized({ width: "1024", steps: "20" }))).toBe(2 * SD15_COST);
    expect(samplingCost(sized({ batch_size: undefined }))).toBe(SD15_COST);
    expect(samplingCost(sized({ batch_size: 0 }))).toBe(SD15_COST);
    expect(samplingCost(sized({ batch_size: "many" }))).toBe(SD15_COST);
  });

  test("a sampler without positive steps or without a latent link is not counted", () => {
    expect(samplingCost(sized({ steps: 0 }))).toBe(0);
    expect(samplingCost(sized({ steps: -5 }))).toBe(0);
    expect(samplingCost(sized({ steps: "many" }))).toBe(0);
    expect(samplingCost(sized({ steps: ["12", 0] }))).toBe(0);
    const wf = sd15();
    delete wf["3"]!.inputs.latent_image;
    expect(samplingCost(wf)).toBe(0);
  });

  test("a latent without a size is not counted", () => {
    expect(samplingCost(sized({ width: 0 }))).toBe(0);
    expect(samplingCost(sized({ height: -1 }))).toBe(0);
    const wf = sd15();
    wf["3"]!.inputs.latent_image = ["404", 0];
    expect(samplingCost(wf)).toBe(0);
  });

  test("an empty workflow and nodes without inputs cost 0", () => {
    expect(samplingCost({})).toBe(0);
    expect(samplingCost({ "1": { class_type: "Note" } as any })).toBe(0);
  });

  test("traces a hires pass through LatentUpscaleBy (samples link) and the first sampler to the empty latent", () => {
    const wf = sd15();
    wf["10"] = { class_type: "LatentUpscaleBy", inputs: { samples: ["3", 0], scale_by: 1.5 } };
    wf["11"] = { class_type: "KSampler", inputs: { ...wf["3"]!.inputs, steps: 10, latent_image: ["10", 0] } };
    // First pass 512*512*20; the second is traced back through node 3 to node 5 and scaled by 1.5^2.
    expect(samplingCost(wf)).toBe(SD15_COST + 512 * 512 * 1.5 * 1.5 * 10);
  });

  test("a LatentUpscale that declares width/height sets the size for the next sampler", () => {
    const wf = sd15();
    wf["10"] = {
      class_type: "LatentUpscale",
      inputs: {
        samples: ["3", 0],
        upscale_method: "nearest-exact",
        width: 1024,
        height: 768,
        crop: "disabled",
      },
    };
    wf["11"] = { class_type: "KSampler", inputs: { ...wf["3"]!.inputs, steps: 15, latent_image: ["10", 0] } };
    expect(samplingCost(wf)).toBe(SD15_COST + 1024 * 768 * 15);
  });

  test("traces chains of samples links", () => {
    const wf = sd15();
    wf["20"] = { class_type: "LatentFlip", inputs: { samples: ["5", 0], flip_method: "x-axis" } };
    wf["21"] = { class_type: "LatentRotate", inputs: { samples: ["20", 0], rotation: "none" } };
    wf["3"]!.inputs.latent_image = ["21", 0];
    expect(samplingCost(wf)).toBe(SD15_COST);
  });

  test("a link cycle ends with cost 0 instead of looping", () => {
    const wf: Workflow = {
      "1": { class_type: "KSampler", inputs: { steps: 20, latent_image: ["2", 0] } },
      "2": { class_type: "LatentFlip", inputs: { samples: ["3", 0] } },
      "3": { class_type: "LatentFlip", inputs: { samples: ["2", 0] } },
    };
    expect(samplingCost(wf)).toBe(0);
  });

  test("tracing gives up beyond 16 hops", () => {
    const chain = (hops: number): Workflow => {
      const wf: Workflow = {
        latent: { class_type: "EmptyLatentImage", inputs: { width: 64, height: 64, batch_size: 1 } },
        s: { class_type: "KSampler", inputs: { steps: 1, latent_image: ["n0", 0] } },
      };
      for (let i = 0; i < hops; i++) {
        wf[`n${i}`] = {
          class_type: "LatentFlip",
          inputs: { samples: [i === hops - 1 ? "latent" : `n${i + 1}`, 0] },
        };
      }
      return wf;
    };
    expect(samplingCost(chain(16))).toBe(64 * 64);
    expect(samplingCost(chain(17))).toBe(0);
  });

  test("several samplers add up", () => {
    const wf = sd15();
    wf["12"] = { class_type: "EmptyLatentImage", inputs: { width: 256, height: 256, batch_size: 2 } };
    wf["13"] = { class_type: "KSamplerAdvanced", inputs: { steps: 8, latent_image: ["12", 0] } };
    expect(samplingCost(wf)).toBe(SD15_COST + 256 * 256 * 2 * 8);
  });
});

describe("estimateWorkload", () => {
  test("the benchmark workflow itself weighs the default 100", () => {
    expect(DEFAULT_WORKLOAD).toBe(100);
    expect(estimateWorkload(sd15(), SD15_COST)).toBe(100);
  });

  test("scales with the cost relative to the benchmark", () => {
    expect(estimateWorkload(sized({ width: 1024, height: 1024 }), SD15_COST)).toBe(400);
    expect(estimateWorkload(sized({ batch_size: 3 }), SD15_COST)).toBe(300);
    expect(estimateWorkload(sized({ steps: 10 }), SD15_COST)).toBe(50);
    expect(estimateWorkload(sized({ steps: 30, width: 768 }), SD15_COST)).toBe(225);
  });

  test("rounds to two decimals", () => {
    expect(estimateWorkload(sized({ steps: 7 }), SD15_COST)).toBe(35);
    expect(estimateWorkload(sized({ steps: 1 }), 3 * 512 * 512)).toBe(33.33);
    expect(estimateWorkload(sized({ steps: 2 }), 3 * 512 * 512)).toBe(66.67);
  });

  test("is 100 when either cost is unknown", () => {
    expect(estimateWorkload({}, SD15_COST)).toBe(100);
    expect(estimateWorkload(sized({ steps: 0 }), SD15_COST)).toBe(100);
    expect(estimateWorkload(sd15(), 0)).toBe(100);
    expect(estimateWorkload(sd15(), -1)).toBe(100);
    expect(estimateWorkload(sd15(), Number.NaN)).toBe(100);
  });

  test("odd shapes from unvalidated input give the default instead of throwing", () => {
    for (const odd of [null, undefined, 42, "workflow", [], [sd15()]]) {
      expect(estimateWorkload(odd as any, SD15_COST)).toBe(100);
    }
    const wf: any = { ...sd15(), "98": null, "99": "not a node", "100": { class_type: "X", inputs: 5 } };
    expect(samplingCost(wf)).toBe(SD15_COST);
    wf["3"].inputs.latent_image = ["98", 0];
    expect(samplingCost(wf)).toBe(0);
  });

  test("is bounded to [1, 10000]", () => {
    expect(estimateWorkload(sized({ width: 8, height: 8, steps: 1 }), SD15_COST)).toBe(1);
    expect(
      estimateWorkload(sized({ width: 8192, height: 8192, batch_size: 64, steps: 150 }), SD15_COST),
    ).toBe(10_000);
    expect(estimateWorkload(sized({ width: 5120, height: 5120 }), SD15_COST)).toBe(10_000);
    expect(estimateWorkload(sized({ width: 5121, height: 5120 }), SD15_COST)).toBe(10_000);
    expect(estimateWorkload(sized({ width: 5120, height: 4096 }), SD15_COST)).toBe(8_000);
  });
});

test("an upscale keeps the batch of the latent it resizes", () => {
  const wf = JSON.parse(JSON.stringify(sd15()));
  wf["5"].inputs.batch_size = 4;
  wf["10"] = {
    class_type: "LatentUpscale",
    inputs: { samples: ["3", 0], width: 1024, height: 1024, crop: "disabled" },
  };
  wf["11"] = { class_type: "KSampler", inputs: { ...wf["3"].inputs, steps: 10, latent_image: ["10", 0] } };
  expect(samplingCost(wf)).toBe(512 * 512 * 4 * 20 + 1024 * 1024 * 4 * 10);
});
