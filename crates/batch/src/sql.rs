//! The batch job's SQL over the stage tables (DataFusion dialect).
//!
//! The day is always the parameter `$1` (a `Date32` bound from a typed date), never text
//! spliced into the query. The only other text spliced in is lakeshop's own: the PII
//! expressions below and the aggregate key expressions.

/// Every arrival of the day's purchases, as the stage holds them.
pub(crate) const DAY_PURCHASES: &str = r#"
SELECT purchase_id, client_id, product_id, seller_id, quantity, price, "timestamp", event_date,
       ingested_at, source_topic, source_partition, source_offset
FROM purchases
WHERE event_date = $1
"#;

/// The arrivals of the purchase ids that arrived more than once that day, numbered per id in
/// arrival order (`arrival` 1 is the first).
///
/// Arrival order is the order the stage received them: `ingested_at`, then the Kafka
/// position (`source_topic`, `source_partition`, `source_offset`) — all stored with the row,
/// so the order never changes between runs. Re-sends of a purchase are keyed by its id and
/// land on the same partition after it, so this is the Kafka order for them. Only re-sent
/// ids are numbered (a few percent of a day): ordering the whole day costs several times more.
pub(crate) const RESENT_ARRIVALS: &str = r#"
SELECT p.*,
       row_number() OVER (
           PARTITION BY p.purchase_id
           ORDER BY p.ingested_at, p.source_topic, p.source_partition, p.source_offset
       ) AS arrival
FROM day_purchases p
WHERE p.purchase_id IN (
    SELECT purchase_id FROM day_purchases GROUP BY purchase_id HAVING count(*) > 1
)
"#;

/// The columns of a purchase arrival, in one order for both sides of a union.
const ARRIVAL_COLUMNS: &str = r#"purchase_id, client_id, product_id, seller_id, quantity, price,
       "timestamp", event_date, ingested_at, source_topic, source_partition, source_offset"#;

/// The first arrival of each purchase id of the day: the ids that arrived once, and the
/// first of the re-sent ones.
pub(crate) fn day_firsts() -> String {
    format!(
        r#"
SELECT {ARRIVAL_COLUMNS}
FROM day_purchases p
WHERE NOT EXISTS (SELECT 1 FROM resent_arrivals r WHERE r.purchase_id = p.purchase_id)
UNION ALL
SELECT {ARRIVAL_COLUMNS}
FROM resent_arrivals
WHERE arrival = 1
"#
    )
}

/// Later arrivals whose content differs from the first one (they are not counted: the
/// first arrival is).
pub(crate) const CONFLICTS: &str = r#"
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
"#;

/// Every arrival, on any day of `stage.purchases`, of the purchase ids staged on the days
/// `$1..=$2` and on more than one day (a copy sent again with another timestamp): the only
/// rows that can make one of those days' purchases count on another day. Prepared once for
/// a window of days: every day of the stage is read, so the answer does not depend on which
/// days a run covers, and each day then looks only at these few rows. Memory follows the
/// window, not the stage's whole history.
pub(crate) const MULTI_DAY_ARRIVALS: &str = r#"
SELECT purchase_id, "timestamp", event_date, ingested_at, source_topic, source_partition,
       source_offset
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
"#;

/// Purchase ids of the day whose first arrival is on another day (a copy with another
/// timestamp arrived earlier, stamped no more than `horizon_s` seconds before this day's
/// first arrival): they count on that day, not this one. An earlier arrival stamped longer
/// before is beyond the dedup horizon: this day's arrival is a new purchase, as the
/// streaming loader decides.
pub(crate) fn claimed_elsewhere(horizon_s: u64) -> String {
    format!(
        r#"
SELECT DISTINCT f.purchase_id
FROM day_firsts f
JOIN multi_day_arrivals o ON o.purchase_id = f.purchase_id
WHERE o.event_date <> $1
  AND to_unixtime(o."timestamp") >= to_unixtime(f."timestamp") - {horizon_s}
  AND (o.ingested_at < f.ingested_at
       OR (o.ingested_at = f.ingested_at
           AND (o.source_topic < f.source_topic
                OR (o.source_topic = f.source_topic
                    AND (o.source_partition < f.source_partition
                         OR (o.source_partition = f.source_partition
                             AND o.source_offset < f.source_offset))))))
"#
    )
}

/// What happens to e-mail and address in `stage.sales` and ClickHouse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// As in the source.
    #[default]
    Keep,
    /// Hex SHA-256 of the value (NULL stays NULL). Unsalted: it hides the text from readers
    /// and keeps equal values equal, but a known e-mail can be hashed and looked up.
    Hash,
    /// NULL.
    Drop,
}

impl PiiMode {
    fn expr(self, column: &str) -> String {
        match self {
            PiiMode::Keep => format!("c.{column}"),
            PiiMode::Hash => format!("encode(sha256(c.{column}), 'hex')"),
            PiiMode::Drop => "CAST(NULL AS VARCHAR)".to_string(),
        }
    }
}

