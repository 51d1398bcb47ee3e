//! The streaming loader's tables (`schemas/clickhouse/0003_stream_tables.sql`, minute windows
//! in `0004_stream_minutes.sql`): rows encoded
//! as `RowBinary` (accepted over HTTP by 18.16 and every later release), and the reads that
//! restore one Kafka partition's state after a restart or a rebalance.
//!
//! Commit contract of every insert here: when it returns `Ok`, the server acknowledged the
//! rows. Rows are idempotent by construction (a row written twice is the same row, or a
//! version that argMax resolves), so an insert may always be retried.

use std::sync::Arc;

use crate::config::check_identifier;
use crate::{ClickHouse, Error, Result};

/// Kafka topics and pipeline names that may appear quoted in the restore queries: checked,
/// never escaped.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?}: only letters, digits, '.', '_' and '-' are accepted"
        )))
    }
}

/// The two lower-case hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Where the hex digits of each byte of a UUID go in its length-prefixed canonical text
/// (the length byte first, hyphens after the 4th, 6th, 8th and 10th byte).
const UUID_HEX_AT: [usize; 16] = [1, 3, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 29, 31, 33, 35];

/// A `RowBinary` body under construction.
#[derive(Debug, Default, Clone)]
pub struct RowBinary {
    buf: Vec<u8>,
    rows: usize,
}

/// A shared body as the bytes of an HTTP request.
struct SharedBody(Arc<RowBinary>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0.buf
    }
}

impl RowBinary {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows ended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether no row was ended.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// A `String`: LEB128 length, then the bytes.
    pub fn string(&mut self, s: &str) -> &mut Self {
        let mut n = s.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.buf.push(byte);
                break;
            }
            self.buf.push(byte | 0x80);
        }
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    /// A `String` holding `id` as a UUID's canonical text (hyphenated lower-case hex, 36
    /// bytes), encoded in place: the same bytes as [`Self::string`] of that text.
    pub fn uuid_text(&mut self, id: u128) -> &mut Self {
        let mut text = [b'-'; 37];
        text[0] = 36;
        for (b, at) in id.to_be_bytes().into_iter().zip(UUID_HEX_AT) {
            text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        // A fixed-size copy: no call into the library's memmove for 37 bytes.
        self.buf.extend_from_slice(&text);
        self
    }

    /// A `UInt16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `UInt32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `UInt64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `Decimal(38, s)` from its unscaled value.
    pub fn decimal128(&mut self, unscaled: i128) -> &mut Self {
        self.buf.extend_from_slice(&unscaled.to_le_bytes());
        self
    }

    /// A `DateTime`: seconds since the epoch (UTC), 1970..2106.
    pub fn datetime(&mut self, secs: i64) -> &mut Self {
        self.u32(secs.clamp(0, u32::MAX as i64) as u32)
    }

    /// A `Date`: days since 1970-01-01.
    pub fn date(&mut self, days: i32) -> &mut Self {
        self.u16(days.clamp(0, u16::MAX as i32) as u16)
    }

    /// Moves `other`'s rows after this body's.
    pub fn append(&mut self, other: &mut RowBinary) {
        self.buf.append(&mut other.buf);
        self.rows += std::mem::take(&mut other.rows);
    }

    /// Bytes encoded.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Room for `bytes` more without reallocating.
    pub fn reserve(&mut self, bytes: usize) {
        self.buf.reserve(bytes);
    }

    /// Forgets every row (keeps the allocation).
    pub fn clear(&mut self) {
        self.rows = 0;
        self.buf.clear();
    }

    /// Bytes encoded so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The stream tables and their columns in the order the rows are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTable {
    /// One row per counted purchase.
    Purchases,
    /// Minute window state per partition.
    Minutes,
    /// Records not counted, per minute and reason.
    Rejects,
    /// The loader's checkpoint per partition.
    Checkpoints,
    /// Records flagged on their way: late purchases (corrections the views add) and
    /// future-stamped ones.
    Flagged,
}

