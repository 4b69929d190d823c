#!/usr/bin/env bash
# Starts the worker in our image (FROM Vast's ComfyUI image), as supervisor's program `comfyui-worker`, or on its
# own as a container's entry point:
#
#   0. Under supervisor (WORKER_UNDER_SUPERVISOR=true, our image): load the environment Vast's programs load.
#   1. PYWORKER_REPO set: install this worker from that git repository (once per repository + PYWORKER_REF). A
#      seed user's value (Vast's Python PyWorker, or any repository that is not this worker) is logged and ignored.
#      npm runs without packages' install scripts and sees only npm's environment (never the worker's secrets).
#   2. USE_SSL=true: a fresh certificate for the routed port signed by Vast at each start (with retries); if that
#      fails, a pair already on disk whose key matches and which has not expired; else the failure is reported to
#      the autoscaler (/worker_status/ error_msg) and the script exits 1.
#   3. Provisioning. Under supervisor: Vast's boot runs PROVISIONING_SCRIPT once; wait while /.provisioning exists.
#      On its own: run PROVISIONING_SCRIPT (a path or an http(s) URL) once (marker PROVISIONING_MARKER); a failure
#      is logged (ERROR), not fatal.
#   4. A seed user's custom benchmark ($WORKSPACE/vast-pyworker/workers/comfyui-json/misc/benchmark.json, the API
#      wrapper's pyworker_benchmark.json) unless BENCHMARK_JSON_PATH is set; the score cached in $WORKSPACE.
#   5. On its own: ComfyUI in the background (supervisor runs it in the image) on the image's venv, with tcmalloc
#      preloaded as the image's program does (COMFYUI_LD_PRELOAD: another library, empty for none); its log to
#      stdout and $LOG_DIR/comfyui.log. COMFYUI_PER_GPU=true and more than one GPU visible (CUDA_VISIBLE_DEVICES, else
#      `nvidia-smi -L`): one ComfyUI per GPU instead, instance i on port <port>+i with CUDA_VISIBLE_DEVICES=<i-th
#      GPU>, its own output and temp folders (<output>/gpu<i>, <temp>/gpu<i>; the input folder is shared) and log
#      ($LOG_DIR/comfyui-<i>.log), and for 1..N-1 a sqlite database of its own where ComfyUI has --database-url;
#      the worker gets COMFYUI_URLS and COMFYUI_OUTPUT_DIR as lists, no COMFYUI_URL.
#      Under supervisor with COMFYUI_PER_GPU=true and more than one GPU: instance 0 is the image's `comfyui`
#      program (its port, the first GPU, its folders); instances 1..N-1 are started here as above, but with
#      folders beside the image's ComfyUI's (<output>-gpu<i>, <temp>-gpu<i>), in sessions of their own and bound
#      to this script (they die with it).
#   6. The worker (log to stdout and $LOG_DIR/comfyui-worker.log). Under supervisor it replaces this script (exec),
#      except with instances of its own (above). Otherwise SIGTERM/SIGINT are forwarded to it (it drains); a ComfyUI
#      started here that exits while the worker runs is started again (after 1, 2, 4 ... up to
#      COMFYUI_RESTART_MAX_DELAY seconds; 0: never); when the worker exits, ComfyUI (each one started here) is
#      stopped (SIGTERM, then SIGKILL after COMFYUI_STOP_TIMEOUT seconds) and the script exits with the worker's
#      code.
#
# Every URL this script prints or reports shows only its scheme and host (a token rides in the rest); the markers
# that name PYWORKER_REPO and PROVISIONING_SCRIPT are readable by their owner only (0600).
#
# --dry-run (or ENTRYPOINT_DRY_RUN=1) prints the commands instead of running them, after the same validation.
# Every path and program comes from the environment (defaults below), so that tests can stand fakes in.
set -euo pipefail

# A URL as this script may print it: scheme://host[:port], without credentials, path, query or fragment (a token
# rides in any of them: https://user:token@host/..., ?token=..., a secret gist's path). The same answer as
# lib/redact.ts redactUrl (the WHATWG parser's scheme, host and port) for the forms that PYWORKER_REPO and
# PROVISIONING_SCRIPT take; worker.py has the same function, and test/unit/bootstrap-secrets.test.ts holds the one
# table that all three answer alike. Anything else, or anything this cannot read with certainty, is "(not a URL)".
redact_url() {
  local url="$1" scheme rest authority host port="" default_port=""
  # In variables: a regular expression written inside [[ ]] has its quoted characters escaped, which a bracket
  # expression would take as a backslash.
  local scheme_re='^([A-Za-z][A-Za-z0-9+.-]*):(.*)$'
  local special_authority_re='^[/\\]*([^/\\?#]*)'
  local ipv6_re='^(\[[0-9A-Fa-f:.]+\])(:([0-9]*))?$'
  local host_re='^([A-Za-z0-9._~!$&'"'"'()*+,;=-]*)(:([0-9]*))?$'
  if [[ ! "$url" =~ $scheme_re ]]; then
    printf '(not a URL)'
    return
  fi
  scheme="${BASH_REMATCH[1],,}"
  rest="${BASH_REMATCH[2]}"
  case "$scheme" in
    http | ws) default_port=80 ;;
    https | wss) default_port=443 ;;
    ftp) default_port=21 ;;
  esac
  if [ -n "$default_port" ]; then
    # The schemes with a host ("special" in WHATWG's words): any run of / or \ leads to the host.
    [[ "$rest" =~ $special_authority_re ]]
    authority="${BASH_REMATCH[1]}"
  elif [[ "$rest" == //* ]]; then
    rest="${rest#//}"
    authority="${rest%%[/?#]*}"
  else
    # scheme:opaque-path (mailto:...): no host at all.
    printf '%s://' "$scheme"
    return
  fi
  host="${authority##*@}"
  if [[ "$host" =~ $ipv6_re ]] || [[ "$host" =~ $host_re ]]; then
    host="${BASH_REMATCH[1]}"
    port="${BASH_REMATCH[3]}"
  else
    printf '(not a URL)'
    return
  fi
  # Credentials or a port need a host; so does every special scheme.
  if [ -z "$host" ] && { [ -n "$default_port" ] || [ "$authority" != "$host" ]; }; then
    printf '(not a URL)'
    return
  fi
  if [ -n "$port" ]; then
    port="${port#"${port%%[!0]*}"}"
    port="${port:-0}"
    if [ "${#port}" -gt 5 ] || [ "$port" -gt 65535 ]; then
      printf '(not a URL)'
      return
    fi
    [ "$port" != "$default_port" ] || port=""
  fi
  # Special schemes' hosts and IPv6 addresses are case-insensitive, and printed in lower case; others as written.
  if [ -n "$default_port" ] || [[ "$host" == \[* ]]; then host="${host,,}"; fi
  printf '%s://%s%s' "$scheme" "$host" "${port:+:$port}"
}
# Text with each URL in it (scheme:// up to the next blank, less the punctuation that ends it) redacted as
# redact_url does: what this script prints and reports passes through here, so that no URL leaves it with its
# credentials.
redact_text() {
  local text="$1" out="" url trailing
  local url_re='[A-Za-z][A-Za-z0-9+.-]*://[^[:space:]]*' trailing_re='[]'"'"'"),.;:!?>]+$'
  while [[ "$text" =~ $url_re ]]; do
    url="${BASH_REMATCH[0]}"
    out+="${text%%"$url"*}"
    text="${text#*"$url"}"
    trailing=""
    if [[ "$url" =~ $trailing_re ]]; then trailing="${BASH_REMATCH[0]}"; fi
    out+="$(redact_url "${url%"$trailing"}")$trailing"
  done
  printf '%s' "$out$text"
}
# A source setting (PYWORKER_REPO, PROVISIONING_SCRIPT) as it may be printed: a local path as it is, anything with a
# scheme (a URL, user:password@host...) redacted.
shown_source() {
  if [[ "$1" =~ ^[A-Za-z][A-Za-z0-9+.-]*: ]]; then redact_url "$1"; else printf '%s' "$1"; fi
}
log() { printf '[entrypoint] %s\n' "$(redact_text "$*")" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

DRY_RUN="${ENTRYPOINT_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      # The header above, up to the first line that is not a comment.
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
      exit 0
      ;;
    *) die "unknown argument: $arg (known: --dry-run, --help)" ;;
  esac
done
case "$DRY_RUN" in 1 | true | yes) DRY_RUN=1 ;; *) DRY_RUN=0 ;; esac

