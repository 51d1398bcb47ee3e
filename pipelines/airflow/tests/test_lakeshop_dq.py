"""The data-quality rules of lakeshop_dq.py: good summaries pass, each kind of bad one fails.

Standard library only, so plain python3 runs these without Airflow (the DAG checks then skip):
    python3 -m unittest discover -s pipelines/airflow/tests -t pipelines/airflow
"""

import copy
import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lakeshop_dq import (  # noqa: E402
    DataQualityError,
    check_summary,
    parse_summary,
    summary_problems,
)


def day(date="2026-11-21", **overrides):
    row = {
        "date": date,
        "rows_in": 10_100,
        "rows_out": 10_000,
        "duplicates": 100,
        "unknown_clients": 0,
        "unknown_products": 50,
        "unknown_sellers": 48,
        "seconds": 3.25,
    }
    row.update(overrides)
    return row


def summary(*days):
    return {"days": list(days) or [day()], "seconds": 4.5}


class GoodSummaries(unittest.TestCase):
    def test_one_day(self):
        totals = check_summary(summary(), ["2026-11-21"])
        self.assertEqual(totals["rows_out"], 10_000)
        self.assertEqual(totals["duplicates"], 100)

    def test_a_range_totals_every_day(self):
        s = summary(day("2026-11-20"), day("2026-11-21", rows_in=5, rows_out=5, duplicates=0,
                                           unknown_products=0, unknown_sellers=0))
        totals = check_summary(s, ["2026-11-20", "2026-11-21"])
        self.assertEqual(totals["rows_in"], 10_105)

    def test_integral_seconds_and_unknown_keys_are_fine(self):
        s = summary(day(seconds=3, pii="hash", unknown_regions=7))
        s["run_id"] = "x"
        s["seconds"] = 0
        self.assertEqual(summary_problems(s, ["2026-11-21"]), [])

    def test_an_empty_day_passes_when_allowed(self):
        empty = day(rows_in=0, rows_out=0, duplicates=0, unknown_products=0, unknown_sellers=0)
        self.assertEqual(summary_problems(summary(empty), ["2026-11-21"], min_rows=0), [])

    def test_expected_dates_optional(self):
        self.assertEqual(summary_problems(summary(day("2020-01-01"))), [])


class BadSummaries(unittest.TestCase):
    def assertFails(self, s, expect, expected_dates=("2026-11-21",), **kwargs):
        with self.assertRaises(DataQualityError) as ctx:
            check_summary(s, expected_dates, **kwargs)
        text = "\n".join(ctx.exception.problems)
        self.assertIn(expect, text)
        self.assertIn(expect, str(ctx.exception))
        return ctx.exception.problems

    def test_counts_do_not_add_up(self):
        self.assertFails(summary(day(rows_in=10_101)),
                         "rows_in (10101) != rows_out (10000) + duplicates (100)")

    def test_more_unknowns_than_rows(self):
        self.assertFails(summary(day(unknown_clients=10_001)),
                         "unknown_clients (10001) > rows_out (10000)")

    def test_too_many_unknowns(self):
        self.assertFails(summary(day(unknown_products=2_000)),
                         "unknown_products (2000) is more than 0.1 of rows_out (10000)")
        # ...unless the threshold allows it.
        ok = summary(day(unknown_products=2_000))
        self.assertEqual(summary_problems(ok, max_unknown_fraction=1.0), [])

    def test_no_rows_for_the_day(self):
        empty = day(rows_in=0, rows_out=0, duplicates=0, unknown_products=0, unknown_sellers=0)
        self.assertFails(summary(empty), "rows_out (0) < 1")

    def test_rows_read_but_none_written(self):
        s = summary(day(rows_in=5, rows_out=0, duplicates=5, unknown_products=0,
                        unknown_sellers=0))
        self.assertFails(s, "rows_in is 5 but nothing was written", min_rows=0)

    def test_wrong_day(self):
        problems = self.assertFails(summary(day("2026-11-20")),
                                    "days missing from the summary: 2026-11-21")
        self.assertIn("days not asked for: 2026-11-20", problems)

    def test_no_days(self):
        self.assertFails({"days": [], "seconds": 0.1}, "days missing from the summary: 2026-11-21")

    def test_day_twice(self):
        self.assertFails(summary(day(), day()), "days listed more than once: 2026-11-21")

    def test_wrong_types(self):
        for key, value in [("rows_in", "10100"), ("rows_out", -1), ("duplicates", None),
                           ("unknown_sellers", 1.5), ("unknown_clients", True)]:
            with self.subTest(key=key, value=value):
                self.assertFails(summary(day(**{key: value})),
                                 f"2026-11-21.{key}: not an integer >= 0")
        self.assertFails(summary(day(seconds="fast")), "2026-11-21.seconds: not a number >= 0")
        self.assertFails(summary(day(seconds=float("nan"))), "seconds: not a number >= 0")

    def test_missing_count(self):
        d = day()
        del d["unknown_products"]
        self.assertFails(summary(d), "unknown_products: not an integer >= 0: None")

    def test_bad_dates(self):
        for value in ["2026-11-31", "21.11.2026", "2026-11-21T00:00:00", 20261121, None]:
            with self.subTest(value=value):
                self.assertFails(summary(day(date=value)), "days[0].date: not a YYYY-MM-DD date")

    def test_not_a_summary(self):
        self.assertFails([], "summary is not a JSON object")
        self.assertFails({"seconds": 1}, "days: missing or not a list")
        self.assertFails({"days": [1]}, "days[0]: not an object")

    def test_every_problem_is_reported(self):
        s = summary(day(rows_in=1, unknown_clients=20_000), day("2026-11-22"))
        problems = summary_problems(s, ["2026-11-21"])
        self.assertEqual(len(problems), 3, problems)

    def test_input_is_not_changed(self):
        s = summary(day(rows_in=1))
        before = copy.deepcopy(s)
        summary_problems(s, ["2026-11-21"])
        self.assertEqual(s, before)


class Parsing(unittest.TestCase):
    def test_whole_document(self):
        s = summary()
        self.assertEqual(parse_summary(json.dumps(s, indent=2)), s)

    def test_last_json_line_after_other_output(self):
        s = summary()
        text = "some notice\n{not json\n" + json.dumps(s) + "\n\n"
        self.assertEqual(parse_summary(text), s)

    def test_not_json(self):
        for text in ["", "batch run is planned", None]:
            with self.subTest(text=text), self.assertRaises(DataQualityError):
                parse_summary(text)


if __name__ == "__main__":
    unittest.main()
