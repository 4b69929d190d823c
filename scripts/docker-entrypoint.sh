#!/usr/bin/env bash
# The container's entry point (under tini): ComfyUI in the background, the worker in the foreground.
#
#   1. PYWORKER_REPO set: install this worker from that git repository (once per repository + PYWORKER_REF).
#   2. USE_SSL=true and no certificate yet: get one signed by Vast, as upstream's start_server.sh does.
#   3. PROVISIONING_SCRIPT set: run it (a local path, or an http(s) URL that is downloaded first).
#   4. Start ComfyUI in the background (its log: $LOG_DIR/comfyui.log).
#   5. Run the worker in the foreground; SIGTERM/SIGINT are forwarded to it (it drains). When it exits, ComfyUI
#      is stopped (SIGTERM, then SIGKILL after COMFYUI_STOP_TIMEOUT seconds) and the script exits with the
#      worker's code. If ComfyUI dies on its own, the worker notices (it watches ComfyUI's health).
#
# --dry-run (or ENTRYPOINT_DRY_RUN=1) prints the commands instead of running them, after the same validation.
# Every path and program comes from the environment (defaults below), so that tests can stand fakes in.
set -euo pipefail

log() { printf '[entrypoint] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

DRY_RUN="${ENTRYPOINT_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $arg (known: --dry-run, --help)" ;;
  esac
done
case "$DRY_RUN" in 1 | true | yes) DRY_RUN=1 ;; *) DRY_RUN=0 ;; esac

WORKER_DIR="${WORKER_DIR:-/opt/worker}"
COMFYUI_DIR="${COMFYUI_DIR:-/opt/ComfyUI}"
COMFYUI_PORT="${COMFYUI_PORT:-18188}"
COMFYUI_STOP_TIMEOUT="${COMFYUI_STOP_TIMEOUT:-30}"
LOG_DIR="${LOG_DIR:-/var/log/portal}"
INSTALL_MARKER_DIR="${INSTALL_MARKER_DIR:-$WORKER_DIR}"
SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/instance.crt}"
SSL_KEY_FILE="${SSL_KEY_FILE:-/etc/instance.key}"
VAST_SIGN_CERT_URL="${VAST_SIGN_CERT_URL:-https://console.vast.ai/api/v0/sign_cert/}"
GIT="${GIT:-git}"
NPM="${NPM:-npm}"
CURL="${CURL:-curl}"
NODE="${NODE:-node}"
OPENSSL="${OPENSSL:-openssl}"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-python3}"
# The worker finds ComfyUI's input/output folders below COMFYUI_BASE_DIR (unless set otherwise).
COMFYUI_BASE_DIR="${COMFYUI_BASE_DIR:-$COMFYUI_DIR}"
COMFYUI_URL="${COMFYUI_URL:-http://127.0.0.1:$COMFYUI_PORT}"
export WORKER_DIR COMFYUI_DIR COMFYUI_PORT LOG_DIR COMFYUI_BASE_DIR COMFYUI_URL SSL_CERT_FILE SSL_KEY_FILE

case "$COMFYUI_STOP_TIMEOUT" in '' | *[!0-9]*) die "COMFYUI_STOP_TIMEOUT must be a whole number of seconds" ;; esac

