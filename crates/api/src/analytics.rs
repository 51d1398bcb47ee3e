//! `GET /api/analytics/{report}`: the reports of `lakeshop report` over a day range, and
//! `GET /api/analytics/series`: revenue, purchases and items per minute, hour or day from
//! the streaming tables (live data). JSON with money as exact decimal strings, or CSV on
//! `Accept: text/csv`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use lakeshop_clickhouse::sink::date_literal;
use lakeshop_clickhouse::{Kind, Report};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Access;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// The longest range a report may ask for.
const MAX_RANGE_DAYS: i64 = 3660;

/// Report names in URLs, as `lakeshop report` names them.
const REPORTS: [(&str, Report); 8] = [
    ("daily", Report::Daily),
    ("products", Report::Products),
    ("categories", Report::Categories),
    ("shops", Report::Shops),
    ("avg-check", Report::AvgCheck),
    ("top", Report::Top),
    ("monthly", Report::Monthly),
    ("yearly", Report::Yearly),
];

/// The reports, as `lakeshop report` names them (documentation of the path parameter).
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)] // documentation only: the path is matched against `REPORTS`
pub enum ReportName {
    Daily,
    Products,
    Categories,
    Shops,
    AvgCheck,
    Top,
    Monthly,
    Yearly,
}

/// Days a ClickHouse `Date` holds on every supported version.
fn day_in_range(d: NaiveDate) -> bool {
    (FIRST_DAY..=LAST_DAY).contains(&d)
}

const FIRST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MIN,
};
const LAST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(2105, 12, 31) {
    Some(d) => d,
    None => NaiveDate::MAX,
};

/// Day range of a report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// First day (YYYY-MM-DD, business time zone). Default: yesterday.
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<NaiveDate>,
    /// Last day, included. Default: `from`, or yesterday.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<NaiveDate>,
    /// Most rows in the answer (at most `api.max_rows`).
    #[param(minimum = 1)]
    pub limit: Option<usize>,
}

/// An answer: the report's rows, each an object of its columns. Money is a decimal string,
/// counts are integers, dates and ids are strings.
#[derive(Debug, Serialize, ToSchema)]
pub struct Table {
    /// What was asked for.
    pub report: String,
    /// First day or instant of the range.
    pub from: String,
    /// Last day (included) or instant (excluded) of the range.
    pub to: String,
    /// The column names, in order.
    pub columns: Vec<String>,
    /// The rows.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
    /// True when `limit` cut rows off.
    pub truncated: bool,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid(format!("query: {}", e.body_text()), Vec::new()))
}

