"""lakeshop_daily.py in real Airflow: the DAGs folder loads with zero import errors, the task
graph and schedule are the expected ones, and whole runs against a stand-in `lakeshop` binary
pass a good batch summary and fail a bad one or a reconciliation that finds differences.

Run by infra/airflow-test.sh (pinned Airflow, throwaway AIRFLOW_HOME); skipped where Airflow is
not installed.
"""

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

try:
    import airflow  # noqa: F401
except ImportError:  # plain python3: only the data-quality tests run
    raise unittest.SkipTest("apache-airflow is not installed (run infra/airflow-test.sh)")

DAGS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DAGS))

EXPECTED_UPSTREAM = {
    "extract_clients": set(),
    "extract_sellers": set(),
    "extract_products": set(),
    "extract_purchases": set(),
    "extract_interactions": set(),
    "batch_run": {"extract_clients", "extract_sellers", "extract_products", "extract_purchases"},
    "check_batch_summary": {"batch_run"},
    "reconcile": {"batch_run"},
    "maintain_stage": {"batch_run"},
}


def load_dagbag():
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag
    import inspect

    kwargs = {"dag_folder": str(DAGS)}
    if "include_examples" in inspect.signature(DagBag.__init__).parameters:
        kwargs["include_examples"] = False
    return DagBag(**kwargs)


