//! One Kafka partition's streaming state, a pure function of the partition's records in
//! offset order: which purchase ids were counted, the open minute windows' totals, the
//! reject counters, the watermark and the clock. Hour and day windows are not held: every
//! zone's offset is a whole number of minutes, so a minute lies in one business hour and one
//! business day, and ClickHouse sums the minutes (each minute row carries its hour's and
//! day's starts).
//!
//! Every window (and reject counter) carries a version: the offset after the last record
//! folded into it. Folding a record into a window is skipped when the window's version is
//! already past the record, so after a restart (state restored from ClickHouse, records read
//! again from the checkpoint) each record lands in each window exactly once, whether or not
//! the window's row had been written before the crash.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lakeshop_clickhouse::stream::{CountedPurchase, RejectState, WindowState};
use lakeshop_clickhouse::RowBinary;
use lakeshop_model::{parse_purchase, Purchase};

use crate::calendar::{Calendar, Granularity};
use crate::dims::{Dims, Key, Keys};

mod chunks;
mod horizon;
mod seen;
mod windows;

use horizon::Horizon;
use seen::{Seen, SeenIds};
use windows::{Totals, Windows};

/// What a record counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Total,
    Seller,
    Category,
    Product,
}

impl Dim {
    /// Every dimension.
    pub const ALL: [Dim; 4] = [Dim::Total, Dim::Seller, Dim::Category, Dim::Product];

    /// The name stored in ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Total => "total",
            Dim::Seller => "seller",
            Dim::Category => "category",
            Dim::Product => "product",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Reasons a valid record is not counted (beside the validation reasons).
pub const DUPLICATE: &str = "duplicate";
/// A re-sent purchase id with other content.
pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";
/// Older than the watermark by more than the allowed lateness: counted all the same, as a
/// correction row the views add to its windows (the loader no longer holds them).
pub const TOO_LATE: &str = "too_late";
/// Stamped more than the allowed clock skew ahead of its Kafka timestamp: counted in its own
/// windows, but the watermark moves no further than the Kafka timestamp plus the skew.
pub const FUTURE: &str = "future";

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted in its windows.
    Counted,
    /// Counted in its windows, stamped ahead of its Kafka time by more than the clock skew.
    Future,
    /// Counted as a correction of windows already closed (later than the lateness).
    Late,
    /// Not counted, for this reason.
    Rejected(&'static str),
    /// Before the partition's next offset: read again after a seek, already processed.
    Skipped,
}

#[derive(Debug, Clone, Default)]
struct Counter {
    records: u64,
    version: u64,
    date: i32,
    dirty: bool,
}

/// A stable hash of what makes two arrivals of one purchase id the same purchase (the
/// fields the batch job compares): client, product, seller, quantity, price, timestamp.
pub fn content_hash(p: &Purchase) -> u64 {
    // FNV-1a: stable across processes and releases (it is stored in ClickHouse).
    struct Fnv(u64);
    impl std::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(&p.client_id.as_u128().to_le_bytes());
    h.write(&p.product_id.as_u128().to_le_bytes());
    h.write(&p.seller_id.map_or(0, |s| s.as_u128()).to_le_bytes());
    h.write(&[u8::from(p.seller_id.is_some())]);
    h.write(&p.quantity.to_le_bytes());
    h.write(&cents(p.price).to_le_bytes());
    h.write(&p.timestamp.timestamp().to_le_bytes());
    h.write(&p.timestamp.timestamp_subsec_nanos().to_le_bytes());
    h.finish()
}

/// A price of at most two decimals in cents.
fn cents(d: rust_decimal::Decimal) -> i128 {
    let scale = d.scale();
    let m = d.mantissa();
    match scale {
        0 => m * 100,
        1 => m * 10,
        2 => m,
        // Validation refuses more than two significant decimals; trailing zeros may remain.
        s => m / 10_i128.pow(s - 2),
    }
}

/// Settings shared by every partition.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topic: Arc<str>,
    pub timezone: chrono_tz::Tz,
    /// Seconds a window stays open past its end, measured on the watermark.
    pub lateness: i64,
    /// Seconds an event may be stamped ahead of its Kafka timestamp and still move the
    /// watermark (and the clock) to its own time; beyond, they move to the Kafka timestamp
    /// plus this.
    pub max_clock_skew: i64,
    /// Seconds of event time within which a re-sent purchase id is a duplicate of the one
    /// counted: a later arrival stamped no more than this after a counted arrival of its id
    /// is not counted (the same rule as the batch job's).
    pub dedup_horizon: i64,
}

