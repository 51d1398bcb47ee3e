//! Dead letters replayed: each selected record of a Kafka source (`purchases`,
//! `interactions`) is validated again by today's rules, as of the moment it was first judged
//! (its `dead_lettered_at`, so "too old" and "in the future" mean what they meant then). The
//! ones now valid are staged under their original Kafka position and removed from the dead
//! letters; the rest stay, counted by their reason now.
//!
//! Exactly once: the insert takes only positions the event table does not hold yet, and the
//! removal is by position, so a replay killed between the two is finished by the next one,
//! and a second replay stages nothing.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    Array, AsArray, BinaryArray, Int32Array, Int64Array, TimestampMicrosecondArray,
};
use deltalake::arrow::record_batch::RecordBatch;
use lakeshop_stage::{DeadLetterFilter, KafkaPosition, Stage, Table};
use std::collections::BTreeMap;

use crate::kafka::{EventKind, EventRows, Position};
use crate::{Error, Result};

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Dead letters selected.
    pub read: u64,
    /// Valid by today's rules.
    pub valid: u64,
    /// Inserted into their event table (fewer than `valid` when a position was staged by
    /// an earlier replay that did not finish).
    pub staged: u64,
    /// Removed from the dead letters.
    pub removed: u64,
    /// Still invalid, by their reason now.
    pub still_invalid: BTreeMap<String, u64>,
    /// Not replayable: no payload, no Kafka position, or not a Kafka source.
    pub skipped: u64,
    pub dry_run: bool,
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Internal(format!("dead_letters has no usable column {name}")))
}

/// The batch with its text and binary columns as plain `Utf8` / `Binary` (a scan may hand
/// them over as views).
fn plain(b: &RecordBatch) -> Result<RecordBatch> {
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::with_capacity(b.num_columns());
    let mut columns = Vec::with_capacity(b.num_columns());
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        let to = match f.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
            DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
            _ => None,
        };
        match to {
            Some(t) => {
                columns.push(deltalake::arrow::compute::cast(c, &t)?);
                fields.push(Field::new(f.name(), t, f.is_nullable()));
            }
            None => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Replays the dead letters `filter` selects (see the module doc). With `dry_run` nothing is
/// written: the stats say what would be.
pub async fn replay(
    stage: &Stage,
    filter: &DeadLetterFilter,
    timezone: chrono_tz::Tz,
    dry_run: bool,
) -> Result<ReplayStats> {
    let batches = stage
        .dead_letters(filter, None)
        .await?
        .iter()
        .map(plain)
        .collect::<Result<Vec<_>>>()?;
    let mut stats = ReplayStats {
        dry_run,
        ..ReplayStats::default()
    };
    let kinds = [EventKind::Purchases, EventKind::Interactions];
    let mut rows = kinds.map(|k| EventRows::new(k, timezone));
    let mut positions: [Vec<KafkaPosition>; 2] = [Vec::new(), Vec::new()];
    for b in &batches {
        let source = b
            .column_by_name("source")
            .map(|c| c.as_string::<i32>())
            .ok_or_else(|| Error::Internal("dead_letters has no source column".into()))?;
        let topic = b
            .column_by_name("source_topic")
            .map(|c| c.as_string::<i32>())
            .ok_or_else(|| Error::Internal("dead_letters has no source_topic column".into()))?;
        let partition: &Int32Array = column(b, "source_partition")?;
        let offset: &Int64Array = column(b, "source_offset")?;
        let payload: &BinaryArray = column(b, "payload")?;
        let at: &TimestampMicrosecondArray = column(b, "dead_lettered_at")?;
        for i in 0..b.num_rows() {
            stats.read += 1;
            let kind = match source.value(i) {
                "purchases" => 0,
                "interactions" => 1,
                _ => {
                    stats.skipped += 1;
                    continue;
                }
            };
            if topic.is_null(i) || partition.is_null(i) || offset.is_null(i) || payload.is_null(i) {
                stats.skipped += 1;
                continue;
            }
            let (t, p, o) = (topic.value(i), partition.value(i), offset.value(i));
            let pos = Position {
                topic: t,
                partition: p,
                offset: o,
            };
            let judged = DateTime::<Utc>::from_timestamp_micros(at.value(i)).unwrap_or_default();
            match rows[kind].push(payload.value(i), pos, judged) {
                Ok(()) => {
                    stats.valid += 1;
                    positions[kind].push((t.to_string(), p, o));
                }
                Err(r) => {
                    *stats
                        .still_invalid
                        .entry(r.reason.as_str().to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    if dry_run {
        return Ok(stats);
    }
    for (k, table) in [Table::Purchases, Table::Interactions]
        .into_iter()
        .enumerate()
    {
        if positions[k].is_empty() {
            continue;
        }
        let batch = rows[k].finish()?;
        stats.staged += stage.insert_missing_positions(table, batch).await?;
        stats.removed += stage.remove_dead_letters(&positions[k]).await?;
    }
    tracing::info!(
        read = stats.read,
        valid = stats.valid,
        staged = stats.staged,
        removed = stats.removed,
        "dead letters replayed"
    );
    Ok(stats)
}

/// One dead letter as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub source: String,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
    pub detail: String,
    pub dead_lettered_at: DateTime<Utc>,
    /// Business day of `dead_lettered_at`.
    pub day: chrono::NaiveDate,
}

/// The dead letters `filter` selects, oldest first, at most `limit`.
pub async fn read(
    stage: &Stage,
    filter: &DeadLetterFilter,
    limit: Option<usize>,
) -> Result<Vec<DeadLetterRecord>> {
    let mut out = Vec::new();
    for b in stage.dead_letters(filter, limit).await? {
        let b = plain(&b)?;
        let text = |name: &str| {
            b.column_by_name(name)
                .map(|c| c.as_string::<i32>().clone())
                .ok_or_else(|| Error::Internal(format!("dead_letters has no column {name}")))
        };
        let (source, topic, reason, detail) = (
            text("source")?,
            text("source_topic")?,
            text("reason")?,
            text("detail")?,
        );
        let partition: &Int32Array = column(&b, "source_partition")?;
        let offset: &Int64Array = column(&b, "source_offset")?;
        let payload: &BinaryArray = column(&b, "payload")?;
        let at: &TimestampMicrosecondArray = column(&b, "dead_lettered_at")?;
        let day: &deltalake::arrow::array::Date32Array = column(&b, "event_date")?;
        for i in 0..b.num_rows() {
            out.push(DeadLetterRecord {
                source: source.value(i).to_string(),
                topic: (!topic.is_null(i)).then(|| topic.value(i).to_string()),
                partition: (!partition.is_null(i)).then(|| partition.value(i)),
                offset: (!offset.is_null(i)).then(|| offset.value(i)),
                payload: (!payload.is_null(i)).then(|| payload.value(i).to_vec()),
                reason: reason.value(i).to_string(),
                detail: detail.value(i).to_string(),
                dead_lettered_at: DateTime::<Utc>::from_timestamp_micros(at.value(i))
                    .unwrap_or_default(),
                day: day.value_as_date(i).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}