# Runs a command, or prints it (shell-quoted, on stdout) in a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
# Runs a command inside a folder (in a subshell).
run_in() {
  local dir="$1"
  shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ (cd %q &&' "$dir"
    printf ' %q' "$@"
    printf ')\n'
  else
    (cd "$dir" && "$@")
  fi
}
need_program() {
  command -v "$1" >/dev/null 2>&1 || die "$2: program '$1' not found (PATH=$PATH)"
}

[ "$DRY_RUN" = 1 ] && log "dry run: commands are printed on stdout, not run"

# --- 1. the worker from a git repository -----------------------------------------------------------------
will_install=0
if [ -n "${PYWORKER_REPO:-}" ]; then
  ref="${PYWORKER_REF:-}"
  key="$(printf '%s#%s' "$PYWORKER_REPO" "$ref" | sha256sum | cut -c1-16)"
  marker="$INSTALL_MARKER_DIR/.installed-from-$key"
  if [ -f "$marker" ]; then
    log "worker: $PYWORKER_REPO${ref:+ @ $ref} already installed in $WORKER_DIR ($marker), skipping the install"
  else
    will_install=1
    log "worker: installing from $PYWORKER_REPO${ref:+ @ $ref} into $WORKER_DIR"
    need_program "$GIT" "PYWORKER_REPO"
    need_program "$NPM" "PYWORKER_REPO"
    parent="$(dirname "$WORKER_DIR")"
    if [ "$DRY_RUN" = 1 ]; then
      tmp="$parent/.worker-install.XXXXXX"
    else
      mkdir -p "$parent"
      tmp="$(mktemp -d "$parent/.worker-install.XXXXXX")"
    fi
    install_failed() {
      log "ERROR: worker install from $PYWORKER_REPO${ref:+ @ $ref} failed at: $1 (the worker in $WORKER_DIR is unchanged)"
      [ "$DRY_RUN" = 1 ] || rm -rf "$tmp"
      exit 1
    }
    if [[ "$ref" =~ ^[0-9a-fA-F]{40}$ ]]; then
      # A full commit id: clone --branch does not take one, fetch does.
      run "$GIT" init -q "$tmp" || install_failed "git init"
      run "$GIT" -C "$tmp" fetch -q --depth 1 "$PYWORKER_REPO" "$ref" || install_failed "git fetch $ref"
      run "$GIT" -C "$tmp" checkout -q FETCH_HEAD || install_failed "git checkout $ref"
    elif [ -n "$ref" ]; then
      run "$GIT" clone -q --depth 1 --branch "$ref" "$PYWORKER_REPO" "$tmp" || install_failed "git clone"
    else
      run "$GIT" clone -q --depth 1 "$PYWORKER_REPO" "$tmp" || install_failed "git clone"
    fi
    run_in "$tmp" "$NPM" ci --no-audit --no-fund || install_failed "npm ci"
    run_in "$tmp" "$NPM" run build || install_failed "npm run build"
    run_in "$tmp" "$NPM" prune --omit=dev --no-audit --no-fund || install_failed "npm prune --omit=dev"
    if [ "$DRY_RUN" != 1 ] && [ ! -f "$tmp/dist/worker/cli.js" ]; then
      install_failed "the build made no dist/worker/cli.js"
    fi
    old="$WORKER_DIR.old.$$"
    if [ -e "$WORKER_DIR" ]; then
      run mv "$WORKER_DIR" "$old" || install_failed "moving the old worker aside"
    fi
    if ! run mv "$tmp" "$WORKER_DIR"; then
      [ -e "$old" ] && mv "$old" "$WORKER_DIR"
      install_failed "moving the new worker in place"
    fi
    if [ -e "$old" ] || [ "$DRY_RUN" = 1 ]; then run rm -rf "$old"; fi
    run mkdir -p "$INSTALL_MARKER_DIR"
    if [ "$DRY_RUN" = 1 ]; then
      run touch "$marker"
    else
      printf '%s\n%s\n' "$PYWORKER_REPO" "$ref" >"$marker"
    fi
    log "worker: installed from $PYWORKER_REPO${ref:+ @ $ref} ($marker)"
  fi
fi

# --- 2. the routed port's certificate ---------------------------------------------------------------------
case "${USE_SSL:-false}" in true | 1 | yes) use_ssl=1 ;; *) use_ssl=0 ;; esac
if [ "$use_ssl" = 1 ]; then
  if [ -s "$SSL_CERT_FILE" ] && [ -s "$SSL_KEY_FILE" ]; then
    log "ssl: using $SSL_CERT_FILE and $SSL_KEY_FILE"
  else
    [ -n "${CONTAINER_ID:-}" ] || die "ssl: USE_SSL=true needs CONTAINER_ID (set by Vast) to get a certificate, or the files SSL_CERT_FILE/SSL_KEY_FILE, or USE_SSL=false"
    need_program "$OPENSSL" "USE_SSL=true"
    need_program "$CURL" "USE_SSL=true"
    log "ssl: getting $SSL_CERT_FILE signed by $VAST_SIGN_CERT_URL for instance $CONTAINER_ID"
    csr="$SSL_KEY_FILE.csr"
    run "$OPENSSL" req -newkey rsa:2048 -nodes -sha256 -subj "/C=US/ST=CA/CN=pyworker.vast.ai/" \
      -addext "subjectAltName=IP:0.0.0.0" -keyout "$SSL_KEY_FILE" -out "$csr" ||
      die "ssl: openssl could not make a key and certificate request"
    run "$CURL" -fsS --retry 3 -H 'Content-Type: application/octet-stream' --data-binary "@$csr" \
      -o "$SSL_CERT_FILE.partial" "$VAST_SIGN_CERT_URL?instance_id=$CONTAINER_ID" ||
      die "ssl: signing the certificate request failed ($VAST_SIGN_CERT_URL)"
    run mv "$SSL_CERT_FILE.partial" "$SSL_CERT_FILE"
  fi
fi

# --- 3. the provisioning script ---------------------------------------------------------------------------
if [ -n "${PROVISIONING_SCRIPT:-}" ]; then
  case "$PROVISIONING_SCRIPT" in
    http://* | https://*)
      need_program "$CURL" "PROVISIONING_SCRIPT"
      log "provisioning: downloading and running $PROVISIONING_SCRIPT"
      if [ "$DRY_RUN" = 1 ]; then
        script_file="/tmp/provisioning.XXXXXX"
      else
        script_file="$(mktemp "${TMPDIR:-/tmp}/provisioning.XXXXXX")"
      fi
      if ! run "$CURL" -fsSL --retry 3 -o "$script_file" "$PROVISIONING_SCRIPT"; then
        [ "$DRY_RUN" = 1 ] || rm -f "$script_file"
        die "provisioning: could not download $PROVISIONING_SCRIPT"
      fi
      ;;
    *)
      [ -f "$PROVISIONING_SCRIPT" ] || die "provisioning: no such file: $PROVISIONING_SCRIPT"
      [ -r "$PROVISIONING_SCRIPT" ] || die "provisioning: cannot read $PROVISIONING_SCRIPT"
      log "provisioning: running $PROVISIONING_SCRIPT"
      script_file="$PROVISIONING_SCRIPT"
      ;;
  esac
  if run bash "$script_file"; then
    status=0
  else
    status=$?
  fi
  if [ "$script_file" != "$PROVISIONING_SCRIPT" ] && [ "$DRY_RUN" = 0 ]; then rm -f "$script_file"; fi
  [ "$status" = 0 ] || die "provisioning: $PROVISIONING_SCRIPT failed (exit $status); not starting ComfyUI and the worker"
  log "provisioning: done"
