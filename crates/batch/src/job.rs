//! One business day through the batch job, and ranges of days.

use chrono::{DateTime, NaiveDate, Offset as _, TimeZone as _, Timelike as _, Utc};
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{
    DataType, Decimal128Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::scalar::ScalarValue;
use lakeshop_clickhouse::{ClickHouse, TableRows};
use lakeshop_model::arrow_schema;
use lakeshop_stage::{Stage, Table};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::sql::{self, PiiMode};
use crate::{keys, order};
use crate::{Error, Result};

/// Longest range one run accepts (ten years), against typos like `--from 2016`.
pub const MAX_DAYS: i64 = 3660;

/// Days whose multi-day arrivals `run_days` prepares together (one read of the whole
/// stage per window; memory follows the window's purchases).
pub const PREPARE_WINDOW_DAYS: usize = 7;

/// The ClickHouse tables a day is written to.
pub const CLICKHOUSE_TABLES: [&str; 7] = [
    "sales",
    "daily_total",
    "daily_seller",
    "daily_category",
    "daily_product",
    "hourly_sales",
    "daily_top_products",
];

/// How a run builds its days.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Business time zone: sets day boundaries (already in `event_date`) and hours.
    pub timezone: chrono_tz::Tz,
    pub pii: PiiMode,
    /// An arrival of a purchase id stamped no more than this after an earlier arrival of
    /// it is a re-send (not counted); later, a new purchase (`[stream] dedup_horizon`).
    pub dedup_horizon: std::time::Duration,
}

/// What one day's run did. `rows_in = rows_out + duplicates`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DaySummary {
    pub date: NaiveDate,
    /// Rows of the day in `stage.purchases`: every arrival, re-sends included.
    pub rows_in: u64,
    /// Rows written to `stage.sales` and ClickHouse `sales`: each purchase once.
    pub rows_out: u64,
    /// Rows of the day not counted: later arrivals of a purchase id (re-sends), including
    /// the first arrival on this day of an id that arrived earlier on another day.
    pub duplicates: u64,
    /// Of `duplicates`, later arrivals whose content differs from the first arrival
    /// (ignored: the first arrival counts).
    pub conflicting_duplicates: u64,
    /// Of `duplicates`, purchase ids whose first arrival is on another day (counted there).
    pub counted_on_other_day: u64,
    /// Purchases whose client is not in `stage.clients`.
    pub unknown_clients: u64,
    /// Purchases whose product is not in `stage.products`.
    pub unknown_products: u64,
    /// Purchases without a seller or with one not in `stage.sellers`.
    pub unknown_sellers: u64,
    /// Revenue of the day, exact.
    pub revenue: String,
    /// Rows now in each ClickHouse table's day.
    pub clickhouse_rows: BTreeMap<String, u64>,
    /// `stage.sales` version written.
    pub stage_version: u64,
    /// Reading, joining and aggregating the stage (DataFusion).
    pub query_seconds: f64,
    /// Writing `stage.sales`.
    pub stage_seconds: f64,
    /// Loading and swapping the ClickHouse day.
    pub clickhouse_seconds: f64,
    pub seconds: f64,
}

/// The days of `from..=to`, checked.
pub fn days(from: NaiveDate, to: NaiveDate) -> Result<Vec<NaiveDate>> {
    if from > to {
        return Err(Error::Range(format!("--from {from} is after --to {to}")));
    }
    let n = (to - from).num_days() + 1;
    if n > MAX_DAYS {
        return Err(Error::Range(format!(
            "{from}..{to} is {n} days; one run takes at most {MAX_DAYS}"
        )));
    }
    Ok(from.iter_days().take(n as usize).collect())
}

/// Yesterday in the business time zone: the default day of a run.
pub fn yesterday(tz: chrono_tz::Tz, now: DateTime<Utc>) -> NaiveDate {
    let today = now.with_timezone(&tz).date_naive();
    today.pred_opt().unwrap_or(today)
}

/// The batch job over one stage and one ClickHouse database.
///
/// The dimension tables are read at the versions found when the job is created, so every
/// day of a range joins the same dimensions.
pub struct BatchJob {
    stage: Stage,
    clickhouse: ClickHouse,
    options: BatchOptions,
    ctx: SessionContext,
    /// Rows of the cached `clients`: the client keys in use (`crate::keys`).
    known_clients: u32,
    /// The window of days `multi_day_arrivals` is prepared for.
    prepared: std::sync::Mutex<Option<(NaiveDate, NaiveDate)>>,
}

