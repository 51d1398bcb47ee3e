-- lakeshop schema version 1: the streaming loader keeps minute windows only; hour and day
-- windows are the sums of their minutes, taken by the views.
-- Every zone's offset is a whole number of minutes, so a (UTC) minute lies in exactly one
-- business hour and one business day, and a purchase falls in the hour and day of its
-- minute: summing a partition's minute windows by hour or day gives exactly the hour and day
-- windows the loader held before. The loader now holds only the minutes still open (a few
-- minutes past the watermark, not the day), restores only those after a restart, and folds
-- each purchase into a third of the windows.
-- `stream_minutes` replaces `stream_windows` (0003_stream_tables.sql), which is no longer written
-- or read: what it holds stays until dropped by hand. Each minute row carries the starts of
-- its business hour and day (the loader's calendar), so the views need no time zone.
-- Runs on ClickHouse 18.16 and current releases (18.16 has no DROP VIEW: a view is dropped
-- with DROP TABLE). Statements end with ';' at the end of a line.

-- Minute window state of one Kafka partition: dim total | seller | category | product, key
-- '' for total, else the id or category ('unknown' when the dimension does not know it).
-- version = offset + 1 of the last record of this partition folded into the window.
CREATE TABLE IF NOT EXISTS stream_minutes
(
    window_start DateTime('UTC'),
    hour_start   DateTime('UTC'),
    day_start    DateTime('UTC'),
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
ORDER BY (dim, key, window_start, source, part);

-- The views over `stream_windows` go; they come back over `stream_minutes`, by the same
-- names and columns.
DROP TABLE IF EXISTS stream_sales_v;

DROP TABLE IF EXISTS stream_windows_v;

-- Window totals over every partition: the latest state of each partition's minute, summed
-- per minute, hour and day.
CREATE VIEW IF NOT EXISTS stream_windows_v AS
SELECT g.1 AS granularity, g.2 AS window_start, event_date, dim, key,
       sum(p_revenue) AS revenue, sum(p_purchases) AS purchases, sum(p_items) AS items
FROM
(
    SELECT window_start AS m, dim, key, source, part,
           any(hour_start) AS h, any(day_start) AS d, any(event_date) AS event_date,
           argMax(revenue, version) AS p_revenue,
           argMax(purchases, version) AS p_purchases,
           argMax(items, version) AS p_items
    FROM stream_minutes
    GROUP BY m, dim, key, source, part
)
ARRAY JOIN [('minute', m), ('hour', h), ('day', d)] AS g
GROUP BY granularity, window_start, event_date, dim, key;

-- What readers use: every window and key with revenue, purchases, items, exact distinct
-- clients and the average check (revenue / purchases, rounded half up to cents).
CREATE VIEW IF NOT EXISTS stream_sales_v AS
SELECT granularity, window_start, event_date, dim, key, revenue, purchases, items,
       distinct_clients,
       if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM stream_windows_v
ANY LEFT JOIN stream_clients_v USING (granularity, window_start, dim, key);
