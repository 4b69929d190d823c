import { join, resolve } from "node:path";
import { describeConfig, loadConfig } from "../../config/index.js";
import { configError } from "../harness/config-error.js";

const ROOT = "/srv/worker";
const BASE = { COMFYUI_BASE_DIR: "/opt/comfy", REPORT_ADDR: "https://report.example" } as const;

/** The one ComfyUI of a config, flattened: its URL and folders. */
function oneComfy(c: ReturnType<typeof loadConfig>) {
  expect(c.comfyui.backends).toHaveLength(1);
  const [{ url, outputDir }] = c.comfyui.backends as [{ url: string; outputDir: string }];
  return { url, outputDir, inputDir: c.comfyui.inputDir };
}

describe("loadConfig", () => {
  test("defaults", () => {
    const c = loadConfig({ ...BASE }, ROOT);
    expect(c.worker).toEqual({
      host: "0.0.0.0",
      port: 3000,
      publicUrl: "http://127.0.0.1:3000",
      useSsl: false,
      sslCert: "/etc/instance.crt",
      sslKey: "/etc/instance.key",
    });
    expect(c.api).toEqual({ host: "127.0.0.1", port: 18288, enabled: true, allowedHosts: [] });
    expect(c.comfyui).toEqual({
      backends: [{ url: "http://127.0.0.1:18188", outputDir: "/opt/comfy/output" }],
      inputDir: "/opt/comfy/input",
      startupTimeoutMs: 300_000,
      requestTimeoutMs: 30_000,
      historyPollMs: 1_000,
    });
    expect(c.outputDir).toBe("/opt/comfy/output");
    expect(c.jobs).toEqual({
      timeoutMs: 600_000,
      stallTimeoutMs: 600_000,
      vramDriftJobs: 8,
      maxInFlightPrompts: 2,
      resultRetentionMs: 3_600_000,
      resultRetentionMax: 1_000,
      resultRetentionMaxBytes: 64 * 1024 * 1024,
      shared: true,
      sharedPrefix: "",
      heartbeatMs: 5_000,
    });
    expect(c.inputs).toEqual({
      allowPrivate: false,
      maxBytes: 256 * 1024 * 1024,
      timeoutMs: 120_000,
      cacheMaxBytes: 2 * 1024 * 1024 * 1024,
      cacheMaxFiles: 1_000,
      maxPerJob: 64,
      concurrency: 8,
    });
    expect(c.limits).toEqual({
      maxBodyBytes: 64 * 1024 * 1024,
      routedMaxBodyBytes: 16 * 1024 * 1024,
      maxWorkflowNodes: 5_000,
      jsonShape: { maxDepth: 64, maxValues: 250_000 },
    });
    expect(c.s3).toMatchObject({
      presignExpirySeconds: 604_800,
      forcePathStyle: true,
      partSizeBytes: 8388608,
    });
    expect(c.s3.bucketName).toBeUndefined();
    expect(c.webhook).toEqual({ url: undefined, timeoutMs: 10_000, maxAttempts: 5, allowPrivate: false });
    expect("secret" in c.webhook).toBe(false);
    expect("signingKey" in c.webhook).toBe(false);
    expect(c.autoscaler).toEqual({
      unsecured: false,
      reportAddrs: ["https://report.example"],
      masterToken: "",
      containerId: 0,
      legacySignatures: false,
      checkUrl: true,
      replayWindow: 1000,
      maxQueueTimeS: 10,
      reportIntervalMs: 1_000,
      heartbeatIntervalMs: 10_000,
      updateFlagFile: "/.force_update",
      sessionMaxLifetimeS: 3600,
    });
    expect(c.benchmark).toEqual({
      jsonPath: undefined,
      defaultJsonPath: join(ROOT, "misc", "benchmark.json"),
      seedJsonPath: join(ROOT, "workers", "comfyui-json", "misc", "benchmark.json"),
      wrapperJsonPath: "/opt/comfyui-api-wrapper/workflows/pyworker_benchmark.json",
      promptsPath: join(ROOT, "misc", "test_prompts.txt"),
      width: 512,
      height: 512,
      steps: 20,
      cacheFile: join(ROOT, ".has_benchmark"),
      maxRounds: 8,
      minRounds: 1,
      tolerance: 0.05,
      skip: false,
      liveScore: true,
      liveScoreBand: 2,
      gpuKey: "",
    });
    expect(c.log).toEqual({ level: "info", pretty: false });
  });

  test("explicit values are read, trimmed, and blank ones count as unset", () => {
    const c = loadConfig(
      {
        ...BASE,
        WORKER_PORT: " 4000 ",
        API_ENABLED: "no",
        MAX_QUEUE_TIME: "2.5",
        LOG_LEVEL: "debug",
        COMFYUI_URL: "http://10.0.0.5:8188/",
        COMFYUI_INPUT_DIR: "/data/in",
        OUTPUT_DIR: "/data/results",
        JOB_TIMEOUT_MS: "",
        SIGNATURE_LEGACY: "TRUE",
        CONTAINER_ID: "-7",
      },
      ROOT,
    );
    expect(c.worker.port).toBe(4000);
    expect(c.api.enabled).toBe(false);
    expect(c.autoscaler.maxQueueTimeS).toBe(2.5);
    expect(c.log.level).toBe("debug");
    expect(c.comfyui.backends).toEqual([{ url: "http://10.0.0.5:8188", outputDir: "/opt/comfy/output" }]);
    expect(c.comfyui.inputDir).toBe("/data/in");
    expect(c.outputDir).toBe("/data/results");
    expect(c.jobs.timeoutMs).toBe(600_000);
    expect(c.autoscaler.legacySignatures).toBe(true);
    expect(c.autoscaler.containerId).toBe(-7);
  });

  test("relative ComfyUI folders are resolved", () => {
    const c = loadConfig({ ...BASE, COMFYUI_BASE_DIR: "comfy" }, ROOT);
    expect(c.comfyui.inputDir).toBe(resolve("comfy", "input"));
    expect(c.outputDir).toBe(resolve("comfy", "output"));
  });

  test.each([
    ["WORKER_PORT", "30x0"],
    ["WORKER_PORT", "3000.5"],
    ["API_PORT", "0x10"],
    ["JOB_TIMEOUT_MS", "1e3"],
    ["MAX_INFLIGHT_PROMPTS", "two"],
    ["REQNUM_REPLAY_WINDOW", "--1"],
    ["CONTAINER_ID", "12 34"],
  ])("a bad integer in %s names the variable (%j)", (variable, value) => {
    const err = configError(() => loadConfig({ ...BASE, [variable]: value }, ROOT));
    expect(err.variable).toBe(variable);
    expect(err.name).toBe("ConfigError");
    expect(err.message).toContain(variable);
    expect(err.message).toContain("expected an integer");
    expect(err.message).toContain(JSON.stringify(value));
  });

  test.each([
    ["WORKER_PORT", "65536"],
    ["WORKER_PORT", "-1"],
    ["MAX_INFLIGHT_PROMPTS", "0"],
    ["MAX_INFLIGHT_PROMPTS", "65"],
    ["S3_PART_SIZE_BYTES", "1024"],
    ["MAX_QUEUE_TIME", "-1"],
    ["BENCHMARK_TOLERANCE", "1.5"],
  ])("an out-of-range %s=%s names the variable", (variable, value) => {
    const err = configError(() => loadConfig({ ...BASE, [variable]: value }, ROOT));
    expect(err.variable).toBe(variable);
    expect(err.message).toContain("must be between");
  });

  test.each([
    ["USE_SSL", "maybe"],
    ["UNSECURED", "2"],
    ["MAX_QUEUE_TIME", "soon"],
    ["MAX_QUEUE_TIME", "Infinity"],
    ["COMFYUI_URL", "not a url"],
    ["COMFYUI_URL", "ftp://host/"],
    ["WEBHOOK_URL", "file:///etc/passwd"],
    ["LOG_LEVEL", "verbose"],
  ])("a bad %s=%s names the variable", (variable, value) => {
    const err = configError(() => loadConfig({ ...BASE, [variable]: value }, ROOT));
    expect(err.variable).toBe(variable);
  });

  test("the ComfyUI folders are required", () => {
    const { COMFYUI_BASE_DIR: _b, ...noBase } = BASE;
    expect(configError(() => loadConfig(noBase, ROOT)).variable).toBe("COMFYUI_INPUT_DIR");
    expect(configError(() => loadConfig({ ...noBase, COMFYUI_INPUT_DIR: "/in" }, ROOT)).variable).toBe(
      "COMFYUI_OUTPUT_DIR",
    );
    const c = loadConfig({ ...noBase, COMFYUI_INPUT_DIR: "/in", COMFYUI_OUTPUT_DIR: "/out" }, ROOT);
    expect(c.comfyui.inputDir).toBe("/in");
    expect(c.comfyui.backends.map((b) => b.outputDir)).toEqual(["/out"]);
  });

  describe("COMFYUI_URLS: several ComfyUI backends", () => {
    const urls = "http://127.0.0.1:18188, http://127.0.0.1:18189/";
    test("each URL is paired with its own output folder, in order; the input folder is shared", () => {
      const c = loadConfig(
        { ...BASE, COMFYUI_URLS: urls, COMFYUI_OUTPUT_DIR: "/out/gpu0,/out/gpu1", COMFYUI_INPUT_DIR: "/in" },
        ROOT,
      );
      expect(c.comfyui.backends).toEqual([
        { url: "http://127.0.0.1:18188", outputDir: "/out/gpu0" },
        { url: "http://127.0.0.1:18189", outputDir: "/out/gpu1" },
      ]);
      expect(c.comfyui.inputDir).toBe("/in");
      expect(c.outputDir).toBe("/out/gpu0");
    });

    test.each([
      [
        "one output folder for two backends (they would overwrite each other's files)",
        { COMFYUI_URLS: urls },
        "COMFYUI_OUTPUT_DIR",
      ],
      [
        "as many folders, one listed twice",
        { COMFYUI_URLS: urls, COMFYUI_OUTPUT_DIR: "/o,/o/" },
        "COMFYUI_OUTPUT_DIR",
      ],
      ["a list of folders for one ComfyUI", { COMFYUI_OUTPUT_DIR: "/a,/b" }, "COMFYUI_OUTPUT_DIR"],
      [
        "both COMFYUI_URL and COMFYUI_URLS",
        { COMFYUI_URLS: urls, COMFYUI_URL: "http://h:1" },
        "COMFYUI_URLS",
      ],
      [
        "a URL listed twice",
        { COMFYUI_URLS: "http://h:1,http://h:1/", COMFYUI_OUTPUT_DIR: "/a,/b" },
        "COMFYUI_URLS",
      ],
      [
        "a bad URL in the list",
        { COMFYUI_URLS: "http://h:1,ftp://h:2", COMFYUI_OUTPUT_DIR: "/a,/b" },
        "COMFYUI_URLS",
      ],
      ["a list of commas only", { COMFYUI_URLS: " , ," }, "COMFYUI_URLS"],
    ])("%s is refused, naming the variable", (_what, env, variable) => {
      expect(configError(() => loadConfig({ ...BASE, ...env }, ROOT)).variable).toBe(variable);
    });
  });

  describe("REPORT_ADDR", () => {
    test.each([
      ["unset", {}],
      ["empty", { REPORT_ADDR: "" }],
      ["blank", { REPORT_ADDR: "   " }],
      ["only commas", { REPORT_ADDR: " , ," }],
      ["UNSECURED=false", { UNSECURED: "false" }],
    ])("is required unless UNSECURED=true (%s)", (_name, extra) => {
      const err = configError(() => loadConfig({ COMFYUI_BASE_DIR: "/opt/comfy", ...extra }, ROOT));
      expect(err.variable).toBe("REPORT_ADDR");
      expect(err.message).toContain("UNSECURED");
    });

    test("is optional with UNSECURED=true", () => {
      const c = loadConfig({ COMFYUI_BASE_DIR: "/opt/comfy", UNSECURED: "true" }, ROOT);
      expect(c.autoscaler.unsecured).toBe(true);
      expect(c.autoscaler.reportAddrs).toEqual([]);
    });

    test("comma-separated addresses are trimmed, lose trailing slashes, and empties are dropped", () => {
      const c = loadConfig(
        {
          ...BASE,
          REPORT_ADDR: " https://a.example/ ,https://b.example:8443/path//,, http://10.0.0.9:7000 ,",
        },
        ROOT,
      );
      expect(c.autoscaler.reportAddrs).toEqual([
        "https://a.example",
        "https://b.example:8443/path",
        "http://10.0.0.9:7000",
      ]);
    });
  });

  describe("publicUrl", () => {
    test("uses PUBLIC_IPADDR and VAST_TCP_PORT_<WORKER_PORT>", () => {
      const c = loadConfig({ ...BASE, PUBLIC_IPADDR: "203.0.113.7", VAST_TCP_PORT_3000: "41234" }, ROOT);
      expect(c.worker.publicUrl).toBe("http://203.0.113.7:41234");
    });

    test("follows WORKER_PORT to pick the mapped port variable", () => {
      const env = {
        ...BASE,
        PUBLIC_IPADDR: "203.0.113.7",
        WORKER_PORT: "5000",
        VAST_TCP_PORT_3000: "41234",
        VAST_TCP_PORT_5000: "45678",
      };
      expect(loadConfig(env, ROOT).worker.publicUrl).toBe("http://203.0.113.7:45678");
      const { VAST_TCP_PORT_5000: _m, ...unmapped } = env;
      expect(loadConfig(unmapped, ROOT).worker.publicUrl).toBe("http://203.0.113.7:5000");
    });

    test("USE_SSL makes it https", () => {
      const c = loadConfig(
        { ...BASE, USE_SSL: "true", PUBLIC_IPADDR: "198.51.100.3", VAST_TCP_PORT_3000: "40001" },
        ROOT,
      );
      expect(c.worker.useSsl).toBe(true);
      expect(c.worker.publicUrl).toBe("https://198.51.100.3:40001");
    });

    test("defaults to http://127.0.0.1:<WORKER_PORT>", () => {
      expect(loadConfig({ ...BASE, WORKER_PORT: "8080" }, ROOT).worker.publicUrl).toBe(
        "http://127.0.0.1:8080",
      );
      expect(loadConfig({ ...BASE, USE_SSL: "1" }, ROOT).worker.publicUrl).toBe("https://127.0.0.1:3000");
    });
  });

  test("the result is deeply frozen: assignment throws in strict mode", () => {
    const c = loadConfig({ ...BASE, WEBHOOK_SECRET: "whsec_abc" }, ROOT);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.worker)).toBe(true);
    expect(Object.isFrozen(c.autoscaler.reportAddrs)).toBe(true);
    expect(() => {
      (c as any).outputDir = "/tmp";
    }).toThrow(TypeError);
    expect(() => {
      (c as any).worker.port = 1;
    }).toThrow(TypeError);
    expect(() => {
      (c as any).webhook.secret = "other";
    }).toThrow(TypeError);
    expect(() => {
      (c as any).autoscaler.reportAddrs.push("https://evil.example");
    }).toThrow(TypeError);
    expect(() => {
      (c as any).benchmark.newField = 1;
    }).toThrow(TypeError);
    expect(c.worker.port).toBe(3000);
    expect(c.autoscaler.reportAddrs).toEqual(["https://report.example"]);
  });

  test("each call gives its own result from its own env", () => {
    const a = loadConfig({ ...BASE, WORKER_PORT: "1111" }, ROOT);
    const b = loadConfig({ ...BASE, WORKER_PORT: "2222" }, ROOT);
    expect(a.worker.port).toBe(1111);
    expect(b.worker.port).toBe(2222);
  });
});

