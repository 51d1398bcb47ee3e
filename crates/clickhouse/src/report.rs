//! Canned reports over the batch tables and their views, for `lakeshop report` and the API.
//!
//! Every report is one query over a day range; the range is formatted from typed dates
//! ([`crate::sink::date_literal`]), never from user text. Answers come back as text cells
//! with a kind per column, so money stays an exact decimal string.

use chrono::NaiveDate;

use crate::sink::date_literal;
use crate::{ClickHouse, Error, Result};

/// The reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Per day: revenue, purchases, items, average check, distinct clients, unknowns.
    Daily,
    /// Per day and product.
    Products,
    /// Per day and category.
    Categories,
    /// Per day and shop (seller).
    Shops,
    /// Average check per day and shop.
    AvgCheck,
    /// The best-selling products of each day, by revenue (ten unless a limit says otherwise).
    Top,
    /// Per month: revenue, purchases, items, average check, distinct clients.
    Monthly,
    /// Per year: the same.
    Yearly,
}

/// How many products `top` shows per day by default.
pub const TOP_N: u32 = 10;
/// How many products per day the batch job keeps ranked (`daily_top_products`).
pub const TOP_KEPT: u32 = 100;

/// What a column holds, for formatting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Date,
    /// A count: an unsigned integer.
    Count,
    /// Money: an exact decimal with two places.
    Money,
}

/// A report's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportTable {
    pub columns: Vec<(&'static str, Kind)>,
    pub rows: Vec<Vec<String>>,
}

impl Report {
    fn spec(self) -> (&'static str, &'static [(&'static str, Kind)], &'static str) {
        use Kind::*;
        match self {
            Report::Daily => (
                "daily_total_v",
                &[
                    ("event_date", Date),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                    ("unknown_clients", Count),
                    ("unknown_products", Count),
                    ("unknown_sellers", Count),
                ],
                "event_date",
            ),
            Report::Products => (
                "daily_product_v",
                &[
                    ("event_date", Date),
                    ("product_id", Text),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                ],
                "event_date, revenue DESC, product_id",
            ),
            Report::Categories => (
                "daily_category_v",
                &[
                    ("event_date", Date),
                    ("category", Text),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                ],
                "event_date, revenue DESC, category",
            ),
            Report::Shops => (
                "daily_seller_v",
                &[
                    ("event_date", Date),
                    ("seller_id", Text),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                ],
                "event_date, revenue DESC, seller_id",
            ),
            Report::AvgCheck => (
                "daily_seller_v",
                &[
                    ("event_date", Date),
                    ("seller_id", Text),
                    ("avg_check", Money),
                    ("purchases", Count),
                    ("revenue", Money),
                ],
                "event_date, avg_check DESC, seller_id",
            ),
            Report::Top => (
                "daily_top_products",
                &[
                    ("event_date", Date),
                    ("rank", Count),
                    ("product_id", Text),
                    ("product_name", Text),
                    ("category", Text),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("distinct_clients", Count),
                ],
                "event_date, rank",
            ),
            Report::Monthly => (
                "monthly_total_v",
                &[
                    ("month", Date),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                ],
                "month",
            ),
            Report::Yearly => (
                "yearly_total_v",
                &[
                    ("year", Date),
                    ("revenue", Money),
                    ("purchases", Count),
                    ("items", Count),
                    ("avg_check", Money),
                    ("distinct_clients", Count),
                ],
                "year",
            ),
        }
    }

    /// The filter on the range: days, or the months or years they fall in.
    fn range(self, from: NaiveDate, to: NaiveDate) -> String {
        let (from, to) = (date_literal(from), date_literal(to));
        match self {
            Report::Monthly => {
                format!("month >= toStartOfMonth({from}) AND month <= toStartOfMonth({to})")
            }
            Report::Yearly => {
                format!("year >= toStartOfYear({from}) AND year <= toStartOfYear({to})")
            }
            _ => format!("event_date >= {from} AND event_date <= {to}"),
        }
    }

    /// The query of this report over `from..=to`, with at most `limit` rows per day for the
    /// per-day breakdowns (products, categories, shops, average check, top), at most `limit`
    /// rows in all for the others.
    pub fn sql(self, from: NaiveDate, to: NaiveDate, limit: Option<u32>) -> String {
        let (source, columns, order) = self.spec();
        let names: Vec<String> = columns
            .iter()
            .map(|(n, k)| match k {
                // Text as text: toString keeps decimals exact and dates ISO on every version.
                Kind::Text => n.to_string(),
                _ => format!("toString({n})"),
            })
            .collect();
        let (extra, tail) = match (self, limit) {
            (Report::Top, l) => (
                format!(" AND rank <= {}", l.unwrap_or(TOP_N)),
                String::new(),
            ),
            (Report::Products | Report::Categories | Report::Shops | Report::AvgCheck, Some(l)) => {
                (String::new(), format!(" LIMIT {l} BY event_date"))
            }
            (_, Some(l)) => (String::new(), format!(" LIMIT {l}")),
            (_, None) => (String::new(), String::new()),
        };
        format!(
            "SELECT {} FROM {source} WHERE {}{extra} ORDER BY {order}{tail}",
            names.join(", "),
            self.range(from, to),
        )
    }
}

impl ClickHouse {
    /// Runs a report over `from..=to`.
    pub async fn report(
        &self,
        report: Report,
        from: NaiveDate,
        to: NaiveDate,
        limit: Option<u32>,
    ) -> Result<ReportTable> {
        if from > to {
            return Err(Error::Config(format!(
                "the range {from}..{to} is empty: --from is after --to"
            )));
        }
        match limit {
            Some(0) => return Err(Error::Config("--limit must be at least 1".into())),
            Some(l) if report == Report::Top && l > TOP_KEPT => {
                return Err(Error::Config(format!(
                    "--limit {l}: the batch job keeps the top {TOP_KEPT} products of each day"
                )))
            }
            _ => {}
        }
        let (_, columns, _) = report.spec();
        let rows = self
            .rows(&format!("report {report:?}"), &report.sql(from, to, limit))
            .await?;
        if let Some(bad) = rows.iter().find(|r| r.len() != columns.len()) {
            return Err(Error::Answer {
                operation: format!("report {report:?}"),
                message: format!(
                    "{} columns where {} were asked for",
                    bad.len(),
                    columns.len()
                ),
            });
        }
        Ok(ReportTable {
            columns: columns.to_vec(),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_a_typed_range() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        let sql = Report::Top.sql(d("2026-11-01"), d("2026-11-21"), None);
        assert!(sql.contains("toDate('2026-11-01')") && sql.contains("toDate('2026-11-21')"));
        assert!(sql.contains("rank <= 10"), "{sql}");
        assert!(Report::Top
            .sql(d("2026-11-01"), d("2026-11-21"), Some(3))
            .contains("rank <= 3"));
        assert!(Report::Daily
            .sql(d("2026-11-01"), d("2026-11-01"), None)
            .contains("FROM daily_total_v"));
        assert!(Report::Products
            .sql(d("2026-11-01"), d("2026-11-01"), Some(5))
            .ends_with("LIMIT 5 BY event_date"));
        let monthly = Report::Monthly.sql(d("2026-11-21"), d("2026-12-02"), None);
        assert!(
            monthly.contains("month >= toStartOfMonth(toDate('2026-11-21'))")
                && monthly.contains("FROM monthly_total_v"),
            "{monthly}"
        );
    }
}