fn limit(state: &AppState, asked: Option<usize>) -> Result<usize, ApiError> {
    match asked {
        Some(0) => Err(ApiError::invalid("limit: must be at least 1", Vec::new())),
        Some(n) => Ok(n.min(state.config.max_rows)),
        None => Ok(state.config.max_rows),
    }
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/csv"))
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The table as JSON, or as CSV when the client asked for it.
fn answer(headers: &HeaderMap, table: Table) -> Response {
    if !wants_csv(headers) {
        return Json(table).into_response();
    }
    let mut out = table.columns.join(",");
    out.push('\n');
    for row in &table.rows {
        let cells: Vec<String> = table
            .columns
            .iter()
            .map(|c| match row.get(c) {
                Some(Value::String(s)) => csv_cell(s),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

/// One cell as JSON by its kind: counts as integers, the rest as strings.
fn cell(kind: Kind, text: String) -> Result<Value, ApiError> {
    Ok(match kind {
        Kind::Count => Value::from(
            text.parse::<u64>()
                .map_err(|e| ApiError::internal(&format!("count {text:?}: {e}")))?,
        ),
        Kind::Text | Kind::Date | Kind::Money => Value::String(text),
    })
}

/// A report of `lakeshop report` over a day range.
#[utoipa::path(
    get,
    path = "/api/analytics/{report}",
    tag = "analytics",
    params(
        ("report" = ReportName, Path, description = "Which report"),
        RangeQuery,
    ),
    responses(
        (status = 200, description = "The report (CSV with Accept: text/csv)",
            content((Table = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad date, range or limit", body = ErrorBody),
        (status = 401, description = "Reads need a token and none or an unknown one was sent", body = ErrorBody),
        (status = 404, description = "No such report", body = ErrorBody),
        (status = 503, description = "ClickHouse did not answer", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn report(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.tokens.require(&headers, Access::Read)?;
    let Some((name, report)) = REPORTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = REPORTS.iter().map(|r| r.0).collect();
        return Err(ApiError::not_found(format!(
            "no report {name:?}; reports: {}",
            names.join(", ")
        )));
    };
    let q = query(q)?;
    let limit = limit(&state, q.limit)?;
    let yesterday = Utc::now()
        .with_timezone(&state.timezone)
        .date_naive()
        .pred_opt()
        .unwrap_or(NaiveDate::MIN);
    let from = q.from.unwrap_or(q.to.unwrap_or(yesterday));
    let to =
        q.to.unwrap_or(if q.from.is_some() { from } else { yesterday });
    if from > to {
        return Err(ApiError::invalid(
            format!("from {from} is after to {to}"),
            Vec::new(),
        ));
    }
    if !day_in_range(from) || !day_in_range(to) {
        return Err(ApiError::invalid(
            format!("days lie within {FIRST_DAY}..={LAST_DAY}"),
            Vec::new(),
        ));
    }
    if (to - from).num_days() > MAX_RANGE_DAYS {
        return Err(ApiError::invalid(
            format!("the range is longer than {MAX_RANGE_DAYS} days"),
            Vec::new(),
        ));
    }
    let table = state
        .clickhouse
        .report(*report, from, to, None)
        .await
        .map_err(|e| ApiError::unavailable("clickhouse", &e))?;
    let truncated = table.rows.len() > limit;
    let mut rows = Vec::with_capacity(table.rows.len().min(limit));
    for r in table.rows.into_iter().take(limit) {
        let mut obj = Map::new();
        for ((col, kind), text) in table.columns.iter().zip(r) {
            obj.insert((*col).to_string(), cell(*kind, text)?);
        }
        rows.push(obj);
    }
    Ok(answer(
        &headers,
        Table {
            report: (*name).to_string(),
            from: from.to_string(),
            to: to.to_string(),
            columns: table.columns.iter().map(|c| c.0.to_string()).collect(),
            rows,
            truncated,
        },
    ))
}

/// Window size of a series.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

/// What a series is broken down by.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    #[default]
    Total,
    Seller,
    Category,
    Product,
}

impl Granularity {
    fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The default look-back.
    fn default_span(self) -> Duration {
        match self {
            Granularity::Minute => Duration::hours(1),
            Granularity::Hour => Duration::hours(48),
            Granularity::Day => Duration::days(31),
        }
    }
}

impl Dim {
    fn as_str(self) -> &'static str {
        match self {
            Dim::Total => "total",
            Dim::Seller => "seller",
            Dim::Category => "category",
            Dim::Product => "product",
        }
    }
}

/// A live series.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// minute | hour | day.
    pub granularity: Granularity,
    /// total (default) | seller | category | product.
    pub dim: Option<Dim>,
    /// One seller or product id (or `unknown`), or one category; default: every key.
    pub key: Option<String>,
    /// First window start (RFC 3339). Default: an hour, two days or a month ago.
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<DateTime<Utc>>,
    /// Windows starting before this instant (RFC 3339). Default: now.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<DateTime<Utc>>,
    /// Most rows in the answer (at most `api.max_rows`).
    #[param(minimum = 1)]
    pub limit: Option<usize>,
}

/// Revenue, purchases and items per window from the streaming tables: every partition's
/// latest minute window state, summed per window (the same numbers as the
/// `stream_windows_v` view).
#[utoipa::path(
    get,
    path = "/api/analytics/series",
    tag = "analytics",
    params(SeriesQuery),
    responses(
        (status = 200, description = "Rows of window_start, key, revenue, purchases, items (CSV with Accept: text/csv)",
            content((Table = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "Reads need a token and none or an unknown one was sent", body = ErrorBody),
        (status = 503, description = "ClickHouse did not answer", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn series(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.tokens.require(&headers, Access::Read)?;
    let q = query(q)?;
    let limit = limit(&state, q.limit)?;
    let dim = q.dim.unwrap_or_default();
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - q.granularity.default_span());
    if from >= to {
        return Err(ApiError::invalid(
            format!("from {from} is not before to {to}"),
            Vec::new(),
        ));
    }
    // Windows exist only where a ClickHouse DateTime can say when they start: the range is
    // cut to that, so a range outside it is answered with no rows.
    let first = DateTime::<Utc>::UNIX_EPOCH;
    let last = DateTime::<Utc>::from_timestamp(i64::from(u32::MAX), 0).unwrap_or(first);
    let (from, to) = (from.clamp(first, last), to.clamp(first, last));
    // The key goes into the query only as a parsed UUID (or the literal `unknown`); a
    // category is matched here, after the query.
    let key = match (dim, q.key.as_deref()) {
        (_, None) | (Dim::Category, _) => None,
        (Dim::Total, Some(_)) => {
            return Err(ApiError::invalid("key: dim total has no keys", Vec::new()))
        }
        (_, Some("unknown")) => Some("unknown".to_string()),
        (_, Some(k)) => {
            let id = Uuid::parse_str(k).map_err(|_| {
                ApiError::invalid(format!("key: {k:?} is not a UUID or `unknown`"), Vec::new())
            })?;
            Some(id.hyphenated().to_string())
        }
    };
    let key_filter = |column: &str| {
        key.as_deref()
            .map(|k| format!(" AND {column} = '{k}'"))
            .unwrap_or_default()
    };
    let key_sql = key_filter("key");
    // Hour and day windows are the sums of their minutes; each minute row carries the start
    // of its business hour and day. Day windows start at the business day's midnight:
    // looking one day further back on event_date keeps every window of the range while
    // pruning partitions.
    let start = match q.granularity {
        Granularity::Minute => "window_start",
        Granularity::Hour => "hour_start",
        Granularity::Day => "day_start",
    };
    // Purchases counted later than the loader's lateness are correction rows of their own
    // (`stream_late_v`), added to their windows as the views add them.
    let late_start = match q.granularity {
        Granularity::Minute => "minute_start",
        Granularity::Hour => "hour_start",
        Granularity::Day => "day_start",
    };
    let late_key = match dim {
        Dim::Total => "''",
        Dim::Seller => "seller_key",
        Dim::Category => "category",
        Dim::Product => "product_key",
    };
    let late_key_sql = key_filter(late_key);
    let (first_day, last_day) = (
        date_literal((from.date_naive() - Duration::days(1)).max(FIRST_DAY)),
        date_literal(to.date_naive() + Duration::days(1)),
    );
    let sql = format!(
        "SELECT toString(toUnixTimestamp(s)), key, toString(sum(r)), toString(sum(p)), toString(sum(i)) \
         FROM (SELECT any({start}) AS s, key, argMax(revenue, version) AS r, \
         argMax(purchases, version) AS p, argMax(items, version) AS i FROM stream_minutes \
         WHERE dim = '{dim}'{key_sql} \
         AND event_date >= {first_day} AND event_date <= {last_day} \
         AND {start} >= toDateTime({from_s}) AND {start} < toDateTime({to_s}) \
         GROUP BY window_start, key, source, part \
         UNION ALL \
         SELECT {late_start} AS s, {late_key} AS key, amount AS r, toUInt64(1) AS p, \
         toUInt64(quantity) AS i FROM stream_late_v \
         WHERE event_date >= {first_day} AND event_date <= {last_day}{late_key_sql} \
         AND {late_start} >= toDateTime({from_s}) AND {late_start} < toDateTime({to_s})) \
         GROUP BY s, key ORDER BY s, key",
        dim = dim.as_str(),
        from_s = from.timestamp(),
        to_s = to.timestamp(),
    );
    let rows = state
        .clickhouse
        .rows("series", &sql)
        .await
        .map_err(|e| ApiError::unavailable("clickhouse", &e))?;
    let category = match dim {
        Dim::Category => q.key.as_deref(),
        _ => None,
    };
    let mut out = Vec::new();
    let mut truncated = false;
    for r in rows {
        let [start, key, revenue, purchases, items] = <[String; 5]>::try_from(r)
            .map_err(|r| ApiError::internal(&format!("series row of {} columns", r.len())))?;
        if category.is_some_and(|c| c != key) {
            continue;
        }
        if out.len() == limit {
            truncated = true;
            break;
        }
        let start = start
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .ok_or_else(|| ApiError::internal(&format!("window start {start:?}")))?;
        let mut obj = Map::new();
        obj.insert(
            "window_start".into(),
            Value::String(lakeshop_model::event::format_ts(start)),
        );
        obj.insert("key".into(), Value::String(key));
        obj.insert("revenue".into(), Value::String(revenue));
        obj.insert("purchases".into(), cell(Kind::Count, purchases)?);
        obj.insert("items".into(), cell(Kind::Count, items)?);
        out.push(obj);
    }
    Ok(answer(
        &headers,
        Table {
            report: format!("series/{}/{}", q.granularity.as_str(), dim.as_str()),
            from: lakeshop_model::event::format_ts(from),
            to: lakeshop_model::event::format_ts(to),
            columns: ["window_start", "key", "revenue", "purchases", "items"]
                .map(String::from)
                .to_vec(),
            rows: out,
            truncated,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn counts_are_numbers_and_money_is_text() -> Result<(), ApiError> {
        assert_eq!(cell(Kind::Count, "42".into())?, Value::from(42u64));
        assert_eq!(
            cell(Kind::Money, "10.10".into())?,
            Value::String("10.10".into())
        );
        assert!(cell(Kind::Count, "x".into()).is_err());
        Ok(())
    }
}