/// Seconds in a day: the margin the id filter keeps beyond the horizon, so purchases up to
/// a day later than the lateness are decided without a look-up.
const DAY: i64 = 86_400;

impl Settings {
    /// The event time from which a partition keeps the ids it counted, for watermark `wm`:
    /// what a purchase up to a day later than the lateness needs.
    pub fn ids_since(&self, wm: i64) -> i64 {
        wm.saturating_sub(self.lateness + self.dedup_horizon + DAY)
    }
}

/// An arrival of a purchase id the partition counted, as an exact look-up finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedArrival {
    pub offset: i64,
    pub content_hash: u64,
}

/// The exact answer behind the id filter's "maybe": the counted arrivals stored (ClickHouse
/// in the loader). Rows not yet acknowledged are never needed: their ids are still held in
/// memory.
pub trait Lookup {
    /// The earliest arrival of `id` on partition `part` counted at offset `through` or
    /// before, stamped at or after `since` (UTC seconds).
    fn first_counted(
        &mut self,
        part: i32,
        id: u128,
        since: i64,
        through: i64,
    ) -> std::result::Result<Option<CountedArrival>, LookupFailed>;
}

/// An exact look-up could not be answered: the record cannot be decided, and the loader
/// stops before it (nothing after it is checkpointed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("deciding whether purchase {id} was counted before: {message}")]
pub struct LookupFailed {
    pub id: uuid::Uuid,
    pub message: String,
}

/// No look-ups: a partition whose filter answers everything (tests and benches count the
/// look-ups asked for instead).
#[derive(Debug, Default)]
pub struct NoLookups {
    /// Look-ups asked for.
    pub asked: u64,
}

impl Lookup for NoLookups {
    fn first_counted(
        &mut self,
        _part: i32,
        _id: u128,
        _since: i64,
        _through: i64,
    ) -> std::result::Result<Option<CountedArrival>, LookupFailed> {
        self.asked += 1;
        Ok(None)
    }
}

/// A record flagged on its way, one row each in `stream_flagged`: a purchase counted late (a
/// correction the views add to its windows, unless its id was counted already) or one
/// stamped ahead of its Kafka time (counted in its windows as usual; the row says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flagged {
    /// [`TOO_LATE`] or [`FUTURE`].
    pub flag: &'static str,
    pub offset: i64,
    pub purchase_id: u128,
    /// Event time (UTC seconds).
    pub ts: i64,
    /// Kafka timestamp (UTC seconds), the event time when the record has none.
    pub kafka_ts: i64,
    pub client_id: u128,
    pub keys: Keys,
    pub quantity: u32,
    /// Quantity × price in cents.
    pub amount: i128,
    pub content_hash: u64,
}

/// A partition's restored checkpoint and rows.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub next_offset: i64,
    pub watermark: i64,
    pub clock: i64,
    pub windows: Vec<WindowState>,
    pub counted: Vec<CountedPurchase>,
    pub rejects: Vec<RejectState>,
    /// Ids counted (in windows or late) at event times from [`Settings::ids_since`] of the
    /// watermark: (id, event time).
    pub ids: Vec<(u128, i64)>,
}

