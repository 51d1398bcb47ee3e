#!/usr/bin/env bash
# Start the lakeshop local stack on 127.0.0.1 (DESIGN.md, "Local stack"), installing what is
# missing first. Idempotent: a service that already answers on its port is left alone, whoever
# started it; a second run changes nothing and takes seconds.
#
#   PostgreSQL 15   127.0.0.1:5432          the system cluster (started if down, never stopped)
#   S3 (moto)       http://127.0.0.1:9100   buckets lakeshop, lakeshop-broker (objects in memory)
#   Kafka (tansu)   127.0.0.1:9092          storage s3://lakeshop-broker/ or memory://tansu/
#   ClickHouse      http://127.0.0.1:8123   native 127.0.0.1:9000, data in the state dir
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIPELINE_FILE="$LAKESHOP_ROOT/pipelines/shop.toml"
S3_BUCKETS=(lakeshop lakeshop-broker)
BROKER_BUCKET="lakeshop-broker"
KAFKA_URL="tcp://$BIND_HOST:$KAFKA_PORT"

mkdir -p "$CACHE_DIR" "$STATE_DIR" "$PID_DIR" "$LOG_DIR"

# --- installs (cached) -------------------------------------------------------------------------
"$INFRA_DIR/deps.sh" all

# ensure_tansu: the broker binary lives at a path named after its pinned version; it is built
# only when that path has no binary. A build already running for the same root is waited for,
# never duplicated.
ensure_tansu() {
  [[ -x "$TANSU_BIN" ]] && return 0
  local pattern="cargo install tansu .*--root $TANSU_ROOT( |\$)"
  if pgrep -f -- "$pattern" >/dev/null; then
    log "tansu $TANSU_VERSION is being built by another process; waiting (log: $TANSU_INSTALL_LOG)"
    while pgrep -f -- "$pattern" >/dev/null; do sleep 5; done
    [[ -x "$TANSU_BIN" ]] && return 0
  fi
  command -v cargo >/dev/null || die "cargo not found: tansu $TANSU_VERSION is built from crates.io"
  exec 9>"$CACHE_DIR/tansu-$TANSU_VERSION.lock"
  flock 9
  if [[ ! -x "$TANSU_BIN" ]]; then
    log "building tansu $TANSU_VERSION (first time only, ~15-20 min on 2 cores; log: $TANSU_INSTALL_LOG)"
    if ! cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
      --root "$TANSU_ROOT" --target-dir "$TANSU_TARGET_DIR" >>"$TANSU_INSTALL_LOG" 2>&1; then
      tail -n 30 "$TANSU_INSTALL_LOG" >&2
      die "building tansu failed (log: $TANSU_INSTALL_LOG)"
    fi
  fi
  flock -u 9
  exec 9>&-
}

# ensure_moto: a venv per pinned moto version; a stamp file marks a complete install.
ensure_moto() {
  [[ -f "$MOTO_VENV/.lakeshop-installed" ]] && return 0
  log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  "$PYTHON" -m venv "$MOTO_VENV" || die "python3 -m venv failed (is python3-venv installed?)"
  if ! "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
    >"$CACHE_DIR/moto-install.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/moto-install.log" >&2
    die "pip install moto[server]==$MOTO_VERSION failed"
  fi
  touch "$MOTO_VENV/.lakeshop-installed"
}

