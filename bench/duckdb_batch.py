"""DuckDB baseline of the batch job's query step (`make bench`, crates/cli/benches/batch.rs).

Runs lakeshop's batch SQL (crates/batch/src/sql.rs), ported to DuckDB, over the same Parquet
files: the active files of the stage's Delta tables, listed from the Delta log by the bench
and passed in a JSON file:

    {"purchases": [...], "clients": [...], "sellers": [...], "products": [...],
     "days": ["2026-10-01", ...], "timezone": "UTC"}

For each day, in lakeshop's order (crates/batch/src/job.rs `build`): the day's arrivals (kept
as a table), the re-sent ids' arrivals numbered in arrival order (kept), conflicting
duplicates, the first arrival of each id (kept), ids counted on another day (kept), the joined
sales rows (kept, and fetched as Arrow: the rows a load would send), then the six aggregates
(fetched as Arrow; the per-product rows kept for the top products).

Where the SQL differs from lakeshop's (DataFusion) text:
- `stage.purchases` is `read_parquet(files, hive_partitioning)`: Delta keeps the partition
  column `event_date` in the file paths, not in the files;
- the business hour is `date_trunc('hour', "timestamp")` under `SET TimeZone` in the sales
  query; lakeshop adds it in Rust after the query (the start of the local hour);
- intermediate results are TEMP tables; lakeshop collects them and registers them in memory.

Prints one JSON line: seconds (queries only, after imports), and per day the counts and revenue
for the bench to compare with lakeshop's.
"""

import datetime
import json
import sys
import time

import duckdb

DAY_PURCHASES = """
SELECT purchase_id, client_id, product_id, seller_id, quantity, price, "timestamp", event_date,
       ingested_at, source_topic, source_partition, source_offset
FROM purchases
WHERE event_date = $1
"""

RESENT_ARRIVALS = """
SELECT p.*,
       row_number() OVER (
           PARTITION BY p.purchase_id
           ORDER BY p.ingested_at, p.source_topic, p.source_partition, p.source_offset
       ) AS arrival
FROM day_purchases p
WHERE p.purchase_id IN (
    SELECT purchase_id FROM day_purchases GROUP BY purchase_id HAVING count(*) > 1
)
"""

ARRIVAL_COLUMNS = """purchase_id, client_id, product_id, seller_id, quantity, price,
       "timestamp", event_date, ingested_at, source_topic, source_partition, source_offset"""

DAY_FIRSTS = f"""
SELECT {ARRIVAL_COLUMNS}
FROM day_purchases p
WHERE NOT EXISTS (SELECT 1 FROM resent_arrivals r WHERE r.purchase_id = p.purchase_id)
UNION ALL
SELECT {ARRIVAL_COLUMNS}
FROM resent_arrivals
WHERE arrival = 1
"""

CONFLICTS = """
SELECT count(*) AS conflicting
FROM resent_arrivals a
JOIN resent_arrivals f ON a.purchase_id = f.purchase_id AND f.arrival = 1
WHERE a.arrival > 1
  AND NOT (a.client_id = f.client_id
       AND a.product_id = f.product_id
       AND (a.seller_id IS NOT DISTINCT FROM f.seller_id)
       AND a.quantity = f.quantity
       AND a.price = f.price
       AND a."timestamp" = f."timestamp")
"""

MULTI_DAY_ARRIVALS = """
SELECT purchase_id, event_date, ingested_at, source_topic, source_partition, source_offset
FROM purchases
WHERE purchase_id IN (
    SELECT o.purchase_id
    FROM purchases o
    WHERE o.purchase_id IN (
        SELECT purchase_id FROM purchases WHERE event_date BETWEEN $1 AND $2
    )
    GROUP BY o.purchase_id
    HAVING min(o.event_date) <> max(o.event_date)
)
"""

CLAIMED_ELSEWHERE = """
SELECT DISTINCT f.purchase_id
FROM day_firsts f
JOIN multi_day_arrivals o ON o.purchase_id = f.purchase_id
WHERE o.event_date <> $1
  AND (o.ingested_at < f.ingested_at
       OR (o.ingested_at = f.ingested_at
           AND (o.source_topic < f.source_topic
                OR (o.source_topic = f.source_topic
                    AND (o.source_partition < f.source_partition
                         OR (o.source_partition = f.source_partition
                             AND o.source_offset < f.source_offset))))))
"""

SALES = """
SELECT p.purchase_id,
       p.client_id,
       p.product_id,
       COALESCE(p.seller_id, 'unknown') AS seller_id,
       p.quantity,
       p.price,
       CAST(CAST(p.quantity AS DECIMAL(38, 0)) * p.price AS DECIMAL(38, 2)) AS amount,
       p."timestamp",
       p.event_date,
       c.first_name,
       c.last_name,
       c.email AS email,
       c.address AS address,
       pr.name AS product_name,
       pr.category AS category,
       pr.price AS list_price,
       s.name AS seller_name,
       s.region AS seller_region,
       c.client_id IS NULL AS unknown_client,
       pr.product_id IS NULL AS unknown_product,
       s.seller_id IS NULL AS unknown_seller,
       date_trunc('hour', p."timestamp") AS hour
FROM day_firsts p
LEFT JOIN clients c ON c.client_id = p.client_id
LEFT JOIN products pr ON pr.product_id = p.product_id
LEFT JOIN sellers s ON s.seller_id = p.seller_id
WHERE NOT EXISTS (SELECT 1 FROM claimed x WHERE x.purchase_id = p.purchase_id)
"""