impl std::fmt::Debug for BatchJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchJob")
            .field("stage", &self.stage)
            .field("clickhouse", &self.clickhouse)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl BatchJob {
    /// Checks that ClickHouse has the batch tables and registers the stage tables.
    pub async fn new(stage: Stage, clickhouse: ClickHouse, options: BatchOptions) -> Result<Self> {
        clickhouse.require_tables(&CLICKHOUSE_TABLES).await?;
        let ctx = SessionContext::new_with_config(session_config());
        stage
            .register(
                &ctx,
                &[
                    Table::Purchases,
                    Table::Clients,
                    Table::Sellers,
                    Table::Products,
                ],
            )
            .await?;
        let known_clients = cache_dimensions(&ctx).await?;
        Ok(Self {
            stage,
            clickhouse,
            options,
            ctx,
            known_clients,
            prepared: std::sync::Mutex::new(None),
        })
    }

    /// Runs `days` in order, stopping at the first failure. Returns the summaries of the
    /// days done and the failure, if any.
    ///
    /// While one day is written (`stage.sales` and ClickHouse), the next day is built: the
    /// query and the loads use different resources, so a range takes about the longer of
    /// the two rather than their sum. Days still land in order, each on its own.
    pub async fn run_days(
        &self,
        days: &[NaiveDate],
    ) -> (Vec<DaySummary>, Option<(NaiveDate, Error)>) {
        self.run_days_with_progress(days, |_| {}).await
    }

    /// [`Self::run_days`], calling `on_day` with each day once it is written.
    pub async fn run_days_with_progress(
        &self,
        days: &[NaiveDate],
        mut on_day: impl FnMut(NaiveDate),
    ) -> (Vec<DaySummary>, Option<(NaiveDate, Error)>) {
        let mut done = Vec::with_capacity(days.len());
        let mut writing: Option<(NaiveDate, Timed<Built>)> = None;
        for (i, &day) in days.iter().enumerate() {
            if i % PREPARE_WINDOW_DAYS == 0 {
                let window = &days[i..days.len().min(i + PREPARE_WINDOW_DAYS)];
                let last = window.last().copied().unwrap_or(day);
                if let Err(e) = self.prepare(day, last).await {
                    return (done, Some((day, e)));
                }
            }
            let (built, written) = match writing.take() {
                None => (self.timed_build(day).await, None),
                Some((prev, b)) => {
                    let (built, written) = futures::join!(self.timed_build(day), self.write(b));
                    (built, Some((prev, written)))
                }
            };
            if let Some((prev, written)) = written {
                match written {
                    Ok(s) => {
                        on_day(prev);
                        done.push(s);
                    }
                    Err(e) => return (done, Some((prev, e))),
                }
            }
            match built {
                Ok(b) => writing = Some((day, b)),
                Err(e) => return (done, Some((day, e))),
            }
        }
        if let Some((day, b)) = writing {
            match self.write(b).await {
                Ok(s) => {
                    on_day(day);
                    done.push(s);
                }
                Err(e) => return (done, Some((day, e))),
            }
        }
        (done, None)
    }

    /// Builds one day into `stage.sales` and replaces it in ClickHouse.
    pub async fn run_day(&self, day: NaiveDate) -> Result<DaySummary> {
        let built = self.timed_build(day).await?;
        self.write(built).await
    }

    async fn timed_build(&self, day: NaiveDate) -> Result<Timed<Built>> {
        let started = Instant::now();
        let value = self.build(day).await?;
        Ok(Timed {
            started,
            seconds: started.elapsed().as_secs_f64(),
            value,
        })
    }

    /// Writes a built day: `stage.sales` and ClickHouse at the same time, each on a task of
    /// its own so that the writes and the next day's query share the worker threads (both
    /// are replaced whole, and a failure of either fails the day once both have ended).
    async fn write(&self, built: Timed<Built>) -> Result<DaySummary> {
        let Timed {
            started,
            seconds: query_seconds,
            value: built,
        } = built;
        let Built {
            sales,
            mut tables,
            summary,
        } = built;
        let day = summary.date;
        // The rows go out in ClickHouse's sorting order (`crate::order`); sorted here, beside
        // the next day's query, rather than in it.
        let sort_started = Instant::now();
        let sorted = tokio::task::spawn_blocking(move || order::by_seller_and_purchase(sales));
        let sales = joined(
            day,
            "ordering sales rows",
            sorted.await.map(|r| {
                r.map_err(|source| Error::Arrow {
                    day,
                    step: "order sales rows",
                    source,
                })
            }),
        )?;
        tracing::debug!(%day, seconds = sort_started.elapsed().as_secs_f64(), "sales rows ordered");
        for t in tables.iter_mut().filter(|t| t.table == "sales") {
            t.batches = sales.clone();
        }
        let stage = self.stage.clone();
        let stage_task = tokio::spawn(async move {
            let t = Instant::now();
            let mut sales = sales;
            if sales.is_empty() {
                sales.push(RecordBatch::new_empty(arrow_schema::stage_sale()));
            }
            let predicate = format!("event_date = '{}'", day.format("%Y-%m-%d"));
            let version = stage.replace_where(Table::Sales, sales, &predicate).await?;
            Ok::<_, Error>((version, t.elapsed().as_secs_f64()))
        });
        let clickhouse = self.clickhouse.clone();
        let clickhouse_task = tokio::spawn(async move {
            let t = Instant::now();
            let loaded = clickhouse.replace_day(day, &tables).await?;
            Ok::<_, Error>((loaded, t.elapsed().as_secs_f64()))
        });
        let (staged, loaded) = futures::join!(stage_task, clickhouse_task);
        let (stage_version, stage_seconds) = joined(day, "writing stage.sales", staged)?;
        let (loaded, clickhouse_seconds) = joined(day, "loading ClickHouse", loaded)?;

        let s = DaySummary {
            date: day,
            stage_version,
            clickhouse_rows: loaded.into_iter().collect(),
            query_seconds,
            stage_seconds,
            clickhouse_seconds,
            seconds: started.elapsed().as_secs_f64(),
            ..summary
        };
        tracing::info!(
            day = %day,
            rows_in = s.rows_in,
            rows_out = s.rows_out,
            duplicates = s.duplicates,
            unknown_clients = s.unknown_clients,
            unknown_products = s.unknown_products,
            unknown_sellers = s.unknown_sellers,
            seconds = s.seconds,
            "batch day done"
        );
        Ok(s)
    }

    async fn sql(
        &self,
        day: NaiveDate,
        step: &'static str,
        query: &str,
    ) -> Result<Vec<RecordBatch>> {
        run_sql(&self.ctx, day, step, query, Some(day)).await
    }

    /// The day's sales rows and ClickHouse rows, without writing anything.
    /// Reads, for the days `from..=to`, the arrivals that can make a purchase count on
    /// another day ([`sql::MULTI_DAY_ARRIVALS`]); [`BatchJob::build`] of a day outside the
    /// prepared window prepares that day alone. `run_days` prepares a window of up to
    /// [`PREPARE_WINDOW_DAYS`] days at a time, reading the whole stage once per window.
    pub async fn prepare(&self, from: NaiveDate, to: NaiveDate) -> Result<()> {
        let step = "find purchases staged on more than one day";
        let err = |source| Error::Query {
            day: from,
            step,
            source: Box::new(source),
        };
        let started = Instant::now();
        let df = self
            .ctx
            .sql(sql::MULTI_DAY_ARRIVALS)
            .await
            .map_err(err)?
            .with_param_values(vec![
                ScalarValue::Date32(Some(date32(from))),
                ScalarValue::Date32(Some(date32(to))),
            ])
            .map_err(err)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches: Vec<RecordBatch> = df
            .collect()
            .await
            .map_err(err)?
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .collect();
        tracing::debug!(
            %from,
            %to,
            rows = count_rows(&batches),
            seconds = started.elapsed().as_secs_f64(),
            "{step}"
        );
        let table = MemTable::try_new(schema, vec![batches]).map_err(err)?;
        let _ = self.ctx.deregister_table("multi_day_arrivals");
        self.ctx
            .register_table("multi_day_arrivals", Arc::new(table))
            .map_err(err)?;
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some((from, to));
        Ok(())
    }

    pub async fn build(&self, day: NaiveDate) -> Result<Built> {
        let covered = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(from, to)| from <= day && day <= to);
        if !covered {
            self.prepare(day, day).await?;
        }
        // The day's arrivals, kept in memory for the next steps.
        let arrivals = self.sql(day, "read purchases", sql::DAY_PURCHASES).await?;
        let rows_in = count_rows(&arrivals);
        register(&self.ctx, "day_purchases", arrivals, day)?;
        let resent = self
            .sql(day, "order re-sent purchases", sql::RESENT_ARRIVALS)
            .await?;
        register(&self.ctx, "resent_arrivals", resent, day)?;
        let conflicts = self
            .sql(day, "find conflicting duplicates", sql::CONFLICTS)
            .await?;
        let conflicting = first_int(&conflicts).unwrap_or(0);
        let day_firsts = self.sql(day, "first arrivals", &sql::day_firsts()).await?;
        let firsts = count_rows(&day_firsts);
        let _ = self.ctx.deregister_table("day_purchases");
        let _ = self.ctx.deregister_table("resent_arrivals");
        register(&self.ctx, "day_firsts", day_firsts, day)?;

        let claimed = self
            .sql(
                day,
                "find purchases counted on other days",
                &sql::claimed_elsewhere(self.options.dedup_horizon.as_secs()),
            )
            .await?;
        let counted_on_other_day = count_rows(&claimed);
        register(&self.ctx, "claimed", claimed, day)?;

        let raw = self
            .sql(day, "join sales", &sql::sales(self.options.pii))
            .await?;
        let _ = self.ctx.deregister_table("day_firsts");
        let _ = self.ctx.deregister_table("claimed");
        let stage_schema = arrow_schema::stage_sale();
        let arrow_err = |step| move |source| Error::Arrow { day, step, source };
        let keyed = conform(&raw, &keys::with_key_fields(&stage_schema))
            .map_err(arrow_err("shape sales rows"))?;
        // The engine's rows (string views into its read buffers) are not needed any more.
        drop(raw);
        let keyed = keys::fill_client_keys(keyed, self.known_clients)
            .map_err(arrow_err("key unknown clients"))?;
        // `stage.sales` and ClickHouse get the stage's columns; the aggregates the keys too.
        let sales = keyed
            .iter()
            .map(|b| {
                RecordBatch::try_new(
                    stage_schema.clone(),
                    b.columns()[..stage_schema.fields().len()].to_vec(),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err("shape sales rows"))?;
        let rows_out = count_rows(&sales);
        if rows_out != firsts - counted_on_other_day {
            return Err(Error::DimensionFanOut {
                day,
                purchases: firsts - counted_on_other_day,
                rows: rows_out,
            });
        }

        // Aggregates over the day's sales rows, with the business hour beside them.
        // One partition: a day's sales rows are a few million at most, and the write of
        // the day before runs beside this on the other threads; splitting the rows by hash
        // across partitions would copy every row once more for no gain.
        let agg = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let with_hour =
            add_hour(&keyed, self.options.timezone).map_err(arrow_err("hour of sales"))?;
        drop(keyed);
        register(&agg, "sales", with_hour, day)?;
        for names in ["sellers", "products", "categories"] {
            let err = |source| Error::Query {
                day,
                step: "register dimension names",
                source: Box::new(source),
            };
            let table = self.ctx.table_provider(names).await.map_err(err)?;
            agg.register_table(names, table).map_err(err)?;
        }
        let q = |step, query: String| {
            let agg = &agg;
            async move { run_sql(agg, day, step, &query, None).await }
        };
        let daily_total = q("daily total", sql::daily_total()).await?;
        let daily_seller = q("daily by seller", sql::daily_by(sql::BY_SELLER)).await?;
        let daily_category = q("daily by category", sql::daily_by(sql::BY_CATEGORY)).await?;
        let daily_product = q("daily by product", sql::daily_by(sql::BY_PRODUCT)).await?;
        let hourly = q("hourly", sql::hourly()).await?;
        // Ranked from the per-product rows rather than from the sales again.
        register(&agg, "daily_product", daily_product.clone(), day)?;
        let top = q("top products", sql::top_products()).await?;

        let total = Totals::read(&daily_total);
        let summary = DaySummary {
            date: day,
            rows_in,
            rows_out,
            duplicates: rows_in - rows_out,
            conflicting_duplicates: conflicting,
            counted_on_other_day,
            unknown_clients: total.unknown_clients,
            unknown_products: total.unknown_products,
            unknown_sellers: total.unknown_sellers,
            revenue: total.revenue,
            ..Default::default()
        };
        let tables = CLICKHOUSE_TABLES
            .iter()
            .zip([
                sales.clone(),
                daily_total,
                daily_seller,
                daily_category,
                daily_product,
                hourly,
                top,
            ])
            .map(|(table, batches)| TableRows {
                table: table.to_string(),
                batches,
            })
            .collect();
        Ok(Built {
            sales,
            tables,
            summary,
        })
    }
}

/// A day built in memory: `stage.sales` rows, the ClickHouse rows per table, the counts.
/// A value and when its making started and how long it took.
#[derive(Debug)]
struct Timed<T> {
    started: Instant,
    seconds: f64,
    value: T,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub sales: Vec<RecordBatch>,
    pub tables: Vec<TableRows>,
    pub summary: DaySummary,
}

async fn run_sql(
    ctx: &SessionContext,
    day: NaiveDate,
    step: &'static str,
    query: &str,
    param: Option<NaiveDate>,
) -> Result<Vec<RecordBatch>> {
    let err = |source| Error::Query {
        day,
        step,
        source: Box::new(source),
    };
    let mut df = ctx.sql(query).await.map_err(err)?;
    if let Some(d) = param {
        df = df
            .with_param_values(vec![ScalarValue::Date32(Some(date32(d)))])
            .map_err(err)?;
    }
    let started = Instant::now();
    let batches = df.collect().await.map_err(err)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    tracing::debug!(%day, step, rows, seconds = started.elapsed().as_secs_f64(), "query");
    Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// The answer of a spawned task: a panic goes on as a panic, a cancelled task is an error.
fn joined<T>(
    day: NaiveDate,
    step: &'static str,
    r: std::result::Result<Result<T>, tokio::task::JoinError>,
) -> Result<T> {
    match r {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Cancelled { day, step }),
    }
}

/// The query engine's settings for the batch SQL.
///
/// A day joins a million or so purchases to dimension tables of up to a few million rows.
/// Joins build their hash table from the whole (smaller) side once and probe it from
/// every partition of the other side, instead of hash-repartitioning both sides (the
/// default above 128k rows): repartitioning copied every row of both sides on every day.
/// Dynamic join filters help scans that can skip files, not in-memory day tables, and
/// cost a min/max pass over every build side.
fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(false)
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold",
            1 << 30,
        )
        .set_usize(
            "datafusion.optimizer.hash_join_single_partition_threshold_rows",
            1 << 24,
        )
        .set_bool(
            "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
            false,
        )
}

