# syntax=docker/dockerfile:1
#
# The worker beside ComfyUI in one image, as Vast's "ComfyUI (Serverless)" template runs them:
# ComfyUI on 127.0.0.1:18188, the worker's routed port on 3000 and its local API on 127.0.0.1:18288.
#
#   docker build -t comfyui-serverless-worker .
#   docker build --build-arg DOWNLOAD_SD15=false -t comfyui-serverless-worker .   # no SD1.5 checkpoint
#
# The CUDA 12.6 base needs a host driver that supports CUDA 12.6 (on Vast: an offer filter cuda_vers >= 12.6).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# Pinned versions; override with --build-arg.
ARG NODE_VERSION=20.19.5
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI.git
ARG COMFYUI_REF=v0.3.75
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG TORCHAUDIO_VERSION=2.9.1
# The default boot benchmark runs the SD1.5 workflow in misc/workflows/ and needs this checkpoint
# (about 2 GB). With DOWNLOAD_SD15=false, bring a model and a benchmark of your own (PROVISIONING_SCRIPT,
# BENCHMARK_JSON_PATH), or set BENCHMARK_SKIP=true.
ARG DOWNLOAD_SD15=true
ARG SD15_URL=https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# Python 3 (3.12 on Ubuntu 24.04) with venv, git, curl, tini, openssl (the routed port's certificate when
# USE_SSL=true). libgl1 and libglib2.0-0 are for custom nodes that use OpenCV.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl git openssl tini xz-utils \
        python3 python3-venv \
        libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Node.js from the official binary tarball, checked against the release's SHASUMS256.txt.
RUN set -eux; \
    case "$(dpkg --print-architecture)" in \
        amd64) arch=x64 ;; \
        arm64) arch=arm64 ;; \
        *) echo "unsupported architecture: $(dpkg --print-architecture)" >&2; exit 1 ;; \
    esac; \
    tarball="node-v${NODE_VERSION}-linux-${arch}.tar.xz"; \
    cd /tmp; \
    curl -fsSLO --retry 3 "https://nodejs.org/dist/v${NODE_VERSION}/${tarball}"; \
    curl -fsSLO --retry 3 "https://nodejs.org/dist/v${NODE_VERSION}/SHASUMS256.txt"; \
    grep " ${tarball}\$" SHASUMS256.txt | sha256sum -c -; \
    tar -xJf "${tarball}" -C /usr/local --strip-components=1 --no-same-owner; \
    rm -f "${tarball}" SHASUMS256.txt; \
    node --version; npm --version

# ComfyUI at a pinned ref, in a venv that comes first on PATH (python3 and pip are the venv's, for
# provisioning scripts too). torch first from the CUDA index, so that ComfyUI's unpinned torch
# requirements are already met.
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN set -eux; \
    git clone --depth 1 --branch "${COMFYUI_REF}" "${COMFYUI_REPO}" /opt/ComfyUI; \
    python3 -m venv /opt/venv; \
    pip install --upgrade pip; \
    pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "torchaudio==${TORCHAUDIO_VERSION}"; \
    pip install -r /opt/ComfyUI/requirements.txt; \
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RUN set -eux; \
    if [ "${DOWNLOAD_SD15}" = "true" ]; then \
        curl -fL --retry 5 --retry-delay 5 -o /opt/ComfyUI/models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors.partial "${SD15_URL}"; \
        mv /opt/ComfyUI/models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors.partial \
            /opt/ComfyUI/models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors; \
    else \
        echo "DOWNLOAD_SD15=${DOWNLOAD_SD15}: no SD1.5 checkpoint in the image"; \
    fi

# The worker: dependencies first (a layer that survives source changes), then the build, then dev
# dependencies pruned. Only what the build and the worker use is copied (there is no .dockerignore).
WORKDIR /opt/worker
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --no-audit --no-fund
COPY config ./config
COPY lib ./lib
COPY worker ./worker
COPY handlers ./handlers
COPY benchmark ./benchmark
COPY scripts ./scripts
COPY misc ./misc
COPY web ./web
RUN npm run build \
    && npm prune --omit=dev --no-audit --no-fund \
    && chmod +x scripts/docker-entrypoint.sh \
    && test -f dist/worker/cli.js

# Paths and programs the entrypoint uses (scripts/docker-entrypoint.sh lists them all).
ENV WORKER_DIR=/opt/worker \
    COMFYUI_DIR=/opt/ComfyUI \
    COMFYUI_PYTHON=/opt/venv/bin/python3 \
    LOG_DIR=/var/log/portal
# The worker. ComfyUI's input/, output/ and models/ are below COMFYUI_BASE_DIR. COMFYUI_PORT is where the
# entrypoint starts ComfyUI and COMFYUI_URL where the worker looks for it: change them together.
ENV WORKER_PORT=3000 \
    API_PORT=18288 \
    COMFYUI_PORT=18188 \
    COMFYUI_URL=http://127.0.0.1:18188 \
    COMFYUI_BASE_DIR=/opt/ComfyUI
# As upstream's start_server.sh: HTTPS on the routed port and Vast's autoscaler. With USE_SSL=true the
# entrypoint gets /etc/instance.crt signed by Vast for CONTAINER_ID unless the files are already there; set
# USE_SSL=false to serve plain HTTP. For local runs without Vast: UNSECURED=true USE_SSL=false.
ENV USE_SSL=true \
    REPORT_ADDR=https://run.vast.ai

# 3000: the routed port (the router's signed requests). 18288 (local API: bare {input}, /docs, /metrics) and
# 18188 (ComfyUI) listen on 127.0.0.1 only, for SSH tunnels; API_HOST=0.0.0.0 publishes the API port.
EXPOSE 18188 18288 3000

# Liveness of the worker process (GET /health on the local API; the routed port serves /health too, and
# /ready says whether it takes work). The start period covers a PYWORKER_REPO install and provisioning.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${API_PORT:-18288}/health" >/dev/null || exit 1

# On SIGTERM the worker drains (up to 60 s by default), then ComfyUI is stopped (up to 30 s more): give
# `docker stop` a timeout to match (docker stop -t 100).
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/worker/scripts/docker-entrypoint.sh"]
