import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Workflow } from "../../handlers/comfyui/types.js";
import { Admission } from "../../worker/admission.js";
import { CostModel, fitLine, jobFeatures, workBucket, workflowShape } from "../../worker/cost-model.js";
import { Job } from "../../worker/jobs/job.js";
import { LiveScore } from "../../worker/live-score.js";
import { LoadSignal } from "../../worker/load-signal.js";
import type { ParsedInput } from "../../worker/schema.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const sd15 = (width = 64, height = 64, steps = 4, batch = 1): Workflow => {
  const wf = JSON.parse(
    readFileSync(join(root, "misc", "workflows", "sd15_text2image.json"), "utf8"),
  ) as Workflow;
  Object.assign(wf["5"]!.inputs, { width, height, batch_size: batch });
  wf["3"]!.inputs.steps = steps;
  return wf;
};

/** A completed job as the manager hands it to observers, with ComfyUI's execution time. */
function completedJob(workflow: Workflow, workload: number, seconds: number): Job {
  const input = {
    requestId: `r-${Math.random()}`,
    workflow,
    s3: undefined,
    webhook: undefined,
  } as ParsedInput;
  const job = new Job(input, workload, 0);
  job.details = {
    prompt_id: "p",
    nodes_executed: [],
    cached_nodes: [],
    progress_updates: [],
    current_node: null,
    started_at: 1_000,
    completed_at: 1_000 + seconds * 1000,
    error: null,
    interrupted: false,
    reconciled_from_history: false,
    node_errors: {},
    skipped_outputs: [],
  };
  job.setStatus("completed", "done");
  return job;
}

describe("workflowShape", () => {
  test("ignores seeds, prompts, sizes, steps and node ids; keeps the graph and the model", () => {
    const a = sd15();
    const b = sd15(128, 256, 30, 4);
    b["3"]!.inputs.seed = 42;
    b["6"]!.inputs.text = "another prompt entirely";
    const copy = JSON.parse(JSON.stringify(b)) as Workflow;
    const renumbered = Object.fromEntries(Object.entries(copy).map(([id, node]) => [`n${id}`, node]));
    for (const node of Object.values(renumbered)) {
      for (const [k, v] of Object.entries(node.inputs)) {
        if (Array.isArray(v)) node.inputs[k] = [`n${String(v[0])}`, v[1]];
      }
    }
    expect(workflowShape(b)).toBe(workflowShape(a));
    expect(workflowShape(renumbered as Workflow)).toBe(workflowShape(a));

    const otherModel = sd15();
    otherModel["4"]!.inputs.ckpt_name = "sdxl.safetensors";
    expect(workflowShape(otherModel)).not.toBe(workflowShape(a));
    const extraNode = sd15();
    extraNode["99"] = { class_type: "ImageInvert", inputs: { image: ["8", 0] } };
    expect(workflowShape(extraNode)).not.toBe(workflowShape(a));
  });

  test("odd input is not an error", () => {
    expect(jobFeatures(null as unknown as Workflow).shape).toBe("invalid");
    const odd = { a: null, b: { class_type: 3 }, c: { class_type: "X", inputs: { l: ["zz", 0], n: 1 } } };
    expect(typeof workflowShape(odd as unknown as Workflow)).toBe("string");
  });
});

describe("CostModel", () => {
  const prior = (units: number) => units / 1e5; // 1 s per 100k units

  test("a new shape gets the prior; one size is scaled by the prior; two sizes fit fixed + per-unit", () => {
    const m = new CostModel();
    const f = (units: number) => ({ shape: "s", units });
    expect(m.predict(f(200_000), prior)).toEqual({ seconds: 2, source: "prior", measured: false });

    m.observe(f(100_000), 3); // 1 s fixed + 2 s of sampling
    expect(m.predict(f(200_000), prior)).toEqual({ seconds: 6, source: "scaled", measured: false });
    expect(m.predict(f(100_000), prior)).toEqual({ seconds: 3, source: "scaled", measured: true });

    m.observe(f(200_000), 5);
    m.observe(f(400_000), 9);
    const p = m.predict(f(300_000), prior);
    expect(p.source).toBe("fit");
    expect(p.seconds).toBeCloseTo(7, 6);
    expect(m.state()[0]).toMatchObject({ shape: "s", samples: 3, source: "fit" });
    expect(m.state()[0]!.fixedS).toBeCloseTo(1, 6);
  });

  test("keeps a bounded window per shape and a bounded number of shapes (least recently seen go first)", () => {
    const m = new CostModel({ window: 4, maxShapes: 2 });
    for (let i = 0; i < 10; i++) m.observe({ shape: "a", units: 100 }, 1);
    m.observe({ shape: "b", units: 100 }, 1);
    m.observe({ shape: "a", units: 100 }, 1);
    m.observe({ shape: "c", units: 100 }, 1);
    const shapes = m.state().map((s) => s.shape);
    expect(shapes.sort()).toEqual(["a", "c"]);
    expect(m.state().find((s) => s.shape === "a")!.samples).toBe(4);
  });

  test("ignores times that are not positive and finite", () => {
    const m = new CostModel();
    m.observe({ shape: "s", units: 1 }, 0);
    m.observe({ shape: "s", units: 1 }, NaN);
    m.observe({ shape: "s", units: 1 }, Infinity);
    expect(m.state()).toEqual([]);
  });

  test("fitLine: a negative intercept is refitted through the origin; a negative slope is refused", () => {
    expect(
      fitLine([
        { units: 100, seconds: 0.9 },
        { units: 200, seconds: 2.1 },
        { units: 300, seconds: 3 },
      ]),
    ).toMatchObject({ fixedS: 0 });
    expect(
      fitLine([
        { units: 100, seconds: 3 },
        { units: 200, seconds: 2 },
        { units: 300, seconds: 1 },
      ]),
    ).toBeUndefined();
    expect(
      fitLine([
        { units: 100, seconds: 1 },
        { units: 100, seconds: 1.1 },
        { units: 100, seconds: 0.9 },
      ]),
    ).toBeUndefined();
  });
});