/// The dimension columns the sales query reads, per table.
const DIMENSION_COLUMNS: [(&str, &[&str]); 3] = [
    (
        "clients",
        &["client_id", "first_name", "last_name", "email", "address"],
    ),
    ("products", &["product_id", "name", "category", "price"]),
    ("sellers", &["seller_id", "name", "region"]),
];

/// Reads the columns of the dimension tables that the sales query joins, once, and
/// registers them in memory under the same names, with their integer keys
/// (`crate::keys`), and the categories of the products as `categories`. Every day of a
/// run then joins the same rows without decoding the dimension files again. Returns the
/// number of clients.
async fn cache_dimensions(ctx: &SessionContext) -> Result<u32> {
    let mut clients = 0;
    for (table, columns) in DIMENSION_COLUMNS {
        let err = |source| Error::Dimension {
            table,
            source: Box::new(source),
        };
        let started = Instant::now();
        let df = ctx
            .table(table)
            .await
            .map_err(err)?
            .select_columns(columns)
            .map_err(err)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(err)?;
        let rows = count_rows(&batches);
        let arrow_err = |source| {
            err(deltalake::datafusion::error::DataFusionError::ArrowError(
                Box::new(source),
                None,
            ))
        };
        let mut extra = None;
        let keyed = match table {
            "clients" => {
                clients = u32::try_from(rows).map_err(|_| {
                    arrow_err(deltalake::arrow::error::ArrowError::ComputeError(format!(
                        "{rows} clients: more than a UInt32 key numbers"
                    )))
                })?;
                keys::clients(&batches)
            }
            "sellers" => keys::sellers(&batches),
            _ => keys::products(&batches).map(|(keyed, categories)| {
                extra = Some(categories);
                keyed
            }),
        }
        .map_err(arrow_err)?;
        drop(batches);
        tracing::debug!(
            table,
            rows,
            seconds = started.elapsed().as_secs_f64(),
            "dimension cached"
        );
        let schema = keyed
            .first()
            .map_or_else(|| empty_keyed(&schema, table), |b| b.schema());
        let mem = MemTable::try_new(schema, vec![keyed]).map_err(err)?;
        let _ = ctx.deregister_table(table);
        ctx.register_table(table, Arc::new(mem)).map_err(err)?;
        if let Some(categories) = extra {
            let mem =
                MemTable::try_new(categories.schema(), vec![vec![categories]]).map_err(err)?;
            ctx.register_table("categories", Arc::new(mem))
                .map_err(err)?;
        }
    }
    Ok(clients)
}

