//! The partition state against a model: windows, duplicates, lateness, and crashes at every
//! step of a flush followed by a restore from what was "acknowledged".

use super::*;
use lakeshop_model::Purchase;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use uuid::Uuid;

/// (granularity, start, dim, key) → (cents, purchases, items).
type Totals = BTreeMap<(String, i64, String, String), (i128, u64, u64)>;
const T0: i64 = 1_795_000_000; // 2026-11-18, whole minutes below

fn settings() -> Settings {
    Settings {
        topic: Arc::from("purchases"),
        timezone: chrono_tz::UTC,
        lateness: 300,
        max_clock_skew: 60,
        dedup_horizon: 7 * 86_400,
    }
}

impl PartitionState {
    /// [`PartitionState::process`] with nothing stored to look up (a partition that never
    /// flushed holds every id it counted).
    fn step(&mut self, offset: i64, kafka_ms: Option<i64>, payload: &[u8], dims: &Dims) -> Outcome {
        self.process(offset, kafka_ms, payload, dims, &mut NoLookups::default())
            .expect("no look-up fails")
    }
}

/// The exact look-up answered from what the store holds.
struct StoreLookup<'a>(&'a Store);

impl Lookup for StoreLookup<'_> {
    fn first_counted(
        &mut self,
        _part: i32,
        id: u128,
        since: i64,
        through: i64,
    ) -> std::result::Result<Option<CountedArrival>, LookupFailed> {
        let text = Uuid::from_u128(id).to_string();
        let counted = self
            .0
            .counted
            .values()
            .filter(|c| c.purchase_id == text)
            .map(|c| (c.offset, c.timestamp, c.content_hash));
        let late = self
            .0
            .flagged
            .values()
            .filter(|f| f.flag == TOO_LATE && f.purchase_id == id)
            .map(|f| (f.offset, f.ts, f.content_hash));
        Ok(counted
            .chain(late)
            .filter(|&(o, ts, _)| ts >= since && o <= through)
            .min_by_key(|&(o, _, _)| o)
            .map(|(offset, _, content_hash)| CountedArrival {
                offset,
                content_hash,
            }))
    }
}

fn purchase(rng: &mut impl Rng, ts: i64, dims_products: &[Uuid], sellers: &[Uuid]) -> Purchase {
    Purchase {
        purchase_id: Uuid::from_u128(rng.random()),
        client_id: Uuid::from_u128(rng.random_range(0..50u128)),
        product_id: if rng.random_bool(0.05) {
            Uuid::from_u128(rng.random())
        } else {
            dims_products[rng.random_range(0..dims_products.len())]
        },
        seller_id: rng
            .random_bool(0.9)
            .then(|| sellers[rng.random_range(0..sellers.len())]),
        quantity: rng.random_range(1..5),
        price: Decimal::new(rng.random_range(1..100_000), 2),
        timestamp: DateTime::<Utc>::from_timestamp_millis(ts * 1000 + rng.random_range(0..1000))
            .expect("time"),
    }
}

/// A record of the test log: payload and Kafka time.
struct Rec {
    payload: Vec<u8>,
    kafka_ms: i64,
}

struct World {
    dims: Dims,
    log: Vec<Rec>,
    /// What the model counts: (granularity, start, dim, key) → (cents, purchases, items).
    expected: Totals,
    /// Purchases counted late, as corrections of closed windows.
    expected_late: usize,
    expected_rejects: BTreeMap<String, u64>,
}

