"""Baseline A of `make bench` (crates/cli/benches/stream.rs): a minimal Python consumer in the
shape of the usual Kafka-to-ClickHouse scripts. confluent-kafka reads every partition of the
topic from the beginning until each reports its end; each record is `json.loads`-ed and
becomes one row (purchase_id, seller_id, price, quantity, timestamp) of a table this script
creates; rows go to ClickHouse through clickhouse-driver (native protocol) in batches of
10,000. No validation, no windows, no deduplication: a floor for what Python spends per
record, to set lakeshop's CPU next to.

Usage: stream_consumer.py BROKERS TOPIC PARTITIONS CH_HOST CH_PORT CH_USER CH_DATABASE TABLE
(the password from CLICKHOUSE_PASSWORD). Prints one JSON line: records, rows, skipped,
inserts, seconds, and the process's CPU seconds (all threads) in all and when the first
record arrived (start-up: imports, connections).
"""

import datetime
import json
import os
import sys
import time
import uuid

from clickhouse_driver import Client
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

BATCH = 10_000


def main() -> None:
    brokers, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    host, port, user, database, table = sys.argv[4:9]
    ch = Client(
        host=host,
        port=int(port),
        user=user,
        password=os.environ.get("CLICKHOUSE_PASSWORD", ""),
        database=database,
    )
    ch.execute(
        f"CREATE TABLE IF NOT EXISTS {table} (purchase_id String, seller_id String, "
        "price Float64, quantity UInt32, timestamp DateTime('UTC')) "
        "ENGINE = MergeTree() ORDER BY (seller_id, timestamp)"
    )
    insert = f"INSERT INTO {table} (purchase_id, seller_id, price, quantity, timestamp) VALUES"

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"bench-python-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.message.max.bytes": 8388608,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])

    started = time.perf_counter()
    records = rows_total = skipped = inserts = 0
    cpu_before_first = None
    rows = []
    at_end = set()
    while len(at_end) < partitions:
        for msg in consumer.consume(num_messages=BATCH, timeout=0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise RuntimeError(str(err))
            at_end.discard(msg.partition())
            if cpu_before_first is None:
                cpu_before_first = time.process_time()
            records += 1
            try:
                p = json.loads(msg.value())
                rows.append(
                    (
                        p["purchase_id"],
                        p.get("seller_id") or "",
                        float(p["price"]),
                        int(p["quantity"]),
                        datetime.datetime.fromisoformat(p["timestamp"]),
                    )
                )
            except (ValueError, KeyError, TypeError, OverflowError):
                skipped += 1
                continue
            if len(rows) >= BATCH:
                ch.execute(insert, rows)
                rows_total += len(rows)
                inserts += 1
                rows = []
    if rows:
        ch.execute(insert, rows)
        rows_total += len(rows)
        inserts += 1
    consumer.close()
    print(
        json.dumps(
            {
                "records": records,
                "rows": rows_total,
                "skipped": skipped,
                "inserts": inserts,
                "seconds": time.perf_counter() - started,
                "cpu_seconds_before_first_record": cpu_before_first,
                "cpu_seconds": time.process_time(),
            }
        )
    )


if __name__ == "__main__":
    main()