/// The schema of a cached dimension with its keys when the table has no rows.
fn empty_keyed(schema: &SchemaRef, table: &str) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let names: &[&str] = match table {
        "clients" => &[keys::CLIENT_KEY],
        "sellers" => &[keys::SELLER_KEY],
        _ => &[keys::PRODUCT_KEY, keys::CATEGORY_KEY],
    };
    fields.extend(names.iter().map(|n| Field::new(*n, DataType::UInt32, true)));
    Arc::new(Schema::new(fields))
}

/// Registers batches as an in-memory table (replacing one of the same name).
fn register(
    ctx: &SessionContext,
    name: &str,
    batches: Vec<RecordBatch>,
    day: NaiveDate,
) -> Result<()> {
    let _ = ctx.deregister_table(name);
    let err = |source| Error::Query {
        day,
        step: "register day table",
        source: Box::new(source),
    };
    // An empty result still has a schema; MemTable needs it from somewhere.
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return register_empty(ctx, name, day),
    };
    let table = MemTable::try_new(schema, vec![batches]).map_err(err)?;
    ctx.register_table(name, Arc::new(table)).map_err(err)?;
    Ok(())
}

/// The empty stand-ins of the day tables when a day has no rows.
fn register_empty(ctx: &SessionContext, name: &str, day: NaiveDate) -> Result<()> {
    let schema: SchemaRef = match name {
        "sales" => {
            let mut fields: Vec<Field> = keys::with_key_fields(&arrow_schema::stage_sale())
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(hour_field());
            Arc::new(Schema::new(fields))
        }
        "claimed" => Arc::new(Schema::new(vec![Field::new(
            "purchase_id",
            DataType::Utf8,
            false,
        )])),
        "daily_product" => Arc::new(Schema::new(vec![
            Field::new("event_date", DataType::Date32, false),
            Field::new("product_id", DataType::Utf8, false),
            Field::new("revenue", DataType::Decimal128(38, 2), true),
            Field::new("purchases", DataType::Int64, false),
            Field::new("items", DataType::Int64, true),
            Field::new("distinct_clients", DataType::Int64, false),
            Field::new("product_name", DataType::Utf8, true),
            Field::new("category", DataType::Utf8, true),
        ])),
        "resent_arrivals" => {
            let mut fields: Vec<Field> = arrow_schema::stage_purchase()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new("arrival", DataType::UInt64, false));
            Arc::new(Schema::new(fields))
        }
        _ => arrow_schema::stage_purchase(),
    };
    let table = MemTable::try_new(schema, vec![vec![]]).map_err(|source| Error::Query {
        day,
        step: "register day table",
        source: Box::new(source),
    })?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|source| Error::Query {
            day,
            step: "register day table",
            source: Box::new(source),
        })?;
    Ok(())
}

