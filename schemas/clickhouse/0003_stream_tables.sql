-- lakeshop schema version 1: ClickHouse tables of the streaming loader (`lakeshop stream run`).
-- Additive; separate from the batch tables, which `lakeshop reconcile` compares them with.
-- Exactly once without insert deduplication (a non-replicated 18.16 table has none): every
-- row is a pure function of a prefix of one Kafka partition, so a row written again after a
-- crash is the same row. Window rows carry the window's full state for one partition and a
-- version (the offset after the last record folded in): ReplacingMergeTree(version) keeps the
-- latest, and the views read it with argMax (FINAL is single-threaded on 18.16). Readers use
-- the views, never the tables.
-- Runs on ClickHouse 18.16 and current releases. Statements end with ';' at the end of a line.

-- One row per counted purchase (the first arrival of its purchase_id), with the dimension
-- keys it was counted under and the window starts it fell in (business time zone). The
-- loader restores its purchase-id memory from here after a restart, and distinct clients
-- are counted here (uniqExact over client ids: a set union across partitions and loaders,
-- never a sum of counts, and blind to a row written twice by a replay).
CREATE TABLE IF NOT EXISTS stream_purchases
(
    purchase_id  String,
    source       String,
    part         UInt16,
    offset       UInt64,
    timestamp    DateTime('UTC'),
    event_date   Date,
    minute_start DateTime('UTC'),
    hour_start   DateTime('UTC'),
    day_start    DateTime('UTC'),
    client_id    String,
    seller_key   String,
    category     String,
    product_key  String,
    quantity     UInt32,
    amount       Decimal(38, 2),
    content_hash UInt64
)
ENGINE = ReplacingMergeTree()
PARTITION BY event_date
ORDER BY (purchase_id, source, part, offset);

-- Window state of one Kafka partition: granularity minute | hour | day (business time zone),
-- dim total | seller | category | product, key '' for total, else the id or category
-- ('unknown' when the dimension does not know it). version = offset + 1 of the last record
-- of this partition folded into the window.
CREATE TABLE IF NOT EXISTS stream_windows
(
    granularity  String,
    window_start DateTime('UTC'),
    event_date   Date,
    dim          String,
    key          String,
    source       String,
    part         UInt16,
    revenue      Decimal(38, 2),
    purchases    UInt64,
    items        UInt64,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY event_date
ORDER BY (granularity, dim, key, window_start, source, part);

-- Records not counted, per minute and reason: every validation reason, conflicting_duplicate,
-- duplicate (an identical re-send) and too_late (older than the watermark by more than the
-- allowed lateness). The minute is the partition's clock when the record was read: the
-- newest event or Kafka timestamp seen so far in that partition (it never goes back, and a
-- replay computes it again the same). Versioned per partition like the windows.
CREATE TABLE IF NOT EXISTS stream_rejects
(
    minute_start DateTime('UTC'),
    event_date   Date,
    reason       String,
    source       String,
    part         UInt16,
    records      UInt64,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY event_date
ORDER BY (reason, minute_start, source, part);

-- The loader's checkpoint per pipeline and partition: the next offset to read, and the
-- partition's watermark (newest event time) and clock (newest event or Kafka time) there.
-- Written only after ClickHouse acknowledged every row that covers the records before it,
-- and offsets only grow, so the latest is the largest.
CREATE TABLE IF NOT EXISTS stream_checkpoints
(
    pipeline    String,
    source      String,
    part        UInt16,
    next_offset UInt64,
    watermark   DateTime('UTC'),
    clock       DateTime('UTC'),
    written_at  DateTime('UTC')
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (pipeline, source, part);

-- Window totals over every partition: the latest state of each partition, summed.
CREATE VIEW IF NOT EXISTS stream_windows_v AS
SELECT granularity, window_start, event_date, dim, key,
       sum(p_revenue) AS revenue, sum(p_purchases) AS purchases, sum(p_items) AS items
FROM
(
    SELECT granularity, window_start, dim, key, source, part,
           any(event_date) AS event_date,
           argMax(revenue, version) AS p_revenue,
           argMax(purchases, version) AS p_purchases,
           argMax(items, version) AS p_items
    FROM stream_windows
    GROUP BY granularity, window_start, dim, key, source, part
)
GROUP BY granularity, window_start, event_date, dim, key;

-- Exact distinct clients per window and key, from the counted purchases.
CREATE VIEW IF NOT EXISTS stream_clients_v AS
SELECT g.1 AS granularity, g.2 AS window_start, d.1 AS dim, d.2 AS key,
       uniqExact(client_id) AS distinct_clients
FROM
(
    SELECT client_id,
           arrayJoin([('minute', minute_start), ('hour', hour_start), ('day', day_start)]) AS g,
           arrayJoin([('total', ''), ('seller', seller_key), ('category', category), ('product', product_key)]) AS d
    FROM stream_purchases
)
GROUP BY granularity, window_start, dim, key;

-- What readers use: every window and key with revenue, purchases, items, exact distinct
-- clients and the average check (revenue / purchases, rounded half up to cents).
CREATE VIEW IF NOT EXISTS stream_sales_v AS
SELECT granularity, window_start, event_date, dim, key, revenue, purchases, items,
       distinct_clients,
       if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM stream_windows_v
ANY LEFT JOIN stream_clients_v USING (granularity, window_start, dim, key);

-- Rejected and too-late records per minute and reason, over every partition.
CREATE VIEW IF NOT EXISTS stream_rejects_v AS
SELECT minute_start, event_date, reason, sum(p_records) AS records
FROM
(
    SELECT minute_start, reason, source, part,
           any(event_date) AS event_date,
           argMax(records, version) AS p_records
    FROM stream_rejects
    GROUP BY minute_start, reason, source, part
)
GROUP BY minute_start, event_date, reason;
