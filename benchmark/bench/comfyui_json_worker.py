"""Upstream's comfyui-json PyWorker, as the cold-start benchmark runs it (benchmark/bench/cold-start.ts).

What pyworker's `workers/comfyui-json/worker.py` configures, written for this benchmark against PyPI `vastai` 1.9.1's
public API: one /generate/sync handler in front of the ComfyUI API wrapper (no parallel requests, max_queue_time 10 s),
a benchmark of one warm-up and 8 timed runs (BenchmarkConfig's defaults) whose payload comes from the first custom
workflow found (`misc/benchmark.json` beside this file, then BENCHMARK_JSON_PATH), the wrapper's log tailed for
BACKENDS_READY (and its fault tokens), /health as the model health check, and the readiness helper that appends
BACKENDS_READY to that log once ComfyUI and the wrapper answer (2 s after the start, then every 5 s).

Upstream hard-codes the wrapper (127.0.0.1:18288), its log (/var/log/portal/api-wrapper.log) and ComfyUI
(127.0.0.1:18188); here they come from MODEL_SERVER_URL, MODEL_LOG_FILE and COMFYUI_URL, since the benchmark's
parts listen on free ports. The SD1.5 fallback payload is not reproduced: the benchmark always provides a workflow.
"""

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from vastai import BenchmarkConfig, HandlerConfig, LogActionConfig, Worker, WorkerConfig

WRAPPER = urlsplit(os.environ["MODEL_SERVER_URL"])
MODEL_LOG_FILE = os.environ["MODEL_LOG_FILE"]
COMFYUI_URL = os.environ["COMFYUI_URL"].rstrip("/")
HEALTH_PATH = "/health"
READY_TOKEN = "BACKENDS_READY"
FAULT_TOKENS = ["BACKENDS_READY_TIMEOUT", "BACKEND_UNRECOVERABLE", "Application startup failed"]
CUSTOM_BENCHMARK = Path(__file__).parent / "misc" / "benchmark.json"
# The readiness helper's timing in upstream's worker.
HELPER_GRACE_S = 2
HELPER_INTERVAL_S = 5
HELPER_DEADLINE_S = 600


def benchmark_payload() -> dict:
    """One benchmark request: the first custom workflow that loads, in upstream's order."""
    candidates = [CUSTOM_BENCHMARK]
    if os.getenv("BENCHMARK_JSON_PATH"):
        candidates.append(Path(os.environ["BENCHMARK_JSON_PATH"]))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            workflow = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return {"input": {"request_id": f"test-{random.randint(1000, 99999)}", "workflow_json": workflow}}
    raise RuntimeError("no custom benchmark workflow (the cold-start benchmark always provides one)")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def readiness_helper() -> None:
    """For wrappers that never log BACKENDS_READY themselves: log it once the whole stack answers."""
    time.sleep(HELPER_GRACE_S)
    deadline = time.monotonic() + HELPER_DEADLINE_S
    wrapper_health = f"{WRAPPER.scheme}://{WRAPPER.hostname}:{WRAPPER.port}{HEALTH_PATH}"
    while time.monotonic() < deadline:
        if answers(f"{COMFYUI_URL}/system_stats") and answers(wrapper_health):
            with open(MODEL_LOG_FILE, "a") as log:
                log.write(f"{READY_TOKEN} (written by the readiness helper)\n")
            return
        time.sleep(HELPER_INTERVAL_S)


config = WorkerConfig(
    model_server_url=f"{WRAPPER.scheme}://{WRAPPER.hostname}",
    model_server_port=WRAPPER.port,
    model_log_file=MODEL_LOG_FILE,
    model_healthcheck_url=HEALTH_PATH,
    handlers=[
        HandlerConfig(
            route="/generate/sync",
            allow_parallel_requests=False,
            max_queue_time=10.0,
            benchmark_config=BenchmarkConfig(generator=benchmark_payload),
        )
    ],
    log_action_config=LogActionConfig(on_load=[READY_TOKEN], on_error=FAULT_TOKENS, on_info=[]),
)

threading.Thread(target=readiness_helper, name="readiness-helper", daemon=True).start()
Worker(config).run()
