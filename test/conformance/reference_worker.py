"""The reference worker of the conformance harness: the PyWorker server library of PyPI's `vastai` (1.9.1) driven
only through its public API (Worker, WorkerConfig, HandlerConfig, BenchmarkConfig), written for this project.

It stands where upstream's ComfyUI template runs PyWorker: in front of the ComfyUI API wrapper, to which it forwards
/generate/sync as is. The harness points it at our worker's local API in the wrapper role (unsecured, reporting to
nobody), so both workers under comparison reach the same ComfyUI through the same wrapper and differ only in the
Vast side.

Env (set by the harness): MODEL_SERVER_URL (the wrapper, http://host:port), MAX_QUEUE_TIME (seconds), plus the
library's own: WORKER_PORT, WORKER_HTTP_PORT, REPORT_ADDR, CONTAINER_ID, MASTER_TOKEN, PUBLIC_IPADDR,
VAST_TCP_PORT_<WORKER_PORT>. Run it in a folder holding `.has_benchmark` (the library then reads max_perf from it
instead of benchmarking).
"""
import contextlib
import os
from urllib.parse import urlsplit

from vastai.serverless.server.worker import (
    BenchmarkConfig,
    HandlerConfig,
    Worker,
    WorkerConfig,
)


@contextlib.asynccontextmanager
async def ready_at_once():
    # The wrapper is up before the harness starts us: nothing to wait for.
    yield


def main() -> None:
    model = urlsplit(os.environ["MODEL_SERVER_URL"])
    sample = {"input": {"workflow_json": {}}}
    config = WorkerConfig(
        model_server_url=f"{model.scheme}://{model.hostname}",
        model_server_port=model.port,
        handlers=[
            HandlerConfig(
                route="/generate/sync",
                max_queue_time=float(os.environ.get("MAX_QUEUE_TIME", "30")),
                benchmark_config=BenchmarkConfig(dataset=[sample], runs=1),
            )
        ],
        max_sessions=10,
        lifecycle=ready_at_once(),
    )
    Worker(config).run(host="127.0.0.1")


if __name__ == "__main__":
    main()
