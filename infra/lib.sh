# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source it
# Common helpers for the lakeshop local stack (sourced by infra/*.sh, never run directly).
#
# Environment: variables already set in the environment win; then `.env` (if present) fills
# what is missing; then `.env.example` supplies the defaults for anything still unset.
# Cache (installs, shared by every clone): ${LAKESHOP_CACHE_DIR:-$HOME/.cache/lakeshop}
# State (pids, logs, ClickHouse data):     ${LAKESHOP_STATE_DIR:-$HOME/.local/state/lakeshop}

set -euo pipefail

LAKESHOP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA_DIR="$LAKESHOP_ROOT/infra"

# --- pinned versions (changing one triggers a fresh install into a new cache path) -----------
TANSU_VERSION="0.6.0"
TANSU_FEATURES="dynostore"
MOTO_VERSION="5.2.5"

# --- environment -----------------------------------------------------------------------------
# load_env_file FILE: KEY=VALUE lines (comments, blanks and `export ` allowed; optional single or
# double quotes around VALUE). A key already in the environment is left as it is.
load_env_file() {
  local file="$1" line key value
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$line" || "$line" == \#* ]] && continue
    line="${line#export }"
    [[ "$line" == *=* ]] || continue
    key="${line%%=*}"
    value="${line#*=}"
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    fi
    if [[ -z "${!key+x}" ]]; then
      export "$key=$value"
    fi
  done <"$file"
}

load_env_file "$LAKESHOP_ROOT/.env"
load_env_file "$LAKESHOP_ROOT/.env.example"

# Empty means "the default" for these two.
CACHE_DIR="${LAKESHOP_CACHE_DIR:-$HOME/.cache/lakeshop}"
STATE_DIR="${LAKESHOP_STATE_DIR:-$HOME/.local/state/lakeshop}"
PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/logs"
CH_DIR="$STATE_DIR/clickhouse"

TANSU_ROOT="$CACHE_DIR/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
TANSU_TARGET_DIR="$CACHE_DIR/tansu-build"
TANSU_INSTALL_LOG="$CACHE_DIR/tansu-install.log"
MOTO_VENV="$CACHE_DIR/moto-$MOTO_VERSION"

# Fixed local addresses (DESIGN.md, "Local stack"). Everything binds to loopback.
BIND_HOST="127.0.0.1"
PG_PORT=5432
S3_PORT=9100
KAFKA_PORT=9092
CH_HTTP_PORT=8123
CH_TCP_PORT=9000

export AWS_REGION="${AWS_REGION:-us-east-1}"

# --- logging ---------------------------------------------------------------------------------
if [[ -t 1 ]]; then
  C_OK=$'\e[32m' C_WARN=$'\e[33m' C_ERR=$'\e[31m' C_DIM=$'\e[2m' C_OFF=$'\e[0m'
else
  C_OK="" C_WARN="" C_ERR="" C_DIM="" C_OFF=""
fi

log() { printf '%s[lakeshop]%s %s\n' "$C_DIM" "$C_OFF" "$*"; }
ok() { printf '%-11s %s%s%s\n' "$1" "$C_OK" "$2" "$C_OFF"; }
warn() { printf '%s[lakeshop] warning:%s %s\n' "$C_WARN" "$C_OFF" "$*" >&2; }
die() {
  printf '%s[lakeshop] error:%s %s\n' "$C_ERR" "$C_OFF" "$*" >&2
  exit 1
}

# --- ports -----------------------------------------------------------------------------------
# port_open PORT [HOST]: true when something accepts TCP connections there.
port_open() {
  local port="$1" host="${2:-$BIND_HOST}"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# wait_port PORT TIMEOUT_SECONDS [PIDFILE_NAME]: wait until the port accepts connections; fails
# early when the named process (see start_bg) has died meanwhile.
wait_port() {
  local port="$1" timeout="$2" name="${3:-}" i
  for ((i = 0; i < timeout * 5; i++)); do
    port_open "$port" && return 0
    if [[ -n "$name" ]] && ! pid_alive "$name"; then
      return 1
    fi
    sleep 0.2
  done
  return 1
}

# --- processes we start ----------------------------------------------------------------------
# Each service runs as the leader of its own session/process group; its PID is in
# $PID_DIR/NAME.pid, its output in $LOG_DIR/NAME.log.
pid_file() { printf '%s/%s.pid' "$PID_DIR" "$1"; }

# read_pid NAME: print the recorded PID (empty if none).
read_pid() {
  local f
  f="$(pid_file "$1")"
  if [[ -f "$f" ]]; then
    tr -dc '0-9' <"$f"
  fi
}

# proc_alive PID: the process exists and is not a zombie (reads /proc; no procps needed).
proc_alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ -n "$stat" && "${stat:0:1}" != Z ]]
}

