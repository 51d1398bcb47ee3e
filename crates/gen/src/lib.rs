//! `lakeshop gen`: synthetic, verifiable shop data.
//!
//! Deterministic from a seed: clients and sellers into PostgreSQL, the product catalogue as
//! the source Delta table, purchases and interactions into Kafka, and a ground-truth file
//! (per day × seller, × category, × product, and per minute and hour of the business time
//! zone: purchases, items, exact revenue; exact distinct clients per day, hour and minute) that every later stage is checked against. Knobs add what real feeds
//! carry: re-sent duplicates, purchases of products or sellers not in the catalogue,
//! purchases stamped well before or ahead of the time they are produced (late arrivals and
//! fast clocks), and invalid records of many kinds, each counted in the truth.

mod data;
mod error;
mod kafka;
mod postgres;
mod products;
mod truth;

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

pub use data::{BadKind, World};
pub use error::{Error, Result};
pub use truth::{hour_start, minute_start, window_key, Bucket, DayTruth, Truth};

/// Which outputs a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Clients and sellers into PostgreSQL.
    Postgres,
    /// The product catalogue as the source Delta table.
    Products,
    /// Purchases into Kafka.
    Purchases,
    /// Interactions into Kafka.
    Interactions,
}

/// Live mode: events stamped now, at a rate, for a while.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Purchases per second.
    pub rate: u64,
    /// How long to produce.
    pub duration: Duration,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub clients: u64,
    pub sellers: u64,
    pub products: u64,
    /// Distinct valid purchases (history mode).
    pub purchases: u64,
    /// Interaction events (history mode).
    pub interactions: u64,
    /// Days of history ending yesterday in `timezone`.
    pub days: u32,
    /// Live mode instead of history.
    pub live: Option<Live>,
    pub duplicate_fraction: f64,
    pub unknown_fraction: f64,
    pub bad_fraction: f64,
    /// Fraction of valid purchases stamped 6 to 30 minutes (uniform, in ms) before the time
    /// they would otherwise get: later than a streaming loader's 5-minute lateness. In live
    /// mode that time is the produce time, which the Kafka record keeps as its timestamp; in
    /// history mode it is the drawn time, and the message keeps that time's place in the
    /// produce order (so it arrives after purchases stamped later). The truth counts each
    /// under its own stamp, like any purchase (its day may then be another, even one outside
    /// `days`).
    pub late_fraction: f64,
    /// Fraction of valid purchases stamped 2 to 60 minutes (uniform, in ms) after the time
    /// they would otherwise get: further ahead of the Kafka record's timestamp (the produce
    /// time) than a streaming loader's 1-minute clock skew, still well within the validator's
    /// day ahead. History mode shifts them the same way, keeping the produce order of the
    /// unshifted time, as for [`GenOptions::late_fraction`]; the truth counts each under its
    /// own stamp.
    pub future_fraction: f64,
    /// Zipf exponent of product popularity (0: every product equally likely).
    pub product_skew: f64,
    pub seed: u64,
    /// Business time zone: day boundaries of the truth.
    pub timezone: chrono_tz::Tz,
    /// Outputs to write; empty means all.
    pub parts: Vec<Part>,
    /// Keep existing rows and table versions instead of replacing them.
    pub append: bool,
    /// Create the source product table with Change Data Feed on (turned on first for an
    /// existing table without it).
    pub products_cdf: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl GenOptions {
    fn wants(&self, part: Part) -> bool {
        self.parts.is_empty() || self.parts.contains(&part)
    }

    fn check(&self) -> Result<()> {
        for (name, f) in [
            ("duplicate-fraction", self.duplicate_fraction),
            ("unknown-fraction", self.unknown_fraction),
            ("bad-fraction", self.bad_fraction),
            ("late-fraction", self.late_fraction),
            ("future-fraction", self.future_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::Options(format!("--{name} {f} is outside 0..=1")));
            }
        }
        // One draw decides whether a purchase is stamped late, ahead, or neither.
        if self.late_fraction + self.future_fraction > 1.0 {
            return Err(Error::Options(format!(
                "--late-fraction {} and --future-fraction {} add up to more than 1",
                self.late_fraction, self.future_fraction
            )));
        }
        if !(0.0..=10.0).contains(&self.product_skew) {
            return Err(Error::Options(format!(
                "--product-skew {} is outside 0..=10",
                self.product_skew
            )));
        }
        if self.sellers == 0 || self.products == 0 || self.clients == 0 {
            return Err(Error::Options(
                "--clients, --sellers and --products must be at least 1".into(),
            ));
        }
        if self.days == 0 {
            return Err(Error::Options("--days must be at least 1".into()));
        }
        if let Some(live) = self.live {
            if live.rate == 0 || live.duration.is_zero() {
                return Err(Error::Options(
                    "--rate and --duration must be above 0".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Where the output goes.
#[derive(Clone)]
pub struct Targets {
    /// PostgreSQL URL (the database must exist).
    pub postgres_url: String,
    pub clients_table: String,
    pub sellers_table: String,
    /// Producer config: brokers and pass-through properties.
    pub kafka: rdkafka::ClientConfig,
    pub purchases_topic: String,
    pub interactions_topic: String,
    /// URI of the source product Delta table.
    pub products_uri: String,
    /// deltalake / object_store options (S3 endpoint, region...).
    pub storage_options: HashMap<String, String>,
}

impl std::fmt::Debug for Targets {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets")
            .field("purchases_topic", &self.purchases_topic)
            .field("interactions_topic", &self.interactions_topic)
            .field("products_uri", &self.products_uri)
            .finish_non_exhaustive()
    }
}

/// Generates everything `opts` asks for into `targets` and returns the ground truth.
pub async fn run(opts: &GenOptions, targets: &Targets) -> Result<Truth> {
    opts.check()?;
    let started = std::time::Instant::now();
    let now: DateTime<Utc> = Utc::now();
    let world = World::generate(opts, now);
    let mut truth = Truth::new(opts, now);
    truth.counts.clients = world.clients.len() as u64;
    truth.counts.sellers = world.sellers.len() as u64;
    truth.counts.products = world.products.len() as u64;

    if opts.wants(Part::Postgres) {
        postgres::write(&world, targets, opts.append).await?;
        tracing::info!(
            clients = world.clients.len(),
            sellers = world.sellers.len(),
            "PostgreSQL written"
        );
    }
    if opts.wants(Part::Products) {
        let version = products::write(&world, targets, opts.append, opts.products_cdf).await?;
        truth.products_version = Some(version);
        tracing::info!(products = world.products.len(), version, uri = %targets.products_uri, "product table written");
    }
    if opts.wants(Part::Purchases) || opts.wants(Part::Interactions) {
        kafka::produce(opts, targets, &world, now, &mut truth).await?;
    }
    truth.seconds = started.elapsed().as_secs_f64();
    Ok(truth)
}

/// The purchase messages (key, payload) a history run would produce, in produce order,
/// without writing anything. Benchmarks use it to feed a bare producer the same bytes.
pub fn purchase_messages(opts: &GenOptions, now: DateTime<Utc>) -> Result<Vec<(String, Vec<u8>)>> {
    opts.check()?;
    let world = World::generate(opts, now);
    let mut truth = Truth::new(opts, now);
    truth.index(&world);
    kafka::history_messages(opts, &world, now, &mut truth)
}

pub use kafka::{producer_config, RUN_HEADER};

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> GenOptions {
        GenOptions {
            clients: 200,
            sellers: 10,
            products: 50,
            purchases: 2_000,
            interactions: 0,
            days: 3,
            live: None,
            duplicate_fraction: 0.05,
            unknown_fraction: 0.02,
            bad_fraction: 0.05,
            late_fraction: 0.0,
            future_fraction: 0.0,
            product_skew: 1.1,
            seed,
            timezone: chrono_tz::Europe::Moscow,
            parts: vec![],
            append: false,
            products_cdf: false,
            progress: false,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let now = Utc::now();
        let a = purchase_messages(&opts(7), now).expect("gen");
        let b = purchase_messages(&opts(7), now).expect("gen");
        let c = purchase_messages(&opts(8), now).expect("gen");
        assert_eq!(a, b);
        assert_ne!(a, c);
        // 2000 purchases + 5% re-sent + 5% invalid.
        assert_eq!(a.len(), 2_000 + 100 + 100);
    }

    #[test]
    fn truth_counts_add_up_and_days_follow_the_time_zone() {
        let now = Utc::now();
        let o = opts(3);
        let world = World::generate(&o, now);
        let mut truth = Truth::new(&o, now);
        truth.index(&world);
        let msgs = kafka::history_messages(&o, &world, now, &mut truth).expect("gen");
        let c = &truth.counts;
        assert_eq!(c.purchases, 2_000);
        assert_eq!(c.unknown_purchases, 40);
        assert_eq!(c.duplicates, 100);
        assert_eq!(c.bad, 100);
        assert_eq!(c.bad_by_reason.values().sum::<u64>(), 100);
        assert_eq!(c.purchase_messages, msgs.len() as u64);
        let days = data::history_days(now, o.timezone, o.days);
        assert_eq!(truth.days.keys().copied().collect::<Vec<_>>(), days);
        let total: u64 = truth.days.values().map(|d| d.total.purchases).sum();
        assert_eq!(total, 2_000);
        for d in truth.days.values() {
            let by_seller: u64 = d.by_seller.values().map(|b| b.purchases).sum();
            let revenue: rust_decimal::Decimal = d.by_product.values().map(|b| b.revenue).sum();
            assert_eq!(by_seller, d.total.purchases);
            assert_eq!(revenue, d.total.revenue);
            assert!(d.distinct_clients <= d.total.purchases);
        }
    }

    #[test]
    fn live_purchases_stamped_late_or_ahead_are_counted_under_their_stamps() {
        use chrono::TimeDelta;
        use std::collections::{BTreeMap, HashSet};
        let mut o = opts(9);
        o.live = Some(Live {
            rate: 10,
            duration: Duration::from_secs(200),
        });
        o.late_fraction = 0.1;
        o.future_fraction = 0.05;
        o.check().expect("valid options");
        let mut too_many = o.clone();
        too_many.future_fraction = 0.95;
        assert!(too_many.check().is_err(), "late + future above 1");
        let mut out_of_range = o.clone();
        out_of_range.late_fraction = 1.5;
        assert!(out_of_range.check().is_err(), "late above 1");

        let now = Utc::now();
        let world = World::generate(&o, now);
        let mut truth = Truth::new(&o, now);
        truth.index(&world);
        let draw = data::PurchaseDraw::new(&world, o.product_skew);
        let mut rng = world.event_rng();
        let mut recent = Vec::new();
        // Every message as the live loop sends it, with its produce time: 2000 purchases,
        // 100 ms apart.
        let mut sent: Vec<(DateTime<Utc>, Vec<u8>)> = Vec::new();
        for i in 0..2_000_i64 {
            let at = now + TimeDelta::milliseconds(100 * i);
            kafka::live_step(
                &o,
                &draw,
                &mut rng,
                at,
                &mut recent,
                &mut truth,
                &mut |_key: &str, payload: &[u8]| -> Result<()> {
                    sent.push((at, payload.to_vec()));
                    Ok(())
                },
            )
            .expect("live step");
        }
        assert_eq!(truth.counts.purchase_messages, sent.len() as u64);

        // The distinct valid purchases, read back as a consumer reads them (validated at
        // their produce time), each stamped as its kind says.
        let late_by = TimeDelta::minutes(6)..=TimeDelta::minutes(30);
        let ahead_by = TimeDelta::minutes(2)..=TimeDelta::minutes(60);
        let (mut late, mut ahead) = (0_u64, 0_u64);
        let mut purchases: HashMap<uuid::Uuid, lakeshop_model::Purchase> = HashMap::new();
        for (at, payload) in &sent {
            let Ok(p) = lakeshop_model::parse_purchase(payload, *at) else {
                continue;
            };
            // A re-send copies an earlier purchase (live mode makes no conflicting copies).
            if let Some(first) = purchases.get(&p.purchase_id) {
                assert_eq!(*first, p, "a re-send differs from its original");
                continue;
            }
            let shift = p.timestamp - *at;
            if shift < TimeDelta::zero() {
                assert!(
                    late_by.contains(&-shift),
                    "stamped {shift} from its produce time"
                );
                late += 1;
            } else if shift > TimeDelta::zero() {
                assert!(
                    ahead_by.contains(&shift),
                    "stamped {shift} from its produce time"
                );
                ahead += 1;
            }
            purchases.insert(p.purchase_id, p);
        }
        assert_eq!(purchases.len(), 2_000);
        assert_eq!(truth.counts.purchases, 2_000);
        // About 10% and 5% (fixed by the seed; the bounds are over 5 standard deviations).
        assert!((120..=280).contains(&late), "{late} of 2000 stamped late");
        assert!((50..=150).contains(&ahead), "{ahead} of 2000 stamped ahead");

        // The truth is exactly a recount of those purchases under their own stamps.
        type Day = (u64, u64, rust_decimal::Decimal, HashSet<uuid::Uuid>);
        let mut days: BTreeMap<chrono::NaiveDate, Day> = BTreeMap::new();
        let mut minutes: BTreeMap<String, u64> = BTreeMap::new();
        let mut hours: BTreeMap<String, u64> = BTreeMap::new();
        for p in purchases.values() {
            let d = days
                .entry(data::business_day(p.timestamp, o.timezone))
                .or_default();
            d.0 += 1;
            d.1 += u64::from(p.quantity);
            d.2 += p.amount();
            d.3.insert(p.client_id);
            *minutes
                .entry(window_key(minute_start(p.timestamp)))
                .or_default() += 1;
            *hours
                .entry(window_key(hour_start(p.timestamp, o.timezone)))
                .or_default() += 1;
        }
        let want: BTreeMap<chrono::NaiveDate, (u64, u64, rust_decimal::Decimal, u64)> = days
            .into_iter()
            .map(|(day, (n, items, revenue, clients))| {
                (day, (n, items, revenue, clients.len() as u64))
            })
            .collect();
        let got: BTreeMap<chrono::NaiveDate, (u64, u64, rust_decimal::Decimal, u64)> = truth
            .days
            .iter()
            .map(|(day, d)| {
                (
                    *day,
                    (
                        d.total.purchases,
                        d.total.items,
                        d.total.revenue,
                        d.distinct_clients,
                    ),
                )
            })
            .collect();
        assert_eq!(got, want, "the truth's days against a recount");
        let truth_minutes: BTreeMap<String, u64> = truth
            .days
            .values()
            .flat_map(|d| d.by_minute.iter().map(|(k, b)| (k.clone(), b.purchases)))
            .collect();
        let truth_hours: BTreeMap<String, u64> = truth
            .days
            .values()
            .flat_map(|d| d.by_hour.iter().map(|(k, b)| (k.clone(), b.purchases)))
            .collect();
        assert_eq!(truth_minutes, minutes, "minutes");
        assert_eq!(truth_hours, hours, "hours");
    }

    #[test]
    fn minutes_and_hours_add_up_to_the_day_in_the_business_zone() {
        let now = Utc::now();
        let mut o = opts(5);
        // +05:30: hours start at half past a UTC hour.
        o.timezone = chrono_tz::Asia::Kolkata;
        let world = World::generate(&o, now);
        let mut truth = Truth::new(&o, now);
        truth.index(&world);
        kafka::history_messages(&o, &world, now, &mut truth).expect("gen");
        for (day, d) in &truth.days {
            for (windows, clients) in [
                (&d.by_minute, &d.minute_clients),
                (&d.by_hour, &d.hour_clients),
            ] {
                let purchases: u64 = windows.values().map(|b| b.purchases).sum();
                let items: u64 = windows.values().map(|b| b.items).sum();
                let revenue: rust_decimal::Decimal = windows.values().map(|b| b.revenue).sum();
                assert_eq!(purchases, d.total.purchases, "{day}");
                assert_eq!(items, d.total.items, "{day}");
                assert_eq!(revenue, d.total.revenue, "{day}");
                assert_eq!(
                    clients.keys().collect::<Vec<_>>(),
                    windows.keys().collect::<Vec<_>>()
                );
                for (k, b) in windows {
                    assert!((1..=b.purchases).contains(&clients[k]), "{k}");
                    let start = chrono::DateTime::parse_from_rfc3339(k).expect("rfc 3339");
                    assert_eq!(window_key(start.with_timezone(&Utc)), *k);
                    let local = start.with_timezone(&o.timezone);
                    assert_eq!(
                        data::business_day(start.with_timezone(&Utc), o.timezone),
                        *day
                    );
                    assert_eq!(chrono::Timelike::second(&local), 0, "{k}");
                }
            }
            assert!(d.by_hour.len() <= 24);
            for k in d.by_hour.keys() {
                assert!(
                    k.ends_with(":30:00Z"),
                    "Kolkata hours start at :30 UTC: {k}"
                );
            }
            assert!(d.hour_clients.values().all(|c| *c <= d.distinct_clients));
        }
        // The file keeps the windows and still reads without them.
        let json = serde_json::to_value(&truth).expect("json");
        let back: Truth = serde_json::from_value(json.clone()).expect("read back");
        assert_eq!(
            serde_json::to_value(&back.days).expect("json"),
            json["days"]
        );
        let mut old = json;
        for d in old["days"].as_object_mut().expect("days").values_mut() {
            for k in ["by_minute", "by_hour", "minute_clients", "hour_clients"] {
                d.as_object_mut().expect("day").remove(k);
            }
        }
        let old: Truth = serde_json::from_value(old).expect("an older file reads");
        assert!(old.days.values().all(|d| d.by_minute.is_empty()));
        assert_eq!(old.tz(), chrono_tz::Asia::Kolkata);
    }

    #[test]
    fn window_starts_follow_the_zone() {
        let ts = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("ts")
                .with_timezone(&Utc)
        };
        let t = ts("2026-11-25T10:17:42Z");
        assert_eq!(window_key(minute_start(t)), "2026-11-25T10:17:00Z");
        assert_eq!(
            window_key(hour_start(t, chrono_tz::UTC)),
            "2026-11-25T10:00:00Z"
        );
        assert_eq!(
            window_key(hour_start(t, chrono_tz::Asia::Kolkata)),
            "2026-11-25T09:30:00Z"
        );
        // Berlin falls back on 2026-10-25: local 02:00-03:00 happens twice, two windows.
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(
            window_key(hour_start(ts("2026-10-25T00:10:00Z"), berlin)),
            "2026-10-25T00:00:00Z"
        );
        assert_eq!(
            window_key(hour_start(ts("2026-10-25T01:10:00Z"), berlin)),
            "2026-10-25T01:00:00Z"
        );
    }
}