describe("LiveScore", () => {
  test("needs a few measurements, rejects outliers, and moves only past the threshold", () => {
    const s = new LiveScore({ minSamples: 3, threshold: 0.05 });
    expect(s.observe(100 / 1, 100)).toBeUndefined();
    expect(s.observe(100 / 1.02, 100)).toBeUndefined();
    expect(s.observe(100 / 1.01, 100)).toBeUndefined(); // ~99: within 5 %
    expect(s.observe(100 / 50, 100)).toBeUndefined(); // a model load: an outlier
    expect(s.estimate()).toBeCloseTo(99.01, 2); // the median of the three others
    s.observe(100 / 2, 100);
    s.observe(100 / 2, 100);
    s.observe(100 / 2, 100);
    expect(s.observe(100 / 2, 100)).toBe(50);
  });
});

describe("LoadSignal", () => {
  function signal(maxPerf: number) {
    const state = { maxPerf, reported: [] as number[] };
    const load = new LoadSignal({
      maxPerf: () => state.maxPerf,
      onScore: (p) => {
        state.reported.push(p);
        state.maxPerf = p;
      },
    });
    load.setBenchmark(sd15(64, 64, 4));
    return { load, state };
  }

  test("before a score, workloads are the prior: 100 x sampling units / the benchmark's", () => {
    const { load } = signal(0);
    expect(load.workloadOf(sd15(64, 64, 4))).toBe(100);
    expect(load.workloadOf(sd15(128, 128, 4))).toBe(400);
    expect(load.workloadOf("nonsense")).toBe(100);
  });

  test("once learned, cur_load / max_perf is the sum of the predicted seconds, and the score keeps its meaning", () => {
    const { load, state } = signal(100); // the benchmark takes 1 s
    // Real cost: 0.5 s fixed + 0.5 s per benchmark's worth of sampling; the prior says 1 s per benchmark's worth.
    const cost = (wf: Workflow) => 0.5 + (0.5 * jobFeatures(wf).units) / jobFeatures(sd15()).units;
    const mix = [sd15(64, 64, 4), sd15(128, 128, 4), sd15(64, 64, 12)];
    for (let i = 0; i < 6; i++) {
      for (const wf of mix) load.completed(completedJob(wf, load.workloadOf(wf), cost(wf)));
    }
    for (const wf of mix) {
      const e = load.estimate(wf);
      expect(e.source).toBe("fit");
      expect(e.workload / state.maxPerf).toBeCloseTo(cost(wf), 2); // predicted seconds = workload / max_perf
    }
    // The prior (proportional to units) overestimated the larger jobs at first; the score still says 100 / the
    // benchmark's 1 s, not the inflated throughput those first jobs seemed to show.
    expect(state.maxPerf).toBeGreaterThan(95);
    expect(state.maxPerf).toBeLessThan(105);
  });

  test("runs that take longer than the score says lower it; failures, the warm-up and unseen shapes teach it nothing", () => {
    const { load, state } = signal(100);
    const wf = sd15();
    const failed = completedJob(wf, 100, 9);
    failed.status = "failed";
    load.completed(failed);
    const warm = completedJob(wf, 100, 9);
    (warm.input as ParsedInput).internal = { warmup: true };
    load.completed(warm);
    expect(load.state().measurements).toBe(0);
    // Runs like the benchmark's that take 2 s where the score says 1 s: the worker is half as fast as it said.
    // A shape never seen teaches the score nothing (its prediction is the prior's, not a measurement).
    const unseen = sd15();
    unseen["99"] = { class_type: "ImageInvert", inputs: { image: ["8", 0] } };
    load.completed(completedJob(unseen, load.workloadOf(unseen), 9));
    expect(load.state().measurements).toBe(0);
    for (let i = 0; i < 3; i++) load.completed(completedJob(wf, load.workloadOf(wf), 2));
    expect(state.reported).toEqual([50]);
  });

  test("429 comes at the same expected wait for large and small jobs once costs are learned", () => {
    const { load, state } = signal(100);
    const small = sd15(64, 64, 4);
    const large = sd15(256, 256, 4);
    const costs = new Map([
      [small, 0.6],
      [large, 4.2],
    ]);
    for (let i = 0; i < 3; i++) {
      for (const [wf, s] of costs) load.completed(completedJob(wf, load.workloadOf(wf), s));
      load.completed(completedJob(sd15(128, 128, 4), load.workloadOf(sd15(128, 128, 4)), 1.32));
    }
    const burst = (wf: Workflow) => {
      const queued: number[] = [];
      const admission = new Admission(
        30,
        () => queued.reduce((a, b) => a + b, 0),
        () => state.maxPerf,
      );
      while (admission.admits()) queued.push(load.workloadOf(wf));
      return { accepted: queued.length, waitAtRefusal: admission.expectedWaitS() };
    };
    const s = burst(small);
    const l = burst(large);
    // Refused once the queue holds 30 s of predicted work, whatever the job size.
    const oneJob = (wf: Workflow) => load.estimate(wf).seconds;
    expect(oneJob(small)).toBeCloseTo(0.6, 1);
    expect(oneJob(large)).toBeCloseTo(4.2, 1);
    expect(s.waitAtRefusal).toBeGreaterThan(30);
    expect(s.waitAtRefusal).toBeLessThanOrEqual(30 + oneJob(small) + 1e-9);
    expect(l.waitAtRefusal).toBeGreaterThan(30);
    expect(l.waitAtRefusal).toBeLessThanOrEqual(30 + oneJob(large) + 1e-9);
    expect(s.accepted).toBeGreaterThan(l.accepted * 5);
  });
});

