"""Data-quality check of a `lakeshop batch run --json` summary.

Pure Python (standard library only) so it is unit-tested without Airflow; the DAG in
lakeshop_daily.py calls `check_summary` on the summary its batch task pushed through XCom, and
the cron schedule pipes the summary into `python3 lakeshop_dq.py --date D` (see `main`).

The summary shape this module reads; keep it in sync with the batch job's run summary that
`lakeshop batch run --json` prints (crates/batch, serialised in crates/cli/src/analytics.rs):

    {
      "days": [
        {"date": "2026-11-21",          # business day, YYYY-MM-DD
         "rows_in": 1234,               # purchase rows read from stage.purchases for the day
         "rows_out": 1220,              # rows written to stage.sales and ClickHouse, one per id
         "duplicates": 14,              # re-sent purchases dropped (the same purchase_id again)
         "unknown_clients": 0,          # rows_out rows whose client is not in stage.clients
         "unknown_products": 6,         # ... whose product is not in stage.products
         "unknown_sellers": 3,          # ... whose seller is missing or not in stage.sellers
         "seconds": 1.8}
      ],
      "seconds": 2.1
    }

Keys this module does not know are ignored, so the summary may grow.

Rules, per day (every broken rule is reported, not only the first):
  1. the counts are integers >= 0 and `seconds` a number >= 0;
  2. the summary covers exactly the expected business days, each once;
  3. rows_in = rows_out + duplicates (each purchase is either written or a dropped re-send);
  4. each unknown count <= rows_out (unknowns are kept, so they are a subset of what was written);
  5. rows_out >= min_rows (default 1): a shop with no purchase at all on a day almost always
     means an extract that did not run or read the wrong place; set it to 0 where quiet days
     are normal. A day with rows_in > 0 must have rows_out > 0 whatever min_rows is;
  6. each unknown count <= max_unknown_fraction x rows_out (default 0.1): a dimension extract
     that failed silently turns most purchases into unknowns. 1.0 turns the rule off.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from typing import Any, Iterable, Mapping

COUNT_KEYS = (
    "rows_in",
    "rows_out",
    "duplicates",
    "unknown_clients",
    "unknown_products",
    "unknown_sellers",
)
UNKNOWN_KEYS = ("unknown_clients", "unknown_products", "unknown_sellers")

DEFAULT_MIN_ROWS = 1
DEFAULT_MAX_UNKNOWN_FRACTION = 0.1


class DataQualityError(Exception):
    """The batch summary broke at least one rule; `problems` lists each broken rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"batch summary failed {len(problems)} data-quality check(s):\n  "
            + "\n  ".join(problems)
        )


