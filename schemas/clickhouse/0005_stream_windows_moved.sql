-- lakeshop schema version 1: the minute windows the loader wrote before 0004 move into
-- `stream_minutes`, so an upgrade keeps the live history it had in `stream_sales_v`.
-- 0004 recreated the views over `stream_minutes` only; the rows of `stream_windows` (0003)
-- stayed where they were, read by nothing. Their minute rows are exactly the rows the
-- minutes-only loader writes (same state, same version); their hour and day rows are sums
-- of those minutes and need no move. A minute row takes the starts of its business hour and
-- day from the counted purchases of that minute (the loader's calendar wrote them there), so
-- the move needs no time zone. The old rows stay in `stream_windows` (no row is ever
-- dropped); a second run of this statement, after a failure half-way, writes rows that are
-- already there again with the same version, which argMax reads as one.
-- Runs on ClickHouse 18.16 and current releases. Statements end with ';' at the end of a line.

INSERT INTO stream_minutes
    (window_start, hour_start, day_start, event_date, dim, key, source, part, revenue, purchases, items, version)
SELECT window_start, hour_start, day_start, event_date, dim, key, source, part, revenue, purchases, items, version
FROM stream_windows
ANY INNER JOIN
(
    SELECT minute_start AS window_start, any(hour_start) AS hour_start, any(day_start) AS day_start
    FROM stream_purchases
    GROUP BY minute_start
) USING window_start
WHERE granularity = 'minute';
