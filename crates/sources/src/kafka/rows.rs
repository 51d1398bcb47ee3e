//! Arrow row buffers of the stage tables an extractor writes: decoded events and dead
//! letters, with their Kafka position.

use chrono::{DateTime, NaiveDate, Utc};
use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::record_batch::RecordBatch;
use lakeshop_model::{arrow_schema, money, parse_interaction, parse_purchase, Rejection};
use std::sync::Arc;
use uuid::Uuid;

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Characters of a UUID's text (`8-4-4-4-12` hex digits).
const UUID_LEN: usize = 36;

/// Days since 1970-01-01, the Arrow `Date32` value.
fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

/// The Kafka position and arrival columns shared by the event tables.
#[derive(Debug, Default)]
struct PositionColumns {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingested_at: TimestampMicrosecondBuilder,
    event_date: Date32Builder,
}

impl PositionColumns {
    fn with_capacity(rows: usize, topic_bytes: usize) -> Self {
        Self {
            topic: StringBuilder::with_capacity(rows, topic_bytes),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            ingested_at: TimestampMicrosecondBuilder::with_capacity(rows),
            event_date: Date32Builder::with_capacity(rows),
        }
    }

    fn push(&mut self, pos: Position<'_>, now: DateTime<Utc>, day: NaiveDate) {
        self.topic.append_value(pos.topic);
        self.partition.append_value(pos.partition);
        self.offset.append_value(pos.offset);
        self.ingested_at.append_value(now.timestamp_micros());
        self.event_date.append_value(date32(day));
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.ingested_at.finish().with_timezone("UTC")),
            Arc::new(self.event_date.finish()),
        ]
    }
}

/// Which events a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Purchases,
    Interactions,
}

impl EventKind {
    /// The extractor's name, as dead letters record their `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Purchases => "purchases",
            EventKind::Interactions => "interactions",
        }
    }
}

/// Rows of `stage.purchases` or `stage.interactions`.
#[derive(Debug)]
pub struct EventRows {
    kind: EventKind,
    tz: chrono_tz::Tz,
    len: usize,
    ids: [StringBuilder; 4],
    quantity: Int32Builder,
    price: Decimal128Builder,
    kind_col: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    pos: PositionColumns,
}

impl EventRows {
    pub fn new(kind: EventKind, tz: chrono_tz::Tz) -> Self {
        Self::with_capacity(kind, tz, 0, 0)
    }

    /// Buffers sized for `rows` rows of a topic name of `topic_len` bytes: an extractor
    /// flushes about as many rows each time, so growing the buffers (copying them again
    /// and again) would be repeated on every flush.
    fn with_capacity(kind: EventKind, tz: chrono_tz::Tz, rows: usize, topic_len: usize) -> Self {
        let ids = || StringBuilder::with_capacity(rows, rows * UUID_LEN);
        let (quantity, price, kind_col) = match kind {
            EventKind::Purchases => (rows, rows, 0),
            EventKind::Interactions => (0, 0, rows),
        };
        Self {
            kind,
            tz,
            len: 0,
            ids: [ids(), ids(), ids(), ids()],
            quantity: Int32Builder::with_capacity(quantity),
            price: Decimal128Builder::with_capacity(price),
            kind_col: StringBuilder::with_capacity(kind_col, kind_col * 8),
            timestamp: TimestampMicrosecondBuilder::with_capacity(rows),
            pos: PositionColumns::with_capacity(rows, rows * topic_len),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes and validates one payload into a row; a rejection leaves the rows unchanged.
    pub fn push(
        &mut self,
        payload: &[u8],
        pos: Position<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        let (ts, day) = match self.kind {
            EventKind::Purchases => {
                let p = parse_purchase(payload, now)?;
                let day = p.timestamp.with_timezone(&self.tz).date_naive();
                let mut buf = Uuid::encode_buffer();
                self.ids[0].append_value(p.purchase_id.hyphenated().encode_lower(&mut buf));
                self.ids[1].append_value(p.client_id.hyphenated().encode_lower(&mut buf));
                self.ids[2].append_value(p.product_id.hyphenated().encode_lower(&mut buf));
                match p.seller_id {
                    Some(s) => self.ids[3].append_value(s.hyphenated().encode_lower(&mut buf)),
                    None => self.ids[3].append_null(),
                }
                self.quantity.append_value(p.quantity as i32);
                self.price.append_value(money::to_decimal128(p.price));
                (p.timestamp, day)
            }
            EventKind::Interactions => {
                let i = parse_interaction(payload, now)?;
                let day = i.timestamp.with_timezone(&self.tz).date_naive();
                let mut buf = Uuid::encode_buffer();
                self.ids[0].append_value(i.event_id.hyphenated().encode_lower(&mut buf));
                self.ids[1].append_value(i.client_id.hyphenated().encode_lower(&mut buf));
                self.ids[2].append_value(i.product_id.hyphenated().encode_lower(&mut buf));
                self.kind_col.append_value(i.kind.as_str());
                (i.timestamp, day)
            }
        };
        self.timestamp.append_value(ts.timestamp_micros());
        self.pos.push(pos, now, day);
        self.len += 1;
        Ok(())
    }

    /// The buffered rows as one batch; the buffer is empty afterwards, with room for as
    /// many rows again.
    pub fn finish(&mut self) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
        let rows = self.len;
        let topic_len = self
            .pos
            .topic
            .offsets_slice()
            .get(1)
            .map_or(0, |end| *end as usize);
        let mut full = std::mem::replace(
            self,
            Self::with_capacity(self.kind, self.tz, rows, topic_len),
        );
        full.batch()
    }

    fn batch(&mut self) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
        let [a, b, c, d] = &mut self.ids;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(a.finish()),
            Arc::new(b.finish()),
            Arc::new(c.finish()),
        ];
        let schema = match self.kind {
            EventKind::Purchases => {
                cols.push(Arc::new(d.finish()));
                cols.push(Arc::new(self.quantity.finish()));
                cols.push(Arc::new(self.price.finish().with_precision_and_scale(
                    money::MONEY_PRECISION,
                    money::MONEY_SCALE,
                )?));
                arrow_schema::stage_purchase()
            }
            EventKind::Interactions => {
                cols.push(Arc::new(self.kind_col.finish()));
                arrow_schema::stage_interaction()
            }
        };
        cols.push(Arc::new(self.timestamp.finish().with_timezone("UTC")));
        cols.extend(self.pos.finish());
        RecordBatch::try_new(schema, cols)
    }
}

