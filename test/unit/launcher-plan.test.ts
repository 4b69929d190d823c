import { join } from "node:path";
import { loadConfig, type LaunchHost } from "../../config/index.js";
import { configError } from "../harness/config-error.js";
import { cliFlags } from "../../config/comfyui-args.js";
import { instanceSpec } from "../../worker/launcher/fleet.js";

/**
 * COMFYUI_LAUNCH=true: the plan of the ComfyUIs the worker starts (config/launch.ts), read from the environment and
 * this machine's answers (here a table of them: which GPUs nvidia-smi lists, which files and programs exist).
 */

const DIR = "/work/ComfyUI";
const PYTHON = "/opt/py/bin/python";
const LOGS = "/logs";

interface Machine {
  /** GPUs nvidia-smi -L lists. */
  gpus?: number;
  /** Files there, with their text (main.py is there unless said otherwise). */
  files?: Record<string, string>;
  executables?: string[];
  /** Programs on PATH, by name. */
  onPath?: string[];
  libraries?: Record<string, string>;
}

/** A machine's answers, and what was asked of it. */
function machine(m: Machine = {}): LaunchHost & { asked: string[] } {
  const asked: string[] = [];
  const files = { [join(DIR, "main.py")]: "", ...m.files };
  return {
    asked,
    gpuCount: (smi) => (asked.push(`gpuCount ${smi}`), m.gpus ?? 0),
    isExecutable: (p) => (asked.push(`isExecutable ${p}`), [PYTHON, ...(m.executables ?? [])].includes(p)),
    findProgram: (n) => (asked.push(`findProgram ${n}`), m.onPath?.includes(n) ? `/usr/bin/${n}` : undefined),
    readText: (p) => (asked.push(`readText ${p}`), files[p]),
    library: (n) => (asked.push(`library ${n}`), m.libraries?.[n]),
  };
}

const ENV = {
  UNSECURED: "true",
  COMFYUI_LAUNCH: "true",
  COMFYUI_DIR: DIR,
  COMFYUI_PYTHON: PYTHON,
  LOG_DIR: LOGS,
} as const;

function plan(env: Record<string, string>, host: LaunchHost = machine()) {
  const config = loadConfig({ ...ENV, ...env }, "/srv/worker", host);
  return { config, launch: config.launch! };
}

const words = (args: string | undefined) => (args ?? "").split(" ").filter(Boolean);