fn world(seed: u64, n: usize) -> World {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let products: Vec<Uuid> = (0..20).map(|i| Uuid::from_u128(1000 + i)).collect();
    let sellers: Vec<Uuid> = (0..5).map(|i| Uuid::from_u128(2000 + i)).collect();
    let mut dims = Dims::empty();
    for (i, p) in products.iter().enumerate() {
        dims.add_product(*p, if i % 2 == 0 { "even" } else { "odd" });
    }
    for s in &sellers[..4] {
        dims.add_seller(*s); // the fifth seller is unknown
    }
    let mut log = Vec::new();
    let mut expected = BTreeMap::new();
    let mut expected_rejects: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_late = 0;
    let mut counted: Vec<Purchase> = Vec::new();
    // Every purchase counted, late ones included: what re-sends beyond the lateness repeat.
    let mut all_counted: Vec<Purchase> = Vec::new();
    let mut now = T0;
    let mut watermark = 0i64;
    let rec = |log: &mut Vec<Rec>, payload: Vec<u8>, now: i64| {
        log.push(Rec {
            payload,
            kafka_ms: now * 1000,
        })
    };
    for _ in 0..n {
        now += rng.random_range(0..3);
        let roll: f64 = rng.random();
        // Re-sends of purchases still within the lateness (older ones are too late).
        let recent: Vec<&Purchase> = counted
            .iter()
            .rev()
            .take(20)
            .filter(|p| p.timestamp.timestamp() >= watermark - 250)
            .collect();
        if roll < 0.03 && !recent.is_empty() {
            // An exact re-send of a recent purchase.
            let p = recent[rng.random_range(0..recent.len())].clone();
            rec(&mut log, p.to_json().into_bytes(), now);
            *expected_rejects.entry(DUPLICATE.into()).or_default() += 1;
        } else if roll < 0.05 && !recent.is_empty() {
            let mut p = recent[0].clone();
            p.quantity += 1;
            rec(&mut log, p.to_json().into_bytes(), now);
            *expected_rejects
                .entry(CONFLICTING_DUPLICATE.into())
                .or_default() += 1;
        } else if roll < 0.07 {
            rec(&mut log, b"{not json".to_vec(), now);
            *expected_rejects.entry("malformed_json".into()).or_default() += 1;
        } else if roll < 0.075 && !all_counted.is_empty() {
            // An exact re-send of any purchase counted, however old (within the horizon):
            // late, and a duplicate all the same.
            let p = all_counted[rng.random_range(0..all_counted.len())].clone();
            rec(&mut log, p.to_json().into_bytes(), now);
            *expected_rejects.entry(DUPLICATE.into()).or_default() += 1;
        } else if roll < 0.08 && !all_counted.is_empty() {
            // A re-send of any purchase counted with other content and a new stamp (a
            // till sending it again later): a conflicting duplicate, not a new purchase.
            let mut p = all_counted[rng.random_range(0..all_counted.len())].clone();
            p.timestamp = DateTime::<Utc>::from_timestamp(now, 0).expect("time");
            p.quantity += 1;
            rec(&mut log, p.to_json().into_bytes(), now);
            *expected_rejects
                .entry(CONFLICTING_DUPLICATE.into())
                .or_default() += 1;
        } else {
            // Mostly in order, sometimes up to 4 minutes late (within the lateness), and now
            // and then far behind the watermark: counted all the same, as a correction.
            let too_late = roll < 0.09 && watermark > 0;
            let late = if too_late {
                3600
            } else if rng.random_bool(0.1) {
                rng.random_range(0..240)
            } else {
                0
            };
            let p = purchase(&mut rng, now - late, &products, &sellers);
            let ts = p.timestamp.timestamp();
            if too_late {
                assert!(ts < watermark - 300);
                expected_late += 1;
            } else {
                assert!(ts >= watermark - 300);
                watermark = watermark.max(ts);
            }
            rec(&mut log, p.to_json().into_bytes(), now);
            let keys = dims.keys(&p);
            let amount = i128::from(p.quantity) * cents(p.price);
            for g in Granularity::ALL {
                let start = Calendar::new(chrono_tz::UTC).span(g, ts).start;
                for (dim, key) in [
                    ("total", String::new()),
                    ("seller", keys.seller.to_string()),
                    ("category", keys.category.to_string()),
                    ("product", keys.product.to_string()),
                ] {
                    let e = expected
                        .entry((
                            g.as_str().to_string(),
                            start,
                            dim.to_string(),
                            key.to_string(),
                        ))
                        .or_insert((0, 0, 0));
                    e.0 += amount;
                    e.1 += 1;
                    e.2 += u64::from(p.quantity);
                }
            }
            all_counted.push(p.clone());
            if too_late {
                continue;
            }
            counted.push(p);
        }
    }
    World {
        dims,
        log,
        expected,
        expected_late,
        expected_rejects,
    }
}

/// What ClickHouse would hold: the latest version of every row, the counted purchases and
/// the checkpoint.
#[derive(Default, Clone)]
struct Store {
    /// Minute windows by (start, dim, key).
    windows: BTreeMap<(i64, String, String), WindowState>,
    rejects: BTreeMap<(i64, String), RejectState>,
    counted: BTreeMap<i64, CountedPurchase>,
    /// Flagged records by offset (a row written again is the same row).
    flagged: BTreeMap<i64, Flagged>,
    checkpoint: Option<(i64, i64, i64)>,
}