# Under supervisor, the environment Vast's own programs see: /etc/environment and the user's $WORKSPACE/.env, as
# Vast's supervisor scripts load them (utils/environment.sh).
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
WORKSPACE="${WORKSPACE:-/workspace}"
COMFYUI_DIR="${COMFYUI_DIR:-$WORKSPACE/ComfyUI}"
COMFYUI_PORT="${COMFYUI_PORT:-18188}"
COMFYUI_STOP_TIMEOUT="${COMFYUI_STOP_TIMEOUT:-30}"
# A ComfyUI started here that exits while the worker runs is started again after 1, 2, 4 ... up to this many
# seconds (back to 1 once it has run for a minute); 0: it stays down.
COMFYUI_RESTART_MAX_DELAY="${COMFYUI_RESTART_MAX_DELAY:-60}"
LOG_DIR="${LOG_DIR:-/var/log/portal}"
INSTALL_MARKER_DIR="${INSTALL_MARKER_DIR:-$WORKER_DIR}"
# Not SSL_CERT_FILE/SSL_KEY_FILE: OpenSSL, curl and Python take SSL_CERT_FILE as their list of trusted CAs.
WORKER_SSL_CERT_FILE="${WORKER_SSL_CERT_FILE:-/etc/instance.crt}"
WORKER_SSL_KEY_FILE="${WORKER_SSL_KEY_FILE:-/etc/instance.key}"
VAST_SIGN_CERT_URL="${VAST_SIGN_CERT_URL:-https://console.vast.ai/api/v0/sign_cert/}"
CERT_SIGN_ATTEMPTS="${CERT_SIGN_ATTEMPTS:-5}"
CERT_RETRY_DELAY="${CERT_RETRY_DELAY:-2}"
PROVISIONING_MARKER="${PROVISIONING_MARKER:-/.provisioning_complete}"
PROVISIONING_FLAG="${PROVISIONING_FLAG:-/.provisioning}"
WORKER_UNDER_SUPERVISOR="${WORKER_UNDER_SUPERVISOR:-false}"
GIT="${GIT:-git}"
NPM="${NPM:-npm}"
CURL="${CURL:-curl}"
NODE="${NODE:-node}"
OPENSSL="${OPENSSL:-openssl}"
# ComfyUI's Python: by default the image's venv, as Vast's `comfyui` program runs it (it activates /venv/main first;
# the venv's bin goes first on ComfyUI's PATH likewise), else python3 from PATH.
COMFYUI_VENV="${COMFYUI_VENV:-/venv/main}"
comfy_venv_bin=""
if [ -z "${COMFYUI_PYTHON:-}" ] && [ -x "$COMFYUI_VENV/bin/python" ]; then
  comfy_venv_bin="$COMFYUI_VENV/bin"
  COMFYUI_PYTHON="$comfy_venv_bin/python"
fi
COMFYUI_PYTHON="${COMFYUI_PYTHON:-python3}"
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"
LDCONFIG="${LDCONFIG:-ldconfig}"
SETSID="${SETSID:-setsid}"
SETPRIV="${SETPRIV:-setpriv}"
# This repository's package name: PYWORKER_REPO is honoured only for a repository that is this worker.
WORKER_PACKAGE_NAME="comfyui-serverless-worker"
# The protocol version the autoscaler sees (worker/reporter/reporter.ts WORKER_VERSION).
WORKER_VERSION="1.1.0"
# The worker finds ComfyUI's input/output folders below COMFYUI_BASE_DIR, unless COMFYUI_ARGS moves them (the
# worker reads COMFYUI_ARGS back) or COMFYUI_INPUT_DIR/COMFYUI_OUTPUT_DIR say otherwise.
COMFYUI_BASE_DIR="${COMFYUI_BASE_DIR:-$COMFYUI_DIR}"
export WORKER_DIR WORKSPACE COMFYUI_DIR LOG_DIR COMFYUI_BASE_DIR WORKER_SSL_CERT_FILE WORKER_SSL_KEY_FILE
case "$WORKER_UNDER_SUPERVISOR" in true | 1 | yes) supervised=1 ;; *) supervised=0 ;; esac

case "$COMFYUI_STOP_TIMEOUT" in '' | *[!0-9]*) die "COMFYUI_STOP_TIMEOUT must be a whole number of seconds" ;; esac
case "$COMFYUI_RESTART_MAX_DELAY" in
  '' | *[!0-9]*) die "COMFYUI_RESTART_MAX_DELAY must be a whole number of seconds (0: no restart)" ;;