# --- PostgreSQL ----------------------------------------------------------------------------------
up_postgres() {
  local note="running"
  if ! pg_isready -q -h "$BIND_HOST" -p "$PG_PORT"; then
    local version
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)"
    [[ -n "$version" ]] || die "PostgreSQL is not installed (no cluster in /etc/postgresql)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >>"$LOG_DIR/postgresql.log" 2>&1 ||
      die "pg_ctlcluster $version main start failed (see $LOG_DIR/postgresql.log)"
    local i
    for ((i = 0; i < 60; i++)); do
      pg_isready -q -h "$BIND_HOST" -p "$PG_PORT" && break
      sleep 0.5
    done
    pg_isready -q -h "$BIND_HOST" -p "$PG_PORT" || die "PostgreSQL did not come up on $BIND_HOST:$PG_PORT"
    note="started cluster $version/main"
  fi
  # Database name from LAKESHOP_PG_URL (postgres://user@host:port/NAME?params).
  local db="${LAKESHOP_PG_URL##*/}"
  db="${db%%\?*}"
  [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "cannot read a database name from LAKESHOP_PG_URL"
  local psql=(psql -X -q -h "$BIND_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
  if [[ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
    "${psql[@]}" -c "CREATE DATABASE \"$db\"" >/dev/null
    note="$note, created database $db"
  else
    note="$note, database $db"
  fi
  ok postgresql "$BIND_HOST:$PG_PORT  $note (system cluster, never stopped by lakeshop)"
}

# --- S3 (moto) -----------------------------------------------------------------------------------
S3_STARTED=0
up_s3() {
  local note
  if port_open "$S3_PORT"; then
    note="already running$(owner_note s3)"
  else
    ensure_moto
    pid_alive s3 && stop_bg s3 5 # ours but not answering: start afresh
    start_bg s3 "$STATE_DIR" "$MOTO_VENV/bin/python" "$INFRA_DIR/s3_server.py" -H "$BIND_HOST" -p "$S3_PORT"
    wait_port "$S3_PORT" 60 s3 || die "moto did not come up on $BIND_HOST:$S3_PORT (see $LOG_DIR/s3.log)"
    S3_STARTED=1
    note="started (pid $(read_pid s3), moto $MOTO_VERSION)"
  fi
  local bucket missing=()
  for bucket in "${S3_BUCKETS[@]}"; do
    [[ "$(http_code "http://$BIND_HOST:$S3_PORT/$bucket" -I)" == 200 ]] || missing+=("$bucket")
  done
  if ((${#missing[@]})); then
    ensure_moto
    "$MOTO_VENV/bin/python" - "${missing[@]}" <<PY || die "creating buckets ${missing[*]} failed"
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url="http://$BIND_HOST:$S3_PORT",
                  region_name=os.environ.get("AWS_REGION", "us-east-1"))
for name in sys.argv[1:]:
    try:
        s3.create_bucket(Bucket=name)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
PY
    note="$note, created buckets ${missing[*]}"
  else
    note="$note, buckets ${S3_BUCKETS[*]}"
  fi
  ok s3 "http://$BIND_HOST:$S3_PORT  $note"
}

# --- Kafka API (tansu) ---------------------------------------------------------------------------
broker_storage_url() {
  case "${LAKESHOP_BROKER_STORAGE:-s3}" in
    s3) printf 's3://%s/' "$BROKER_BUCKET" ;;
    memory) printf 'memory://tansu/' ;;
    *://*) printf '%s' "$LAKESHOP_BROKER_STORAGE" ;;
    *) die "LAKESHOP_BROKER_STORAGE must be s3, memory or a tansu storage URL" ;;
  esac
}

up_kafka() {
  local note storage
  storage="$(broker_storage_url)"
  if [[ "$storage" == s3://* ]] && ((S3_STARTED)) && pid_alive kafka; then
    # Its storage just came back empty: a broker still running would serve stale state.
    log "restarting the broker: its S3 storage was restarted (moto keeps objects in memory)"
    stop_bg kafka 20
  fi
  if port_open "$KAFKA_PORT"; then
    note="already running$(owner_note kafka)"
  else
    ensure_tansu
    pid_alive kafka && stop_bg kafka 10
    # RUST_LOG=info (the project's default) makes tansu log every span: keep its log to warnings.
    start_bg kafka "$STATE_DIR" env RUST_LOG=warn NO_COLOR=1 "$TANSU_BIN" broker \
      --cluster-id lakeshop \
      --listener-url "$KAFKA_URL" \
      --advertised-listener-url "$KAFKA_URL" \
      --storage-engine "$storage"
    wait_port "$KAFKA_PORT" 60 kafka ||
      die "tansu did not come up on $BIND_HOST:$KAFKA_PORT (see $LOG_DIR/kafka.log)"
    note="started (pid $(read_pid kafka), tansu $TANSU_VERSION, storage $storage)"
  fi
  ok kafka "$BIND_HOST:$KAFKA_PORT  $note"
}

# tansu_cli ARGS...: tansu's client commands, run from the state dir (tansu reads a `.env` in its
# working directory) with tracing kept to warnings so that stdout is the command's answer.
tansu_cli() {
  (cd "$STATE_DIR" && RUST_LOG=warn NO_COLOR=1 "$TANSU_BIN" "$@")
}

# --- topics --------------------------------------------------------------------------------------
# Topic names and partition counts from the pipeline file; each missing one is created with
# tansu's own CLI (`tansu topic create`); existing ones are left as they are.
up_topics() {
  [[ -x "$TANSU_BIN" ]] || ensure_tansu
  local wanted listed name partitions created=() have=() i
  wanted="$("$PYTHON" - "$PIPELINE_FILE" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    topics = tomllib.load(f).get("kafka", {}).get("topics", {})
for key, t in topics.items():
    print(t.get("name", key), int(t.get("partitions", 1)))
PY
)"
  # The broker may accept connections a moment before it answers metadata requests.
  for ((i = 0; i < 20; i++)); do
    if listed="$(tansu_cli topic list --broker "$KAFKA_URL" 2>>"$LOG_DIR/topics.log")"; then
      break
    fi
    listed=""
    sleep 0.5
  done
  [[ -n "$listed" ]] || die "tansu topic list failed (see $LOG_DIR/topics.log)"
  local existing
  existing="$(printf '%s' "$listed" | "$PYTHON" -c '
import json, sys
for t in json.load(sys.stdin):
    print(t.get("name"), len(t.get("partitions") or []))')"
  while read -r name partitions; do
    [[ -n "$name" ]] || continue
    local have_parts
    have_parts="$(awk -v n="$name" '$1 == n { print $2 }' <<<"$existing")"
    if [[ -n "$have_parts" ]]; then
      [[ "$have_parts" == "$partitions" ]] ||
        warn "topic $name has $have_parts partitions, $PIPELINE_FILE says $partitions (left as it is)"
      have+=("$name($have_parts)")
    else
      local out
      if out="$(tansu_cli topic create "$name" --partitions "$partitions" --broker "$KAFKA_URL" 2>&1)"; then
        created+=("$name($partitions)")
      elif grep -qi 'already exists' <<<"$out"; then # created meanwhile by someone else
        have+=("$name")
      else
        printf '%s\n' "$out" >>"$LOG_DIR/topics.log"
        die "creating topic $name failed: $(tail -n1 <<<"$out")"
      fi
    fi
  done <<<"$wanted"
  local note=""
  ((${#have[@]})) && note="present: ${have[*]}"
  ((${#created[@]})) && note="${note:+$note; }created: ${created[*]}"
  ok topics "$BIND_HOST:$KAFKA_PORT  $note"
}

# --- ClickHouse ------------------------------------------------------------------------------------
# render TEMPLATE OUT KEY=VALUE...: fill @KEY@ placeholders; rewrite OUT only when it changes.
render() {
  local template="$1" out="$2" content kv key value
  shift 2
  content="$(<"$template")"
  for kv in "$@"; do
    key="${kv%%=*}"
    value="${kv#*=}"
    content="${content//"@$key@"/"$value"}"
  done
  if [[ ! -f "$out" ]] || [[ "$(<"$out")" != "$content" ]]; then
    printf '%s\n' "$content" >"$out.tmp"
    chmod 600 "$out.tmp"
    mv "$out.tmp" "$out"
  fi
}

up_clickhouse() {
  local note
  mkdir -p "$CH_DIR/conf" "$CH_DIR/data" "$CH_DIR/tmp" "$CH_DIR/log" "$CH_DIR/user_files" \
    "$CH_DIR/format_schemas"
  local user="${CLICKHOUSE_USER:-default}" hash
  [[ "$user" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "CLICKHOUSE_USER must be a plain identifier"
  hash="$(printf '%s' "${CLICKHOUSE_PASSWORD:-}" | sha256sum | cut -d' ' -f1)"
  render "$INFRA_DIR/clickhouse/config.xml.in" "$CH_DIR/conf/config.xml" \
    "CH_DIR=$CH_DIR" "CH_HTTP_PORT=$CH_HTTP_PORT" "CH_TCP_PORT=$CH_TCP_PORT"
  render "$INFRA_DIR/clickhouse/users.xml.in" "$CH_DIR/conf/users.xml" \
    "CH_USER=$user" "CH_PASSWORD_SHA256=$hash"
  if port_open "$CH_HTTP_PORT"; then
    note="already running$(owner_note clickhouse)"
  else
    command -v clickhouse-server >/dev/null || die "clickhouse-server is not installed"
    pid_alive clickhouse && stop_bg clickhouse 30
    port_open "$CH_TCP_PORT" && die "port $CH_TCP_PORT is taken but ClickHouse HTTP $CH_HTTP_PORT does not answer"
    start_bg clickhouse "$CH_DIR" clickhouse-server --config-file="$CH_DIR/conf/config.xml"
    wait_port "$CH_HTTP_PORT" 90 clickhouse ||
      die "ClickHouse did not come up on $BIND_HOST:$CH_HTTP_PORT (see $CH_DIR/log/ and $LOG_DIR/clickhouse.log)"
    note="started (pid $(read_pid clickhouse))"
  fi
  local i
  for ((i = 0; i < 50; i++)); do
    [[ "$(curl -s --max-time 2 "http://$BIND_HOST:$CH_HTTP_PORT/ping")" == "Ok." ]] && break
    sleep 0.2
  done
  ch_query "CREATE DATABASE IF NOT EXISTS lakeshop" >/dev/null ||
    die "CREATE DATABASE lakeshop failed on ClickHouse (user $user)"
  note="$note, version $(ch_query "SELECT version()"), database lakeshop"
  ok clickhouse "http://$BIND_HOST:$CH_HTTP_PORT (native $BIND_HOST:$CH_TCP_PORT)  $note"
}

# --- Prometheus (optional: LAKESHOP_PROMETHEUS=1) --------------------------------------------------
# Debian's prometheus on loopback, scraping lakeshop's long-running commands on their default
# ports (infra/prometheus-local.yml); data in the state dir.
up_prometheus() {
  local note port="${LAKESHOP_PROMETHEUS_PORT:-9090}"
  if port_open "$port"; then
    note="already running$(owner_note prometheus)"
  else
    command -v prometheus >/dev/null || "$INFRA_DIR/deps.sh" test
    pid_alive prometheus && stop_bg prometheus 10
    mkdir -p "$STATE_DIR/prometheus"
    start_bg prometheus "$STATE_DIR/prometheus" prometheus \
      --config.file="$INFRA_DIR/prometheus-local.yml" \
      --web.listen-address="$BIND_HOST:$port" \
      --storage.tsdb.path="$STATE_DIR/prometheus"
    wait_port "$port" 60 prometheus || die "Prometheus did not come up on $BIND_HOST:$port (see $LOG_DIR/prometheus.log)"
    note="started (pid $(read_pid prometheus)), scraping infra/prometheus-local.yml"
  fi
  ok prometheus "http://$BIND_HOST:$port  $note"
}

up_postgres
up_s3
up_clickhouse
up_kafka
up_topics
if [[ "${LAKESHOP_PROMETHEUS:-0}" == 1 ]]; then
  up_prometheus
fi