describe("COMFYUI_PER_GPU=true with 2 GPUs or more: one ComfyUI per GPU", () => {
  interface Case {
    what: string;
    env: Record<string, string>;
    gpus: string[];
    port: number;
    /** Each ComfyUI's output folder; by default <ComfyUI>/output/gpu<i>. */
    outputs?: string[];
  }
  test.each<Case>([
    { what: "nvidia-smi -L lists 2 GPUs", env: {}, gpus: ["0", "1"], port: 18188 },
    { what: "nvidia-smi -L lists 4 GPUs", env: { GPUS: "4" }, gpus: ["0", "1", "2", "3"], port: 18188 },
    {
      what: "CUDA_VISIBLE_DEVICES=2,5 (of 8)",
      env: { GPUS: "8", CUDA_VISIBLE_DEVICES: "2, 5" },
      gpus: ["2", "5"],
      port: 18188,
    },
    {
      what: "COMFYUI_ARGS' port and output folder",
      env: { COMFYUI_ARGS: "--port 19000 --output-directory /data/out --lowvram" },
      gpus: ["0", "1"],
      port: 19000,
      outputs: ["/data/out/gpu0", "/data/out/gpu1"],
    },
    { what: "COMFYUI_PORT", env: { COMFYUI_PORT: "20000" }, gpus: ["0", "1"], port: 20000 },
    {
      what: "a COMFYUI_OUTPUT_DIR list",
      env: { COMFYUI_OUTPUT_DIR: "/data/a,/data/b" },
      gpus: ["0", "1"],
      port: 18188,
      outputs: ["/data/a", "/data/b"],
    },
  ])(
    "$what: each its port, GPU, output and temp folders, log; one input folder; they are the backends",
    ({ env: { GPUS, ...env }, gpus, port, outputs }) => {
      const host = machine({ gpus: Number(GPUS ?? 2) });
      const { config, launch } = plan({ ...env, COMFYUI_PER_GPU: "true" }, host);
      const input = join(DIR, "input");
      const folders = outputs ?? gpus.map((_, i) => join(DIR, "output", `gpu${i}`));
      expect(launch.instances).toEqual(
        gpus.map((gpu, i) => ({
          index: i,
          name: `comfyui-${i}`,
          port: port + i,
          url: `http://127.0.0.1:${port + i}`,
          gpu,
          args: [
            "main.py",
            ...["--listen", "127.0.0.1", "--disable-auto-launch"],
            ...words(env.COMFYUI_ARGS),
            ...["--port", String(port + i), "--input-directory", input, "--output-directory", folders[i]],
            ...["--temp-directory", join(DIR, "temp", `gpu${i}`)],
          ],
          logFile: join(LOGS, `comfyui-${i}.log`),
        })),
      );
      expect(config.comfyui.backends).toEqual(
        gpus.map((_, i) => ({ url: `http://127.0.0.1:${port + i}`, outputDir: folders[i] })),
      );
      expect(config.comfyui.inputDir).toBe(input);
      expect(config.outputDir).toBe(folders[0]);
      expect(launch.folders).toEqual(folders);
      // nvidia-smi only without CUDA_VISIBLE_DEVICES.
      expect(host.asked.includes("gpuCount nvidia-smi")).toBe(env.CUDA_VISIBLE_DEVICES === undefined);
    },
  );

  test("NVIDIA_SMI names the program that counts the GPUs", () => {
    const host = machine({ gpus: 3 });
    const { launch } = plan({ COMFYUI_PER_GPU: "true", NVIDIA_SMI: "/opt/bin/smi" }, host);
    expect(launch.instances).toHaveLength(3);
    expect(host.asked).toContain("gpuCount /opt/bin/smi");
  });

  test.each([
    ["", (i: number) => (i === 0 ? [] : [`sqlite:///${DIR}/user/comfyui-gpu${i}.db`])],
    ["--database-url sqlite:///:memory:", () => ["sqlite:///:memory:"]],
  ])(
    "a ComfyUI with --database-url, COMFYUI_ARGS=%j: instances 1..N-1 get a database of their own unless COMFYUI_ARGS names one",
    (args, expected) => {
      const host = machine({
        gpus: 3,
        files: { [join(DIR, "comfy", "cli_args.py")]: 'parser.add_argument("--database-url", type=str)\n' },
      });
      const { launch } = plan({ COMFYUI_PER_GPU: "true", COMFYUI_ARGS: args }, host);
      expect(launch.instances).toHaveLength(3);
      for (const [i, { args: given }] of launch.instances.entries()) {
        // Every value the flag takes (ComfyUI takes the last).
        const dbs = given.flatMap((a, at) => (a === "--database-url" ? [given[at + 1]] : []));
        expect(dbs).toEqual(expected(i));
      }
      // The databases' folder is made before they start.
      expect(launch.folders.includes(join(DIR, "user"))).toBe(args === "");
    },
  );

  test.each([
    [
      "0.4x (assets on by default)",
      '    parser.add_argument("--disable-assets", action="store_true", help="(off)")\n',
      true,
    ],
    ["0.33.0 (assets opt-in)", 'parser.add_argument("--enable-assets", action="store_true")\n', false],
  ])(
    "a ComfyUI %s: instances 1..N-1 start with --disable-assets where the flag exists",
    (_, line, supported) => {
      const cliArgs = `parser.add_argument("--database-url", type=str)\n${line}`;
      const host = machine({ gpus: 3, files: { [join(DIR, "comfy", "cli_args.py")]: cliArgs } });
      const { launch } = plan({ COMFYUI_PER_GPU: "true" }, host);
      expect(launch.instances.map((x) => x.args.includes("--disable-assets"))).toEqual([
        false,
        supported,
        supported,
      ]);
      // A database of their own either way.
      expect(launch.instances.map((x) => x.args.includes("--database-url"))).toEqual([false, true, true]);
    },
  );

  test("a ComfyUI without --database-url: none is given", () => {
    const { launch } = plan({ COMFYUI_PER_GPU: "true" }, machine({ gpus: 2 }));
    expect(launch.instances.flatMap((x) => x.args).filter((a) => a === "--database-url")).toEqual([]);
    expect(launch.folders).not.toContain(join(DIR, "user"));
  });

  test.each([
    [
      "COMFYUI_URL",
      { COMFYUI_URL: "http://127.0.0.1:18188" },
      "unset COMFYUI_URL (now http://127.0.0.1:18188)",
    ],
    [
      "COMFYUI_URLS",
      { COMFYUI_URLS: "http://user:secret@127.0.0.1:18188/x" },
      "unset COMFYUI_URLS (now http://127.0.0.1:18188)",
    ],
    ["COMFYUI_ARGS", { COMFYUI_ARGS: "--cuda-device 1" }, "remove --cuda-device"],
    ["COMFYUI_ARGS", { COMFYUI_ARGS: "--default-device=1" }, "remove --default-device"],
    [
      "COMFYUI_OUTPUT_DIR",
      { COMFYUI_OUTPUT_DIR: "/a,/b,/c" },
      "lists 3 folders for 2 ComfyUIs (one per GPU: 0 1)",
    ],
    ["COMFYUI_PORT", { COMFYUI_PORT: "65535" }, "2 ports from 65535 run past 65535"],
    ["COMFYUI_ARGS", { COMFYUI_ARGS: "--port 65535" }, "2 ports from 65535 run past 65535"],
  ])("refused, naming %s: %j", (variable, env, message) => {
    const err = configError(() => plan({ COMFYUI_PER_GPU: "true", ...env }, machine({ gpus: 2 })));
    expect(err.variable).toBe(variable);
    expect(err.message).toContain(message);
    expect(err.message).not.toContain("secret");
  });

  test("COMFYUI_URL is refused whatever the number of GPUs (the setting contradicts it)", () => {
    const err = configError(() =>
      plan({ COMFYUI_PER_GPU: "true", COMFYUI_URL: "http://127.0.0.1:1" }, machine({ gpus: 1 })),
    );
    expect(err.variable).toBe("COMFYUI_URL");
  });
});