esac
case "$CERT_SIGN_ATTEMPTS" in '' | 0 | *[!0-9]*) die "CERT_SIGN_ATTEMPTS must be a whole number above 0" ;; esac
case "$CERT_RETRY_DELAY" in '' | *[!0-9]*) die "CERT_RETRY_DELAY must be a whole number of seconds" ;; esac

# A flag's value in COMFYUI_ARGS (empty if absent): the last one wins, as in ComfyUI's own parsing.
read -r -a comfy_extra <<<"${COMFYUI_ARGS:-}"
comfy_arg() {
  local value="" i
  for ((i = 0; i < ${#comfy_extra[@]}; i++)); do
    case "${comfy_extra[$i]}" in
      "$1="*) value="${comfy_extra[$i]#"$1="}" ;;
      "$1") [ $((i + 1)) -ge ${#comfy_extra[@]} ] || value="${comfy_extra[$((i + 1))]}" ;;
    esac
  done
  printf '%s' "$value"
}
# ComfyUI's port: COMFYUI_ARGS' --port, else COMFYUI_PORT.
comfy_port="$(comfy_arg --port)"
comfy_port="${comfy_port:-$COMFYUI_PORT}"

# COMFYUI_PER_GPU=true: one ComfyUI per visible GPU (CUDA_VISIBLE_DEVICES' ids, else nvidia-smi's GPUs), each on
# its own port, GPU, output and temp folder. One GPU or none: one ComfyUI, as without it.
gpu_ids=()
case "${COMFYUI_PER_GPU:-false}" in true | 1 | yes) per_gpu=1 ;; *) per_gpu=0 ;; esac
if [ "$per_gpu" = 1 ]; then
  per_gpu_conflict="COMFYUI_PER_GPU=true starts one ComfyUI per GPU and gives the worker their URLs (COMFYUI_URLS)"
  [ -z "${COMFYUI_URL:-}" ] || die "$per_gpu_conflict: unset COMFYUI_URL (now $COMFYUI_URL)"
  [ -z "${COMFYUI_URLS:-}" ] || die "$per_gpu_conflict: unset COMFYUI_URLS (now $COMFYUI_URLS)"
  for flag in --cuda-device --default-device; do
    [ -z "$(comfy_arg "$flag")" ] ||
      die "COMFYUI_PER_GPU=true gives each ComfyUI its GPU: remove $flag from COMFYUI_ARGS"
  done
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    IFS=',' read -r -a listed_gpus <<<"$CUDA_VISIBLE_DEVICES"
    for id in ${listed_gpus[@]+"${listed_gpus[@]}"}; do
      id="${id// /}"
      [ -z "$id" ] || gpu_ids+=("$id")
    done
  elif command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
    gpu_count="$("$NVIDIA_SMI" -L 2>/dev/null | grep -c '^GPU [0-9]')" || gpu_count=0
    for ((i = 0; i < gpu_count; i++)); do gpu_ids+=("$i"); done
  fi
  if [ ${#gpu_ids[@]} -lt 2 ]; then
    log "comfyui: COMFYUI_PER_GPU=true, ${#gpu_ids[@]} GPU visible${CUDA_VISIBLE_DEVICES+ (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)}: one ComfyUI"
    per_gpu=0
    gpu_ids=()
  fi
fi
if [ "$per_gpu" = 1 ]; then
  case "$comfy_port" in '' | *[!0-9]*) die "COMFYUI_PER_GPU=true: ComfyUI's port '$comfy_port' is not a number" ;; esac
  [ $((comfy_port + ${#gpu_ids[@]} - 1)) -le 65535 ] ||
    die "COMFYUI_PER_GPU=true: ${#gpu_ids[@]} ports from $comfy_port run past 65535"
  # The folders the worker would use for one ComfyUI (config/index.ts): the input folder stays shared (inputs
  # are downloaded before a ComfyUI is chosen); outputs and temp are one folder per ComfyUI, below the usual one
  # (two ComfyUIs would overwrite each other's counter-numbered files; each wipes its temp folder at start).
  # ComfyUI's temp folder is <--temp-directory>/temp, or <base>/temp without it.
  comfy_base="$(comfy_arg --base-directory)"
  comfy_base="${comfy_base:-$COMFYUI_BASE_DIR}"
  comfy_input="${COMFYUI_INPUT_DIR:-$(comfy_arg --input-directory)}"
  comfy_input="${comfy_input:-$comfy_base/input}"
  comfy_output="${COMFYUI_OUTPUT_DIR:-$(comfy_arg --output-directory)}"
  comfy_output="${comfy_output:-$comfy_base/output}"
  comfy_temp="$(comfy_arg --temp-directory)"
  comfy_temp="${comfy_temp:-$comfy_base/temp}"
  comfy_outputs=()
  comfy_temps=()
  # Under supervisor, instance 0 is the image's `comfyui` program with its usual folders; the others' folders go
  # beside them, not inside: that ComfyUI empties its temp folder whenever it (re)starts, and the worker keeps its
  # request folders in the first output folder, whose entries its disk care may remove (worker/janitor.ts).
  for i in "${!gpu_ids[@]}"; do
    if [ "$supervised" = 0 ]; then
      comfy_outputs+=("${comfy_output%/}/gpu$i")
      comfy_temps+=("${comfy_temp%/}/gpu$i")
    elif [ "$i" = 0 ]; then
      comfy_outputs+=("$comfy_output")
      comfy_temps+=("")
    else
      comfy_outputs+=("${comfy_output%/}-gpu$i")
      comfy_temps+=("${comfy_temp%/}-gpu$i")
    fi
  done
  # ComfyUI keeps a sqlite database (--database-url; by default <ComfyUI>/user/comfyui.db) that each server
  # migrates when it starts, copying the file aside and back if that fails: several starting together on one file
  # race each other's migration. Where this ComfyUI has the flag and COMFYUI_ARGS does not set it, instances
  # 1..N-1 get a database of their own beside it.
  comfy_dbs=()
  if [ -z "$(comfy_arg --database-url)" ] &&
    grep -q -e '--database-url' "$COMFYUI_DIR/comfy/cli_args.py" 2>/dev/null; then
    for ((i = 1; i < ${#gpu_ids[@]}; i++)); do comfy_dbs[i]="sqlite:///${COMFYUI_DIR%/}/user/comfyui-gpu$i.db"; done
  fi
  # A list in COMFYUI_OUTPUT_DIR is taken as one folder per ComfyUI (under supervisor the first is the image's
  # ComfyUI's).
  if [[ "$comfy_output" == *,* ]]; then
    IFS=',' read -r -a comfy_outputs <<<"$comfy_output"
    [ ${#comfy_outputs[@]} = ${#gpu_ids[@]} ] ||
      die "COMFYUI_OUTPUT_DIR lists ${#comfy_outputs[@]} folders for ${#gpu_ids[@]} ComfyUIs (one per GPU: ${gpu_ids[*]})"
  fi
  comfy_urls=()
  for i in "${!gpu_ids[@]}"; do comfy_urls+=("http://127.0.0.1:$((comfy_port + i))"); done
  COMFYUI_URLS="$(IFS=,; printf '%s' "${comfy_urls[*]}")"
  COMFYUI_OUTPUT_DIR="$(IFS=,; printf '%s' "${comfy_outputs[*]}")"
  COMFYUI_INPUT_DIR="$comfy_input"
  export COMFYUI_URLS COMFYUI_OUTPUT_DIR COMFYUI_INPUT_DIR
  # The worker takes COMFYUI_URL or COMFYUI_URLS, not both (an empty COMFYUI_URL is not exported either).
  unset COMFYUI_URL
elif [ -z "${COMFYUI_URLS:-}" ]; then
  COMFYUI_URL="${COMFYUI_URL:-http://127.0.0.1:$comfy_port}"
  export COMFYUI_URL
fi

# Tells the autoscaler why this worker cannot start, as pyworker's start_server.sh does: {id, mtoken, version,
# error_msg, url} to each REPORT_ADDR's /worker_status/ until one accepts it.
json_string() {
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/ }"
  printf '"%s"' "$s"
}
report_failure() {
  local message id="${CONTAINER_ID:-0}" port="${WORKER_PORT:-3000}" scheme=http body addr mtoken="${MASTER_TOKEN:-}"
  message="$(redact_text "$1")"
  # A dry run prints the request instead of sending it: without the token.
  [ "$DRY_RUN" = 0 ] || mtoken="(MASTER_TOKEN)"
  case "$id" in '' | *[!0-9]*) id=0 ;; esac
  case "${USE_SSL:-false}" in true | 1 | yes) scheme=https ;; esac
  local public_port_var="VAST_TCP_PORT_$port"
  local url="$scheme://${PUBLIC_IPADDR:-127.0.0.1}:${!public_port_var:-$port}"
  body="{\"id\": $id, \"mtoken\": $(json_string "$mtoken"), \"version\": \"$WORKER_VERSION\", \"error_msg\": $(json_string "$message"), \"url\": $(json_string "$url")}"
  IFS=',' read -r -a addrs <<<"${REPORT_ADDR:-}"
  for addr in "${addrs[@]}"; do
    addr="${addr// /}"
    [ -n "$addr" ] || continue
    if [ "$DRY_RUN" = 1 ]; then
      run "$CURL" -fsS -m 10 -H 'Content-Type: application/json' --data-binary "$body" "${addr%/}/worker_status/"
      return 0
    fi
    if "$CURL" -fsS -m 10 -o /dev/null -H 'Content-Type: application/json' --data-binary "$body" \
      "${addr%/}/worker_status/"; then
      log "reported to ${addr%/}/worker_status/: $message"
      return 0
    fi
  done
  log "could not report to the autoscaler (REPORT_ADDR=${REPORT_ADDR:-}): $message"
}
fail() {
  log "ERROR: $*"
  report_failure "$*"
  exit 1
}

# A command as a dry run prints it, shell-quoted; the sources' URLs, which may carry a token, redacted.
print_command() {
  local arg
  for arg in "$@"; do
    if [ -n "$arg" ] && { [ "$arg" = "${PYWORKER_REPO:-}" ] || [ "$arg" = "${PROVISIONING_SCRIPT:-}" ]; }; then
      arg="$(shown_source "$arg")"
    fi
    printf ' %q' "$arg"
  done
}
# Runs a command, or prints it (on stdout) in a dry run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    print_command "$@"
    printf '\n'
  else
    "$@"
  fi
}
# A file only its owner can read or write (0600): the markers name where the worker and the provisioning came from.
write_private() {
  local file="$1" part="$1.new.$$"
  shift
  (umask 077 && printf '%s\n' "$@" >"$part") && chmod 600 "$part" && mv -f "$part" "$file"
}
# npm runs with only what npm needs: PATH, HOME, TMPDIR, the locale, npm's own settings (npm_config_*), the proxy
# and Node's (NODE_*) settings; never the worker's secrets (S3 keys, MASTER_TOKEN, webhook and Hugging Face
# tokens). An allow-list, so that a secret under a name nobody foresaw stays out too; names shaped like a secret
# (*_TOKEN, *_KEY, *_SECRET, *_PASSWORD) stay out even within it. worker.py's npm_environment is the same list.
only_npm_env() {
  local name allowed=()
  while IFS= read -r name; do
    case "${name,,}" in
      *_token | *_key | *_secret | *_password) continue ;;
      path | home | tmpdir | lang | lc_* | npm_config_* | node_* | http_proxy | https_proxy | no_proxy | all_proxy) ;;
      *) continue ;;
    esac
    allowed+=("$name=${!name}")
  done < <(compgen -e)
  env -i ${allowed[@]+"${allowed[@]}"} "$@"
}
# Runs a command inside a folder (in a subshell).
run_in() {
  local dir="$1"
  shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ (cd %q &&' "$dir"
    print_command "$@"
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
# The seed template's default (and any fork of Vast's PyWorker) is a Python worker that has no place here.
case "${PYWORKER_REPO:-}" in
  *vast-ai/pyworker | *vast-ai/pyworker.git | *vast-ai/pyworker/)
    log "worker: ignoring PYWORKER_REPO=$(shown_source "$PYWORKER_REPO")${PYWORKER_REF:+ @ $PYWORKER_REF}: that is Vast's Python PyWorker, which this image replaces; running the worker in $WORKER_DIR"
    PYWORKER_REPO=""
    ;;
esac
# git, with what it prints redacted (its errors quote the repository's URL).
run_git() {
  if [ "$DRY_RUN" = 1 ]; then
    run "$GIT" "$@"
    return
  fi
  local output status=0
  output="$("$GIT" "$@" 2>&1)" || status=$?
  [ -z "$output" ] || printf '%s\n' "$(redact_text "$output")" >&2
  return "$status"
}
if [ -n "${PYWORKER_REPO:-}" ]; then
  ref="${PYWORKER_REF:-}"
  repo_shown="$(shown_source "$PYWORKER_REPO")"
  key="$(printf '%s#%s' "$PYWORKER_REPO" "$ref" | sha256sum | cut -c1-16)"
  marker="$INSTALL_MARKER_DIR/.installed-from-$key"
  if [ -f "$marker" ]; then
    log "worker: $repo_shown${ref:+ @ $ref} already installed in $WORKER_DIR ($marker), skipping the install"
    # A marker from an earlier version holds the repository as given, token and all, readable by anyone.
    if [ "$DRY_RUN" = 0 ] && [ "$repo_shown" != "$PYWORKER_REPO" ] && grep -qF -- "$PYWORKER_REPO" "$marker"; then
      write_private "$marker" "$repo_shown" "$ref"
    fi
  else
    will_install=1
    log "worker: installing from $repo_shown${ref:+ @ $ref} into $WORKER_DIR"
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
      [ "$DRY_RUN" = 1 ] || rm -rf "$tmp"
      fail "worker install from $repo_shown${ref:+ @ $ref} failed at: $1 (the worker in $WORKER_DIR is unchanged)"
    }
    if [[ "$ref" =~ ^[0-9a-fA-F]{40}$ ]]; then
      # A full commit id: clone --branch does not take one, fetch does.
      run_git init -q "$tmp" || install_failed "git init"
      run_git -C "$tmp" fetch -q --depth 1 "$PYWORKER_REPO" "$ref" || install_failed "git fetch $ref"
      run_git -C "$tmp" checkout -q FETCH_HEAD || install_failed "git checkout $ref"
    elif [ -n "$ref" ]; then
      run_git clone -q --depth 1 --branch "$ref" "$PYWORKER_REPO" "$tmp" || install_failed "git clone"
    else
      run_git clone -q --depth 1 "$PYWORKER_REPO" "$tmp" || install_failed "git clone"
    fi
    package_name=""
    if [ "$DRY_RUN" = 1 ]; then
      package_name="$WORKER_PACKAGE_NAME"
    elif [ -f "$tmp/package.json" ]; then
      package_name="$(grep -o -m1 '"name" *: *"[^"]*"' "$tmp/package.json" | sed -E 's/.*"([^"]*)"$/\1/')" || true
    fi
    if [ "$package_name" != "$WORKER_PACKAGE_NAME" ]; then
      log "worker: ignoring PYWORKER_REPO=$repo_shown${ref:+ @ $ref}: it is not this worker (its package.json names ${package_name:-nothing}, not $WORKER_PACKAGE_NAME; a seed template's PyWorker repository?); running the worker in $WORKER_DIR"
      rm -rf "$tmp"
      will_install=0
    fi
  fi
  if [ "$will_install" = 1 ]; then
    # No package's install scripts (--ignore-scripts; one of them is a telemetry beacon), and npm sees none of the
    # worker's secrets (only_npm_env). Nothing the worker runs needs an install script: esbuild's (tsx's, for
    # development) only checks the binary that its platform package already holds.
    run_in "$tmp" only_npm_env "$NPM" ci --ignore-scripts --no-audit --no-fund || install_failed "npm ci"
    run_in "$tmp" only_npm_env "$NPM" run build || install_failed "npm run build"
    run_in "$tmp" only_npm_env "$NPM" prune --omit=dev --ignore-scripts --no-audit --no-fund ||
      install_failed "npm prune --omit=dev"
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
      write_private "$marker" "$repo_shown" "$ref"
    fi
    log "worker: installed from $repo_shown${ref:+ @ $ref} ($marker)"
  fi
fi

# --- 2. the routed port's certificate ---------------------------------------------------------------------
# A pair that can serve: both files there, the certificate not expired, and its public key the key's.
pair_usable() {
  local crt="$1" key="$2" a b
  [ -s "$crt" ] && [ -s "$key" ] || return 1
  "$OPENSSL" x509 -noout -checkend 0 -in "$crt" >/dev/null 2>&1 || return 1
  a="$("$OPENSSL" x509 -noout -pubkey -in "$crt" 2>/dev/null)" || return 1
  b="$("$OPENSSL" pkey -pubout -in "$key" 2>/dev/null)" || return 1
  [ -n "$a" ] && [ "$a" = "$b" ]
}
# A fresh key and certificate request, signed by Vast's console (retried with doubling delays, as upstream); the
# pair replaces the one on disk only once signed and checked.
sign_certificate() {
  local new_key="$WORKER_SSL_KEY_FILE.new" csr="$WORKER_SSL_KEY_FILE.csr" new_crt="$WORKER_SSL_CERT_FILE.new"
  local attempt=1 delay="$CERT_RETRY_DELAY"
  run "$OPENSSL" req -newkey rsa:2048 -nodes -sha256 -subj "/C=US/ST=CA/CN=pyworker.vast.ai/" \
    -addext "subjectAltName=IP:0.0.0.0" -keyout "$new_key" -out "$csr" || return 1
  while :; do
    if run "$CURL" -fsS -m 30 -H 'Content-Type: application/octet-stream' --data-binary "@$csr" \
      -o "$new_crt" "$VAST_SIGN_CERT_URL?instance_id=$CONTAINER_ID"; then
      if [ "$DRY_RUN" = 1 ] || pair_usable "$new_crt" "$new_key"; then break; fi
      log "ssl: attempt $attempt: the console's answer is not a valid certificate for the new key"
    else
      log "ssl: attempt $attempt: signing failed ($VAST_SIGN_CERT_URL)"
    fi
    if [ "$attempt" -ge "$CERT_SIGN_ATTEMPTS" ]; then
      [ "$DRY_RUN" = 1 ] || rm -f "$new_key" "$new_crt" "$csr"
      return 1
    fi
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
  run mv "$new_key" "$WORKER_SSL_KEY_FILE" && run mv "$new_crt" "$WORKER_SSL_CERT_FILE" && run rm -f "$csr"
}
case "${USE_SSL:-false}" in true | 1 | yes) use_ssl=1 ;; *) use_ssl=0 ;; esac
if [ "$use_ssl" = 1 ]; then
  need_program "$OPENSSL" "USE_SSL=true"
  need_program "$CURL" "USE_SSL=true"
  if [ -z "${CONTAINER_ID:-}" ]; then
    log "ssl: no CONTAINER_ID (set by Vast): not asking the console for a certificate"
  else
    log "ssl: getting a fresh $WORKER_SSL_CERT_FILE signed by $VAST_SIGN_CERT_URL for instance $CONTAINER_ID"
  fi
  if [ -n "${CONTAINER_ID:-}" ] && sign_certificate; then
    log "ssl: certificate signed ($WORKER_SSL_CERT_FILE, $WORKER_SSL_KEY_FILE)"
  elif [ "$DRY_RUN" = 0 ] && pair_usable "$WORKER_SSL_CERT_FILE" "$WORKER_SSL_KEY_FILE"; then
    log "ssl: using the certificate already in $WORKER_SSL_CERT_FILE (its key matches and it has not expired)"
  else
    fail "ssl: no usable certificate for USE_SSL=true: signing by $VAST_SIGN_CERT_URL failed after $CERT_SIGN_ATTEMPTS attempts and $WORKER_SSL_CERT_FILE/$WORKER_SSL_KEY_FILE are not a valid pair"
  fi
fi

# --- 3. provisioning ----------------------------------------------------------------------------------------
# Runs PROVISIONING_SCRIPT; returns non-zero (with the reason logged) when it could not be fetched or failed.
provision() {
  local script_file status
  case "$PROVISIONING_SCRIPT" in
    http://* | https://*)
      need_program "$CURL" "PROVISIONING_SCRIPT"
      log "provisioning: downloading and running $(shown_source "$PROVISIONING_SCRIPT")"
      if [ "$DRY_RUN" = 1 ]; then
        script_file="/tmp/provisioning.XXXXXX"
      else
        script_file="$(mktemp "${TMPDIR:-/tmp}/provisioning.XXXXXX")"
      fi
      if ! run "$CURL" -fsSL --retry 3 -o "$script_file" "$PROVISIONING_SCRIPT"; then
        [ "$DRY_RUN" = 1 ] || rm -f "$script_file"
        provisioning_error="could not download $(shown_source "$PROVISIONING_SCRIPT")"
        return 1
      fi
      ;;
    *)
      if [ ! -f "$PROVISIONING_SCRIPT" ] || [ ! -r "$PROVISIONING_SCRIPT" ]; then
        provisioning_error="no such file (or not readable): $PROVISIONING_SCRIPT"
        return 1
      fi
      log "provisioning: running $PROVISIONING_SCRIPT"
      script_file="$PROVISIONING_SCRIPT"
      ;;
  esac
  if run bash "$script_file"; then status=0; else status=$?; fi
  if [ "$script_file" != "$PROVISIONING_SCRIPT" ] && [ "$DRY_RUN" = 0 ]; then rm -f "$script_file"; fi
  if [ "$status" != 0 ]; then
    provisioning_error="$(shown_source "$PROVISIONING_SCRIPT") failed (exit $status)"
    return 1
  fi
}
if [ "$supervised" = 1 ]; then
  # Vast's boot runs PROVISIONING_SCRIPT once and flags the run with /.provisioning, as for its own services.
  while [ -e "$PROVISIONING_FLAG" ] && [ "$DRY_RUN" = 0 ]; do
    log "provisioning: waiting for the image's provisioning to finish ($PROVISIONING_FLAG present)"
    sleep 5
  done