/// Days since 1970-01-01, the Arrow `Date32` value.
pub(crate) fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

fn count_rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

fn first_int(batches: &[RecordBatch]) -> Option<u64> {
    let b = batches.first()?;
    let col = deltalake::arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
    let a: &Int64Array = col.as_primitive();
    a.iter()
        .next()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
}

/// Casts each batch to `schema` (by column name): the engine may hand back string views or
/// wider types; the stage table wants exactly its own.
pub(crate) fn conform(
    batches: &[RecordBatch],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::error::ArrowError;
    batches
        .iter()
        .map(|b| {
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = b.column_by_name(f.name()).ok_or_else(|| {
                        ArrowError::SchemaError(format!("query result lacks column {}", f.name()))
                    })?;
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        deltalake::arrow::compute::cast(c, f.data_type())
                    }
                })
                .collect::<Result<_, ArrowError>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect()
}

fn hour_field() -> Field {
    Field::new(
        "hour",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

/// The start of the business-time-zone hour of each sale's timestamp, as a UTC instant: the
/// timestamp minus its local minutes and seconds (never ambiguous, even across DST).
pub(crate) fn hour_start(ts_micros: i64, tz: chrono_tz::Tz) -> i64 {
    let Some(utc) = DateTime::<Utc>::from_timestamp_micros(ts_micros) else {
        return ts_micros;
    };
    let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
    let local = utc.naive_utc() + offset;
    let into_hour = i64::from(local.minute()) * 60_000_000
        + i64::from(local.second()) * 1_000_000
        + i64::from(local.nanosecond() / 1_000);
    ts_micros - into_hour
}

/// The sales rows with an `hour` column added.
fn add_hour(
    batches: &[RecordBatch],
    tz: chrono_tz::Tz,
) -> Result<Vec<RecordBatch>, deltalake::arrow::error::ArrowError> {
    batches
        .iter()
        .map(|b| {
            let ts = b
                .column_by_name("timestamp")
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .cloned()
                .ok_or_else(|| {
                    deltalake::arrow::error::ArrowError::SchemaError(
                        "sales rows lack a microsecond timestamp".into(),
                    )
                })?;
            let hours: TimestampMicrosecondArray = ts.unary(|v| hour_start(v, tz));
            keys::with_columns(
                b,
                vec![(hour_field(), Arc::new(hours.with_timezone("UTC")))],
            )
        })
        .collect()
}

/// The day's totals read back from the `daily_total` rows.
#[derive(Debug, Default)]
struct Totals {
    revenue: String,
    unknown_clients: u64,
    unknown_products: u64,
    unknown_sellers: u64,
}

impl Totals {
    fn read(batches: &[RecordBatch]) -> Self {
        let mut t = Totals {
            revenue: "0.00".into(),
            ..Default::default()
        };
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            return t;
        };
        if let Some(c) = b.column_by_name("revenue") {
            if c.data_type().is_numeric() && !c.is_null(0) {
                if let Some(d) = c.as_primitive_opt::<Decimal128Type>() {
                    t.revenue = d.value_as_string(0);
                }
            }
        }
        let int = |name: &str| -> u64 {
            b.column_by_name(name)
                .and_then(|c| deltalake::arrow::compute::cast(c, &DataType::Int64).ok())
                .and_then(|c| {
                    c.as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                        .iter()
                        .next()
                        .flatten()
                })
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0)
        };
        t.unknown_clients = int("unknown_clients");
        t.unknown_products = int("unknown_products");
        t.unknown_sellers = int("unknown_sellers");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(days(d("2026-02-27"), d("2026-03-01")).expect("ok").len(), 3);
        assert!(days(d("2026-03-02"), d("2026-03-01")).is_err());
        assert!(days(d("2000-01-01"), d("2026-03-01")).is_err());
    }

    #[test]
    fn yesterday_is_in_the_business_time_zone() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T23:30:00Z")
            .expect("ts")
            .with_timezone(&Utc);
        assert_eq!(yesterday(chrono_tz::UTC, now), d("2026-11-21"));
        assert_eq!(yesterday(chrono_tz::Asia::Tokyo, now), d("2026-11-22"));
    }

    #[test]
    fn hours_start_on_the_local_hour() {
        let micros = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("ts")
                .timestamp_micros()
        };
        assert_eq!(
            hour_start(micros("2026-11-21T10:47:12.5Z"), chrono_tz::UTC),
            micros("2026-11-21T10:00:00Z")
        );
        // India is UTC+5:30: its hours start at half past in UTC.
        assert_eq!(
            hour_start(micros("2026-11-21T10:47:12Z"), chrono_tz::Asia::Kolkata),
            micros("2026-11-21T10:30:00Z")
        );
        assert_eq!(
            hour_start(micros("2026-11-21T10:17:12Z"), chrono_tz::Asia::Kolkata),
            micros("2026-11-21T09:30:00Z")
        );
        // The repeated hour of a DST change stays two distinct hours.
        let a = hour_start(micros("2026-10-25T00:30:00Z"), chrono_tz::Europe::Berlin);
        let b = hour_start(micros("2026-10-25T01:30:00Z"), chrono_tz::Europe::Berlin);
        assert_eq!(b - a, 3_600_000_000);
    }
}
