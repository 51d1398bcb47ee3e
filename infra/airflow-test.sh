#!/usr/bin/env bash
# Loads pipelines/airflow in the pinned Airflow and runs its checks: the DAG file imports with
# zero errors, the task graph is the expected one, and the data-quality function passes good
# batch summaries and fails bad ones. No scheduler, webserver or database server is needed: the
# checks run with a throwaway AIRFLOW_HOME.
#
# Airflow is installed once into a venv per pinned version,
#   ${LAKESHOP_CACHE_DIR:-$HOME/.cache/lakeshop}/airflow-<version>
# from pipelines/airflow/requirements.txt with pipelines/airflow/constraints-<python>.txt, and
# reinstalled only when one of those files or the Python version changes.
#
# Usage: infra/airflow-test.sh          install if needed, then run the checks
#        infra/airflow-test.sh --lock   resolve requirements.txt afresh and rewrite the
#                                       constraints file (after changing a pin), then check
# Env:   LAKESHOP_AIRFLOW_PYTHON        interpreter for the venv (default python3; 3.10-3.13)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AIRFLOW_DIR="$LAKESHOP_ROOT/pipelines/airflow"
REQUIREMENTS="$AIRFLOW_DIR/requirements.txt"
PY="${LAKESHOP_AIRFLOW_PYTHON:-$PYTHON}"

lock=0
case "${1:-}" in
  "") ;;
  --lock) lock=1 ;;
  *) die "usage: $0 [--lock]" ;;
esac

command -v "$PY" >/dev/null || die "$PY not found (set LAKESHOP_AIRFLOW_PYTHON)"
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
version="$(sed -n 's/^apache-airflow==\([0-9][0-9.]*\).*/\1/p' "$REQUIREMENTS")"
[[ -n "$version" ]] || die "no apache-airflow==VERSION line in $REQUIREMENTS"
CONSTRAINTS="$AIRFLOW_DIR/constraints-$pyver.txt"
VENV="$CACHE_DIR/airflow-$version"
INSTALL_LOG="$CACHE_DIR/airflow-$version-install.log"

# What the venv was built from; a different fingerprint means a rebuild.
fingerprint() {
  {
    echo "python $("$PY" -c 'import sys; print(sys.version)')"
    cat "$REQUIREMENTS"
    [[ -f "$CONSTRAINTS" ]] && cat "$CONSTRAINTS"
  } | sha256sum | cut -d' ' -f1
}

mkdir -p "$CACHE_DIR"
# One installer at a time (tests run in parallel); the others wait, then reuse the venv.
exec 9>"$VENV.lock"
flock -w 3600 9 || die "timed out waiting for $VENV.lock"

stamp="$VENV/.lakeshop-installed"
if ((lock)) || [[ ! -f "$stamp" || "$(cat "$stamp")" != "$(fingerprint)" ]]; then
  constraint_args=()
  if ((!lock)); then
    if [[ -f "$CONSTRAINTS" ]]; then
      constraint_args=(-c "$CONSTRAINTS")
    else
      warn "no $CONSTRAINTS for Python $pyver: resolving apache-airflow==$version unconstrained"
    fi
  fi
  log "installing apache-airflow==$version (Python $pyver) into $VENV (log: $INSTALL_LOG)"
  started=$SECONDS
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "$PY -m venv failed (is python3-venv installed? infra/deps.sh stack)"
  if ! "$VENV/bin/pip" install --disable-pip-version-check -r "$REQUIREMENTS" \
    "${constraint_args[@]}" >"$INSTALL_LOG" 2>&1; then
    tail -n 30 "$INSTALL_LOG" >&2
    rm -rf "$VENV"
    die "pip install apache-airflow==$version failed (log: $INSTALL_LOG)"
  fi
  if ((lock)); then
    {
      echo "# Every package of the Airflow venv, pinned: what infra/airflow-test.sh installs with"
      echo "# pipelines/airflow/requirements.txt on Python $pyver. Regenerate with"
      echo "# \`infra/airflow-test.sh --lock\` after changing a pin there."
      "$VENV/bin/pip" freeze --disable-pip-version-check --exclude-editable | LC_ALL=C sort -f
    } >"$CONSTRAINTS"
    log "wrote $CONSTRAINTS"
  fi
  fingerprint >"$stamp"
  log "installed in $((SECONDS - started))s"
fi
flock -u 9
exec 9>&-

# The checks: a throwaway AIRFLOW_HOME with pipelines/airflow as the DAGs folder. The DAG file
# itself reads only process env at parse time, so nothing here needs a metadata database.
home="$(mktemp -d "${TMPDIR:-/tmp}/lakeshop-airflow.XXXXXX")"
trap 'rm -rf "$home"' EXIT
started=$SECONDS
AIRFLOW_HOME="$home" \
  AIRFLOW__CORE__DAGS_FOLDER="$AIRFLOW_DIR" \
  AIRFLOW__CORE__LOAD_EXAMPLES=False \
  AIRFLOW__CORE__UNIT_TEST_MODE=True \
  AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-WARNING}" \
  PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m unittest discover -s "$AIRFLOW_DIR/tests" -t "$AIRFLOW_DIR" -v
log "airflow checks passed in $((SECONDS - started))s (apache-airflow==$version, Python $pyver)"
