#!/usr/bin/env bash
# Makes sure a Chromium for the browser test is on this machine, as the stack installs its other tools: Debian's
# `chromium` package (apt-get, as root) when no `chromium` is on PATH. The test drives it with playwright-core,
# which downloads no browser. Prints the binary's path.
# Env: CHROMIUM_PATH (a browser to use instead).
set -euo pipefail
if [ -n "${CHROMIUM_PATH:-}" ]; then
  [ -x "$CHROMIUM_PATH" ] || { echo "CHROMIUM_PATH=$CHROMIUM_PATH is not an executable" >&2; exit 1; }
  echo "$CHROMIUM_PATH"; exit 0
fi
if command -v chromium >/dev/null 2>&1; then command -v chromium; exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and this is not root on Debian: run 'apt-get install -y chromium' as root," >&2
  echo "or set CHROMIUM_PATH to a Chromium or Chrome binary" >&2
  exit 1
fi
# Several test runs may start at once: one installs, the others wait for it.
CACHE="${COMFY_WORKER_CACHE:-$HOME/.cache/comfyui-worker}"
mkdir -p "$CACHE"
exec 9>"$CACHE/.chromium.lock"
flock 9
if ! command -v chromium >/dev/null 2>&1; then
  echo "[install-chromium] apt-get install chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium >&2
fi
command -v chromium
