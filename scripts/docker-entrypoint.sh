#!/usr/bin/env bash
# Starts the worker in our image (FROM Vast's ComfyUI image) as supervisor's program `comfyui-worker`, or on its
# own as a container's entry point. What must happen before the worker runs is the worker's own command,
# `prepare --for image` (worker/commands/prepare.ts): the PYWORKER_REPO install, the USE_SSL certificate, the
# provisioning (or, under supervisor, the wait for Vast's), and the defaults the worker starts with. This script:
#
#   1. under supervisor (WORKER_UNDER_SUPERVISOR=true): loads the environment Vast's own programs load
#      (VAST_ENVIRONMENT_SCRIPT: /etc/environment and $WORKSPACE/.env);
#   2. runs `node <program> prepare --for image`, where <program> is $WORKER_DIR/bundle/worker.mjs, else
#      $WORKER_DIR/dist/worker/cli.js. prepare logs on stderr, reports a failure to the autoscaler itself and
#      exits 1 (so does this script); on success it prints the program to start, then NAME=value lines;
#   3. exports those lines and becomes the worker (exec, in $WORKER_DIR): supervisor's signals reach it, and it
#      starts, restarts and stops its ComfyUIs (COMFYUI_LAUNCH) and writes its own log file (LOG_FILE).
#
# NODE names another node (default: node from PATH).
set -euo pipefail

log() { printf '[entrypoint] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

for arg in "$@"; do
  case "$arg" in
    -h | --help)
      # The header above, up to the first line that is not a comment.
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
      exit 0
      ;;
    *) die "unknown argument: $arg (known: --help)" ;;
  esac
done

case "${WORKER_UNDER_SUPERVISOR:-false}" in
  true | 1 | yes)
    VAST_ENVIRONMENT_SCRIPT="${VAST_ENVIRONMENT_SCRIPT:-/opt/supervisor-scripts/utils/environment.sh}"
    if [ -f "$VAST_ENVIRONMENT_SCRIPT" ]; then
      set +u
      # shellcheck source=/dev/null
      . "$VAST_ENVIRONMENT_SCRIPT"
      set -u
    fi
    ;;
esac
WORKER_DIR="${WORKER_DIR:-/opt/worker}"
NODE="${NODE:-node}"
export WORKER_DIR

command -v "$NODE" >/dev/null 2>&1 || die "no Node: '$NODE' not found (PATH=$PATH)"
if [ -f "$WORKER_DIR/bundle/worker.mjs" ]; then
  program="$WORKER_DIR/bundle/worker.mjs"
elif [ -f "$WORKER_DIR/dist/worker/cli.js" ]; then
  program="$WORKER_DIR/dist/worker/cli.js"
else
  die "no worker in WORKER_DIR=$WORKER_DIR (neither bundle/worker.mjs nor dist/worker/cli.js)"
fi

# Not from inside WORKER_DIR: a PYWORKER_REPO install replaces that folder.
status=0
prepared="$("$NODE" "$program" prepare --for image)" || status=$?
if [ "$status" != 0 ]; then
  # 1: prepare has logged and reported why; anything else is Node's own failure.
  [ "$status" = 1 ] || log "ERROR: $program prepare --for image exited with code $status"
  exit 1
fi

start=""
n=0
while IFS= read -r line; do
  n=$((n + 1))
  if [ "$n" = 1 ]; then
    start="$line"
  elif [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
    export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
  elif [ -n "$line" ]; then
    # Not shown: a value may be a secret.
    die "prepare --for image printed a line that is not NAME=value (line $n of its output)"
  fi
done <<<"$prepared"
[[ "$start" == /* ]] && [ -f "$start" ] || die "prepare --for image named no program to start ('$start')"

cd "$WORKER_DIR"
log "starting $NODE $start start"
exec "$NODE" "$start" start
