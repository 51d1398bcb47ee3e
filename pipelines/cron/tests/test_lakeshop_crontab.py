"""pipelines/cron/lakeshop.crontab: well-formed, and every job line does what it says when bash
runs it the way cron would (a stand-in `lakeshop` binary, logs and locks in a temp folder).

Standard library only: python3 -m unittest discover -s pipelines/cron/tests
"""

import datetime as dt
import fcntl
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[3]
CRONTAB = ROOT / "pipelines" / "cron" / "lakeshop.crontab"

FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def parse(text):
    """(env, jobs): cron's NAME=value lines and (schedule fields, command) of the job lines."""
    env, jobs = {}, []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if m and not line.split()[0].count("*"):
            env[m.group(1)] = m.group(2)
            continue
        parts = line.split(None, 5)
        jobs.append((parts[:5], parts[5]))
    return env, jobs


def cron_command(command):
    """The shell command cron runs: `\\%` becomes `%` (a bare % would start stdin)."""
    assert re.search(r"(?<!\\)%", command) is None, f"unescaped % in: {command}"
    return command.replace("\\%", "%")


FAKE_LAKESHOP = """#!/bin/sh
printf '%s | %s\\n' "$(pwd)" "$*" >> {calls}
echo "fake lakeshop log line" >&2
case "$*" in
  *"batch run"*) cat {summary} ;;
esac
exit "${{FAKE_EXIT:-0}}"
"""


def zone_at_hour(hour):
    """An Etc/GMT zone whose local hour is `hour` right now."""
    utc_hour = dt.datetime.now(dt.timezone.utc).hour
    offset = (hour - utc_hour) % 24  # hours east of UTC
    if offset > 12:
        offset -= 24
    # Etc/GMT signs are POSIX-style: Etc/GMT-3 is UTC+3.
    return "Etc/GMT" + ("" if offset == 0 else f"{-offset:+d}")


