-- lakeshop schema version 1: day totals, hourly series, top products, average check and
-- monthly / yearly roll-ups of the batch tables. Additive to 0001; same rules: 18.16 and
-- current releases, names not database-qualified, statements end with ';' at line end.
-- Tables here are written by the batch job a whole event_date partition at a time, like
-- 0001's; the views present them to readers.
--
-- Average check = revenue / purchases, rounded half up to cents. Both versions divide a
-- Decimal(38,2) by an integer by truncating to the scale, and round() leaves decimals as
-- they are on 18.16, so it is computed as (2 x revenue + purchases / 100) / (2 x purchases):
-- truncating that equals rounding revenue / purchases half up (every amount is >= 0).

-- Per business day: the whole day. distinct_clients is exact for the day (it cannot be
-- summed from the per-seller rows); unknown_* count the day's purchases whose client,
-- product or seller is not in the stage dimensions (or that had no seller).
CREATE TABLE IF NOT EXISTS daily_total
(
    event_date       Date,
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64,
    unknown_clients  UInt64,
    unknown_products UInt64,
    unknown_sellers  UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY event_date;

-- Hourly series: per business day and hour. hour is the start of the hour in the business
-- time zone, as a UTC instant (seconds).
CREATE TABLE IF NOT EXISTS hourly_sales
(
    event_date       Date,
    hour             DateTime('UTC'),
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, hour);

-- Top products per day: the day's 100 best-selling known products by revenue, rank 1 first
-- (ties broken by product_id), with their name and category as of the batch run.
CREATE TABLE IF NOT EXISTS daily_top_products
(
    event_date       Date,
    rank             UInt32,
    product_id       String,
    product_name     String,
    category         String,
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, rank);

-- The daily tables with their average check.
CREATE VIEW IF NOT EXISTS daily_total_v AS
SELECT
    event_date, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check,
    unknown_clients, unknown_products, unknown_sellers
FROM daily_total;

CREATE VIEW IF NOT EXISTS daily_seller_v AS
SELECT
    event_date, seller_id, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM daily_seller;

CREATE VIEW IF NOT EXISTS daily_category_v AS
SELECT
    event_date, category, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM daily_category;

CREATE VIEW IF NOT EXISTS daily_product_v AS
SELECT
    event_date, product_id, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM daily_product;

-- Monthly and yearly roll-ups. Totals come from sales, so distinct_clients stays exact over
-- the period; per seller and category they are sums of the daily rows (distinct clients do
-- not add up across days, so those views leave them out).
CREATE VIEW IF NOT EXISTS monthly_total_v AS
SELECT
    month, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfMonth(event_date) AS month, sum(amount) AS revenue, count() AS purchases,
           sum(toUInt64(quantity)) AS items, uniqExact(client_id) AS distinct_clients
    FROM sales
    GROUP BY month
);

CREATE VIEW IF NOT EXISTS yearly_total_v AS
SELECT
    year, revenue, purchases, items, distinct_clients,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfYear(event_date) AS year, sum(amount) AS revenue, count() AS purchases,
           sum(toUInt64(quantity)) AS items, uniqExact(client_id) AS distinct_clients
    FROM sales
    GROUP BY year
);

CREATE VIEW IF NOT EXISTS monthly_seller_v AS
SELECT
    month, seller_id, revenue, purchases, items,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfMonth(event_date) AS month, seller_id, sum(revenue) AS revenue,
           sum(purchases) AS purchases, sum(items) AS items
    FROM daily_seller
    GROUP BY month, seller_id
);

CREATE VIEW IF NOT EXISTS yearly_seller_v AS
SELECT
    year, seller_id, revenue, purchases, items,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfYear(event_date) AS year, seller_id, sum(revenue) AS revenue,
           sum(purchases) AS purchases, sum(items) AS items
    FROM daily_seller
    GROUP BY year, seller_id
);

CREATE VIEW IF NOT EXISTS monthly_category_v AS
SELECT
    month, category, revenue, purchases, items,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfMonth(event_date) AS month, category, sum(revenue) AS revenue,
           sum(purchases) AS purchases, sum(items) AS items
    FROM daily_category
    GROUP BY month, category
);

CREATE VIEW IF NOT EXISTS yearly_category_v AS
SELECT
    year, category, revenue, purchases, items,
    if(purchases = 0, toDecimal128(0, 2), (revenue * 2 + toDecimal128(purchases, 2) / 100) / (purchases * 2)) AS avg_check
FROM
(
    SELECT toStartOfYear(event_date) AS year, category, sum(revenue) AS revenue,
           sum(purchases) AS purchases, sum(items) AS items
    FROM daily_category
    GROUP BY year, category
);