elif [ -n "${PROVISIONING_SCRIPT:-}" ]; then
  if [ -f "$PROVISIONING_MARKER" ]; then
    log "provisioning: already done ($PROVISIONING_MARKER), not running $(shown_source "$PROVISIONING_SCRIPT") again"
    # A marker from an earlier version holds the script as given, token and all, readable by anyone.
    if [ "$DRY_RUN" = 0 ] && [ "$(shown_source "$PROVISIONING_SCRIPT")" != "$PROVISIONING_SCRIPT" ] &&
      grep -qF -- "$PROVISIONING_SCRIPT" "$PROVISIONING_MARKER"; then
      write_private "$PROVISIONING_MARKER" "$(shown_source "$PROVISIONING_SCRIPT")"
    fi
  else
    provisioning_error=""
    if provision; then
      [ "$DRY_RUN" = 1 ] || write_private "$PROVISIONING_MARKER" "$(shown_source "$PROVISIONING_SCRIPT")"
      log "provisioning: done"
    else
      # Not fatal, as in Vast's images: the worker starts, and a missing model shows in its benchmark and jobs.
      log "ERROR: provisioning: $provisioning_error; starting ComfyUI and the worker anyway (provisioning runs again at the next start)"
    fi
  fi
fi

# --- 4. a seed user's custom benchmark ------------------------------------------------------------------------
if [ -z "${BENCHMARK_JSON_PATH:-}" ]; then
  for candidate in "$WORKSPACE/vast-pyworker/workers/comfyui-json/misc/benchmark.json" \
    "${API_WRAPPER_BENCHMARK:-/opt/comfyui-api-wrapper/workflows/pyworker_benchmark.json}"; do
    if [ -f "$candidate" ]; then
      export BENCHMARK_JSON_PATH="$candidate"
      log "benchmark: using $candidate"
      break
    fi
  done