impl StreamTable {
    /// Table name.
    pub fn name(self) -> &'static str {
        match self {
            StreamTable::Purchases => "stream_purchases",
            StreamTable::Minutes => "stream_minutes",
            StreamTable::Rejects => "stream_rejects",
            StreamTable::Checkpoints => "stream_checkpoints",
            StreamTable::Flagged => "stream_flagged",
        }
    }

    /// The columns each row carries, in encoding order.
    pub fn columns(self) -> &'static str {
        match self {
            StreamTable::Purchases => {
                "purchase_id, source, part, offset, timestamp, event_date, minute_start, \
                 hour_start, day_start, client_id, seller_key, category, product_key, quantity, \
                 amount, content_hash"
            }
            StreamTable::Minutes => {
                "window_start, hour_start, day_start, event_date, dim, key, source, part, \
                 revenue, purchases, items, version"
            }
            StreamTable::Rejects => {
                "minute_start, event_date, reason, source, part, records, version"
            }
            StreamTable::Checkpoints => {
                "pipeline, source, part, next_offset, watermark, clock, written_at"
            }
            StreamTable::Flagged => {
                "flag, purchase_id, source, part, offset, timestamp, kafka_time, event_date, \
                 minute_start, hour_start, day_start, client_id, seller_key, category, \
                 product_key, quantity, amount, content_hash"
            }
        }
    }
}

/// A partition's checkpoint as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Kafka partition.
    pub part: i32,
    /// Next offset to read: every record before it is in acknowledged rows.
    pub next_offset: i64,
    /// The partition's watermark there (UTC seconds).
    pub watermark: i64,
    /// The partition's clock there (UTC seconds).
    pub clock: i64,
}

/// A minute window row as restored: the latest version of one partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub window_start: i64,
    pub dim: String,
    pub key: String,
    /// Unscaled, 2 decimals.
    pub revenue: i128,
    pub purchases: u64,
    pub items: u64,
    pub version: u64,
}

/// A counted purchase as restored (what the loader needs to recognise it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedPurchase {
    pub purchase_id: String,
    pub offset: i64,
    pub timestamp: i64,
    pub content_hash: u64,
    pub seller_key: String,
    pub category: String,
    pub product_key: String,
}

/// A reject counter as restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectState {
    pub minute_start: i64,
    pub reason: String,
    pub records: u64,
    pub version: u64,
}

/// A number field of a row read with [`ClickHouse::each_row`].
fn field<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

fn int<T: std::str::FromStr>(operation: &str, s: &str) -> Result<T> {
    field(s).map_err(|message| Error::Answer {
        operation: operation.to_string(),
        message,
    })
}

/// `123.45` (as ClickHouse prints a `Decimal(38, 2)`) → 12345.
pub fn parse_cents(operation: &str, s: &str) -> Result<i128> {
    let bad = || Error::Answer {
        operation: operation.to_string(),
        message: format!("{s:?} is not a decimal with at most 2 places"),
    };
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i128 = whole.parse().map_err(|_| bad())?;
    let mut frac_v: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    if frac.len() == 1 {
        frac_v *= 10;
    }
    let v = whole * 100 + frac_v;
    Ok(if neg { -v } else { v })
}

