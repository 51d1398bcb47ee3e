-- lakeshop schema version 1: no valid purchase is lost to lateness, and clocks ahead of
-- time are named. A purchase older than its partition's watermark by more than the allowed
-- lateness (its windows closed, maybe evicted from the loader's memory) is counted as a
-- correction row of its own in `stream_flagged`, which the views add to its minute, hour and
-- day; a purchase stamped further ahead of its Kafka time than the allowed clock skew is
-- counted in its windows as usual and flagged there too. Both rows are pure functions of the
-- partition's records (a replay writes the same row, keyed by source, part and offset).
-- A late purchase whose id the loader counted before (an identical re-send hours later, say)
-- is not counted again: the views add a late row only when its id has no counted row in
-- `stream_purchases`, and only its first arrival.
-- Runs on ClickHouse 18.16 and current releases (views are dropped with DROP TABLE).
-- Statements end with ';' at the end of a line.

-- flag too_late | future; the purchase's columns as `stream_purchases` has them, and the
-- record's Kafka timestamp (its event time when it has none).
CREATE TABLE IF NOT EXISTS stream_flagged
(
    flag         String,
    purchase_id  String,
    source       String,
    part         UInt16,
    offset       UInt64,
    timestamp    DateTime('UTC'),
    kafka_time   DateTime('UTC'),
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
ORDER BY (flag, source, part, offset);

-- The views that read the windows go; they come back with the late purchases added, by the
-- same names and columns.
DROP TABLE IF EXISTS stream_sales_v;

DROP TABLE IF EXISTS stream_windows_v;

DROP TABLE IF EXISTS stream_clients_v;

-- The late purchases that count: the first late arrival of each id (lowest partition and
-- offset) whose id has no counted row.
CREATE VIEW IF NOT EXISTS stream_late_v AS
SELECT purchase_id, source,
       argMin(minute_start, o) AS minute_start,
       argMin(hour_start, o) AS hour_start,
       argMin(day_start, o) AS day_start,
       argMin(event_date, o) AS event_date,
       argMin(client_id, o) AS client_id,
       argMin(seller_key, o) AS seller_key,
       argMin(category, o) AS category,
       argMin(product_key, o) AS product_key,
       argMin(quantity, o) AS quantity,
       argMin(amount, o) AS amount
FROM
(
    SELECT purchase_id, source, minute_start, hour_start, day_start, event_date, client_id,
           seller_key, category, product_key, quantity, amount,
           bitOr(bitShiftLeft(toUInt64(part), 48), offset) AS o
    FROM stream_flagged
    WHERE flag = 'too_late'
)
WHERE purchase_id NOT IN
(
    SELECT purchase_id FROM stream_purchases
    WHERE purchase_id IN (SELECT purchase_id FROM stream_flagged WHERE flag = 'too_late')
)
GROUP BY purchase_id, source;

-- Window totals over every partition: the latest state of each partition's minute, and the
-- late purchases of that minute, summed per minute, hour and day.
CREATE VIEW IF NOT EXISTS stream_windows_v AS
SELECT g.1 AS granularity, g.2 AS window_start, event_date, dim, key,
       sum(p_revenue) AS revenue, sum(p_purchases) AS purchases, sum(p_items) AS items
FROM
(
    SELECT window_start AS m, dim, key,
           any(hour_start) AS h, any(day_start) AS d, any(event_date) AS event_date,
           argMax(revenue, version) AS p_revenue,
           argMax(purchases, version) AS p_purchases,
           argMax(items, version) AS p_items
    FROM stream_minutes
    GROUP BY m, dim, key, source, part
    UNION ALL
    SELECT minute_start AS m, k.1 AS dim, k.2 AS key,
           hour_start AS h, day_start AS d, event_date,
           amount AS p_revenue, toUInt64(1) AS p_purchases, toUInt64(quantity) AS p_items
    FROM stream_late_v
    ARRAY JOIN [('total', ''), ('seller', seller_key), ('category', category), ('product', product_key)] AS k
)
ARRAY JOIN [('minute', m), ('hour', h), ('day', d)] AS g
GROUP BY granularity, window_start, event_date, dim, key;

-- Exact distinct clients per window and key, from the counted purchases and the late ones.
CREATE VIEW IF NOT EXISTS stream_clients_v AS
SELECT g.1 AS granularity, g.2 AS window_start, d.1 AS dim, d.2 AS key,
       uniqExact(client_id) AS distinct_clients
FROM
(
    SELECT client_id,
           arrayJoin([('minute', minute_start), ('hour', hour_start), ('day', day_start)]) AS g,
           arrayJoin([('total', ''), ('seller', seller_key), ('category', category), ('product', product_key)]) AS d
    FROM
    (
        SELECT client_id, minute_start, hour_start, day_start, seller_key, category, product_key
        FROM stream_purchases
        UNION ALL
        SELECT client_id, minute_start, hour_start, day_start, seller_key, category, product_key
        FROM stream_late_v
    )
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

-- Flagged purchases per flag and event minute, over every partition: too_late (counted as
-- corrections; how late data arrives, by event day), future (stamped ahead), and the late
-- arrivals the views do not count, decided as the batch job decides them: duplicate (the
-- content of the id's first arrival, counted on time or late) or conflicting_duplicate.
CREATE VIEW IF NOT EXISTS stream_flags_v AS
SELECT kind AS flag, minute_start, event_date, count() AS records
FROM
(
    SELECT multiIf(flag != 'too_late', flag,
                   counted = 0 AND o = first_o, 'too_late',
                   content_hash = if(counted = 1, counted_hash, first_hash), 'duplicate',
                   'conflicting_duplicate') AS kind,
           minute_start, event_date
    FROM
    (
        SELECT flag, purchase_id, o, content_hash, minute_start, event_date, first_o, first_hash
        FROM
        (
            SELECT flag, purchase_id, source, part, offset,
                   bitOr(bitShiftLeft(toUInt64(part), 48), offset) AS o,
                   any(content_hash) AS content_hash,
                   any(minute_start) AS minute_start, any(event_date) AS event_date
            FROM stream_flagged
            GROUP BY flag, purchase_id, source, part, offset
        )
        ANY LEFT JOIN
        (
            SELECT purchase_id, min(bitOr(bitShiftLeft(toUInt64(part), 48), offset)) AS first_o,
                   argMin(content_hash, bitOr(bitShiftLeft(toUInt64(part), 48), offset)) AS first_hash
            FROM stream_flagged
            WHERE flag = 'too_late'
            GROUP BY purchase_id
        ) USING purchase_id
    )
    ANY LEFT JOIN
    (
        SELECT purchase_id, toUInt8(1) AS counted, any(content_hash) AS counted_hash
        FROM stream_purchases
        WHERE purchase_id IN (SELECT purchase_id FROM stream_flagged WHERE flag = 'too_late')
        GROUP BY purchase_id
    ) USING purchase_id
)
GROUP BY flag, minute_start, event_date;