fi
export BENCHMARK_CACHE_FILE="${BENCHMARK_CACHE_FILE:-$WORKSPACE/.has_benchmark}"

# --- validation before anything starts ---------------------------------------------------------------------
need_program "$NODE" "NODE"
if [ "$supervised" = 0 ] || [ "$per_gpu" = 1 ]; then
  need_program "$COMFYUI_PYTHON" "COMFYUI_PYTHON"
  [ -f "$COMFYUI_DIR/main.py" ] || die "no ComfyUI in COMFYUI_DIR=$COMFYUI_DIR (no main.py)"
fi
# Under supervisor, what this script starts runs through `setsid setpriv --pdeathsig KILL` (why: at step 5).
detach=()
if [ "$supervised" = 1 ] && [ "$per_gpu" = 1 ]; then
  need_program "$SETSID" "COMFYUI_PER_GPU=true under supervisor"
  need_program "$SETPRIV" "COMFYUI_PER_GPU=true under supervisor"
  "$SETPRIV" --pdeathsig KILL -- true 2>/dev/null ||
    die "COMFYUI_PER_GPU=true under supervisor: '$SETPRIV --pdeathsig' does not work (util-linux 2.33 or later has it)"
  detach=("$SETSID" "$SETPRIV" --pdeathsig KILL --)