# pid_alive NAME: the recorded process exists (and is not a zombie).
pid_alive() {
  local pid
  pid="$(read_pid "$1")"
  [[ -n "$pid" ]] && proc_alive "$pid"
}

# start_bg NAME DIR CMD...: start CMD in DIR, detached (new session), stdin from /dev/null,
# output appended to $LOG_DIR/NAME.log; the PID is written by the process itself before exec,
# so the file names the real server process and its process group.
start_bg() {
  local name="$1" dir="$2"
  shift 2
  mkdir -p "$PID_DIR" "$LOG_DIR"
  local pidf log_file
  pidf="$(pid_file "$name")"
  log_file="$LOG_DIR/$name.log"
  rm -f "$pidf"
  printf '\n=== %s start %s\n' "$(date -u +%FT%TZ)" "$name" >>"$log_file"
  (
    cd "$dir"
    # shellcheck disable=SC2016 # $$ and "$@" expand in the inner shell
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" </dev/null >>"$log_file" 2>&1
  ) &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidf" ]] && return 0
    sleep 0.1
  done
  die "$name did not start (see $log_file)"
}

# stop_bg NAME [TIMEOUT]: stop the process group we started (TERM, then KILL after TIMEOUT
# seconds), wait until it is gone, remove the PID file. No PID file: nothing to do.
stop_bg() {
  local name="$1" timeout="${2:-20}" pid i=0
  pid="$(read_pid "$name")"
  if [[ -z "$pid" ]]; then
    rm -f "$(pid_file "$name")"
    return 1
  fi
  if pid_alive "$name"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 5; i++)); do
      group_alive "$pid" || break
      sleep 0.2
    done
    if group_alive "$pid"; then
      warn "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        group_alive "$pid" || break
        sleep 0.2
      done
    fi
  else
    # Leader gone (e.g. kill -9): still sweep any children left in its group.
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # Dead processes stay zombies until their parent (init, once we have exited) reaps them;
  # give it a moment so that `pgrep` afterwards shows nothing.
  for ((i = 0; i < 25; i++)); do
    [[ -e "/proc/$pid" ]] || break
    sleep 0.2
  done
  rm -f "$(pid_file "$name")"
  return 0
}

# group_alive PGID: some non-zombie process is still in that process group.
group_alive() {
  local pgid="$1" f stat rest fields
  for f in /proc/[0-9]*/stat; do
    { read -r stat <"$f"; } 2>/dev/null || continue
    rest="${stat##*) }" # after the command name: state ppid pgrp ...
    read -r -a fields <<<"$rest"
    [[ "${fields[2]:-}" == "$pgid" && "${fields[0]}" != Z ]] && return 0
  done
  return 1
}

# owner_note NAME: " (pid N)" when we started what is running, " (not started by lakeshop)" else.
owner_note() {
  if pid_alive "$1"; then
    printf ' (pid %s)' "$(read_pid "$1")"
  else
    printf ' (not started by lakeshop)'
  fi
}

# --- misc ------------------------------------------------------------------------------------
# python3 for helper snippets (tomllib needs 3.11+).
PYTHON="python3"

# http_code URL [curl args...]: print the HTTP status (000 when nothing answers).
http_code() {
  local url="$1"
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true
}

# ch_query SQL: run SQL over HTTP as CLICKHOUSE_USER; the password goes through curl's stdin
# config, never on a command line or into a log.
ch_query() {
  local user="${CLICKHOUSE_USER:-default}" password="${CLICKHOUSE_PASSWORD:-}"
  password="${password//\\/\\\\}"
  password="${password//\"/\\\"}"
  printf 'user = "%s:%s"\n' "$user" "$password" |
    curl -sS --fail-with-body --max-time 30 -K - "http://$BIND_HOST:$CH_HTTP_PORT/" --data-binary "$1"
}
