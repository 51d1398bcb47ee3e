//! `stage.dead_letters` as something to work with: filtered reads (by source, reason and
//! day), and the two writes a replay needs, each idempotent on its own so a replay killed
//! between them is finished by the next one: rows inserted into an event table only where
//! their Kafka position is not there yet, and dead letters removed by position.
//!
//! Filters and positions become DataFusion expressions with literal values, never SQL text.

use chrono::NaiveDate;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::{col, lit, Expr, SessionContext};
use deltalake::kernel::transaction::CommitProperties;

use crate::{Error, Result, Stage, Table};

/// Which dead letters: every given condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The extractor (`purchases`, `interactions`).
    pub source: Option<String>,
    pub reason: Option<String>,
    /// Business days of `dead_lettered_at` (the table's partition column), inclusive.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl DeadLetterFilter {
    fn expr(&self) -> Option<Expr> {
        let day = |d: NaiveDate| {
            lit(deltalake::datafusion::scalar::ScalarValue::Date32(Some(
                (d - NaiveDate::default()).num_days() as i32,
            )))
        };
        let mut conds = Vec::new();
        if let Some(s) = &self.source {
            conds.push(col("source").eq(lit(s.clone())));
        }
        if let Some(r) = &self.reason {
            conds.push(col("reason").eq(lit(r.clone())));
        }
        if let Some(d) = self.from {
            conds.push(col("event_date").gt_eq(day(d)));
        }
        if let Some(d) = self.to {
            conds.push(col("event_date").lt_eq(day(d)));
        }
        conds.into_iter().reduce(Expr::and)
    }
}

/// A Kafka position: topic, partition, offset.
pub type KafkaPosition = (String, i32, i64);

fn df_err(table: Table) -> impl Fn(deltalake::datafusion::error::DataFusionError) -> Error {
    move |e| Error::Delta {
        operation: "query",
        table: table.name().to_string(),
        source: Box::new(e.into()),
    }
}

/// `col IN (values)` over positions of one topic and partition, OR-ed across them.
fn positions_expr(positions: &[KafkaPosition]) -> Option<Expr> {
    let mut by_part: std::collections::BTreeMap<(&str, i32), Vec<i64>> = Default::default();
    for (t, p, o) in positions {
        by_part.entry((t.as_str(), *p)).or_default().push(*o);
    }
    by_part
        .into_iter()
        .map(|((t, p), offsets)| {
            col("source_topic")
                .eq(lit(t.to_string()))
                .and(col("source_partition").eq(lit(p)))
                .and(col("source_offset").in_list(offsets.into_iter().map(lit).collect(), false))
        })
        .reduce(Expr::or)
}

impl Stage {
    /// The dead letters `filter` selects, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
    ) -> Result<Vec<RecordBatch>> {
        let table = Table::DeadLetters;
        let ctx = SessionContext::new();
        self.register(&ctx, &[table]).await?;
        let err = df_err(table);
        let mut df = ctx.table(table.name()).await.map_err(&err)?;
        if let Some(e) = filter.expr() {
            df = df.filter(e).map_err(&err)?;
        }
        df = df
            .sort(vec![
                col("dead_lettered_at").sort(true, true),
                col("source_partition").sort(true, true),
                col("source_offset").sort(true, true),
            ])
            .map_err(&err)?;
        if let Some(n) = limit {
            df = df.limit(0, Some(n)).map_err(&err)?;
        }
        df.collect().await.map_err(&err)
    }

    /// Inserts the rows of `batch` (an event table's schema) whose Kafka position is not in
    /// `table` yet; returns how many. Running it again with the same rows inserts nothing.
    pub async fn insert_missing_positions(&self, table: Table, batch: RecordBatch) -> Result<u64> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let handle = self.open(table).await?;
        let columns = crate::column_names(&table.schema());
        let ctx = SessionContext::new();
        let source = ctx.read_batch(batch).map_err(df_err(table))?;
        let on = col("target.source_topic")
            .eq(col("source.source_topic"))
            .and(col("target.source_partition").eq(col("source.source_partition")))
            .and(col("target.source_offset").eq(col("source.source_offset")));
        let err = Self::delta_err("insert replayed rows", table);
        let (_, metrics) = handle
            .merge(source, on)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_writer_properties(table.writer_properties())
            .with_commit_properties(CommitProperties::default().with_max_retries(20))
            .when_not_matched_insert(|i| crate::insert_all(i, &columns))
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(metrics.num_target_rows_inserted as u64)
    }

    /// Removes the dead letters at `positions`; returns how many rows went.
    pub async fn remove_dead_letters(&self, positions: &[KafkaPosition]) -> Result<u64> {
        let Some(predicate) = positions_expr(positions) else {
            return Ok(0);
        };
        let table = Table::DeadLetters;
        let handle = self.open(table).await?;
        let err = Self::delta_err("remove replayed dead letters", table);
        let (_, metrics) = handle
            .delete()
            .with_predicate(predicate)
            .with_writer_properties(table.writer_properties())
            .with_commit_properties(CommitProperties::default().with_max_retries(20))
            .await
            .map_err(err)?;
        // A delete that drops whole files may not know its row count.
        Ok(metrics
            .num_deleted_rows
            .map_or(positions.len() as u64, |n| n as u64))
    }
}