fi
if [ "$will_install" = 0 ] || [ "$DRY_RUN" = 0 ]; then
  [ -f "$WORKER_DIR/dist/worker/cli.js" ] || die "no worker in WORKER_DIR=$WORKER_DIR (no dist/worker/cli.js)"
fi

worker_cmd=("$NODE" "$WORKER_DIR/dist/worker/cli.js" start)
worker_log="$LOG_DIR/comfyui-worker.log"
# Copies a program's output to stdout and a log file. It ignores SIGTERM/SIGINT, which supervisor (stopasgroup)
# and a terminal send to the whole process group: it ends when the program closes its output, so the lines a
# draining worker writes after the signal are kept (and its writes do not fail).
log_to() {
  trap '' TERM INT
  exec tee -a "$1"
}
run mkdir -p "$LOG_DIR"

# --- under supervisor: the worker replaces this script (supervisor's signals reach it; it restarts ComfyUI) ---
if [ "$supervised" = 1 ] && [ "$per_gpu" = 0 ]; then
  log "worker: starting ${worker_cmd[*]} (ComfyUI is supervisor's program; log $worker_log)"
  if [ "$DRY_RUN" = 1 ]; then
    run_in "$WORKER_DIR" "${worker_cmd[@]}"
    log "dry run: done"
    exit 0
  fi
  cd "$WORKER_DIR"
  exec "${worker_cmd[@]}" > >(log_to "$worker_log") 2>&1