describe("LiveScore band", () => {
  test("the estimate stays within the band around the benchmark's score, however the jobs measure", () => {
    const s = new LiveScore({ minSamples: 3, band: 2 });
    s.setAnchor(10);
    for (let i = 0; i < 20; i++) s.observe(1e6, 10); // jobs that cost nothing: a huge throughput
    expect(s.estimate()).toBe(20);
    for (let i = 0; i < 20; i++) s.observe(1e-3, 20); // jobs far heavier than their shape says
    expect(s.estimate()).toBe(5);
    for (let i = 0; i < 20; i++) s.observe(13, 5); // within the band: followed
    expect(s.estimate()).toBe(13);
    expect([s.bound(0), s.bound(Infinity), s.bound(12)]).toEqual([5, 20, 12]);
  });

  test("without a benchmark score nothing is bounded; a band below 1 is refused", () => {
    const s = new LiveScore({ minSamples: 1 });
    expect(s.observe(1e6, 0)).toBe(1e6);
    expect(() => new LiveScore({ band: 0.5 })).toThrow(/band/);
  });
});

describe("workflowShape: work literals", () => {
  /** KSamplerAdvanced over the SD1.5 graph, running steps [start, end) of 20. */
  const advanced = (start: number, end = 10000) => {
    const wf = sd15();
    const { seed: _seed, denoise: _denoise, ...rest } = wf["3"]!.inputs;
    wf["3"] = {
      class_type: "KSamplerAdvanced",
      inputs: {
        ...rest,
        noise_seed: 1,
        add_noise: "enable",
        start_at_step: start,
        end_at_step: end,
        return_with_leftover_noise: "disable",
      },
    };
    return wf;
  };

  test("a sampler that runs none of its steps is another shape than the one that runs them all", () => {
    expect(workflowShape(advanced(20))).not.toBe(workflowShape(advanced(0)));
    expect(workflowShape(advanced(10))).not.toBe(workflowShape(advanced(0)));
    expect(workflowShape(advanced(0, 5))).not.toBe(workflowShape(advanced(0)));
    const noDenoise = sd15();
    noDenoise["3"]!.inputs.denoise = 0;
    expect(workflowShape(noDenoise)).not.toBe(workflowShape(sd15()));
  });

  test("nearby values share a bucket; seeds and sizes still do not count", () => {
    expect(workflowShape(advanced(19))).toBe(workflowShape(advanced(20)));
    const a = sd15();
    a["3"]!.inputs.denoise = 0.98;
    expect(workflowShape(a)).toBe(workflowShape(sd15()));
    expect([workBucket(0), workBucket(-3), workBucket("x"), workBucket(true), workBucket(16)]).toEqual([
      "none",
      "none",
      "?",
      "?",
      "4",
    ]);
  });
});
