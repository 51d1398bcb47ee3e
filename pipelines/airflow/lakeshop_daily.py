"""lakeshop daily: extract every source into the stage layer, build yesterday's business day
into ClickHouse with `lakeshop batch run`, then check the run's summary and reconcile the
streaming loader's totals of the day with the batch job's.

Graph:

    extract_clients ─────┐                ┌─► check_batch_summary
    extract_sellers ─────┤                │
    extract_products ────┼─► batch_run ───┼─► reconcile
    extract_purchases ───┘                └─► maintain_stage
    extract_interactions            (alone: the batch does not read interactions)

The extracts write different stage tables, so they run in parallel; each is incremental and
exactly once, so a retry or an extra run is harmless. `batch_run` replaces one business day as a
whole (idempotent), prints its summary as JSON and pushes it through XCom;
`check_batch_summary` fails the run when the counts do not add up (rules in lakeshop_dq.py).
`reconcile` runs `lakeshop reconcile --date DAY --json` (its JSON report goes to the task log)
and fails the run when the stream's day, hours, sellers, products or categories differ from the
batch tables in a way dimension drift does not explain (exit status 1), when the streaming loader
has not closed the day yet (exit status 3: a partition's watermark short of the day's end plus
the allowed lateness; clear the task once the loader caught up) or when neither side holds the
day (exit status 4). `maintain_stage`
compacts every stage table (`stage optimize`) and then deletes the files no version of the
last 7 days needs (`stage vacuum`, never below the tables' retention); both are safe beside
running extracts.

Business day: the day before the run's trigger time, in the business time zone. The schedule
is 00:30 there, so the day is closed; purchases that arrive later are picked up by re-running
the day (clear `batch_run`, or trigger the DAG with `{"date": "YYYY-MM-DD"}`). Catchup is off:
the extracts read whatever is new, not one day's slice, so a backlog of runs would only repeat
them; for missed days run `lakeshop replay --from D1 --to D2` (or trigger with a date per day).

Settings, looked up when a task runs (Airflow Variable, then process env, then the default):
    LAKESHOP_BIN        the binary (default: `lakeshop` on PATH)
    LAKESHOP_CONFIG     the pipeline file (default: pipelines/shop.toml, relative to the workdir)
    LAKESHOP_WORKDIR    working directory of the binary, where its `.env` is read (default: the
                        checkout holding this file when it is pipelines/airflow of one, else the
                        worker's own)
    LAKESHOP_DQ_MIN_ROWS, LAKESHOP_DQ_MAX_UNKNOWN_FRACTION   data-quality thresholds
Read when the file is parsed (process env only, so parsing needs no database):
    LAKESHOP_TIMEZONE   business time zone; must equal `pipeline.timezone` (default UTC)
    LAKESHOP_SCHEDULE   cron expression in that time zone (default "30 0 * * *")
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

from airflow.sdk import CronTriggerTimetable, Param, Variable, dag, get_current_context, task

# lakeshop_dq.py sits beside this file; Airflow puts the DAGs folder on sys.path, this covers
# loading the file from elsewhere.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from lakeshop_dq import check_summary, parse_summary  # noqa: E402

log = logging.getLogger("lakeshop.airflow")

TIMEZONE = os.environ.get("LAKESHOP_TIMEZONE", "UTC")
SCHEDULE = os.environ.get("LAKESHOP_SCHEDULE", "30 0 * * *")

# Kafka sources drain what is there and exit; the dimension sources are incremental by default.
EXTRACTS = {
    "clients": [],
    "sellers": [],
    "products": [],
    "purchases": ["--until-end"],
    "interactions": ["--until-end"],
}
# The stage tables `batch run` joins.
BATCH_INPUTS = ("clients", "sellers", "products", "purchases")


def setting(name: str, default: str | None) -> str | None:
    """An Airflow Variable, else the process env, else the default (only while a task runs)."""
    value = Variable.get(name, default=None)
    if value is None or value == "":
        value = os.environ.get(name) or default
    return value


def default_workdir() -> str | None:
    """The checkout this file belongs to (…/pipelines/airflow/lakeshop_daily.py), if it is one."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "pipelines" / "shop.toml").is_file() else None


def business_day(run_end: dt.datetime, timezone: str) -> str:
    """The business day a run triggered at `run_end` builds: the day before, in `timezone`."""
    return (run_end.astimezone(ZoneInfo(timezone)).date() - dt.timedelta(days=1)).isoformat()