describe("describeConfig", () => {
  const secrets = {
    S3_ACCESS_KEY_ID: "AKIAEXAMPLEKEY",
    S3_SECRET_ACCESS_KEY: "s3-secret-value-123",
    WEBHOOK_SECRET: "whsec_c2VjcmV0LWJ5dGVz",
    WEBHOOK_SIGNING_KEY: "c2lnbmluZy1rZXktYnl0ZXM=",
    MASTER_TOKEN: "master-token-xyz",
  };

  test("masks secrets down to two characters", () => {
    const c = loadConfig({ ...BASE, ...secrets }, ROOT);
    const d = describeConfig(c) as any;
    expect(d.s3.secretAccessKey).toBe("s3***");
    expect(d.webhook.secret).toBe("wh***");
    expect(d.webhook.signingKey).toBe("c2***");
    expect(d.autoscaler.masterToken).toBe("ma***");
    const text = JSON.stringify(d);
    for (const name of [
      "S3_SECRET_ACCESS_KEY",
      "WEBHOOK_SECRET",
      "WEBHOOK_SIGNING_KEY",
      "MASTER_TOKEN",
    ] as const) {
      expect(text).not.toContain(secrets[name]);
      expect(text).not.toContain(secrets[name].slice(2));
    }
  });

  test("keeps everything else as it is", () => {
    const c = loadConfig({ ...BASE, ...secrets }, ROOT);
    const d = describeConfig(c) as any;
    expect(d.worker).toEqual(c.worker);
    expect(d.comfyui).toEqual(c.comfyui);
    expect(d.s3.accessKeyId).toBe("AKIAEXAMPLEKEY");
    expect(d.s3.forcePathStyle).toBe(true);
    expect(d.webhook.timeoutMs).toBe(10_000);
    expect(d.autoscaler.reportAddrs).toEqual(["https://report.example"]);
    expect(d.autoscaler.replayWindow).toBe(1000);
  });

  test("a webhook URL is shown as scheme, host and port only (its path carries the token)", () => {
    const c = loadConfig(
      { ...BASE, WEBHOOK_URL: "https://hooks.slack.com/services/T000/B000/XXXXSECRET" },
      ROOT,
    );
    const text = JSON.stringify(describeConfig(c));
    expect(text).not.toContain("XXXXSECRET");
    expect(text).not.toContain("/services/");
    expect((describeConfig(c) as any).webhook.url).toBe("https://hooks.slack.com");
  });

  test("unset secrets stay unset, and the config itself is unchanged", () => {
    const c = loadConfig({ ...BASE }, ROOT);
    const d = describeConfig(c) as any;
    expect(d.s3.secretAccessKey).toBeUndefined();
    expect(d.webhook.secret).toBeUndefined();
    expect(d.webhook.signingKey).toBeUndefined();
    expect(d.autoscaler.masterToken).toBeUndefined();

    const withSecrets = loadConfig({ ...BASE, ...secrets }, ROOT);
    describeConfig(withSecrets);
    expect(withSecrets.autoscaler.masterToken).toBe("master-token-xyz");
    expect(withSecrets.webhook.secret).toBe("whsec_c2VjcmV0LWJ5dGVz");
  });
});

