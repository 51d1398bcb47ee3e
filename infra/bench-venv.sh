#!/usr/bin/env bash
# Prints the path of a Python venv holding the benchmark baselines (bench/requirements.txt),
# or the requirements file given as the first argument (the API fuzzer's:
# infra/fuzz-requirements.txt), creating it on first use under the cache dir; the venv path
# changes with the pins. Usage: infra/bench-venv.sh [REQUIREMENTS]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

req="${1:-$LAKESHOP_ROOT/bench/requirements.txt}"
stamp="$(sha256sum "$req" | cut -c1-12)"
venv="$CACHE_DIR/bench-venv-$stamp"
if [[ ! -f "$venv/.lakeshop-installed" ]]; then
  log "installing the bench baselines ($req) into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$CACHE_DIR"
  "${PYTHON:-python3}" -m venv "$venv" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >"$CACHE_DIR/bench-venv-install.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/bench-venv-install.log" >&2
    die "pip install -r $req failed"
  fi
  touch "$venv/.lakeshop-installed"
fi
echo "$venv"