impl Store {
    fn put_windows(&mut self, rows: Vec<WindowState>) {
        for w in rows {
            let k = (w.window_start, w.dim.clone(), w.key.clone());
            match self.windows.get(&k) {
                Some(old) if old.version >= w.version => {}
                _ => {
                    self.windows.insert(k, w);
                }
            }
        }
    }

    fn put_rejects(&mut self, rows: Vec<RejectState>) {
        for r in rows {
            let k = (r.minute_start, r.reason.clone());
            match self.rejects.get(&k) {
                Some(old) if old.version >= r.version => {}
                _ => {
                    self.rejects.insert(k, r);
                }
            }
        }
    }

    fn restored(&self, lateness: i64) -> Restored {
        let Some((next, watermark, clock)) = self.checkpoint else {
            return Restored::default();
        };
        Restored {
            next_offset: next,
            watermark,
            clock,
            windows: self
                .windows
                .values()
                .filter(|w| w.window_start >= watermark - lateness - 60)
                .cloned()
                .collect(),
            counted: self
                .counted
                .values()
                .filter(|c| c.timestamp >= watermark - lateness || c.offset >= next)
                .cloned()
                .collect(),
            rejects: self
                .rejects
                .values()
                .filter(|r| r.minute_start >= clock.div_euclid(60) * 60)
                .cloned()
                .collect(),
            ids: {
                let since = settings().ids_since(watermark);
                let counted = self.counted.values().map(|c| {
                    let id = Uuid::parse_str(&c.purchase_id).expect("id").as_u128();
                    (id, c.timestamp)
                });
                let late = self
                    .flagged
                    .values()
                    .filter(|f| f.flag == TOO_LATE)
                    .map(|f| (f.purchase_id, f.ts));
                counted.chain(late).filter(|&(_, ts)| ts >= since).collect()
            },
        }
    }

    fn put_flagged(&mut self, rows: Vec<Flagged>) {
        for f in rows {
            self.flagged.insert(f.offset, f);
        }
    }

    /// The late purchases the views add: the first late arrival of each id without a
    /// counted row.
    fn late(&self) -> Vec<&Flagged> {
        let counted: std::collections::HashSet<String> = self
            .counted
            .values()
            .map(|c| c.purchase_id.clone())
            .collect();
        let mut first: BTreeMap<u128, &Flagged> = BTreeMap::new();
        for f in self.flagged.values().filter(|f| f.flag == TOO_LATE) {
            if !counted.contains(&Uuid::from_u128(f.purchase_id).to_string()) {
                first.entry(f.purchase_id).or_insert(f);
            }
        }
        first.into_values().collect()
    }

    /// Every window's totals as the views give them: the minutes and the late purchases,
    /// and their sums per hour and day.
    fn totals(&self) -> Totals {
        let mut calendar = Calendar::new(chrono_tz::UTC);
        let mut out = Totals::new();
        for f in self.late() {
            let minute = calendar.span(Granularity::Minute, f.ts).start;
            for g in Granularity::ALL {
                for (dim, key) in [
                    ("total", String::new()),
                    ("seller", f.keys.seller.to_string()),
                    ("category", f.keys.category.to_string()),
                    ("product", f.keys.product.to_string()),
                ] {
                    let e = out
                        .entry((
                            g.as_str().to_string(),
                            calendar.span(g, minute).start,
                            dim.to_string(),
                            key,
                        ))
                        .or_insert((0, 0, 0));
                    e.0 += f.amount;
                    e.1 += 1;
                    e.2 += u64::from(f.quantity);
                }
            }
        }
        for ((start, dim, key), w) in &self.windows {
            for g in Granularity::ALL {
                let e = out
                    .entry((
                        g.as_str().to_string(),
                        calendar.span(g, *start).start,
                        dim.clone(),
                        key.clone(),
                    ))
                    .or_insert((0, 0, 0));
                e.0 += w.revenue;
                e.1 += w.purchases;
                e.2 += w.items;
            }
        }
        out
    }

    fn reject_totals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in self.rejects.values() {
            *out.entry(r.reason.clone()).or_default() += r.records;
        }
        out
    }
}

/// How far a flush got before the crash.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// No crash at this flush.
    None,
    /// After the purchases insert.
    AfterPurchases,
    /// After the windows insert, before the checkpoint.
    AfterWindows,
    /// Right after the checkpoint.
    AfterCheckpoint,
}

