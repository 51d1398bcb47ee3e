"""Baseline of `make bench`: ConnectorX reads the clients table into Arrow, pyarrow writes it
as one Parquet file. Usage: connectorx_clients.py POSTGRES_URL OUT_DIR; prints JSON timings."""
import json
import sys
import time

import connectorx as cx
import pyarrow.parquet as pq

QUERY = (
    "SELECT client_id::text AS client_id, first_name, last_name, email, address, "
    "registration_date, updated_at, deleted_at FROM clients"
)


def main() -> None:
    url, out_dir = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    table = cx.read_sql(url, QUERY, return_type="arrow")
    read = time.perf_counter() - started
    pq.write_table(table, f"{out_dir}/clients.parquet")
    total = time.perf_counter() - started
    print(json.dumps({"rows": table.num_rows, "read_seconds": read, "seconds": total}))


if __name__ == "__main__":
    main()
