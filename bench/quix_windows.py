"""Baseline B of `make bench` (crates/cli/benches/stream.rs): Quix Streams computing what
lakeshop's loader computes for one breakdown: tumbling one-minute event-time windows of
revenue (price × quantity) per shop (seller_id), at-least-once, from the beginning of the
purchases topic.

The shape is Quix's own: the records are keyed by purchase id, so `group_by("seller_id")`
re-keys them through a repartition topic; the windows live in RocksDB state with a changelog
topic (Quix's defaults); the event time is the payload's `timestamp`; the grace period is
lakeshop's default allowed lateness (5 minutes). Windows are emitted on every update
(`.current()`), and the script counts the updates: it stops once every record went through
a window (N on the command line), or when nothing arrived for IDLE seconds. The bench topic
holds valid purchases only (Quix's JSON deserializer fails on a record that is not JSON).

The local broker (tansu) answers DescribeConfigs with no configs, while Quix 3.x reads every
topic's config from the broker (not from `app.topic(config=...)`, which only applies when Quix
creates the topic) and copies the input topic's `retention.ms` into the repartition and
changelog topics it creates. So the input topic is declared with a 7-day `retention.ms`, and
the topic admin below reports that value for a topic the broker gives none for.

Usage: quix_windows.py BROKERS TOPIC PARTITIONS N STATE_DIR [IDLE_SECONDS]
Prints one JSON line: records (through a window), windows (distinct seller × minute), seconds.
"""

import datetime
import json
import sys
import time
import uuid
from typing import Any, Optional

from quixstreams import Application
from quixstreams.models import TopicConfig
from quixstreams.models.topics import TopicAdmin, TopicManager

MINUTE_MS = 60_000
GRACE_MS = 5 * MINUTE_MS
RETENTION_MS = "604800000"


class NoConfigBrokerAdmin(TopicAdmin):
    """A topic admin for a broker that returns no topic configs: a topic without
    `retention.ms` gets the retention it was declared with here (7 days)."""

    def inspect_topics(self, topic_names, timeout=30):
        configs = super().inspect_topics(topic_names, timeout=timeout)
        for config in configs.values():
            if config is not None:
                config.extra_config.setdefault("retention.ms", RETENTION_MS)
        return configs


def event_ms(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    """The payload's event time; the Kafka timestamp for a record without one."""
    if isinstance(value, dict):
        ts = value.get("timestamp")
        if isinstance(ts, str):
            try:
                return int(datetime.datetime.fromisoformat(ts).timestamp() * 1000)
            except ValueError:
                pass
    return int(timestamp)


def main() -> None:
    brokers, topic_name, partitions, n = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    state_dir = sys.argv[5]
    idle = float(sys.argv[6]) if len(sys.argv) > 6 else 20.0

    group = f"bench-quix-{uuid.uuid4().hex[:12]}"
    app = Application(
        broker_address=brokers,
        consumer_group=group,
        topic_manager=TopicManager(
            topic_admin=NoConfigBrokerAdmin(broker_address=brokers),
            consumer_group=group,
        ),
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    topic = app.topic(
        topic_name,
        value_deserializer="json",
        config=TopicConfig(
            num_partitions=partitions,
            replication_factor=1,
            extra_config={"retention.ms": RETENTION_MS},
        ),
        timestamp_extractor=event_ms,
    )

    def purchase(value: Any) -> Optional[dict]:
        try:
            return {
                "seller_id": value["seller_id"],
                "revenue": float(value["price"]) * int(value["quantity"]),
            }
        except (KeyError, TypeError, ValueError):
            return None

    sdf = app.dataframe(topic)
    sdf = sdf.apply(purchase).filter(lambda v: v is not None)
    sdf = sdf.group_by("seller_id")
    sdf = sdf.apply(lambda v: v["revenue"])
    sdf = sdf.tumbling_window(MINUTE_MS, grace_ms=GRACE_MS).sum().current()

    seen = {"records": 0}
    windows: set = set()

    def count(value: dict, key: Any, timestamp: int, headers: Any) -> None:
        seen["records"] += 1
        windows.add((key, value["start"]))
        if seen["records"] >= n:
            app.stop()

    sdf.update(count, metadata=True)

    started = time.perf_counter()
    app.run(timeout=idle)
    print(
        json.dumps(
            {
                "records": seen["records"],
                "windows": len(windows),
                "seconds": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