/// The day's `stage.sales` rows: the first arrival of each purchase counted on this day,
/// joined to the dimensions as they are now. A missing dimension leaves its columns NULL and
/// sets its `unknown_*` flag; a purchase without a seller gets seller `unknown`. Soft-deleted
/// dimension rows still join (`deleted_at` is not looked at): the purchase happened.
pub(crate) fn sales(pii: PiiMode) -> String {
    format!(
        r#"
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
       {email} AS email,
       {address} AS address,
       pr.name AS product_name,
       pr.category AS category,
       pr.price AS list_price,
       s.name AS seller_name,
       s.region AS seller_region,
       c.client_id IS NULL AS unknown_client,
       pr.product_id IS NULL AS unknown_product,
       s.seller_id IS NULL AS unknown_seller,
       c.client_key,
       s.seller_key,
       pr.category_key,
       pr.product_key
FROM day_firsts p
LEFT JOIN clients c ON c.client_id = p.client_id
LEFT JOIN products pr ON pr.product_id = p.product_id
LEFT JOIN sellers s ON s.seller_id = p.seller_id
WHERE NOT EXISTS (SELECT 1 FROM claimed x WHERE x.purchase_id = p.purchase_id)
"#,
        email = pii.expr("email"),
        address = pii.expr("address"),
    )
}

/// The measures every aggregate row carries, over `sales` rows.
///
/// `purchases` is `sum(1)`, not `count(*)`: the same number for every group (a group has at
/// least one row), and with only `sum`/`min`/`max` beside the one `count(DISTINCT ...)` the
/// engine counts distinct clients by grouping on (key, client) instead of keeping a set of
/// client ids per group, several times cheaper. Clients are counted by their integer key
/// (`crate::keys`): one per distinct `client_id`.
const MEASURES: &str = "CAST(sum(amount) AS DECIMAL(38, 2)) AS revenue, \
    sum(CAST(1 AS BIGINT)) AS purchases, \
    sum(CAST(quantity AS BIGINT)) AS items, \
    count(DISTINCT client_key) AS distinct_clients";

/// The whole day, with counts of unknown dimensions.
pub(crate) fn daily_total() -> String {
    format!(
        "SELECT event_date, {MEASURES}, \
         sum(CASE WHEN unknown_client THEN 1 ELSE 0 END) AS unknown_clients, \
         sum(CASE WHEN unknown_product THEN 1 ELSE 0 END) AS unknown_products, \
         sum(CASE WHEN unknown_seller THEN 1 ELSE 0 END) AS unknown_sellers \
         FROM sales GROUP BY event_date"
    )
}

/// A per-day breakdown of the sales: grouped on the integer key column `key` of `sales`,
/// named by the column `id` of the dimension table `names` (which has `key` too); rows
/// without a key are the `unknown` group. `extra` adds columns of `names` (alias `n`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breakdown {
    pub key: &'static str,
    pub names: &'static str,
    pub id: &'static str,
    /// The output column of the group's name.
    pub name: &'static str,
    pub extra: &'static str,
}

/// Per seller: `unknown` when the purchase had none or the seller is not in the stage.
pub(crate) const BY_SELLER: Breakdown = Breakdown {
    key: crate::keys::SELLER_KEY,
    names: "sellers",
    id: "seller_id",
    name: "seller_id",
    extra: "",
};

/// Per category: `unknown` when the product is not in the stage or has no category.
pub(crate) const BY_CATEGORY: Breakdown = Breakdown {
    key: crate::keys::CATEGORY_KEY,
    names: "categories",
    id: "category",
    name: "category",
    extra: "",
};

/// Per product, with its name and category (NULL for `unknown`) for the top products:
/// `unknown` when the product is not in the stage.
pub(crate) const BY_PRODUCT: Breakdown = Breakdown {
    key: crate::keys::PRODUCT_KEY,
    names: "products",
    id: "product_id",
    name: "product_id",
    extra: ", n.name AS product_name, n.category AS category",
};

/// The day's rows of a [`Breakdown`], in the order of the group names.
pub(crate) fn daily_by(b: Breakdown) -> String {
    let Breakdown {
        key,
        names,
        id,
        name,
        extra,
    } = b;
    format!(
        "SELECT * FROM ( \
           SELECT a.event_date, COALESCE(n.{id}, 'unknown') AS {name}, \
                  a.revenue, a.purchases, a.items, a.distinct_clients{extra} \
           FROM (SELECT event_date, {key} AS group_key, {MEASURES} \
                 FROM sales GROUP BY event_date, {key}) a \
           LEFT JOIN {names} n ON n.{key} = a.group_key \
         ) ORDER BY {name}"
    )
}

/// Per day and hour (`hour`: the start of the business-time-zone hour, added beside the
/// sales rows before aggregating).
pub(crate) fn hourly() -> String {
    format!(
        "SELECT event_date, hour, {MEASURES} FROM sales GROUP BY event_date, hour ORDER BY hour"
    )
}

/// How many products `daily_top_products` keeps per day.
pub(crate) const TOP_PRODUCTS: usize = 100;

/// The day's best-selling known products by revenue, from the per-product rows
/// (`daily_product`, [`BY_PRODUCT`]); ties go to the smaller product id.
pub(crate) fn top_products() -> String {
    format!(
        "SELECT event_date, \
                CAST(row_number() OVER (ORDER BY revenue DESC, product_id) AS BIGINT) AS rank, \
                product_id, product_name, category, revenue, purchases, items, distinct_clients \
         FROM (SELECT * FROM daily_product \
               WHERE product_id <> 'unknown' \
               ORDER BY revenue DESC, product_id \
               LIMIT {TOP_PRODUCTS}) \
         ORDER BY rank"
    )
}