class Crontab(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env, cls.jobs = parse(CRONTAB.read_text())

    def test_schedule_fields(self):
        self.assertEqual(len(self.jobs), 7)
        for fields, command in self.jobs:
            with self.subTest(command=command[:60]):
                for field, (low, high) in zip(fields, RANGES):
                    self.assertRegex(field, FIELD)
                    for n in re.findall(r"\d+", field.split("/")[0]):
                        self.assertTrue(low <= int(n) <= high, field)

    def test_every_job_is_locked_and_logged(self):
        locks = set()
        for _, command in self.jobs:
            with self.subTest(command=command[:60]):
                self.assertIn("flock ", command)
                lock = re.search(r'flock -[nw][ 0-9]* "\$LAKESHOP_LOCK_DIR/([^"]+)"', command)
                self.assertIsNotNone(lock, command)
                locks.add(lock.group(1))
                self.assertRegex(command, r'>>"\$LAKESHOP_LOG_DIR/[a-z-]+\.log" 2>&1$')
        self.assertEqual(len(locks), 7, "one lock per job")

    def test_time_zone_and_environment(self):
        self.assertEqual(self.env["CRON_TZ"], self.env["LAKESHOP_TIMEZONE"])
        self.assertEqual(self.env["SHELL"], "/bin/bash")
        for name in ("LAKESHOP_HOME", "LAKESHOP_BIN", "LAKESHOP_CONFIG", "LAKESHOP_LOG_DIR",
                     "LAKESHOP_LOCK_DIR"):
            self.assertIn(name, self.env)
        extracts = sorted(re.search(r" extract (\w+)", c).group(1)
                          for _, c in self.jobs if " extract " in c)
        self.assertEqual(extracts, ["clients", "interactions", "products", "purchases", "sellers"])
        daily = [f for f, c in self.jobs if "batch run" in c]
        self.assertEqual(daily, [["30", "*", "*", "*", "*"]])
        weekly = [f for f, c in self.jobs if "stage vacuum" in c]
        self.assertEqual(weekly, [["15", "3", "*", "*", "0"]])


class JobsRun(unittest.TestCase):
    """Each job line run by bash with cron's environment pointed at temp folders."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        tmp = Path(self.tmp.name)
        self.calls = tmp / "calls"
        self.summary = tmp / "summary.json"
        self.logs = tmp / "logs"
        self.locks = tmp / "locks"
        self.logs.mkdir()
        self.locks.mkdir()
        self.calls.touch()
        fake = tmp / "lakeshop"
        fake.write_text(FAKE_LAKESHOP.format(calls=shlex.quote(str(self.calls)),
                                             summary=shlex.quote(str(self.summary))))
        fake.chmod(0o755)
        env, self.jobs = parse(CRONTAB.read_text())
        env.update(
            LAKESHOP_HOME=str(ROOT),
            LAKESHOP_BIN=str(fake),
            LAKESHOP_CONFIG="/etc/lakeshop/shop.toml",
            LAKESHOP_LOG_DIR=str(self.logs),
            LAKESHOP_LOCK_DIR=str(self.locks),
            PATH=os.environ.get("PATH", env["PATH"]),
            HOME=str(tmp),
        )
        self.env = env

    def tearDown(self):
        self.tmp.cleanup()

    def run_job(self, needle, **env):
        (command,) = [c for _, c in self.jobs if needle in c]
        return subprocess.run(
            [self.env["SHELL"], "-c", cron_command(command)],
            env={**self.env, **env},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_extracts(self):
        for source, extra in [("purchases", " --until-end"), ("interactions", " --until-end"),
                              ("clients", ""), ("sellers", ""), ("products", "")]:
            with self.subTest(source=source):
                self.calls.write_text("")
                out = self.run_job(f" extract {source}")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout + out.stderr, "", "cron would mail this")
                self.assertEqual(
                    self.calls.read_text(),
                    f"{ROOT} | --config /etc/lakeshop/shop.toml extract {source}{extra}\n",
                )
                log = (self.logs / f"extract-{source}.log").read_text()
                self.assertIn("fake lakeshop log line", log)

    def test_weekly_maintenance_compacts_then_vacuums(self):
        out = self.run_job("stage vacuum")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout + out.stderr, "", "cron would mail this")
        self.assertEqual(
            self.calls.read_text(),
            f"{ROOT} | --config /etc/lakeshop/shop.toml stage optimize\n"
            f"{ROOT} | --config /etc/lakeshop/shop.toml stage vacuum\n",
        )
        # A failed compaction skips the vacuum.
        self.calls.write_text("")
        out = self.run_job("stage vacuum", FAKE_EXIT="1")
        self.assertNotEqual(out.returncode, 0)
        self.assertEqual(
            self.calls.read_text(),
            f"{ROOT} | --config /etc/lakeshop/shop.toml stage optimize\n",
        )

    def test_an_extract_still_running_is_not_started_again(self):
        with open(self.locks / "lakeshop-extract-purchases.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            out = self.run_job(" extract purchases")
        self.assertNotEqual(out.returncode, 0)
        self.assertEqual(self.calls.read_text(), "")

    def daily(self, summary, hour=0, **env):
        now = dt.datetime.now(dt.timezone.utc)
        if now.minute == 59 and now.second > 50:  # stay inside one hour
            time.sleep(11)
        zone = zone_at_hour(hour)
        noon_yesterday = dt.datetime.now(ZoneInfo(zone)) - dt.timedelta(days=1)
        day = noon_yesterday.date().isoformat()
        self.summary.write_text(json.dumps(summary(day)) if callable(summary) else summary)
        out = self.run_job("batch run", LAKESHOP_TIMEZONE=zone, **env)
        return day, out

    @staticmethod
    def good(day):
        return {"days": [{"date": day, "rows_in": 11, "rows_out": 10, "duplicates": 1,
                          "unknown_clients": 0, "unknown_products": 1, "unknown_sellers": 0,
                          "seconds": 0.2}], "seconds": 0.3}

    def test_daily_batch_after_midnight(self):
        day, out = self.daily(self.good)
        self.assertEqual(out.returncode, 0, (self.logs / "batch.log").read_text())
        self.assertEqual(
            self.calls.read_text(),
            f"{ROOT} | --config /etc/lakeshop/shop.toml batch run --date {day} --json\n",
        )
        self.assertIn(f'"date": "{day}"', (self.logs / "batch-summaries.log").read_text())
        log = (self.logs / "batch.log").read_text()
        self.assertIn('"rows_out": 10', log)  # the totals lakeshop_dq.py printed
        self.assertIn("fake lakeshop log line", log)

    def test_daily_batch_waits_for_midnight(self):
        _, out = self.daily(self.good, hour=13)
        self.assertNotEqual(out.returncode, 0)  # the hour guard, silently
        self.assertEqual(out.stdout + out.stderr, "")
        self.assertEqual(self.calls.read_text(), "")

    def test_daily_batch_fails_on_a_bad_summary(self):
        def bad(day):
            s = self.good(day)
            s["days"][0]["duplicates"] = 2
            return s

        _, out = self.daily(bad)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("rows_in (11) != rows_out (10) + duplicates (2)",
                      (self.logs / "batch.log").read_text())

    def test_daily_batch_fails_without_a_summary(self):
        _, out = self.daily("")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("not a JSON summary", (self.logs / "batch.log").read_text())

    def test_daily_batch_fails_when_lakeshop_fails(self):
        _, out = self.daily(self.good, FAKE_EXIT="1")  # a summary that passes, exit 1 all the same
        self.assertNotEqual(out.returncode, 0)


if __name__ == "__main__":
    unittest.main()