class DagFolder(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bag = load_dagbag()
        cls.dag = cls.bag.dags.get("lakeshop_daily")

    def test_zero_import_errors(self):
        self.assertEqual(self.bag.import_errors, {})

    def test_exactly_one_dag_and_no_warnings(self):
        # tests/ is kept out by .airflowignore; lakeshop_dq.py defines no DAG.
        self.assertEqual(sorted(self.bag.dag_ids), ["lakeshop_daily"])
        self.assertEqual(dict(getattr(self.bag, "captured_warnings", {})), {})

    def test_task_graph(self):
        upstream = {t.task_id: set(t.upstream_task_ids) for t in self.dag.tasks}
        self.assertEqual(upstream, EXPECTED_UPSTREAM)
        downstream = {t.task_id: set(t.downstream_task_ids) for t in self.dag.tasks}
        self.assertEqual(
            downstream["batch_run"], {"check_batch_summary", "reconcile", "maintain_stage"}
        )
        self.assertEqual(downstream["maintain_stage"], set())
        self.assertEqual(downstream["extract_interactions"], set())
        self.assertEqual(downstream["check_batch_summary"], set())
        self.assertEqual(downstream["reconcile"], set())
        for source in ("clients", "sellers", "products", "purchases"):
            self.assertEqual(downstream[f"extract_{source}"], {"batch_run"})

    def test_schedule(self):
        from airflow.sdk import CronTriggerTimetable

        timetable = self.dag.timetable
        self.assertIsInstance(timetable, CronTriggerTimetable)
        self.assertEqual(timetable.expression, "30 0 * * *")
        self.assertEqual(getattr(timetable.timezone, "name", timetable.timezone), "UTC")
        self.assertFalse(self.dag.catchup)
        self.assertEqual(self.dag.max_active_runs, 1)

    def test_retries_and_timeouts(self):
        tasks = {t.task_id: t for t in self.dag.tasks}
        for task_id, task in tasks.items():
            with self.subTest(task_id=task_id):
                if task_id.startswith("extract_"):
                    self.assertEqual(task.retries, 3)
                    self.assertEqual(task.execution_timeout, dt.timedelta(hours=1))
        self.assertEqual(tasks["batch_run"].retries, 2)
        self.assertEqual(tasks["batch_run"].execution_timeout, dt.timedelta(hours=2))
        # A summary that does not add up does not get better by asking again, nor does a
        # difference between the stream and the batch tables.
        self.assertEqual(tasks["check_batch_summary"].retries, 0)
        self.assertEqual(tasks["reconcile"].retries, 0)
        self.assertEqual(tasks["reconcile"].execution_timeout, dt.timedelta(minutes=30))
        self.assertEqual(tasks["maintain_stage"].retries, 1)


class BusinessDay(unittest.TestCase):
    def test_day_before_the_trigger_in_the_business_zone(self):
        from lakeshop_daily import business_day

        utc = dt.timezone.utc
        cases = [
            (dt.datetime(2026, 11, 22, 0, 30, tzinfo=utc), "UTC", "2026-11-21"),
            (dt.datetime(2026, 11, 22, 23, 59, tzinfo=utc), "UTC", "2026-11-21"),
            (dt.datetime(2026, 3, 1, 0, 30, tzinfo=utc), "UTC", "2026-02-28"),
            # 00:30 in Moscow is 21:30 UTC the day before.
            (dt.datetime(2026, 11, 21, 21, 30, tzinfo=utc), "Europe/Moscow", "2026-11-21"),
            (dt.datetime(2026, 11, 21, 21, 30, tzinfo=utc), "UTC", "2026-11-20"),
            # 00:30 in New York on the day summer time ends.
            (dt.datetime(2026, 11, 1, 4, 30, tzinfo=utc), "America/New_York", "2026-10-31"),
        ]
        for run_end, zone, expected in cases:
            with self.subTest(run_end=run_end, zone=zone):
                self.assertEqual(business_day(run_end, zone), expected)


class RunLakeshop(unittest.TestCase):
    """run_lakeshop outside a task: Airflow Variables patched away, the process env used."""

    def run_script(self, script, **kwargs):
        from unittest import mock

        import lakeshop_daily

        with tempfile.TemporaryDirectory() as tmp:
            fake = Path(tmp) / "lakeshop"
            fake.write_text("#!/bin/sh\n" + script)
            fake.chmod(0o755)
            env = {"LAKESHOP_BIN": str(fake), "LAKESHOP_WORKDIR": tmp}
            with mock.patch.dict(os.environ, env), \
                    mock.patch.object(lakeshop_daily.Variable, "get", return_value=None):
                return lakeshop_daily.run_lakeshop(["batch", "run"], **kwargs)

    def test_stdout_captured_stderr_logged(self):
        with self.assertLogs("lakeshop.airflow", "INFO") as logs:
            out = self.run_script('echo "$@" >&2; echo \'{"days": []}\'', capture_stdout=True)
        self.assertEqual(out, '{"days": []}\n')
        self.assertIn("--config pipelines/shop.toml batch run", "\n".join(logs.output))

    def test_non_zero_exit_raises(self):
        with self.assertRaisesRegex(RuntimeError, r"exited with status 2 \(a usage error"):
            self.run_script("exit 2")
        with self.assertRaisesRegex(RuntimeError, "exited with status 1$"):
            self.run_script("exit 1")


FAKE_LAKESHOP = """#!/bin/sh
# Stand-in for the lakeshop binary: records its arguments, prints a canned batch summary, and
# for reconcile a canned report, exiting with the status the test wrote to a file.
printf '%s\\n' "$*" >> {log}
echo "fake lakeshop: $*" >&2
case "$*" in
  *"batch run"*) cat {summary} ;;
  *" reconcile "*) echo '{{"ok": true, "days": []}}'; exit "$(cat {reconcile_status})" ;;
esac
exit 0
"""


def good_summary(date):
    return {
        "days": [
            {"date": date, "rows_in": 103, "rows_out": 100, "duplicates": 3,
             "unknown_clients": 0, "unknown_products": 1, "unknown_sellers": 2, "seconds": 0.4}
        ],
        "seconds": 0.5,
    }


class WholeRuns(unittest.TestCase):
    """dag.test() runs: every task in this process against a stand-in binary."""

    @classmethod
    def setUpClass(cls):
        home = os.environ.get("AIRFLOW_HOME", "")
        if not home.startswith(tempfile.gettempdir()):
            raise unittest.SkipTest("needs a throwaway AIRFLOW_HOME (run infra/airflow-test.sh)")
        airflow_cli = Path(sys.executable).with_name("airflow")
        out = subprocess.run([str(airflow_cli), "db", "migrate"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{out.stdout}\n{out.stderr}")
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = Path(cls.tmp.name)
        cls.calls = tmp / "calls.log"
        cls.summary = tmp / "summary.json"
        cls.reconcile_status = tmp / "reconcile_status"
        cls.bin = tmp / "lakeshop"
        cls.bin.write_text(FAKE_LAKESHOP.format(
            log=shlex.quote(str(cls.calls)),
            summary=shlex.quote(str(cls.summary)),
            reconcile_status=shlex.quote(str(cls.reconcile_status)),
        ))
        cls.bin.chmod(0o755)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_dag(self, logical_date, summary, reconcile_status=0, **kwargs):
        self.calls.write_text("")
        self.reconcile_status.write_text(f"{reconcile_status}\n")
        self.summary.write_text(summary if isinstance(summary, str) else json.dumps(summary))
        # A fresh DAG object per run, as a worker parses it: dag.test() leaves run_conf in the
        # params of the tasks it ran.
        dag = load_dagbag().dags["lakeshop_daily"]
        run = dag.test(logical_date=logical_date, **kwargs)
        states = {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state)
                  for ti in run.get_task_instances()}
        calls = self.calls.read_text().splitlines()
        return str(getattr(run.state, "value", run.state)), states, calls

    def setUp(self):
        os.environ["LAKESHOP_BIN"] = str(self.bin)
        os.environ["LAKESHOP_CONFIG"] = "/etc/lakeshop/shop.toml"

    def tearDown(self):
        os.environ.pop("LAKESHOP_BIN", None)
        os.environ.pop("LAKESHOP_CONFIG", None)

    def test_good_summary_passes(self):
        state, states, calls = self.run_dag(
            dt.datetime(2026, 11, 22, 0, 30, tzinfo=dt.timezone.utc), good_summary("2026-11-21")
        )
        self.assertEqual(state, "success", states)
        self.assertEqual(set(states.values()), {"success"}, states)
        config = "--config /etc/lakeshop/shop.toml"
        self.assertEqual(
            sorted(calls),
            sorted([
                f"{config} extract clients",
                f"{config} extract sellers",
                f"{config} extract products",
                f"{config} extract purchases --until-end",
                f"{config} extract interactions --until-end",
                f"{config} batch run --date 2026-11-21 --json",
                f"{config} reconcile --date 2026-11-21 --json",
                f"{config} stage optimize",
                f"{config} stage vacuum",
            ]),
        )
        # Compaction before vacuum.
        self.assertLess(calls.index(f"{config} stage optimize"), calls.index(f"{config} stage vacuum"))

    def test_differences_found_by_reconcile_fail_the_run(self):
        state, states, calls = self.run_dag(
            dt.datetime(2026, 11, 29, 0, 30, tzinfo=dt.timezone.utc),
            good_summary("2026-11-28"),
            reconcile_status=1,
        )
        self.assertEqual(state, "failed", states)
        self.assertEqual(states["batch_run"], "success")
        self.assertEqual(states["check_batch_summary"], "success")
        self.assertEqual(states["reconcile"], "failed")
        # Not retried: one call.
        self.assertEqual(
            [c for c in calls if " reconcile " in f" {c} "],
            ["--config /etc/lakeshop/shop.toml reconcile --date 2026-11-28 --json"],
        )

    def test_bad_summary_fails_the_run(self):
        bad = good_summary("2026-11-22")
        bad["days"][0]["rows_in"] = 104  # != rows_out + duplicates
        state, states, _ = self.run_dag(
            dt.datetime(2026, 11, 23, 0, 30, tzinfo=dt.timezone.utc), bad
        )
        self.assertEqual(state, "failed", states)
        self.assertEqual(states["batch_run"], "success")
        self.assertEqual(states["check_batch_summary"], "failed")

    def test_summary_of_another_day_fails(self):
        state, states, _ = self.run_dag(
            dt.datetime(2026, 11, 24, 0, 30, tzinfo=dt.timezone.utc), good_summary("2026-11-21")
        )
        self.assertEqual(state, "failed", states)
        self.assertEqual(states["check_batch_summary"], "failed")

    def test_output_that_is_not_json_fails(self):
        state, states, _ = self.run_dag(
            dt.datetime(2026, 11, 25, 0, 30, tzinfo=dt.timezone.utc), "batch run is planned\n"
        )
        self.assertEqual(state, "failed", states)
        self.assertEqual(states["check_batch_summary"], "failed")

    def test_airflow_variables_win_over_env(self):
        from airflow.models.variable import Variable

        os.environ["LAKESHOP_BIN"] = "/nonexistent/lakeshop"
        Variable.set("LAKESHOP_BIN", str(self.bin))
        Variable.set("LAKESHOP_CONFIG", "from-variable.toml")
        try:
            state, states, calls = self.run_dag(
                dt.datetime(2026, 11, 27, 0, 30, tzinfo=dt.timezone.utc),
                good_summary("2026-11-26"),
            )
        finally:
            Variable.delete("LAKESHOP_BIN")
            Variable.delete("LAKESHOP_CONFIG")
        self.assertEqual(state, "success", states)
        self.assertIn("--config from-variable.toml batch run --date 2026-11-26 --json", calls)

    def test_date_param_rebuilds_a_chosen_day(self):
        state, states, calls = self.run_dag(
            dt.datetime(2026, 11, 26, 0, 30, tzinfo=dt.timezone.utc),
            good_summary("2026-11-01"),
            run_conf={"date": "2026-11-01"},
        )
        self.assertEqual(state, "success", states)
        self.assertIn("--config /etc/lakeshop/shop.toml batch run --date 2026-11-01 --json", calls)


if __name__ == "__main__":
    unittest.main()