/// One partition's state.
#[derive(Debug)]
pub struct PartitionState {
    part: i32,
    settings: Settings,
    calendar: Calendar,
    /// Next offset to process; records before it are skipped.
    pub next: i64,
    /// Newest event time counted or seen valid (UTC seconds).
    pub watermark: i64,
    /// Newest event or Kafka time seen (UTC seconds): the minute of reject counters.
    pub clock: i64,
    windows: Windows,
    /// The total's minute window last folded into (start, slot): records arrive nearly in
    /// time order, so most find it here without a lookup.
    total: Option<(i64, u32)>,
    /// Slots of the windows changed since the last flush began.
    dirty_windows: Vec<u32>,
    /// Slots of the windows whose rows are in the flush in flight (clean unless changed since).
    flying_windows: Vec<u32>,
    rejects: HashMap<(i64, &'static str), Counter, foldhash::fast::RandomState>,
    dirty_rejects: Vec<(i64, &'static str)>,
    flying_rejects: Vec<(i64, &'static str)>,
    /// Ids counted, oldest first, forgotten once their time is past the lateness and their
    /// rows are acknowledged.
    seen: SeenIds,
    /// Ids counted within the dedup horizon (and a day more), by event day.
    horizon: Horizon,
    /// Next offset of the last acknowledged checkpoint: the rows of every record before it
    /// are in ClickHouse.
    acked: i64,
    /// Next offset the flush in flight checkpoints.
    flying_next: Option<i64>,
    /// Exact look-ups asked for (a filter "maybe", or a purchase older than the filter).
    lookups: u64,
    /// Keys recorded for counted purchases at or after the restored checkpoint: a record read
    /// again counts under the keys it counted under before, whatever the cache says now.
    replay_keys: HashMap<i64, Keys>,
    /// Rows of counted purchases not yet acknowledged.
    purchases: RowBinary,
    /// Records flagged since the last flush began (late and future-stamped).
    flagged: Vec<Flagged>,
    /// Event times (ms) of the purchases counted since the last flush (latency metric).
    counted_times: Vec<i64>,
}

/// Reject reasons are `'static` names; validation reasons map onto their own.
fn reason_name(r: &str) -> &'static str {
    for reason in lakeshop_model::Reason::ALL {
        if reason.as_str() == r {
            return reason.as_str();
        }
    }
    match r {
        DUPLICATE => DUPLICATE,
        CONFLICTING_DUPLICATE => CONFLICTING_DUPLICATE,
        TOO_LATE => TOO_LATE,
        _ => "other",
    }
}

impl PartitionState {
    /// A partition's state from its restored checkpoint and rows (all held at once; the
    /// loader feeds them one at a time instead: [`PartitionState::resuming`]).
    pub fn new(part: i32, settings: Settings, restored: Restored, dims: &Dims) -> Self {
        let mut s = Self::resuming(
            part,
            settings,
            restored.next_offset,
            restored.watermark,
            restored.clock,
        );
        for w in restored.windows {
            s.restore_window(w, dims);
        }
        for r in restored.rejects {
            s.restore_reject(r);
        }
        let mut counted = restored.counted;
        counted.sort_by_key(|c| c.offset);
        for c in counted {
            s.restore_counted(c, dims);
        }
        if restored.next_offset > 0 {
            s.restore_ids_from(s.settings.ids_since(restored.watermark));
        }
        for (id, ts) in restored.ids {
            s.restore_id(id, ts);
        }
        s.restored();
        s
    }

    /// A partition resuming at `next_offset` (0 for one never seen) with the given watermark
    /// and clock, and no rows yet: its windows, reject counters and counted purchases follow
    /// ([`Self::restore_window`], [`Self::restore_reject`], [`Self::restore_counted`] in
    /// offset order), then [`Self::restored`].
    pub fn resuming(
        part: i32,
        settings: Settings,
        next_offset: i64,
        watermark: i64,
        clock: i64,
    ) -> Self {
        Self {
            part,
            calendar: Calendar::new(settings.timezone),
            settings,
            next: next_offset,
            watermark,
            clock,
            windows: Windows::default(),
            total: None,
            dirty_windows: Vec::new(),
            flying_windows: Vec::new(),
            rejects: HashMap::default(),
            dirty_rejects: Vec::new(),
            flying_rejects: Vec::new(),
            seen: SeenIds::default(),
            horizon: Horizon::default(),
            acked: next_offset,
            flying_next: None,
            lookups: 0,
            replay_keys: HashMap::new(),
            purchases: RowBinary::new(),
            flagged: Vec::new(),
            counted_times: Vec::new(),
        }
    }

    /// Restores one minute window's latest stored state.
    pub fn restore_window(&mut self, w: WindowState, dims: &Dims) {
        let Some(dim) = Dim::parse(&w.dim) else {
            return;
        };
        let span = self.calendar.span(Granularity::Minute, w.window_start);
        let key = match dim {
            Dim::Total => Key::Total,
            Dim::Category => dims.stored_keys("", &w.key, "").category,
            Dim::Seller | Dim::Product => Key::stored_id(&w.key),
        };
        let code = self.windows.code(&key);
        let i = self.windows.entry(span, dim, code);
        self.windows.set_totals(
            i,
            Totals {
                revenue: w.revenue,
                purchases: w.purchases,
                items: w.items,
            },
        );
        self.windows.slot_mut(i).version = w.version;
    }

    /// Restores one reject counter's latest stored state.
    pub fn restore_reject(&mut self, r: RejectState) {
        let date = self.calendar.span(Granularity::Day, r.minute_start).date;
        self.rejects.insert(
            (r.minute_start, reason_name(&r.reason)),
            Counter {
                records: r.records,
                version: r.version,
                date,
                dirty: false,
            },
        );
    }

    /// Restores one counted purchase; they come in offset order (the first count of an id
    /// is the one kept).
    pub fn restore_counted(&mut self, c: CountedPurchase, dims: &Dims) {
        let Ok(id) = uuid::Uuid::parse_str(&c.purchase_id) else {
            return;
        };
        let probe = self.seen.probe(id.as_u128());
        if self.seen.seen(&probe).is_some() {
            return;
        }
        self.seen.insert_probed(
            probe,
            Seen {
                offset: c.offset,
                hash: c.content_hash,
                ts: c.timestamp,
            },
        );
        if c.offset >= self.next {
            self.replay_keys.insert(
                c.offset,
                dims.stored_keys(&c.seller_key, &c.category, &c.product_key),
            );
        }
    }

    /// The ids restored next ([`Self::restore_id`]) are every id counted at or after `since`.
    pub fn restore_ids_from(&mut self, since: i64) {
        self.horizon = Horizon::complete_from(since);
    }

    /// Restores one id counted (in windows or late) at event time `ts` into the filter.
    pub fn restore_id(&mut self, id: u128, ts: i64) {
        self.horizon.insert(id, ts);
    }

    /// Everything restored: forgets what no later record can change.
    pub fn restored(&mut self) {
        self.evict();
    }

    /// Kafka partition.
    pub fn part(&self) -> i32 {
        self.part
    }

    /// Windows and ids held in memory.
    pub fn sizes(&self) -> (usize, usize) {
        (self.windows.len(), self.seen.len())
    }

    /// Ids in the dedup filter, and its bytes.
    pub fn filter_size(&self) -> (usize, usize) {
        self.horizon.size()
    }

    /// Exact look-ups asked for so far.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// The content hash of an arrival of `id` counted at or after `since` before `offset`,
    /// if any: from the filter when it is certain, else from an exact look-up.
    fn counted_since(
        &mut self,
        id: u128,
        since: i64,
        offset: i64,
        lookup: &mut dyn Lookup,
    ) -> std::result::Result<Option<u64>, LookupFailed> {
        if self.horizon.covers(since) && !self.horizon.maybe(id, since) {
            return Ok(None);
        }
        self.lookups += 1;
        // The record's own row (counted before a restart) is not an earlier arrival.
        Ok(lookup
            .first_counted(self.part, id, since, offset)?
            .filter(|c| c.offset != offset)
            .map(|c| c.content_hash))
    }

    fn reject(&mut self, offset: i64, reason: &'static str) -> Outcome {
        let span = self.calendar.span(Granularity::Minute, self.clock);
        let c = self.rejects.entry((span.start, reason)).or_default();
        if (offset as u64) + 1 > c.version {
            c.records += 1;
            c.version = offset as u64 + 1;
            c.date = span.date;
            if !c.dirty {
                c.dirty = true;
                self.dirty_rejects.push((span.start, reason));
            }
        }
        Outcome::Rejected(reason)
    }

    /// Processes the record at `offset` with Kafka timestamp `kafka_ms` (milliseconds; the
    /// validator's clock, so a replay judges the record the same). A purchase id the filter
    /// may have counted within the dedup horizon is settled by `lookup`.
    pub fn process(
        &mut self,
        offset: i64,
        kafka_ms: Option<i64>,
        payload: &[u8],
        dims: &Dims,
        lookup: &mut dyn Lookup,
    ) -> std::result::Result<Outcome, LookupFailed> {
        if offset < self.next {
            return Ok(Outcome::Skipped);
        }
        self.next = offset + 1;
        let kafka_s = kafka_ms.map(|ms| ms.div_euclid(1000));
        if let Some(k) = kafka_s {
            self.clock = self.clock.max(k);
        }
        let now = kafka_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let p = match parse_purchase(payload, now) {
            Ok(p) => p,
            Err(rejection) => {
                return Ok(self.reject(offset, reason_name(rejection.reason.as_str())))
            }
        };
        let id = p.purchase_id.as_u128();
        let hash = content_hash(&p);
        let ts = p.timestamp.timestamp();
        // How far this event may move the watermark and the clock: to its own time, unless
        // it is stamped further ahead of its Kafka time than the allowed skew (a till with a
        // fast clock must not close every window of the partition).
        let reach = kafka_s.map_or(ts, |k| ts.min(k + self.settings.max_clock_skew));
        // A re-send: an arrival of the id counted before, stamped no more than the dedup
        // horizon before this one (an identical re-send, whatever its age, always is). The
        // ids counted recently are held exactly; older ones are in the filter, and a "maybe"
        // (or a purchase older than the filter) is settled by an exact look-up. What a
        // record decides never depends on when memory was last swept.
        let since = ts.saturating_sub(self.settings.dedup_horizon);
        let probe = self.seen.probe(id);
        let held = self.seen.seen(&probe).copied();
        let replayed = held.is_some_and(|s| s.offset == offset);
        if !replayed {
            let earlier = match held {
                Some(s) if s.ts >= since => Some(s.hash),
                _ => self.counted_since(id, since, offset, lookup)?,
            };
            if let Some(first) = earlier {
                let reason = if first == hash {
                    DUPLICATE
                } else {
                    CONFLICTING_DUPLICATE
                };
                self.clock = self.clock.max(reach);
                return Ok(self.reject(offset, reason));
            }
        }
        let horizon = self.watermark - self.settings.lateness;
        let amount = i128::from(p.quantity) * cents(p.price);
        let flag = |flag, keys| Flagged {
            flag,
            offset,
            purchase_id: id,
            ts,
            kafka_ts: kafka_s.unwrap_or(ts),
            client_id: p.client_id.as_u128(),
            keys,
            quantity: p.quantity,
            amount,
            content_hash: hash,
        };
        if ts < horizon {
            // Its windows are closed (maybe evicted): it is counted as a correction row of its
            // own, which the views add to its minute, hour and day. Nothing held changes, so a
            // replay writes the same row.
            let keys = dims.keys(&p);
            self.flagged.push(flag(TOO_LATE, keys));
            self.seen.insert_probed(probe, Seen { offset, hash, ts });
            self.horizon.insert(id, ts);
            return Ok(Outcome::Late);
        }
        self.watermark = self.watermark.max(reach);
        self.clock = self.clock.max(reach);
        let keys = self
            .replay_keys
            .remove(&offset)
            .unwrap_or_else(|| dims.keys(&p));
        let outcome = if reach < ts {
            self.flagged.push(flag(FUTURE, keys.clone()));
            Outcome::Future
        } else {
            Outcome::Counted
        };
        let version = offset as u64 + 1;
        let calendar = &mut self.calendar;
        let spans = Granularity::ALL.map(|g| calendar.span(g, ts));
        let minute = spans[0];
        let codes = [
            self.windows.code(&Key::Total),
            self.windows.code(&keys.seller),
            self.windows.code(&keys.category),
            self.windows.code(&keys.product),
        ];
        for (dim, code) in Dim::ALL.into_iter().zip(codes) {
            let i = match (dim, self.total) {
                (Dim::Total, Some((start, i))) if start == minute.start => i,
                (Dim::Total, _) => {
                    let i = self.windows.entry(minute, dim, code);
                    self.total = Some((minute.start, i));
                    i
                }
                _ => self.windows.entry(minute, dim, code),
            };
            if self.windows.fold(i, version, amount, p.quantity) {
                self.dirty_windows.push(i);
            }
        }
        if !replayed {
            self.seen.insert_probed(probe, Seen { offset, hash, ts });
            self.horizon.insert(id, ts);
            let [minute, hour, day] = spans;
            self.purchases
                .uuid_text(id)
                .string(&self.settings.topic)
                .u16(self.part as u16)
                .u64(offset as u64)
                .datetime(ts)
                .date(day.date)
                .datetime(minute.start)
                .datetime(hour.start)
                .datetime(day.start)
                .uuid_text(p.client_id.as_u128());
            for k in [&keys.seller, &keys.category, &keys.product] {
                k.write(&mut self.purchases);
            }
            self.purchases.u32(p.quantity).decimal128(amount).u64(hash);
            self.purchases.end_row();
        }
        self.counted_times.push(p.timestamp.timestamp_millis());
        Ok(outcome)
    }

    /// Whether anything awaits a flush.
    pub fn is_dirty(&self) -> bool {
        !self.dirty_windows.is_empty()
            || !self.dirty_rejects.is_empty()
            || !self.purchases.is_empty()
            || !self.flagged.is_empty()
    }

    /// Bytes of counted-purchase rows waiting for a flush.
    pub fn purchases_len(&self) -> usize {
        self.purchases.len()
    }

    /// Moves this partition's counted-purchase rows to the end of `out`.
    pub fn take_purchases(&mut self, out: &mut RowBinary) {
        out.append(&mut self.purchases);
    }

    /// Moves this partition's flagged records to the end of `out`, encoded as
    /// `stream_flagged` rows (the starts of their minute, hour and day from the calendar).
    pub fn take_flagged(&mut self, out: &mut RowBinary) {
        for f in std::mem::take(&mut self.flagged) {
            let [minute, hour, day] = Granularity::ALL.map(|g| self.calendar.span(g, f.ts));
            out.string(f.flag)
                .uuid_text(f.purchase_id)
                .string(&self.settings.topic)
                .u16(self.part as u16)
                .u64(f.offset as u64)
                .datetime(f.ts)
                .datetime(f.kafka_ts)
                .date(day.date)
                .datetime(minute.start)
                .datetime(hour.start)
                .datetime(day.start)
                .uuid_text(f.client_id);
            for k in [&f.keys.seller, &f.keys.category, &f.keys.product] {
                k.write(out);
            }
            out.u32(f.quantity).decimal128(f.amount).u64(f.content_hash);
            out.end_row();
        }
    }

    /// Encodes every minute window changed since the last acknowledged flush (full state),
    /// with the starts of its business hour and day.
    pub fn window_rows(&mut self, out: &mut RowBinary) {
        for &i in &self.dirty_windows {
            let a = self.windows.slot(i);
            let t = self.windows.totals(i);
            let hour = self.calendar.span(Granularity::Hour, a.start()).start;
            let day = self.calendar.span(Granularity::Day, a.start()).start;
            out.datetime(a.start())
                .datetime(hour)
                .datetime(day)
                .date(a.date())
                .string(a.dim().as_str());
            self.windows.write_key(i, out);
            out.string(&self.settings.topic)
                .u16(self.part as u16)
                .decimal128(t.revenue)
                .u64(t.purchases)
                .u64(t.items)
                .u64(a.version);
            out.end_row();
        }
    }

    /// Encodes every reject counter changed since the last acknowledged flush.
    pub fn reject_rows(&self, out: &mut RowBinary) {
        for k in &self.dirty_rejects {
            let Some(c) = self.rejects.get(k) else {
                continue;
            };
            out.datetime(k.0)
                .date(c.date)
                .string(k.1)
                .string(&self.settings.topic)
                .u16(self.part as u16)
                .u64(c.records)
                .u64(c.version);
            out.end_row();
        }
    }

    /// Encodes the checkpoint row: everything before `next` is in acknowledged rows once the
    /// rows encoded with it are.
    pub fn checkpoint_row(&self, pipeline: &str, out: &mut RowBinary) {
        out.string(pipeline)
            .string(&self.settings.topic)
            .u16(self.part as u16)
            .u64(self.next.max(0) as u64)
            .datetime(self.watermark)
            .datetime(self.clock)
            .datetime(Utc::now().timestamp());
        out.end_row();
    }

    /// The rows encoded since the last call are acknowledged (a flush begun and succeeded).
    pub fn acknowledged(&mut self) {
        self.begin_flush();
        self.flush_succeeded();
    }

    /// The changed windows and counters were encoded into a flush now sent: they are clean
    /// until a record changes them again, and held as in flight until the flush ends. Returns
    /// the event times (ms) of the purchases counted since the previous flush.
    pub fn begin_flush(&mut self) -> Vec<i64> {
        self.flying_next = Some(self.next);
        for i in std::mem::take(&mut self.dirty_windows) {
            self.windows.mark_clean(i);
            self.flying_windows.push(i);
        }
        for k in std::mem::take(&mut self.dirty_rejects) {
            if let Some(c) = self.rejects.get_mut(&k) {
                c.dirty = false;
                self.flying_rejects.push(k);
            }
        }
        std::mem::take(&mut self.counted_times)
    }

    /// ClickHouse acknowledged the flush in flight.
    pub fn flush_succeeded(&mut self) {
        if let Some(next) = self.flying_next.take() {
            self.acked = self.acked.max(next);
        }
        self.flying_windows.clear();
        self.flying_rejects.clear();
    }

    /// The flush in flight failed: its windows and counters are changed again, so the next
    /// flush writes their current (full) state.
    pub fn flush_failed(&mut self) {
        self.flying_next = None;
        for i in std::mem::take(&mut self.flying_windows) {
            if self.windows.mark_dirty(i) {
                self.dirty_windows.push(i);
            }
        }
        for k in std::mem::take(&mut self.flying_rejects) {
            if let Some(c) = self.rejects.get_mut(&k) {
                if !c.dirty {
                    c.dirty = true;
                    self.dirty_rejects.push(k);
                }
            }
        }
    }

    /// Forgets what no later record can change: windows closed on the watermark, reject
    /// counters of minutes before the clock's, ids older than the lateness whose rows are
    /// acknowledged (from memory; the filter keeps them for the horizon), filter days older
    /// than the horizon. Never while a flush is in flight (a failed flush writes its windows
    /// again).
    pub fn evict(&mut self) {
        if !self.flying_windows.is_empty() || !self.flying_rejects.is_empty() {
            return;
        }
        let wm = self.watermark;
        let lateness = self.settings.lateness;
        self.windows.evict(|w| w.end() + lateness <= wm);
        // Slots may have been freed and reused.
        self.total = None;
        let minute = self.clock.div_euclid(60) * 60;
        self.rejects.retain(|k, c| c.dirty || k.0 >= minute);
        self.seen.forget_before(wm - lateness, self.acked);
        self.horizon.forget_before(self.settings.ids_since(wm));
        if !self.replay_keys.is_empty() {
            let next = self.next;
            self.replay_keys.retain(|o, _| *o >= next);
        }
    }
}

impl PartitionState {
    /// The records flagged since the last flush began, as they would be stored (taken).
    pub fn take_flagged_records(&mut self) -> Vec<Flagged> {
        std::mem::take(&mut self.flagged)
    }

    /// The windows changed since the last acknowledged flush, as they would be stored.
    pub fn dirty_window_states(&self) -> Vec<WindowState> {
        self.dirty_windows
            .iter()
            .map(|&i| {
                let a = self.windows.slot(i);
                let t = self.windows.totals(i);
                WindowState {
                    window_start: a.start(),
                    dim: a.dim().as_str().to_string(),
                    key: self.windows.key(i).to_string(),
                    revenue: t.revenue,
                    purchases: t.purchases,
                    items: t.items,
                    version: a.version,
                }
            })
            .collect()
    }

    /// The reject counters changed since the last acknowledged flush, as they would be stored.
    pub fn dirty_reject_states(&self) -> Vec<RejectState> {
        self.dirty_rejects
            .iter()
            .filter_map(|k| {
                self.rejects.get(k).map(|c| RejectState {
                    minute_start: k.0,
                    reason: k.1.to_string(),
                    records: c.records,
                    version: c.version,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