def run_day(context) -> str:
    """The day of this run: the `date` param when given, else from the trigger time."""
    date = (context.get("params") or {}).get("date")
    if date:
        return dt.date.fromisoformat(date).isoformat()
    end = context.get("data_interval_end") or context.get("logical_date")
    return business_day(end or dt.datetime.now(dt.timezone.utc), TIMEZONE)


def run_lakeshop(args: list[str], *, capture_stdout: bool = False) -> str:
    """Run `lakeshop ARGS`, its output in the task log; raise on a non-zero exit.

    With capture_stdout, stdout is returned instead of logged (stderr, the log, is still
    logged line by line). The child is stopped when the task is (timeout, mark failed).
    """
    cmd = [
        setting("LAKESHOP_BIN", "lakeshop"),
        "--config",
        setting("LAKESHOP_CONFIG", "pipelines/shop.toml"),
        *args,
    ]
    cwd = setting("LAKESHOP_WORKDIR", default_workdir())
    log.info("running %s (in %s)", " ".join(cmd), cwd or os.getcwd())
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    ) as proc:
        try:
            pump = threading.Thread(
                target=lambda: [log.info("%s", line.rstrip("\n")) for line in proc.stderr],
                daemon=True,
            )
            pump.start()
            if capture_stdout:
                out = proc.stdout.read()
            else:
                out = ""
                for line in proc.stdout:
                    log.info("%s", line.rstrip("\n"))
            code = proc.wait()
            pump.join(timeout=10)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if code != 0:
        hint = " (a usage error: check the arguments)" if code == 2 else ""
        raise RuntimeError(f"{' '.join(cmd)} exited with status {code}{hint}")
    return out


@dag(
    dag_id="lakeshop_daily",
    description="Extract sources into the stage, build yesterday into ClickHouse, check it and "
    "reconcile the stream with it",
    schedule=CronTriggerTimetable(SCHEDULE, timezone=TIMEZONE),
    start_date=dt.datetime(2026, 1, 1, tzinfo=ZoneInfo(TIMEZONE)),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=6),
    default_args={
        "owner": "lakeshop",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
    },
    params={
        "date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Business day to build (YYYY-MM-DD); empty: the day before the run",
        )
    },
    tags=["lakeshop"],
    doc_md=__doc__,
)
def lakeshop_daily():
    @task(retries=3, execution_timeout=dt.timedelta(hours=1))
    def extract(source: str) -> None:
        """`lakeshop extract SOURCE`: new data of one source into the stage layer."""
        run_lakeshop(["extract", source, *EXTRACTS[source]])

    @task(execution_timeout=dt.timedelta(hours=2))
    def batch_run() -> str:
        """`lakeshop batch run --date DAY --json`; its summary (JSON text) goes to XCom."""
        day = run_day(get_current_context())
        return run_lakeshop(["batch", "run", "--date", day, "--json"], capture_stdout=True)

    @task(retries=0)
    def check_batch_summary(summary_json: str) -> dict[str, int]:
        """Fail the run when the batch summary's counts do not add up (lakeshop_dq.py)."""
        day = run_day(get_current_context())
        totals = check_summary(
            parse_summary(summary_json),
            [day],
            min_rows=int(setting("LAKESHOP_DQ_MIN_ROWS", "1")),
            max_unknown_fraction=float(setting("LAKESHOP_DQ_MAX_UNKNOWN_FRACTION", "0.1")),
        )
        log.info("batch summary for %s passed: %s", day, totals)
        return totals

    @task(retries=0, execution_timeout=dt.timedelta(minutes=30))
    def reconcile() -> None:
        """`lakeshop reconcile --date DAY --json`: the stream's totals of the day against the
        batch tables batch_run just replaced; fails on a difference drift does not explain."""
        day = run_day(get_current_context())
        run_lakeshop(["reconcile", "--date", day, "--json"])

    @task(retries=1, execution_timeout=dt.timedelta(hours=2))
    def maintain_stage() -> None:
        """`lakeshop stage optimize`, then `lakeshop stage vacuum` (default retention)."""
        run_lakeshop(["stage", "optimize"])
        run_lakeshop(["stage", "vacuum"])

    extracts = {
        source: extract.override(task_id=f"extract_{source}")(source) for source in EXTRACTS
    }
    summary = batch_run()
    [extracts[source] for source in BATCH_INPUTS] >> summary
    check_batch_summary(summary)
    summary >> reconcile()
    summary >> maintain_stage()


lakeshop_daily()