impl ClickHouse {
    /// Inserts a `RowBinary` body into one stream table. Durable when it returns `Ok`; on an
    /// error the rows are unknown to have landed (send them again: they are idempotent).
    pub async fn insert_stream(&self, table: StreamTable, body: Arc<RowBinary>) -> Result<()> {
        if body.is_empty() {
            return Ok(());
        }
        let operation = format!("insert into {}", table.name());
        let sql = format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            table.name(),
            table.columns()
        );
        let mut insert = self.client.insert_formatted_with(sql);
        // The body is sent from the caller's buffer, not a copy of it (the caller may keep
        // it to send again).
        insert
            .send(bytes::Bytes::from_owner(SharedBody(body)))
            .await
            .map_err(Error::query(&operation))?;
        insert.end().await.map_err(Error::query(&operation))
    }

    /// The latest checkpoint of each partition of `topic` for `pipeline`.
    pub async fn stream_checkpoints(&self, pipeline: &str, topic: &str) -> Result<Vec<Checkpoint>> {
        check_name("pipeline", pipeline)?;
        check_name("topic", topic)?;
        let op = "read stream checkpoints";
        let rows = self
            .rows(
                op,
                &format!(
                    "SELECT part, max(next_offset), toUInt32(argMax(watermark, next_offset)), \
                            toUInt32(argMax(clock, next_offset)) \
                     FROM stream_checkpoints WHERE pipeline = '{pipeline}' AND source = '{topic}' \
                     GROUP BY part"
                ),
            )
            .await?;
        rows.iter()
            .map(|r| match r.as_slice() {
                [p, n, w, c] => Ok(Checkpoint {
                    part: int(op, p)?,
                    next_offset: int(op, n)?,
                    watermark: int(op, w)?,
                    clock: int(op, c)?,
                }),
                _ => Err(Error::Answer {
                    operation: op.into(),
                    message: format!("unexpected row {r:?}"),
                }),
            })
            .collect()
    }

    /// The other pipelines with checkpoints of `topic` in this database. The stream tables
    /// are keyed by topic and partition, not pipeline: one database holds one pipeline's
    /// rows of a topic.
    pub async fn stream_other_pipelines(&self, pipeline: &str, topic: &str) -> Result<Vec<String>> {
        check_name("pipeline", pipeline)?;
        check_name("topic", topic)?;
        let rows = self
            .rows(
                "read stream checkpoints",
                &format!(
                    "SELECT DISTINCT pipeline FROM stream_checkpoints \
                     WHERE source = '{topic}' AND pipeline != '{pipeline}' ORDER BY pipeline"
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    /// The latest state of every minute window of one partition that starts at or after
    /// `since` (UTC seconds), one at a time as ClickHouse answers (the open windows are never
    /// held twice).
    pub async fn stream_windows(
        &self,
        topic: &str,
        part: i32,
        since: i64,
        mut f: impl FnMut(WindowState),
    ) -> Result<()> {
        check_name("topic", topic)?;
        let since = since.max(0);
        let op = "restore stream windows";
        self.each_row(
            op,
            &format!(
                "SELECT toUInt32(window_start), dim, key, \
                        toString(argMax(revenue, version)), argMax(purchases, version), \
                        argMax(items, version), max(version) \
                 FROM stream_minutes \
                 WHERE source = '{topic}' AND part = {part} \
                   AND event_date >= toDate(toDateTime({since})) - 1 \
                   AND window_start >= toDateTime({since}) \
                 GROUP BY window_start, dim, key"
            ),
            |r| match r {
                [s, d, k, rev, p, i, v] => {
                    f(WindowState {
                        window_start: field(s)?,
                        dim: d.to_string(),
                        key: k.to_string(),
                        revenue: parse_cents(op, rev).map_err(|e| e.to_string())?,
                        purchases: field(p)?,
                        items: field(i)?,
                        version: field(v)?,
                    });
                    Ok(())
                }
                _ => Err(format!("unexpected row {r:?}")),
            },
        )
        .await
    }

    /// The counted purchases of one partition with a timestamp at or after `since`, or an
    /// offset at or after `from_offset`, in offset order, one at a time as ClickHouse
    /// answers. `since` is the checkpoint's watermark less the lateness: a purchase counted
    /// at or after the checkpoint was within the lateness of a watermark at least the
    /// checkpoint's, so it is at or after `since` too, and the read is pruned to the
    /// partitions (event days) from the day before `since` on, whatever the history.
    pub async fn stream_counted(
        &self,
        topic: &str,
        part: i32,
        since: i64,
        from_offset: i64,
        mut f: impl FnMut(CountedPurchase),
    ) -> Result<()> {
        check_name("topic", topic)?;
        let since = since.max(0);
        let op = "restore counted purchases";
        self.each_row(
            op,
            &format!(
                "SELECT purchase_id, offset, toUInt32(timestamp), content_hash, seller_key, \
                        category, product_key \
                 FROM stream_purchases \
                 WHERE source = '{topic}' AND part = {part} \
                   AND event_date >= toDate(toDateTime({since})) - 1 \
                   AND (timestamp >= toDateTime({since}) OR offset >= {from_offset}) \
                 ORDER BY offset"
            ),
            |r| match r {
                [id, o, t, h, s, c, p] => {
                    f(CountedPurchase {
                        purchase_id: id.to_string(),
                        offset: field(o)?,
                        timestamp: field(t)?,
                        content_hash: field(h)?,
                        seller_key: s.to_string(),
                        category: c.to_string(),
                        product_key: p.to_string(),
                    });
                    Ok(())
                }
                _ => Err(format!("unexpected row {r:?}")),
            },
        )
        .await
    }

    /// Every purchase id one partition counted (in windows, or late as a `too_late` row)
    /// at an event time at or after `since`, with that time: what the loader's id filter
    /// holds. Only the two id columns are read.
    pub async fn stream_counted_ids(
        &self,
        topic: &str,
        part: i32,
        since: i64,
        mut f: impl FnMut(&str, i64),
    ) -> Result<()> {
        check_name("topic", topic)?;
        let since = since.max(0);
        let op = "restore counted ids";
        self.each_row(
            op,
            &format!(
                "SELECT purchase_id, toUInt32(timestamp) FROM stream_purchases \
                 WHERE source = '{topic}' AND part = {part} \
                   AND event_date >= toDate(toDateTime({since})) AND timestamp >= toDateTime({since}) \
                 UNION ALL \
                 SELECT purchase_id, toUInt32(timestamp) FROM stream_flagged \
                 WHERE flag = 'too_late' AND source = '{topic}' AND part = {part} \
                   AND event_date >= toDate(toDateTime({since})) AND timestamp >= toDateTime({since})"
            ),
            |r| match r {
                [id, t] => {
                    f(id, field(t)?);
                    Ok(())
                }
                _ => Err(format!("unexpected row {r:?}")),
            },
        )
        .await
    }

    /// The earliest arrival of `purchase_id` one partition counted (in windows, or late) at
    /// offset `through` or before, stamped at or after `since`: (offset, content hash). The
    /// loader's exact look-up behind its id filter; `stream_purchases` is sorted by id, so
    /// each day's part is one index probe.
    pub async fn stream_first_counted(
        &self,
        topic: &str,
        part: i32,
        purchase_id: &str,
        since: i64,
        through: i64,
    ) -> Result<Option<(i64, u64)>> {
        let op = "look up a counted purchase id";
        let since = since.max(0);
        let through = through.max(0);
        let arm = |table: &str, flag: &str| {
            format!(
                "SELECT offset, content_hash FROM {table} \
                 WHERE {flag}purchase_id = ? AND source = ? AND part = ? \
                   AND event_date >= toDate(toDateTime(?)) AND timestamp >= toDateTime(?) \
                   AND offset <= ?"
            )
        };
        let sql = format!(
            "SELECT offset, content_hash FROM ({} UNION ALL {}) ORDER BY offset LIMIT 1",
            arm("stream_purchases", ""),
            arm("stream_flagged", "flag = 'too_late' AND ")
        );
        let mut q = self.client.query(&sql);
        for _ in 0..2 {
            q = q
                .bind(purchase_id)
                .bind(topic)
                .bind(part)
                .bind(since)
                .bind(since)
                .bind(through);
        }
        let body = q
            .fetch_bytes("TabSeparated")
            .map_err(Error::query(op))?
            .collect()
            .await
            .map_err(Error::query(op))?;
        let rows = crate::tsv::parse(&body).map_err(|message| Error::Answer {
            operation: op.to_string(),
            message,
        })?;
        match rows.first().map(Vec::as_slice) {
            None => Ok(None),
            Some([o, h]) => Ok(Some((int(op, o)?, int(op, h)?))),
            Some(r) => Err(Error::Answer {
                operation: op.to_string(),
                message: format!("unexpected row {r:?}"),
            }),
        }
    }

    /// The latest reject counters of one partition for minutes at or after `since`.
    pub async fn stream_rejects(
        &self,
        topic: &str,
        part: i32,
        since: i64,
    ) -> Result<Vec<RejectState>> {
        check_name("topic", topic)?;
        let since = since.max(0);
        let op = "restore stream rejects";
        let rows = self
            .rows(
                op,
                &format!(
                    "SELECT toUInt32(minute_start), reason, argMax(records, version), max(version) \
                     FROM stream_rejects \
                     WHERE source = '{topic}' AND part = {part} \
                       AND event_date >= toDate(toDateTime({since})) - 1 \
                       AND minute_start >= toDateTime({since}) \
                     GROUP BY minute_start, reason"
                ),
            )
            .await?;
        rows.iter()
            .map(|r| match r.as_slice() {
                [m, reason, n, v] => Ok(RejectState {
                    minute_start: int(op, m)?,
                    reason: reason.clone(),
                    records: int(op, n)?,
                    version: int(op, v)?,
                }),
                _ => Err(Error::Answer {
                    operation: op.into(),
                    message: format!("unexpected row {r:?}"),
                }),
            })
            .collect()
    }

    /// Fails unless the stream tables exist (`lakeshop migrate` creates them).
    pub async fn require_stream_tables(&self) -> Result<()> {
        let names: Vec<&str> = [
            StreamTable::Purchases,
            StreamTable::Minutes,
            StreamTable::Rejects,
            StreamTable::Checkpoints,
            StreamTable::Flagged,
        ]
        .iter()
        .map(|t| t.name())
        .collect();
        for n in &names {
            check_identifier("table", n)?;
        }
        self.require_tables(&names).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_parse_exactly() {
        assert_eq!(parse_cents("t", "123.45").ok(), Some(12345));
        assert_eq!(parse_cents("t", "7.5").ok(), Some(750));
        assert_eq!(parse_cents("t", "-0.01").ok(), Some(-1));
        assert_eq!(parse_cents("t", "42").ok(), Some(4200));
        assert!(parse_cents("t", "1.234").is_err());
        assert!(parse_cents("t", "x").is_err());
    }

    #[test]
    fn strings_are_length_prefixed() {
        let mut b = RowBinary::new();
        b.string("ab").u16(1);
        b.end_row();
        let long = "x".repeat(200);
        b.string(&long);
        b.end_row();
        let bytes = b.bytes();
        assert_eq!(&bytes[..5], &[2, b'a', b'b', 1, 0]);
        // 200 = 0b1_1001000: two LEB128 bytes.
        assert_eq!(&bytes[5..7], &[0xc8, 0x01]);
        assert_eq!(bytes.len(), 7 + 200);
    }

    #[test]
    fn uuid_text_is_the_canonical_string() {
        for id in [
            0u128,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            uuid::Uuid::new_v4().as_u128(),
        ] {
            let (mut fast, mut slow) = (RowBinary::new(), RowBinary::new());
            fast.uuid_text(id);
            slow.string(&uuid::Uuid::from_u128(id).hyphenated().to_string());
            assert_eq!(fast.bytes(), slow.bytes(), "{id:x}");
        }
    }

    #[test]
    fn names_in_queries_are_checked() {
        assert!(check_name("topic", "purchases.v1-x_2").is_ok());
        assert!(check_name("topic", "a' OR 1=1").is_err());
        assert!(check_name("topic", "").is_err());
    }
}