fi

# --- 5. ComfyUI in the background (one per GPU with COMFYUI_PER_GPU) -------------------------------------
# Under supervisor with COMFYUI_PER_GPU, instance 0 is the image's `comfyui` program, which supervisor runs and
# restarts on its own. It sees every GPU but uses only the first visible one (ComfyUI's cuda:0: --cuda-device and
# --default-device are refused above), which is gpu_ids[0], so it needs no CUDA_VISIBLE_DEVICES of its own (its
# environment is the image's program's, not ours to change). Instances 1..N-1 belong to this program instead of
# being programs of their own: their number is known only here, at start, and they come and go with the worker
# that uses them. This script then stays the program's process (no exec), starts them and the worker, and:
# - runs each in a session of its own (setsid): supervisor's stop signals the program's whole process group
#   (stopasgroup), which must not stop these ComfyUIs while the worker drains jobs on them (nor reach the worker
#   twice: the one TERM it gets is forwarded from here, and a second would be its "exit now");
# - binds each to this script with a parent-death signal (setpriv --pdeathsig KILL): when supervisor SIGKILLs the
#   group after stopwaitsecs (killasgroup), or anything else kills this script, none of them lives on to hold a
#   port or a GPU when supervisor starts the program again;
# - when the worker exits (a stop, or a crash that supervisor answers with a restart), stops them (SIGTERM, then
#   SIGKILL after COMFYUI_STOP_TIMEOUT) before exiting, so that the next start finds their ports free.
# stopwaitsecs (100) covers the worker's drain (60 s) and COMFYUI_STOP_TIMEOUT (30 s).
comfy_pids=()
comfy_names=()
comfy_since=()
# The allocator the image's own `comfyui` program preloads (LD_PRELOAD=libtcmalloc_minimal.so.4): each ComfyUI
# started here gets it too where the library is installed, so that every instance runs alike. COMFYUI_LD_PRELOAD
# names another (empty: none).
if [ -z "${COMFYUI_LD_PRELOAD+set}" ]; then
  COMFYUI_LD_PRELOAD="$("$LDCONFIG" -p 2>/dev/null |
    awk '$1 == "libtcmalloc_minimal.so.4" { print $NF; exit }')" || COMFYUI_LD_PRELOAD=""
