#!/usr/bin/env bash
# Stop what infra/up.sh started, and nothing else: the processes named by the PID files in the
# state dir (broker first, then S3, then ClickHouse, then Prometheus when it was started). Services started by someone else, and the
# system PostgreSQL cluster, are left running. Data: ClickHouse keeps its data in the state dir;
# the S3 server (moto) keeps objects in memory, so its buckets, and the broker's s3:// data, go.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_one() {
  local name="$1" timeout="$2" pid
  pid="$(read_pid "$name")"
  if [[ -z "$pid" ]]; then
    ok "$name" "not started by lakeshop; nothing to stop"
  elif ! pid_alive "$name"; then
    stop_bg "$name" "$timeout" || true
    ok "$name" "was not running (stale pid $pid); cleaned up"
  else
    stop_bg "$name" "$timeout"
    ok "$name" "stopped (pid $pid)"
  fi
}

stop_one kafka 20
stop_one s3 15
stop_one clickhouse 60
if [[ -n "$(read_pid prometheus)" ]]; then
  stop_one prometheus 15
fi
ok postgresql "left running (system cluster)"
