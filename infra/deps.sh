#!/usr/bin/env bash
# Install the Debian packages the lakeshop workspace needs to build and the local stack needs to
# run, but only those that are missing (checked with dpkg -s; nothing is downloaded when all are
# there). Usage: infra/deps.sh [build|stack|test|bench|all]   (default: all)
#   build  compilers' friends for the Rust workspace's -sys crates
#   stack  what infra/up.sh runs: ClickHouse 18.16 from Debian, PostgreSQL client, venv, curl
#   test   build packages plus what tests drive: curl, headless Chromium (the live page),
#          openssl (test certificates), Prometheus (scrapes the commands)
#   bench  build packages plus GNU time (CPU seconds and peak RSS in `make bench`) and wrk
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILD_PKGS=(build-essential cmake pkg-config libssl-dev libsasl2-dev libcurl4-openssl-dev zlib1g-dev
  protobuf-compiler)
STACK_PKGS=(ca-certificates curl procps python3-venv clickhouse-server clickhouse-client)
# Tests: the end-to-end API test talks HTTP with curl, renders the live page in Chromium, makes
# its TLS certificates with openssl, and has the real Prometheus scrape the commands; the TLS
# tests start their own ClickHouse and PostgreSQL 15 servers (initdb, pg_ctl), and the progress
# test runs commands under a terminal with script (bsdutils).
TEST_PKGS=(curl chromium openssl prometheus clickhouse-server postgresql-15 bsdutils)
# Benchmarks: GNU time for CPU seconds and peak RSS of each process measured; wrk against the API.
BENCH_PKGS=(time wrk)
# Any PostgreSQL client version will do (the machine's cluster brings its own).
command -v pg_isready >/dev/null && command -v psql >/dev/null || STACK_PKGS+=(postgresql-client)

what="${1:-all}"
case "$what" in
  build) wanted=("${BUILD_PKGS[@]}") ;;
  stack) wanted=("${STACK_PKGS[@]}") ;;
  test) wanted=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}") ;;
  bench) wanted=("${BUILD_PKGS[@]}" "${BENCH_PKGS[@]}") ;;
  all) wanted=("${BUILD_PKGS[@]}" "${STACK_PKGS[@]}" "${TEST_PKGS[@]}" "${BENCH_PKGS[@]}") ;;
  *) die "usage: $0 [build|stack|test|bench|all]" ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root; install them first"
  SUDO=(sudo)
fi

log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists when one of the missing packages has no install candidate (fresh
# machine) or the lists are older than a day.
need_update=0
for pkg in "${missing[@]}"; do
  cand="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  if [[ -z "$cand" || "$cand" == "(none)" ]]; then
    need_update=1
    break
  fi
done
if ((need_update)) || [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n1)" ]]; then
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
fi
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed: ${missing[*]}"

# infra/up.sh runs its own ClickHouse (state dir, loopback). Where systemd started the packaged
# service on install, it would hold ports 8123/9000: stop and disable it, but only when this
# run installed it (a service someone already had is left alone).
if [[ " ${missing[*]} " == *" clickhouse-server "* ]] && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
fi
# The same for the packaged Prometheus (port 9090): `make up` starts its own on loopback.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