fi
# Starts ComfyUI instance $1 (its slot in comfy_pids), with its name (for the log lines), port, log file and GPU
# (empty: the environment's), then its command. Vast shows the container's stdout as the instance log: ComfyUI's
# lines go there and to its own log file.
start_comfyui() {
  local slot="$1" name="$2" port="$3" logfile="$4" gpu="$5"
  shift 5
  log "$name: starting in $COMFYUI_DIR on 127.0.0.1:$port${gpu:+ with CUDA_VISIBLE_DEVICES=$gpu}${COMFYUI_LD_PRELOAD:+ and LD_PRELOAD=$COMFYUI_LD_PRELOAD}, log on stdout and in $logfile"
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ (cd %q &&' "$COMFYUI_DIR"
    [ -z "$comfy_venv_bin" ] || printf ' PATH=%q:$PATH' "$comfy_venv_bin"
    [ -z "$gpu" ] || printf ' CUDA_VISIBLE_DEVICES=%q' "$gpu"
    [ -z "$COMFYUI_LD_PRELOAD" ] || printf ' LD_PRELOAD=%q' "$COMFYUI_LD_PRELOAD"
    printf ' %q' ${detach[@]+"${detach[@]}"} "$@"
    printf ') 2>&1 | tee -a %q &\n' "$logfile"
    return 0
  fi
  (
    cd "$COMFYUI_DIR"
    [ -z "$comfy_venv_bin" ] || export PATH="$comfy_venv_bin:$PATH"
    [ -z "$gpu" ] || export CUDA_VISIBLE_DEVICES="$gpu"
    [ -z "$COMFYUI_LD_PRELOAD" ] || export LD_PRELOAD="$COMFYUI_LD_PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}"
    # A background job of this script is never a process group leader, so setsid does not fork: the ComfyUI keeps
    # this pid, and this script as its parent for the parent-death signal.
    exec ${detach[@]+"${detach[@]}"} "$@"
  ) > >(log_to "$logfile") 2>&1 &
  comfy_pids[slot]="$!"
  comfy_names[slot]="$name"
  comfy_since[slot]="$SECONDS"
}
# Starts (or starts again) instance $1 of this script's ComfyUIs.
launch_comfyui() {
  local i="$1"
  if [ "$per_gpu" = 1 ]; then
    local db=()
    [ -z "${comfy_dbs[$i]:-}" ] || db=(--database-url "${comfy_dbs[$i]}")
    # ComfyUI takes the last of a flag: these win over COMFYUI_ARGS'.
    start_comfyui "$i" "comfyui-$i" $((comfy_port + i)) "$LOG_DIR/comfyui-$i.log" "${gpu_ids[$i]}" \
      "$COMFYUI_PYTHON" main.py --listen 127.0.0.1 --disable-auto-launch ${comfy_extra[@]+"${comfy_extra[@]}"} \
      --port $((comfy_port + i)) --input-directory "$comfy_input" --output-directory "${comfy_outputs[$i]}" \
      --temp-directory "${comfy_temps[$i]}" ${db[@]+"${db[@]}"}
  else
    start_comfyui "$i" comfyui "$comfy_port" "$LOG_DIR/comfyui.log" "" \
      "$COMFYUI_PYTHON" main.py --listen 127.0.0.1 --port "$COMFYUI_PORT" --disable-auto-launch \
      ${comfy_extra[@]+"${comfy_extra[@]}"}
  fi
}
if [ "$per_gpu" = 1 ]; then
  run mkdir -p "${comfy_outputs[@]}"
  [ ${#comfy_dbs[@]} = 0 ] || run mkdir -p "${COMFYUI_DIR%/}/user"
  first=0
  if [ "$supervised" = 1 ]; then
    first=1
    others="instance 1"
    [ ${#gpu_ids[@]} = 2 ] || others="instances 1..$((${#gpu_ids[@]} - 1))"
    log "comfyui-0: the image's \`comfyui\` program (127.0.0.1:$comfy_port, GPU ${gpu_ids[0]}, output ${comfy_outputs[0]}); $others start here and stop with the worker"
  fi
  for ((i = first; i < ${#gpu_ids[@]}; i++)); do launch_comfyui "$i"; done
else
  launch_comfyui 0
fi
if [ "$DRY_RUN" = 1 ]; then
  log "worker: starting ${worker_cmd[*]}"
  run_in "$WORKER_DIR" ${detach[@]+"${detach[@]}"} "${worker_cmd[@]}"
  log "dry run: done"
  exit 0
fi

# --- 6. the worker in the foreground -----------------------------------------------------------------------
worker_pid=""
pending_signal=""
stopping=0
forward() {
  stopping=1
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
${detach[@]+"${detach[@]}"} "${worker_cmd[@]}" > >(log_to "$worker_log") 2>&1 &
worker_pid=$!
[ -z "$pending_signal" ] || forward "$pending_signal"

# A ComfyUI of this script that exits while the worker runs (a crash, the OOM killer) is started again after a
# delay that doubles up to COMFYUI_RESTART_MAX_DELAY, and starts over at 1 s once it has run for a minute: the
# worker takes it out of rotation meanwhile and back when it answers. Not after a stop signal: the worker is
# draining, and a fresh ComfyUI would not have the jobs it lost.
comfy_delay=()
comfy_restart_at=()
watch_comfyuis() {
  local i pid rc ran
  for i in "${!comfy_names[@]}"; do
    pid="${comfy_pids[$i]}"
    if [ -n "$pid" ]; then
      ! kill -0 "$pid" 2>/dev/null || continue
      wait "$pid" 2>/dev/null
      rc=$?
      comfy_pids[i]=""
      ran=$((SECONDS - comfy_since[i]))
      if [ "$ran" -ge 60 ] || [ -z "${comfy_delay[i]:-}" ]; then comfy_delay[i]=1; fi
      comfy_restart_at[i]=$((SECONDS + comfy_delay[i]))
      log "${comfy_names[$i]}: exited with code $rc after ${ran}s while the worker runs; starting it again in ${comfy_delay[i]}s"
      comfy_delay[i]=$((comfy_delay[i] * 2 > COMFYUI_RESTART_MAX_DELAY ? COMFYUI_RESTART_MAX_DELAY : comfy_delay[i] * 2))
    elif [ "$SECONDS" -ge "${comfy_restart_at[i]}" ]; then
      launch_comfyui "$i"
    fi
  done
}

# Every half second: has the worker ended, has a ComfyUI? A trapped signal ends the wait on the tick early (the
# signal is forwarded by its trap). bash keeps an ended child's status for the `wait` that asks for it by pid.
set +e
while kill -0 "$worker_pid" 2>/dev/null; do
  [ "$stopping" = 1 ] || [ "$COMFYUI_RESTART_MAX_DELAY" = 0 ] || watch_comfyuis
  sleep 0.5 &
  wait "$!"
done
wait "$worker_pid"
worker_rc=$?
# ComfyUI is stopped in an orderly way below (within COMFYUI_STOP_TIMEOUT) even if more signals come.
trap 'log "signal received while stopping ComfyUI: already stopping"' TERM INT
log "worker: exited with code $worker_rc"

# Each ComfyUI still running gets SIGTERM; those left after COMFYUI_STOP_TIMEOUT (for all together) get SIGKILL.
# bash collects an ended child as soon as it ends, after which kill -0 fails.
ending=()
for i in "${!comfy_pids[@]}"; do
  if [ -z "${comfy_pids[$i]}" ]; then
    log "${comfy_names[$i]}: had exited (not started again)"
  elif kill -0 "${comfy_pids[$i]}" 2>/dev/null; then
    log "${comfy_names[$i]}: stopping (pid ${comfy_pids[$i]}; SIGKILL after ${COMFYUI_STOP_TIMEOUT}s)"
    kill -TERM "${comfy_pids[$i]}" 2>/dev/null
    ending+=("$i")
  else
    log "${comfy_names[$i]}: had already exited"
  fi
done
any_running() {
  local i
  for i in ${ending[@]+"${ending[@]}"}; do
    kill -0 "${comfy_pids[$i]}" 2>/dev/null && return 0
  done
  return 1
}
waited=0
while any_running && [ "$waited" -lt $((COMFYUI_STOP_TIMEOUT * 10)) ]; do
  sleep 0.1
  waited=$((waited + 1))
done
for i in ${ending[@]+"${ending[@]}"}; do
  if kill -0 "${comfy_pids[$i]}" 2>/dev/null; then
    log "${comfy_names[$i]}: still running after ${COMFYUI_STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "${comfy_pids[$i]}" 2>/dev/null
  fi
done
for i in "${!comfy_pids[@]}"; do
  [ -z "${comfy_pids[$i]}" ] || wait "${comfy_pids[$i]}" 2>/dev/null
done
for i in ${ending[@]+"${ending[@]}"}; do log "${comfy_names[$i]}: stopped"; done
log "exiting with the worker's code $worker_rc"
exit "$worker_rc"