describe("ComfyUI's own arguments (COMFYUI_ARGS) are read back", () => {
  test("the stock image's arguments: the port moves the URL, the folders stay below COMFYUI_BASE_DIR", () => {
    const c = loadConfig(
      { ...BASE, COMFYUI_ARGS: "--disable-auto-launch --enable-cors-header --port 18190" },
      ROOT,
    );
    expect(oneComfy(c)).toMatchObject({
      url: "http://127.0.0.1:18190",
      inputDir: "/opt/comfy/input",
      outputDir: "/opt/comfy/output",
    });
  });

  test("moved folders are followed, in both spellings; explicit variables still win", () => {
    const args = "--base-directory /data/comfy --output-directory=/mnt/out --port=9000";
    const c = loadConfig({ ...BASE, COMFYUI_ARGS: args }, ROOT);
    expect(oneComfy(c)).toMatchObject({
      url: "http://127.0.0.1:9000",
      inputDir: "/data/comfy/input",
      outputDir: "/mnt/out",
    });
    expect(c.outputDir).toBe("/mnt/out");
    const explicit = loadConfig(
      { ...BASE, COMFYUI_ARGS: args, COMFYUI_URL: "http://127.0.0.1:1234", COMFYUI_INPUT_DIR: "/in" },
      ROOT,
    );
    expect(oneComfy(explicit)).toMatchObject({
      url: "http://127.0.0.1:1234",
      inputDir: "/in",
      outputDir: "/mnt/out",
    });
  });

  test("a flag without a usable value is ignored, not taken from the next flag", () => {
    const c = loadConfig({ ...BASE, COMFYUI_ARGS: "--port notaport --output-directory --cpu" }, ROOT);
    expect(oneComfy(c)).toMatchObject({ url: "http://127.0.0.1:18188", outputDir: "/opt/comfy/output" });
  });
});

test("the certificate comes from WORKER_SSL_CERT_FILE, never from SSL_CERT_FILE (a CA list for OpenSSL)", () => {
  const c = loadConfig(
    { ...BASE, SSL_CERT_FILE: "/etc/ssl/certs/ca-certificates.crt", SSL_KEY_FILE: "/x" },
    ROOT,
  );
  expect(c.worker).toMatchObject({ sslCert: "/etc/instance.crt", sslKey: "/etc/instance.key" });
  const mine = loadConfig({ ...BASE, WORKER_SSL_CERT_FILE: "/c.pem", WORKER_SSL_KEY_FILE: "/k.pem" }, ROOT);
  expect(mine.worker).toMatchObject({ sslCert: "/c.pem", sslKey: "/k.pem" });
});