/// Rows of `stage.dead_letters`.
#[derive(Debug)]
pub struct DeadLetterRows {
    /// The extractor's name (`purchases`, `interactions`).
    source_name: &'static str,
    tz: chrono_tz::Tz,
    len: usize,
    source: StringBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    payload: BinaryBuilder,
    reason: StringBuilder,
    detail: StringBuilder,
    at: TimestampMicrosecondBuilder,
    event_date: Date32Builder,
}

impl DeadLetterRows {
    pub fn new(kind: EventKind, tz: chrono_tz::Tz) -> Self {
        Self {
            source_name: kind.as_str(),
            tz,
            len: 0,
            source: StringBuilder::new(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            payload: BinaryBuilder::new(),
            reason: StringBuilder::new(),
            detail: StringBuilder::new(),
            at: TimestampMicrosecondBuilder::new(),
            event_date: Date32Builder::new(),
        }
    }

    /// Empty buffers with room for what these hold now (as [`EventRows`]: sized from the
    /// last flush rather than grown every time).
    fn sized_like(&self) -> Self {
        let rows = self.len;
        let text = |b: &StringBuilder| StringBuilder::with_capacity(rows, b.values_slice().len());
        Self {
            source_name: self.source_name,
            tz: self.tz,
            len: 0,
            source: text(&self.source),
            topic: text(&self.topic),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            payload: BinaryBuilder::with_capacity(rows, self.payload.values_slice().len()),
            reason: text(&self.reason),
            detail: text(&self.detail),
            at: TimestampMicrosecondBuilder::with_capacity(rows),
            event_date: Date32Builder::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records a rejected payload with its raw bytes, position and reason.
    pub fn push(&mut self, payload: &[u8], pos: Position<'_>, why: &Rejection, now: DateTime<Utc>) {
        self.source.append_value(self.source_name);
        self.topic.append_value(pos.topic);
        self.partition.append_value(pos.partition);
        self.offset.append_value(pos.offset);
        self.payload.append_value(payload);
        self.reason.append_value(why.reason.as_str());
        self.detail.append_value(why.to_string());
        self.at.append_value(now.timestamp_micros());
        self.event_date
            .append_value(date32(now.with_timezone(&self.tz).date_naive()));
        self.len += 1;
    }

    /// The buffered rows as one batch; the buffer is empty afterwards, with room for as
    /// many rows again.
    pub fn finish(&mut self) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
        let next = self.sized_like();
        let mut full = std::mem::replace(self, next);
        RecordBatch::try_new(
            arrow_schema::stage_dead_letter(),
            vec![
                Arc::new(full.source.finish()),
                Arc::new(full.topic.finish()),
                Arc::new(full.partition.finish()),
                Arc::new(full.offset.finish()),
                Arc::new(full.payload.finish()),
                Arc::new(full.reason.finish()),
                Arc::new(full.detail.finish()),
                Arc::new(full.at.finish().with_timezone("UTC")),
                Arc::new(full.event_date.finish()),
            ],
        )
    }
}