describe("one GPU or none, or without COMFYUI_PER_GPU: one ComfyUI", () => {
  test.each([
    ["COMFYUI_PER_GPU unset, 2 GPUs", {}, 2, []],
    [
      "COMFYUI_PER_GPU=true, 1 GPU",
      { COMFYUI_PER_GPU: "true" },
      1,
      ["COMFYUI_PER_GPU=true, 1 GPU visible: one ComfyUI"],
    ],
    [
      "COMFYUI_PER_GPU=true, no GPU (nvidia-smi fails)",
      { COMFYUI_PER_GPU: "true" },
      0,
      ["COMFYUI_PER_GPU=true, 0 GPU visible: one ComfyUI"],
    ],
    [
      "COMFYUI_PER_GPU=true, CUDA_VISIBLE_DEVICES=3 (of 4)",
      { COMFYUI_PER_GPU: "true", CUDA_VISIBLE_DEVICES: "3" },
      4,
      ["COMFYUI_PER_GPU=true, 1 GPU visible (CUDA_VISIBLE_DEVICES=3): one ComfyUI"],
    ],
    [
      "COMFYUI_PER_GPU=true, CUDA_VISIBLE_DEVICES empty (no GPU for CUDA)",
      { COMFYUI_PER_GPU: "true", CUDA_VISIBLE_DEVICES: "" },
      4,
      ["COMFYUI_PER_GPU=true, 0 GPU visible (CUDA_VISIBLE_DEVICES=): one ComfyUI"],
    ],
  ])("%s: on the environment's GPUs, at COMFYUI_URL's default", (_what, env, gpus, notes) => {
    const { config, launch } = plan(env, machine({ gpus }));
    expect(launch.instances).toEqual([
      {
        index: 0,
        name: "comfyui",
        port: 18188,
        url: "http://127.0.0.1:18188",
        args: ["main.py", "--listen", "127.0.0.1", "--port", "18188", "--disable-auto-launch"],
        logFile: join(LOGS, "comfyui.log"),
      },
    ]);
    expect(launch.notes).toEqual(notes);
    expect(config.comfyui.backends).toEqual([
      { url: "http://127.0.0.1:18188", outputDir: join(DIR, "output") },
    ]);
    expect(config.comfyui.inputDir).toBe(join(DIR, "input"));
  });

  test("its flags come first and COMFYUI_ARGS' after (ComfyUI takes the last); the URL follows COMFYUI_ARGS' port", () => {
    const { config, launch } = plan({
      COMFYUI_PORT: "18000",
      COMFYUI_ARGS: "--lowvram --port 19000 --base-directory /data/comfy",
    });
    expect(launch.instances[0]!.args).toEqual([
      ...["main.py", "--listen", "127.0.0.1", "--port", "18000", "--disable-auto-launch"],
      ...["--lowvram", "--port", "19000", "--base-directory", "/data/comfy"],
    ]);
    expect(config.comfyui.backends).toEqual([
      { url: "http://127.0.0.1:19000", outputDir: "/data/comfy/output" },
    ]);
    expect(config.comfyui.inputDir).toBe("/data/comfy/input");
  });

  test("a COMFYUI_URL of the user's is the backend, as before (the ComfyUI still starts)", () => {
    const { config, launch } = plan({ COMFYUI_URL: "http://127.0.0.1:9999" });
    expect(config.comfyui.backends[0]!.url).toBe("http://127.0.0.1:9999");
    expect(launch.instances).toHaveLength(1);
  });
});