fi

# --- validation before anything starts ---------------------------------------------------------------------
need_program "$COMFYUI_PYTHON" "COMFYUI_PYTHON"
need_program "$NODE" "NODE"
[ -f "$COMFYUI_DIR/main.py" ] || die "no ComfyUI in COMFYUI_DIR=$COMFYUI_DIR (no main.py)"
if [ "$will_install" = 0 ] || [ "$DRY_RUN" = 0 ]; then
  [ -f "$WORKER_DIR/dist/worker/cli.js" ] || die "no worker in WORKER_DIR=$WORKER_DIR (no dist/worker/cli.js)"
fi

# --- 4. ComfyUI in the background --------------------------------------------------------------------------
read -r -a comfy_extra <<<"${COMFYUI_ARGS:-}"
comfy_cmd=("$COMFYUI_PYTHON" main.py --listen 127.0.0.1 --port "$COMFYUI_PORT" --disable-auto-launch
  ${comfy_extra[@]+"${comfy_extra[@]}"})
comfy_log="$LOG_DIR/comfyui.log"
log "comfyui: starting in $COMFYUI_DIR on 127.0.0.1:$COMFYUI_PORT, log $comfy_log"
worker_cmd=("$NODE" "$WORKER_DIR/dist/worker/cli.js" start)
if [ "$DRY_RUN" = 1 ]; then
  run mkdir -p "$LOG_DIR"
  printf '+ (cd %q &&' "$COMFYUI_DIR"
  printf ' %q' "${comfy_cmd[@]}"
  printf ') >>%q 2>&1 &\n' "$comfy_log"
  log "worker: starting ${worker_cmd[*]}"
  run_in "$WORKER_DIR" "${worker_cmd[@]}"
  log "dry run: done"
  exit 0
fi
mkdir -p "$LOG_DIR"
(cd "$COMFYUI_DIR" && exec "${comfy_cmd[@]}") >>"$comfy_log" 2>&1 &
comfy_pid=$!

# --- 5. the worker in the foreground -----------------------------------------------------------------------
worker_pid=""
pending_signal=""
got_signal=0
forward() {
  got_signal=1
  if [ -n "$worker_pid" ]; then
    log "received SIG$1: forwarding it to the worker (pid $worker_pid), which drains and exits"
    kill -s "$1" "$worker_pid" 2>/dev/null || true
  else
    pending_signal="$1"
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

log "worker: starting ${worker_cmd[*]}"
cd "$WORKER_DIR"
"${worker_cmd[@]}" &
worker_pid=$!
[ -z "$pending_signal" ] || forward "$pending_signal"

# wait returns early (status > 128) when a trapped signal arrives; then wait again until the worker ends.
set +e
worker_rc=""
while :; do
  got_signal=0
  wait "$worker_pid"
  status=$?
  # 127: the previous round had collected the worker already (a signal came just after it ended).
  if [ "$status" = 127 ] && [ -n "$worker_rc" ]; then break; fi
  worker_rc=$status
  if [ "$got_signal" = 1 ] && [ "$status" -gt 128 ]; then continue; fi
  break
done
# ComfyUI is stopped in an orderly way below (within COMFYUI_STOP_TIMEOUT) even if more signals come.
trap 'log "signal received while stopping ComfyUI: already stopping"' TERM INT
log "worker: exited with code $worker_rc"

if kill -0 "$comfy_pid" 2>/dev/null; then
  log "comfyui: stopping (pid $comfy_pid; SIGKILL after ${COMFYUI_STOP_TIMEOUT}s)"
  kill -TERM "$comfy_pid" 2>/dev/null
  waited=0
  # bash collects an ended child as soon as it ends, after which kill -0 fails.
  while kill -0 "$comfy_pid" 2>/dev/null && [ "$waited" -lt $((COMFYUI_STOP_TIMEOUT * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$comfy_pid" 2>/dev/null; then
    log "comfyui: still running after ${COMFYUI_STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$comfy_pid" 2>/dev/null
  fi
  wait "$comfy_pid" 2>/dev/null
  log "comfyui: stopped"
else
  log "comfyui: had already exited"
  wait "$comfy_pid" 2>/dev/null
fi
log "exiting with the worker's code $worker_rc"
exit "$worker_rc"