/// Processes `log` from the store's checkpoint to the end, flushing every `flush_every`
/// records and crashing as `crashes` says (at flush i).
fn run(w: &World, store: &mut Store, flush_every: usize, crashes: &BTreeMap<usize, Crash>) {
    let mut flush_no = 0usize;
    let lateness = settings().lateness;
    'restart: loop {
        let mut st = PartitionState::new(0, settings(), store.restored(lateness), &w.dims);
        // A broker answers from a little before the checkpoint: those records are skipped.
        let from = (st.next - 7).max(0) as usize;
        let mut counted_here: BTreeMap<i64, CountedPurchase> = BTreeMap::new();
        let mut since_flush = 0;
        for (offset, r) in w.log.iter().enumerate().skip(from) {
            let offset = offset as i64;
            let out = st
                .process(
                    offset,
                    Some(r.kafka_ms),
                    &r.payload,
                    &w.dims,
                    &mut StoreLookup(store),
                )
                .expect("the store answers");
            if out == Outcome::Counted {
                let p = lakeshop_model::parse_purchase(&r.payload, Utc::now()).expect("valid");
                let keys = w.dims.keys(&p);
                counted_here.insert(
                    offset,
                    CountedPurchase {
                        purchase_id: p.purchase_id.to_string(),
                        offset,
                        timestamp: p.timestamp.timestamp(),
                        content_hash: content_hash(&p),
                        seller_key: keys.seller.to_string(),
                        category: keys.category.to_string(),
                        product_key: keys.product.to_string(),
                    },
                );
            }
            since_flush += 1;
            let last = offset as usize + 1 == w.log.len();
            if since_flush >= flush_every || last {
                since_flush = 0;
                flush_no += 1;
                let crash = crashes.get(&flush_no).copied().unwrap_or(Crash::None);
                // 1. counted purchases
                let mut body = RowBinary::new();
                st.take_purchases(&mut body);
                store.put_flagged(st.take_flagged_records());
                for (o, c) in std::mem::take(&mut counted_here) {
                    store.counted.entry(o).or_insert(c);
                }
                if matches!(crash, Crash::AfterPurchases) {
                    continue 'restart;
                }
                // 2. windows and counters
                store.put_windows(st.dirty_window_states());
                store.put_rejects(st.dirty_reject_states());
                if matches!(crash, Crash::AfterWindows) {
                    continue 'restart;
                }
                // 3. checkpoint
                store.checkpoint = Some((st.next, st.watermark, st.clock));
                st.acknowledged();
                st.evict();
                if matches!(crash, Crash::AfterCheckpoint) {
                    continue 'restart;
                }
            }
        }
        return;
    }
}

#[test]
fn windows_equal_the_model_without_crashes() {
    let w = world(1, 3000);
    let mut store = Store::default();
    run(&w, &mut store, 50, &BTreeMap::new());
    assert!(w.expected_late > 10, "{} late purchases", w.expected_late);
    assert_eq!(store.late().len(), w.expected_late);
    assert_eq!(store.totals(), w.expected);
    assert_eq!(store.reject_totals(), w.expected_rejects);
}