describe("under supervisor (WORKER_UNDER_SUPERVISOR=true): the image's `comfyui` program is instance 0", () => {
  interface Case {
    what: string;
    env: Record<string, string>;
    gpus: string[];
    port: number;
    output: string;
    /** Its --temp-directory (its temp folder's parent). */
    temp: string;
  }
  test.each<Case>([
    {
      what: "2 GPUs, the image's COMFYUI_ARGS",
      env: { COMFYUI_ARGS: "--disable-auto-launch --enable-cors-header --port 18188" },
      gpus: ["0", "1"],
      port: 18188,
      output: join(DIR, "output"),
      temp: join(DIR, "temp"),
    },
    {
      what: "4 GPUs, COMFYUI_ARGS' port, output and temp folders",
      env: {
        GPUS: "4",
        COMFYUI_ARGS: "--port 19000 --output-directory /data/out --temp-directory /data/scratch",
      },
      gpus: ["0", "1", "2", "3"],
      port: 19000,
      output: "/data/out",
      temp: "/data/scratch",
    },
    {
      what: "CUDA_VISIBLE_DEVICES=2,5 (of 8)",
      env: { GPUS: "8", CUDA_VISIBLE_DEVICES: "2,5" },
      gpus: ["2", "5"],
      port: 18188,
      output: join(DIR, "output"),
      temp: join(DIR, "temp"),
    },
  ])(
    "$what: instances 1..N-1 start here with folders beside the image's; the backends are all N",
    ({ env: { GPUS, ...env }, gpus, port, output, temp }) => {
      const { config, launch } = plan(
        { ...env, WORKER_UNDER_SUPERVISOR: "true", COMFYUI_PER_GPU: "true" },
        machine({ gpus: Number(GPUS ?? 2) }),
      );
      const folders = gpus.map((_, i) => (i === 0 ? output : `${output}-gpu${i}`));
      expect(
        launch.instances.map(({ index, gpu, args, logFile }) => ({ index, gpu, args, logFile })),
      ).toEqual(
        gpus.slice(1).map((gpu, j) => ({
          index: j + 1,
          gpu,
          args: [
            "main.py",
            ...["--listen", "127.0.0.1", "--disable-auto-launch"],
            ...words(env.COMFYUI_ARGS),
            ...["--port", String(port + j + 1), "--input-directory", join(DIR, "input")],
            ...["--output-directory", folders[j + 1], "--temp-directory", `${temp}-gpu${j + 1}`],
          ],
          logFile: join(LOGS, `comfyui-${j + 1}.log`),
        })),
      );
      expect(config.comfyui.backends).toEqual(
        gpus.map((_, i) => ({ url: `http://127.0.0.1:${port + i}`, outputDir: folders[i] })),
      );
      expect(launch.folders).toEqual(folders);
      expect(launch.notes).toEqual([
        `comfyui-0: the image's \`comfyui\` program (127.0.0.1:${port}, GPU ${gpus[0]}, output ${folders[0]}); ` +
          `${gpus.length === 2 ? "instance 1" : `instances 1..${gpus.length - 1}`} start here and stop with the worker`,
      ]);
    },
  );

  test.each([
    ["1 GPU", {}, 1],
    ["CUDA_VISIBLE_DEVICES=3 (of 4)", { CUDA_VISIBLE_DEVICES: "3" }, 4],
  ])(
    "%s: none starts here (supervisor runs the one ComfyUI); nothing about ComfyUI is asked",
    (_what, env, gpus) => {
      const host = machine({ gpus, files: { [join(DIR, "main.py")]: undefined as unknown as string } });
      const { config, launch } = plan(
        { ...env, WORKER_UNDER_SUPERVISOR: "true", COMFYUI_PER_GPU: "true" },
        host,
      );
      expect(launch.instances).toEqual([]);
      expect(config.comfyui.backends).toEqual([
        { url: "http://127.0.0.1:18188", outputDir: join(DIR, "output") },
      ]);
      expect(host.asked.filter((q) => !q.startsWith("gpuCount"))).toEqual([]);
    },
  );
});

