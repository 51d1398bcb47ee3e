#!/usr/bin/env bash
# Print the health of each local-stack service: name, address, healthy/down, and who started
# it. Exit status 0 when all are healthy, 1 otherwise.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set +e # report every service, whatever fails

failed=0
report() { # NAME ADDRESS HEALTHY(0|1) DETAIL
  local state
  if (($3)); then
    state="${C_OK}healthy${C_OFF}"
  else
    state="${C_ERR}down${C_OFF}"
    failed=1
  fi
  printf '%-11s %-28s %s%s\n' "$1" "$2" "$state" "${4:+  $4}"
}

owner() {
  if pid_alive "$1"; then
    printf 'lakeshop, pid %s' "$(read_pid "$1")"
  elif [[ -n "$(read_pid "$1")" ]]; then
    printf 'stale pid file'
  fi
}

# PostgreSQL: pg_isready.
if pg_isready -q -h "$BIND_HOST" -p "$PG_PORT" 2>/dev/null; then
  report postgresql "$BIND_HOST:$PG_PORT" 1 "system cluster"
else
  report postgresql "$BIND_HOST:$PG_PORT" 0
fi

# S3: any HTTP answer from the server; bucket presence when it answers anonymous requests (moto).
code="$(http_code "http://$BIND_HOST:$S3_PORT/")"
if [[ "$code" != 000 && "$code" -lt 500 ]]; then
  detail="$(owner s3)"
  buckets=()
  for b in lakeshop lakeshop-broker; do
    [[ "$(http_code "http://$BIND_HOST:$S3_PORT/$b" -I)" == 200 ]] && buckets+=("$b")
  done
  ((${#buckets[@]})) && detail="${detail:+$detail; }buckets: ${buckets[*]}"
  report s3 "http://$BIND_HOST:$S3_PORT" 1 "$detail"
else
  report s3 "http://$BIND_HOST:$S3_PORT" 0 "$(owner s3)"
fi

# Kafka API: TCP connect.
if port_open "$KAFKA_PORT"; then
  report kafka "$BIND_HOST:$KAFKA_PORT" 1 "$(owner kafka)"
else
  report kafka "$BIND_HOST:$KAFKA_PORT" 0 "$(owner kafka)"
fi

# ClickHouse: /ping answers "Ok.".
if [[ "$(curl -s --max-time 5 "http://$BIND_HOST:$CH_HTTP_PORT/ping" 2>/dev/null)" == "Ok." ]]; then
  report clickhouse "http://$BIND_HOST:$CH_HTTP_PORT" 1 "$(owner clickhouse)"
else
  report clickhouse "http://$BIND_HOST:$CH_HTTP_PORT" 0 "$(owner clickhouse)"
fi

exit "$failed"
