import { execFile } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { stack } from "../harness/stack.js";
import { repoRoot, stackEnv as workerStackEnv, startTestWorker } from "../harness/worker.js";
import { modelFree, tinyText2Image } from "../harness/workflows.js";

const exec = promisify(execFile);

/** Runs the CLI as an operator would; resolves with its exit code and output (never rejects on exit != 0). */
async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await exec(
      process.execPath,
      ["--import", "tsx", join(repoRoot, "worker/cli.ts"), ...args],
      {
        cwd: repoRoot,
        // Without the test stack's switch for the AWS SDK's Node-20 warning: the CLI must set it itself.
        env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: undefined, ...env },
        timeout: 180_000,
      },
    );
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, out: `${e.stdout ?? ""}${e.stderr ?? ""}` };
  }
}

const stackEnv = (dir: string) => workerStackEnv(join(dir, "output"));

test("--help explains the tool and each command on its own", async () => {
  const top = await cli(["--help"]);
  expect(top.code).toBe(0);
  for (const c of ["start", "benchmark", "submit", "check"]) expect(top.out).toContain(c);
  const submit = await cli(["submit", "--help"]);
  expect(submit.out).toMatch(/Usage: comfyui-worker submit \[options\] <workflow.json>/);
  expect(submit.out).toMatch(/--url <url>/);
  expect((await cli(["benchmark", "--help"])).out).toMatch(/max_perf/);
});

test("a bad variable stops start-up with exit 2 and a message naming it", async () => {
  const r = await cli(["check"], { WORKER_PORT: "three thousand" });
  expect(r.code).toBe(2);
  expect(r.out).toMatch(/configuration error: WORKER_PORT: expected an integer/);
});

test("check reaches ComfyUI, S3 and the autoscaler, and fails naming what is wrong", async () => {
  const dir = await mkdtemp(join(stack().tmpRoot, "cli-"));
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  try {
    const ok = await cli(["check"], { ...stackEnv(dir), UNSECURED: "false", REPORT_ADDR: router.url });
    expect(ok.out).toMatch(/ok {4}ComfyUI: .*ComfyUI \d+\.\d+\.\d+/);
    expect(ok.out).toMatch(/ok {4}S3: bucket outputs/);
    expect(ok.out).toMatch(/ok {4}autoscaler: public key served/);
    expect(ok.code).toBe(0);
    // Under Node 20 the AWS SDK's Node-support warning is switched off for the user.
    expect(ok.out).not.toContain("NodeVersionSupportWarning");
    const bad = await cli(["check"], { ...stackEnv(dir), S3_BUCKET_NAME: "no-such-bucket" });
    expect(bad.code).toBe(1);
    expect(bad.out).toMatch(/FAIL {2}S3: bucket no-such-bucket/);
  } finally {
    await router.close();
  }
});

test("submit streams progress and prints the output URLs", async () => {
  const w = await startTestWorker();
  try {
    const file = join(await mkdtemp(join(stack().tmpRoot, "cli-")), "workflow.json");
    await writeFile(file, JSON.stringify(tinyText2Image(3)));
    const r = await cli(["submit", file, "--url", w.api]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/step 3\/3/);
    expect(r.out).toMatch(/completed: Completed with 1 output/);
    expect(r.out).toMatch(/9 images .*\.png\n\s+http:\/\/127\.0\.0\.1:\d+\/outputs\//);
  } finally {
    await w.stop();
  }
});

test("benchmark runs the rounds and prints the score", async () => {
  const dir = await mkdtemp(join(stack().tmpRoot, "cli-"));
  const wf = modelFree();
  delete wf["4"];
  await writeFile(join(dir, "bench.json"), JSON.stringify(wf));
  const r = await cli(["benchmark"], {
    ...stackEnv(dir),
    BENCHMARK_JSON_PATH: join(dir, "bench.json"),
    BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
  });
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/benchmark: .*bench\.json/);
  expect(r.out).toMatch(/round {2}1 .* s\n/);
  expect(r.out).toMatch(/max_perf [\d.]+ after \d+ round\(s\)/);
});