describe("how each ComfyUI runs", () => {
  test.each([
    ["the image's venv has a python: that one, its bin first on ComfyUI's PATH", true],
    ["no venv: python3 from PATH", false],
  ])("COMFYUI_PYTHON unset, %s", (_what, withVenv) => {
    const venvPython = "/venv/x/bin/python";
    const { launch } = plan(
      { COMFYUI_PYTHON: "", COMFYUI_VENV: "/venv/x" },
      machine({ executables: withVenv ? [venvPython] : [], onPath: ["python3"] }),
    );
    expect({ python: launch.python, pathPrefix: launch.pathPrefix }).toEqual(
      withVenv
        ? { python: venvPython, pathPrefix: "/venv/x/bin" }
        : { python: "python3", pathPrefix: undefined },
    );
    const spec = instanceSpec(launch, launch.instances[0]!, { PATH: "/usr/bin" });
    expect(spec.command).toBe(launch.python);
    expect(spec.env.PATH).toBe(withVenv ? "/venv/x/bin:/usr/bin" : "/usr/bin");
  });

  test.each([
    [
      "tcmalloc installed: it is preloaded, as the image's own program does",
      {},
      "/lib/libtcmalloc_minimal.so.4",
    ],
    ["COMFYUI_LD_PRELOAD names another", { COMFYUI_LD_PRELOAD: "/lib/other.so" }, "/lib/other.so"],
    ["COMFYUI_LD_PRELOAD empty: none", { COMFYUI_LD_PRELOAD: "" }, undefined],
  ])("%s", (_what, env: Record<string, string>, preload) => {
    const host = machine({ libraries: { "libtcmalloc_minimal.so.4": "/lib/libtcmalloc_minimal.so.4" } });
    const { launch } = plan(env, host);
    expect(launch.ldPreload).toBe(preload);
    expect(host.asked.some((q) => q.startsWith("library"))).toBe(env.COMFYUI_LD_PRELOAD === undefined);
    const spec = instanceSpec(launch, launch.instances[0]!, { LD_PRELOAD: "/lib/mine.so" });
    expect(spec.env.LD_PRELOAD).toBe(preload ? `${preload}:/lib/mine.so` : "/lib/mine.so");
  });

  test("tcmalloc not installed: no preload", () => {
    const { launch } = plan({});
    expect(launch.ldPreload).toBeUndefined();
    expect(instanceSpec(launch, launch.instances[0]!, {}).env.LD_PRELOAD).toBeUndefined();
  });

  test("each instance of one per GPU sees its GPU alone; ComfyUI's output is unbuffered", () => {
    const { launch } = plan({ COMFYUI_PER_GPU: "true", CUDA_VISIBLE_DEVICES: "4,7" });
    const specs = launch.instances.map((x) =>
      instanceSpec(launch, x, { CUDA_VISIBLE_DEVICES: "4,7", HOME: "/h" }),
    );
    expect(specs.map((s) => [s.env.CUDA_VISIBLE_DEVICES, s.env.HOME, s.env.PYTHONUNBUFFERED, s.cwd])).toEqual(
      [
        ["4", "/h", "1", DIR],
        ["7", "/h", "1", DIR],
      ],
    );
  });

  test("defaults: ComfyUI in $WORKSPACE/ComfyUI (/workspace), logs in /var/log/portal, restarts up to 60 s, 30 s to stop", () => {
    const host = machine({ files: { "/workspace/ComfyUI/main.py": "" } });
    const config = loadConfig(
      { UNSECURED: "true", COMFYUI_LAUNCH: "true", COMFYUI_PYTHON: PYTHON },
      "/srv",
      host,
    );
    const launch = config.launch!;
    expect(launch.comfyDir).toBe("/workspace/ComfyUI");
    expect(launch.instances[0]!.logFile).toBe("/var/log/portal/comfyui.log");
    expect({ restart: launch.restartMaxDelayS, stop: launch.stopTimeoutS }).toEqual({
      restart: 60,
      stop: 30,
    });
    expect(config.comfyui.inputDir).toBe("/workspace/ComfyUI/input");
    const other = loadConfig(
      { UNSECURED: "true", COMFYUI_LAUNCH: "true", COMFYUI_PYTHON: PYTHON, WORKSPACE: "/ws" },
      "/srv",
      machine({ files: { "/ws/ComfyUI/main.py": "" } }),
    );
    expect(other.launch!.comfyDir).toBe("/ws/ComfyUI");
  });

  test("COMFYUI_LAUNCH unset: no plan, and nothing is asked of the machine", () => {
    const host = machine();
    const config = loadConfig(
      { UNSECURED: "true", COMFYUI_BASE_DIR: "/c", COMFYUI_PER_GPU: "true" },
      "/srv",
      host,
    );
    expect(config.launch).toBeUndefined();
    expect(host.asked).toEqual([]);
  });

  test.each([
    ["COMFYUI_STOP_TIMEOUT", { COMFYUI_STOP_TIMEOUT: "soon" }, machine()],
    ["COMFYUI_RESTART_MAX_DELAY", { COMFYUI_RESTART_MAX_DELAY: "-1" }, machine()],
    ["COMFYUI_PORT", { COMFYUI_PORT: "70000" }, machine()],
    ["COMFYUI_DIR", {}, machine({ files: { [join(DIR, "main.py")]: undefined as unknown as string } })],
    ["COMFYUI_PYTHON", { COMFYUI_PYTHON: "/no/python" }, machine()],
    ["COMFYUI_PYTHON", { COMFYUI_PYTHON: "" }, machine()],
    ["COMFYUI_LAUNCH", { COMFYUI_LAUNCH: "maybe" }, machine()],
  ])("a bad %s stops the start, naming it: %j", (variable, env, host) => {
    expect(configError(() => plan(env, host)).variable).toBe(variable);
  });
});

test("cliFlags: the flags of comfy/cli_args.py's add_argument calls, aliases included, nothing from help texts", () => {
  const text = [
    'parser.add_argument("--listen", type=str, default="127.0.0.1", help="Specify (--port too).")',
    "parser.add_argument('--disable-api-nodes', action='store_true')",
    'vram_group.add_argument("--gpu-only", "--highvram", action="store_true")',
    "# parser.add_argument is also named in --comments-flag text outside a call",
  ].join("\n");
  expect([...cliFlags(text)].sort()).toEqual(["--disable-api-nodes", "--gpu-only", "--highvram", "--listen"]);
  expect(cliFlags(undefined).size).toBe(0);
});