def parse_summary(text: str) -> Any:
    """The summary object from `lakeshop batch run --json` stdout.

    The whole text is the JSON document; failing that, the last line that is a JSON object (in
    case something printed before it). Raises DataQualityError when neither parses.
    """
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        pass
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    head = (text or "")[:200]
    raise DataQualityError([f"batch output is not a JSON summary: {head!r}"])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def summary_problems(
    summary: Any,
    expected_dates: Iterable[str] | None = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    max_unknown_fraction: float = DEFAULT_MAX_UNKNOWN_FRACTION,
) -> list[str]:
    """Every rule the summary breaks, as readable lines; an empty list means it passes.

    `expected_dates` (YYYY-MM-DD strings) are the business days the run was asked for; None
    skips that rule.
    """
    if not isinstance(summary, Mapping):
        return [f"summary is not a JSON object: {type(summary).__name__}"]
    problems: list[str] = []
    if "seconds" in summary and not _is_seconds(summary["seconds"]):
        problems.append(f"seconds: not a number >= 0: {summary['seconds']!r}")
    days = summary.get("days")
    if not isinstance(days, list):
        problems.append("days: missing or not a list")
        return problems

    seen: list[str] = []
    for i, day in enumerate(days):
        where = f"days[{i}]"
        if not isinstance(day, Mapping):
            problems.append(f"{where}: not an object")
            continue
        date = day.get("date")
        if _is_date(date):
            where = str(date)
            seen.append(date)
        else:
            problems.append(f"{where}.date: not a YYYY-MM-DD date: {date!r}")

        bad = [k for k in COUNT_KEYS if not _is_count(day.get(k))]
        for key in bad:
            problems.append(f"{where}.{key}: not an integer >= 0: {day.get(key)!r}")
        if "seconds" in day and not _is_seconds(day["seconds"]):
            problems.append(f"{where}.seconds: not a number >= 0: {day['seconds']!r}")
        if bad:
            continue  # the arithmetic below needs every count

        rows_in, rows_out, dups = day["rows_in"], day["rows_out"], day["duplicates"]
        if rows_in != rows_out + dups:
            problems.append(
                f"{where}: rows_in ({rows_in}) != rows_out ({rows_out}) + duplicates ({dups})"
            )
        for key in UNKNOWN_KEYS:
            if day[key] > rows_out:
                problems.append(f"{where}: {key} ({day[key]}) > rows_out ({rows_out})")
            elif rows_out and day[key] > max_unknown_fraction * rows_out:
                problems.append(
                    f"{where}: {key} ({day[key]}) is more than {max_unknown_fraction:g} of "
                    f"rows_out ({rows_out}): is a dimension extract stale?"
                )
        if rows_in > 0 and rows_out == 0:
            problems.append(f"{where}: rows_in is {rows_in} but nothing was written")
        elif rows_out < min_rows:
            problems.append(
                f"{where}: rows_out ({rows_out}) < {min_rows}: no purchases for a business day "
                "(did the purchases extract run?)"
            )

    duplicated = sorted({d for d in seen if seen.count(d) > 1})
    if duplicated:
        problems.append(f"days listed more than once: {', '.join(duplicated)}")
    if expected_dates is not None:
        expected = set(expected_dates)
        missing = sorted(expected - set(seen))
        extra = sorted(set(seen) - expected)
        if missing:
            problems.append(f"days missing from the summary: {', '.join(missing)}")
        if extra:
            problems.append(f"days not asked for: {', '.join(extra)}")
    return problems


def check_summary(
    summary: Any,
    expected_dates: Iterable[str] | None = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    max_unknown_fraction: float = DEFAULT_MAX_UNKNOWN_FRACTION,
) -> dict[str, int]:
    """Raise DataQualityError when the summary breaks a rule; else return totals over its days."""
    problems = summary_problems(
        summary,
        expected_dates,
        min_rows=min_rows,
        max_unknown_fraction=max_unknown_fraction,
    )
    if problems:
        raise DataQualityError(problems)
    return {key: sum(day[key] for day in summary["days"]) for key in COUNT_KEYS}


def main(argv: list[str] | None = None) -> int:
    """`python3 lakeshop_dq.py [--date D]... < summary.json`: the same check for cron.

    Exit 0 and the totals as JSON on stdout when the summary passes; exit 1 and every broken
    rule on stderr when it does not.
    """
    parser = argparse.ArgumentParser(
        description="Check a `lakeshop batch run --json` summary read from stdin."
    )
    parser.add_argument("--date", action="append", help="a business day the run was asked for")
    parser.add_argument("--min-rows", type=int, default=DEFAULT_MIN_ROWS)
    parser.add_argument(
        "--max-unknown-fraction", type=float, default=DEFAULT_MAX_UNKNOWN_FRACTION
    )
    args = parser.parse_args(argv)
    try:
        totals = check_summary(
            parse_summary(sys.stdin.read()),
            args.date,
            min_rows=args.min_rows,
            max_unknown_fraction=args.max_unknown_fraction,
        )
    except DataQualityError as err:
        print(f"lakeshop_dq: {err}", file=sys.stderr)
        return 1
    print(json.dumps(totals, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