#[test]
fn every_crash_point_gives_the_same_rows() {
    let w = world(2, 3000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for round in 0..20 {
        let mut crashes = BTreeMap::new();
        for _ in 0..8 {
            let at = rng.random_range(1..70);
            let how = match rng.random_range(0..3) {
                0 => Crash::AfterPurchases,
                1 => Crash::AfterWindows,
                _ => Crash::AfterCheckpoint,
            };
            crashes.insert(at, how);
        }
        let mut store = Store::default();
        run(&w, &mut store, rng.random_range(10..80), &crashes);
        assert_eq!(
            store.totals(),
            w.expected,
            "round {round}, crashes {crashes:?}"
        );
        assert_eq!(store.reject_totals(), w.expected_rejects, "round {round}");
    }
}

#[test]
fn a_re_send_counts_once_and_other_content_is_a_conflict() {
    let dims = Dims::empty();
    let mut st = PartitionState::new(0, settings(), Restored::default(), &dims);
    let p = Purchase {
        purchase_id: Uuid::from_u128(1),
        client_id: Uuid::from_u128(2),
        product_id: Uuid::from_u128(3),
        seller_id: None,
        quantity: 2,
        price: Decimal::new(1050, 2),
        timestamp: DateTime::<Utc>::from_timestamp(T0, 0).expect("time"),
    };
    let k = Some(T0 * 1000);
    let json = p.to_json().into_bytes();
    assert_eq!(st.step(0, k, &json, &dims), Outcome::Counted);
    assert_eq!(st.step(1, k, &json, &dims), Outcome::Rejected(DUPLICATE));
    let mut other = p.clone();
    other.price = Decimal::new(1051, 2);
    assert_eq!(
        st.step(2, k, other.to_json().as_bytes(), &dims),
        Outcome::Rejected(CONFLICTING_DUPLICATE)
    );
    // Read again after a seek: skipped, not a duplicate.
    assert_eq!(st.step(1, k, &json, &dims), Outcome::Skipped);
    let day: Vec<_> = st
        .dirty_window_states()
        .into_iter()
        .filter(|w| w.dim == "total")
        .collect();
    assert_eq!(day.len(), 1);
    assert_eq!(
        (day[0].revenue, day[0].purchases, day[0].items),
        (2100, 1, 2)
    );
    // Unknown product and seller count under `unknown`.
    assert!(st
        .dirty_window_states()
        .iter()
        .any(|w| w.dim == "product" && w.key == "unknown"));
}

/// The payload of purchase `id` of one item at 1.00, stamped `ts`.
fn one(id: u128, ts: i64) -> Vec<u8> {
    Purchase {
        purchase_id: Uuid::from_u128(id),
        client_id: Uuid::from_u128(2),
        product_id: Uuid::from_u128(3),
        seller_id: None,
        quantity: 1,
        price: Decimal::new(100, 2),
        timestamp: DateTime::<Utc>::from_timestamp(ts, 0).expect("time"),
    }
    .to_json()
    .into_bytes()
}

/// Counted arrivals as ClickHouse would hold them (id, offset, event time, content hash),
/// and the look-ups asked.
#[derive(Default)]
struct Rows {
    rows: Vec<(u128, i64, i64, u64)>,
    asked: usize,
}

impl Rows {
    fn add(&mut self, offset: i64, payload: &[u8]) {
        let p = lakeshop_model::parse_purchase(payload, Utc::now()).expect("valid");
        self.rows.push((
            p.purchase_id.as_u128(),
            offset,
            p.timestamp.timestamp(),
            content_hash(&p),
        ));
    }
}

impl Lookup for Rows {
    fn first_counted(
        &mut self,
        _part: i32,
        id: u128,
        since: i64,
        through: i64,
    ) -> std::result::Result<Option<CountedArrival>, LookupFailed> {
        self.asked += 1;
        Ok(self
            .rows
            .iter()
            .filter(|r| r.0 == id && r.2 >= since && r.1 <= through)
            .min_by_key(|r| r.1)
            .map(|r| CountedArrival {
                offset: r.1,
                content_hash: r.3,
            }))
    }
}

/// Re-sends are decided as the batch job decides them, within the dedup horizon and not
/// only within the lateness: an identical one hours later is a duplicate, one with other
/// content and a new stamp a conflicting duplicate (never counted twice); beyond the
/// horizon a re-sent id is a new purchase. Ids no longer held exactly are found through
/// the filter and one look-up each; an absent id costs none.
#[test]
fn re_sends_are_decided_within_the_dedup_horizon_not_the_lateness() {
    let dims = Dims::empty();
    let settings = Settings {
        dedup_horizon: 2 * 86_400,
        ..settings()
    };
    let mut st = PartitionState::new(0, settings.clone(), Restored::default(), &dims);
    let mut rows = Rows::default();
    let k = |ts: i64| Some(ts * 1000);
    let with = |id: u128, ts: i64, quantity: u32| {
        Purchase {
            purchase_id: Uuid::from_u128(id),
            client_id: Uuid::from_u128(2),
            product_id: Uuid::from_u128(3),
            seller_id: None,
            quantity,
            price: Decimal::new(100, 2),
            timestamp: DateTime::<Utc>::from_timestamp(ts, 0).expect("time"),
        }
        .to_json()
        .into_bytes()
    };
    let later = T0 + 3 * 3600;
    let step = |st: &mut PartitionState, rows: &mut Rows, offset, kafka, payload: &[u8]| {
        let out = st
            .process(offset, kafka, payload, &dims, rows)
            .expect("answered");
        if matches!(out, Outcome::Counted | Outcome::Late) {
            rows.add(offset, payload);
        }
        st.acknowledged();
        st.evict();
        out
    };
    assert_eq!(
        step(&mut st, &mut rows, 0, k(T0), &with(1, T0, 1)),
        Outcome::Counted
    );
    assert_eq!(
        step(&mut st, &mut rows, 1, k(later), &with(2, later, 1)),
        Outcome::Counted
    );
    assert_eq!(
        st.sizes().1,
        1,
        "id 1 left memory (acknowledged, past the lateness)"
    );
    assert_eq!(rows.asked, 0);
    // Identical, three hours later: late, and a duplicate, not a correction.
    assert_eq!(
        step(&mut st, &mut rows, 2, k(later), &with(1, T0, 1)),
        Outcome::Rejected(DUPLICATE)
    );
    assert_eq!(rows.asked, 1, "found through the filter and one look-up");
    // Other content, stamped now: not a new purchase.
    assert_eq!(
        step(&mut st, &mut rows, 3, k(later), &with(1, later, 2)),
        Outcome::Rejected(CONFLICTING_DUPLICATE)
    );
    assert_eq!(rows.asked, 2);
    // A new id: the filter is certain, no look-up.
    assert_eq!(
        step(&mut st, &mut rows, 4, k(later), &with(5, later, 1)),
        Outcome::Counted
    );
    assert_eq!(rows.asked, 2);
    // Three days on (beyond the 2-day horizon), id 1 again: a new purchase.
    let days = T0 + 3 * 86_400;
    assert_eq!(
        step(&mut st, &mut rows, 5, k(days), &with(1, days, 3)),
        Outcome::Counted
    );
    assert_eq!(
        step(&mut st, &mut rows, 6, k(days), &with(1, days, 3)),
        Outcome::Rejected(DUPLICATE)
    );
    // A restored partition holds the ids of its filter's span; a purchase older than that
    // is looked up whatever the filter says, and one absent there counts (late).
    let restored = Restored {
        next_offset: 7,
        watermark: days,
        clock: days,
        ids: rows.rows.iter().map(|r| (r.0, r.2)).collect(),
        ..Restored::default()
    };
    let mut st = PartitionState::new(0, settings, restored, &dims);
    let asked = rows.asked;
    assert_eq!(
        step(&mut st, &mut rows, 7, k(days), &with(9, T0 - 86_400, 1)),
        Outcome::Late
    );
    assert_eq!(rows.asked, asked + 1, "older than the filter: looked up");
    assert_eq!(
        step(&mut st, &mut rows, 8, k(days), &with(1, T0, 1)),
        Outcome::Rejected(DUPLICATE),
        "the first arrival, found by the look-up"
    );
}

#[test]
fn lateness_is_measured_on_the_watermark() {
    let dims = Dims::empty();
    let mut st = PartitionState::new(0, settings(), Restored::default(), &dims);
    let k = Some(T0 * 1000);
    assert_eq!(st.step(0, k, &one(1, T0), &dims), Outcome::Counted);
    assert_eq!(st.step(1, k, &one(2, T0 - 300), &dims), Outcome::Counted);
    assert_eq!(st.step(2, k, &one(3, T0 - 301), &dims), Outcome::Late);
    let late = st.take_flagged_records();
    assert_eq!(
        late.iter().map(|f| (f.flag, f.offset)).collect::<Vec<_>>(),
        [(TOO_LATE, 2)]
    );
    // Closed windows are evicted once acknowledged; open ones stay.
    st.acknowledged();
    let later = Some((T0 + 3 * 3600) * 1000);
    assert_eq!(
        st.step(3, later, &one(4, T0 + 3 * 3600), &dims),
        Outcome::Counted
    );
    st.acknowledged();
    st.evict();
    let (windows, ids) = st.sizes();
    // Only the newest minute × 4 dims is open.
    assert_eq!(windows, 4, "windows still held");
    assert_eq!(ids, 1);
}

/// A till with a clock an hour fast: its purchase counts in its own (future) minute, but the
/// watermark moves only to its Kafka time plus the allowed skew, so the purchases after it
/// on the partition are not late; it is flagged `future`.
#[test]
fn a_future_stamp_moves_the_watermark_no_further_than_the_clock_skew() {
    let dims = Dims::empty();
    let mut st = PartitionState::new(0, settings(), Restored::default(), &dims);
    let k = Some(T0 * 1000);
    assert_eq!(st.step(0, k, &one(1, T0), &dims), Outcome::Counted);
    // Exactly the skew ahead: an ordinary purchase.
    assert_eq!(st.step(1, k, &one(2, T0 + 60), &dims), Outcome::Counted);
    assert_eq!(st.step(2, k, &one(3, T0 + 3600), &dims), Outcome::Future);
    assert_eq!(
        st.watermark,
        T0 + 60,
        "watermark bounded by Kafka time + skew"
    );
    assert_eq!(st.clock, T0 + 60, "clock bounded alike");
    // A purchase from four minutes ago is within the lateness of the bounded watermark.
    assert_eq!(st.step(3, k, &one(4, T0 - 200), &dims), Outcome::Counted);
    let flagged = st.take_flagged_records();
    assert_eq!(
        flagged
            .iter()
            .map(|f| (f.flag, f.offset, f.ts, f.kafka_ts))
            .collect::<Vec<_>>(),
        [(FUTURE, 2, T0 + 3600, T0)]
    );
    // It counts in its own minute.
    let future_minute = (T0 + 3600).div_euclid(60) * 60;
    assert!(st
        .dirty_window_states()
        .iter()
        .any(|w| w.dim == "total" && w.window_start == future_minute && w.purchases == 1));
    // Without a Kafka timestamp nothing bounds it.
    assert_eq!(st.step(4, None, &one(5, T0 + 600), &dims), Outcome::Counted);
    assert_eq!(st.watermark, T0 + 600);
}

#[test]
fn a_failed_flush_writes_its_windows_again_with_their_current_state() {
    let dims = Dims::empty();
    let mut st = PartitionState::new(0, settings(), Restored::default(), &dims);
    let at = |id: u128, product: u128, ts: i64| {
        Purchase {
            purchase_id: Uuid::from_u128(id),
            client_id: Uuid::from_u128(2),
            product_id: Uuid::from_u128(product),
            seller_id: None,
            quantity: 1,
            price: Decimal::new(100, 2),
            timestamp: DateTime::<Utc>::from_timestamp(ts, 0).expect("time"),
        }
        .to_json()
        .into_bytes()
    };
    let k = Some(T0 * 1000);
    assert_eq!(st.step(0, k, &at(1, 3, T0), &dims), Outcome::Counted);
    let sent = st.dirty_window_states().len();
    st.take_purchases(&mut RowBinary::new());
    assert_eq!(st.begin_flush().len(), 1);
    assert!(!st.is_dirty(), "what was sent is clean while in flight");
    // A record read while the flush is in flight changes the shared windows only.
    assert_eq!(st.step(1, k, &at(2, 3, T0 + 1), &dims), Outcome::Counted);
    st.take_purchases(&mut RowBinary::new());
    let changed = st.dirty_window_states().len();
    assert!(changed <= sent);
    // Eviction waits for the flight to end.
    st.evict();
    st.flush_failed();
    let again = st.dirty_window_states();
    assert_eq!(
        again.len(),
        sent,
        "every window of the failed flush is written again"
    );
    let day = again
        .iter()
        .find(|w| w.dim == "total")
        .expect("minute total");
    assert_eq!(
        (day.purchases, day.version),
        (2, 2),
        "current state, not the sent one"
    );
    // A successful flush leaves nothing to write.
    st.begin_flush();
    st.flush_succeeded();
    assert!(st.dirty_window_states().is_empty());
}

/// A flush sent and not yet answered: what it would write.
struct Flight {
    windows: Vec<WindowState>,
    flagged: Vec<Flagged>,
    rejects: Vec<RejectState>,
    counted: BTreeMap<i64, CountedPurchase>,
    checkpoint: (i64, i64, i64),
    /// Records still to process before it is answered.
    answer_in: usize,
    fails: bool,
}

/// The loader's pipelined flushes: one flush in flight while records go on being processed,
/// answered (or failed, with any part of it landed) some records later; crashes at random,
/// in flight or not. Whatever happens, the rows end equal to the model.
#[test]
fn pipelined_flushes_that_fail_or_crash_give_the_same_rows() {
    let w = world(3, 3000);
    let lateness = settings().lateness;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for round in 0..30 {
        let flush_every = rng.random_range(5..60);
        let mut store = Store::default();
        let mut crashes = 0;
        'restart: loop {
            let mut st = PartitionState::new(0, settings(), store.restored(lateness), &w.dims);
            let from = (st.next - 7).max(0) as usize;
            let mut counted_here: BTreeMap<i64, CountedPurchase> = BTreeMap::new();
            let mut flight: Option<Flight> = None;
            // Flagged rows of a failed flush, sent again with the next one (as the loader does).
            let mut retry_flagged: Vec<Flagged> = Vec::new();
            let mut since_flush = 0;
            let mut offset = from;
            loop {
                if let Some(r) = w.log.get(offset) {
                    let out = st
                        .process(
                            offset as i64,
                            Some(r.kafka_ms),
                            &r.payload,
                            &w.dims,
                            &mut StoreLookup(&store),
                        )
                        .expect("the store answers");
                    if out == Outcome::Counted {
                        let p =
                            lakeshop_model::parse_purchase(&r.payload, Utc::now()).expect("valid");
                        let keys = w.dims.keys(&p);
                        counted_here.insert(
                            offset as i64,
                            CountedPurchase {
                                purchase_id: p.purchase_id.to_string(),
                                offset: offset as i64,
                                timestamp: p.timestamp.timestamp(),
                                content_hash: content_hash(&p),
                                seller_key: keys.seller.to_string(),
                                category: keys.category.to_string(),
                                product_key: keys.product.to_string(),
                            },
                        );
                    }
                    offset += 1;
                    since_flush += 1;
                }
                let at_end = offset >= w.log.len();
                // The flight is answered.
                let answered = flight.as_mut().is_some_and(|f| {
                    f.answer_in = f.answer_in.saturating_sub(1);
                    f.answer_in == 0 || at_end
                });
                if answered {
                    let f = flight.take().expect("in flight");
                    if f.fails {
                        // Any part may have landed; never the checkpoint.
                        if rng.random_bool(0.5) {
                            store.put_windows(f.windows);
                        }
                        if rng.random_bool(0.5) {
                            store.put_rejects(f.rejects);
                        }
                        let landed = rng.random_bool(0.5);
                        if landed {
                            store.put_flagged(f.flagged.clone());
                        }
                        retry_flagged.extend(f.flagged);
                        for (o, c) in f.counted {
                            if landed {
                                store.counted.entry(o).or_insert(c.clone());
                            }
                            counted_here.entry(o).or_insert(c);
                        }
                        st.flush_failed();
                    } else {
                        store.put_windows(f.windows);
                        store.put_rejects(f.rejects);
                        store.put_flagged(f.flagged);
                        for (o, c) in f.counted {
                            store.counted.entry(o).or_insert(c);
                        }
                        store.checkpoint = Some(f.checkpoint);
                        st.flush_succeeded();
                        st.evict();
                    }
                }
                // A crash, in flight or not: what landed stays, memory is gone.
                if crashes < 6 && rng.random_bool(0.004) {
                    crashes += 1;
                    if let Some(f) = flight.take() {
                        match rng.random_range(0..3) {
                            // Nothing landed.
                            0 => {}
                            // The windows landed, not the checkpoint.
                            1 => store.put_windows(f.windows),
                            // All of it landed; the answer never came.
                            _ => {
                                store.put_windows(f.windows);
                                store.put_rejects(f.rejects);
                                store.put_flagged(f.flagged);
                                for (o, c) in f.counted {
                                    store.counted.entry(o).or_insert(c);
                                }
                                store.checkpoint = Some(f.checkpoint);
                            }
                        }
                    }
                    continue 'restart;
                }
                let pending = st.is_dirty() || store.checkpoint.map(|c| c.0) != Some(st.next);
                if flight.is_none() && (since_flush >= flush_every || at_end) && pending {
                    since_flush = 0;
                    st.take_purchases(&mut RowBinary::new());
                    let mut flagged = std::mem::take(&mut retry_flagged);
                    flagged.extend(st.take_flagged_records());
                    flight = Some(Flight {
                        flagged,
                        windows: st.dirty_window_states(),
                        rejects: st.dirty_reject_states(),
                        counted: std::mem::take(&mut counted_here),
                        checkpoint: (st.next, st.watermark, st.clock),
                        answer_in: rng.random_range(1..40),
                        fails: rng.random_bool(0.3),
                    });
                    st.begin_flush();
                }
                if at_end && flight.is_none() && !pending {
                    break 'restart;
                }
            }
        }
        assert_eq!(
            store.totals(),
            w.expected,
            "round {round}: flush every {flush_every}, {crashes} crashes"
        );
        assert_eq!(store.reject_totals(), w.expected_rejects, "round {round}");
    }
}
