-- lakeshop schema version 1: ClickHouse batch tables. Additive changes only.
-- Run by `lakeshop migrate` in the `lakeshop` database (names are not database-qualified).
-- Written by the batch job, which replaces a whole event_date partition at a time, so a
-- reader never sees half a day and plain MergeTree counts are exact without FINAL.
-- Runs on ClickHouse 18.16 and current releases: only types and syntax 18.16 knows
-- (MergeTree() with PARTITION BY / ORDER BY, Decimal, Nullable, DateTime('UTC') in seconds),
-- flags are UInt8, ids String (seller_id may be 'unknown').
-- Money: unit prices Decimal(18,2); amounts and sums Decimal(38,2), the type ClickHouse gives
-- sum() over Decimal(18,2) (quantity x price reaches 1e18, past what Decimal(18,2) holds).
-- Statements end with ';' at the end of a line; the runner sends them one by one.

-- One row per purchase (a purchase_id once, however often it arrived): the purchase with
-- its client, product and seller attributes as of the batch run. Mirrors stage.sales
-- (schemas/stage/sales.json); a missing dimension row leaves its attributes NULL and sets
-- the unknown_* flag.
CREATE TABLE IF NOT EXISTS sales
(
    purchase_id     String,
    client_id       String,
    product_id      String,
    seller_id       String,
    quantity        UInt32,
    price           Decimal(18, 2),
    amount          Decimal(38, 2),
    timestamp       DateTime('UTC'),
    event_date      Date,
    first_name      Nullable(String),
    last_name       Nullable(String),
    email           Nullable(String),
    address         Nullable(String),
    product_name    Nullable(String),
    category        Nullable(String),
    list_price      Nullable(Decimal(18, 2)),
    seller_name     Nullable(String),
    seller_region   Nullable(String),
    unknown_client  UInt8,
    unknown_product UInt8,
    unknown_seller  UInt8
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, seller_id, purchase_id);

-- Per business day and seller (shop): revenue = sum(amount), purchases = distinct
-- purchase_ids, items = sum(quantity), distinct_clients = exact count of distinct client_ids,
-- computed by the batch job. Average check = revenue / purchases.
CREATE TABLE IF NOT EXISTS daily_seller
(
    event_date       Date,
    seller_id        String,
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, seller_id);

-- Per business day and product category ('unknown' when the product is unknown).
CREATE TABLE IF NOT EXISTS daily_category
(
    event_date       Date,
    category         String,
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, category);

-- Per business day and product.
CREATE TABLE IF NOT EXISTS daily_product
(
    event_date       Date,
    product_id       String,
    revenue          Decimal(38, 2),
    purchases        UInt64,
    items            UInt64,
    distinct_clients UInt64
)
ENGINE = MergeTree()
PARTITION BY event_date
ORDER BY (event_date, product_id);