MEASURES = (
    "CAST(sum(amount) AS DECIMAL(38, 2)) AS revenue, "
    "sum(CAST(1 AS BIGINT)) AS purchases, "
    "sum(CAST(quantity AS BIGINT)) AS items, "
    "count(DISTINCT client_id) AS distinct_clients"
)

DAILY_TOTAL = (
    f"SELECT event_date, {MEASURES}, "
    "sum(CASE WHEN unknown_client THEN 1 ELSE 0 END) AS unknown_clients, "
    "sum(CASE WHEN unknown_product THEN 1 ELSE 0 END) AS unknown_products, "
    "sum(CASE WHEN unknown_seller THEN 1 ELSE 0 END) AS unknown_sellers "
    "FROM sales GROUP BY event_date"
)


def daily_by(key, name, extra=""):
    return (
        f"SELECT event_date, group_key AS {name}, {MEASURES}{extra} "
        f"FROM (SELECT *, {key} AS group_key FROM sales) "
        "GROUP BY event_date, group_key "
        "ORDER BY group_key"
    )


PRODUCT_ATTRIBUTES = ", max(product_name) AS product_name, max(category) AS category"

SELLER_KEY = "CASE WHEN unknown_seller THEN 'unknown' ELSE seller_id END"
CATEGORY_KEY = "CASE WHEN unknown_product THEN 'unknown' ELSE COALESCE(category, 'unknown') END"
PRODUCT_KEY = "CASE WHEN unknown_product THEN 'unknown' ELSE product_id END"

HOURLY = (
    f"SELECT event_date, hour, {MEASURES} FROM sales GROUP BY event_date, hour ORDER BY hour"
)

TOP_PRODUCTS = (
    "SELECT event_date, "
    "CAST(row_number() OVER (ORDER BY revenue DESC, product_id) AS BIGINT) AS rank, "
    "product_id, product_name, category, revenue, purchases, items, distinct_clients "
    "FROM (SELECT * FROM daily_product "
    "WHERE product_id <> 'unknown' "
    "ORDER BY revenue DESC, product_id "
    "LIMIT 100) "
    "ORDER BY rank"
)

AGGREGATES = [
    DAILY_TOTAL,
    daily_by(SELLER_KEY, "seller_id"),
    daily_by(CATEGORY_KEY, "category"),
]
DAILY_PRODUCT = daily_by(PRODUCT_KEY, "product_id", PRODUCT_ATTRIBUTES)


def files_sql(files):
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{spec['timezone']}'")
    con.execute(
        "CREATE VIEW purchases AS SELECT * FROM read_parquet("
        f"{files_sql(spec['purchases'])}, hive_partitioning = true, "
        "hive_types = {'event_date': DATE})"
    )
    for table in ("clients", "sellers", "products"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files_sql(spec[table])})"
        )
    # As lakeshop's run over these days: one window for all of them.
    first = datetime.date.fromisoformat(spec["days"][0])
    last = datetime.date.fromisoformat(spec["days"][-1])
    con.execute(f"CREATE TEMP TABLE multi_day_arrivals AS {MULTI_DAY_ARRIVALS}", [first, last])
    days = []
    for day in spec["days"]:
        t = time.perf_counter()
        date = datetime.date.fromisoformat(day)
        con.execute(f"CREATE OR REPLACE TEMP TABLE day_purchases AS {DAY_PURCHASES}", [date])
        rows_in = con.execute("SELECT count(*) FROM day_purchases").fetchone()[0]
        con.execute(f"CREATE OR REPLACE TEMP TABLE resent_arrivals AS {RESENT_ARRIVALS}")
        conflicting = con.execute(CONFLICTS).fetchone()[0]
        con.execute(f"CREATE OR REPLACE TEMP TABLE day_firsts AS {DAY_FIRSTS}")
        firsts = con.execute("SELECT count(*) FROM day_firsts").fetchone()[0]
        con.execute("DROP TABLE day_purchases")
        con.execute("DROP TABLE resent_arrivals")
        con.execute(f"CREATE OR REPLACE TEMP TABLE claimed AS {CLAIMED_ELSEWHERE}", [date])
        counted_on_other_day = con.execute("SELECT count(*) FROM claimed").fetchone()[0]
        con.execute(f"CREATE OR REPLACE TEMP TABLE sales AS {SALES}")
        con.execute("DROP TABLE day_firsts")
        con.execute("DROP TABLE claimed")
        sales = con.execute("SELECT * FROM sales").fetch_arrow_table()
        results = [con.execute(q).fetch_arrow_table() for q in AGGREGATES]
        con.execute(f"CREATE OR REPLACE TEMP TABLE daily_product AS {DAILY_PRODUCT}")
        results.append(con.execute("SELECT * FROM daily_product").fetch_arrow_table())
        results.append(con.execute(HOURLY).fetch_arrow_table())
        results.append(con.execute(TOP_PRODUCTS).fetch_arrow_table())
        total = results[0].to_pylist()
        total = total[0] if total else {}
        days.append(
            {
                "date": day,
                "rows_in": rows_in,
                "firsts": firsts,
                "rows_out": sales.num_rows,
                "conflicting_duplicates": conflicting,
                "counted_on_other_day": counted_on_other_day,
                "unknown_clients": int(total.get("unknown_clients", 0)),
                "unknown_products": int(total.get("unknown_products", 0)),
                "unknown_sellers": int(total.get("unknown_sellers", 0)),
                "revenue": str(total.get("revenue", "0.00")),
                "aggregate_rows": [r.num_rows for r in results],
                "seconds": time.perf_counter() - t,
            }
        )
        del sales, results
    print(
        json.dumps(
            {
                "duckdb": duckdb.__version__,
                "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
                "seconds": time.perf_counter() - started,
                "days": days,
            }
        )
    )


if __name__ == "__main__":
    main()
