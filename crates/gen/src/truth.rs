//! The ground truth of a run: what every later stage must reproduce exactly.

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use lakeshop_model::{Purchase, Reason, UNKNOWN};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

use crate::data::World;
use crate::GenOptions;

/// Purchases, items and exact revenue of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Distinct purchase ids.
    pub purchases: u64,
    /// Σ quantity.
    pub items: u64,
    /// Σ quantity × price, exact (a decimal string in the JSON).
    pub revenue: Decimal,
}

impl Bucket {
    fn add(&mut self, p: &Purchase) {
        self.purchases += 1;
        self.items += u64::from(p.quantity);
        self.revenue += p.amount();
    }
}

/// One business day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTruth {
    /// The whole day.
    pub total: Bucket,
    /// Distinct clients who bought that day.
    pub distinct_clients: u64,
    /// By seller id; `unknown` for purchases without a known seller.
    pub by_seller: BTreeMap<String, Bucket>,
    /// By category; `unknown` for products not in the catalogue.
    pub by_category: BTreeMap<String, Bucket>,
    /// By product id; `unknown` for products not in the catalogue.
    pub by_product: BTreeMap<String, Bucket>,
    /// Purchases counted in an `unknown` bucket of any dimension.
    pub unknown_purchases: u64,
    /// By minute of the business time zone, keyed by the minute's start as a UTC instant in
    /// RFC 3339 (`2026-11-25T10:17:00Z`, see [`window_key`]). Absent from files written
    /// before it was added.
    #[serde(default)]
    pub by_minute: BTreeMap<String, Bucket>,
    /// By hour of the business time zone, keyed like `by_minute` by the hour's start as a
    /// UTC instant (a zone at +05:30 has hours starting at `…:30:00Z`).
    #[serde(default)]
    pub by_hour: BTreeMap<String, Bucket>,
    /// Exact distinct clients per minute, keyed as `by_minute`.
    #[serde(default)]
    pub minute_clients: BTreeMap<String, u64>,
    /// Exact distinct clients per hour, keyed as `by_hour`.
    #[serde(default)]
    pub hour_clients: BTreeMap<String, u64>,
    #[serde(skip)]
    clients: HashSet<Uuid>,
    /// (window start in UTC seconds, client) pairs already counted, minutes and hours apart.
    #[serde(skip)]
    minute_seen: HashSet<(i64, Uuid)>,
    #[serde(skip)]
    hour_seen: HashSet<(i64, Uuid)>,
}

/// The key of a window in [`DayTruth::by_minute`] and [`DayTruth::by_hour`]: its start as
/// RFC 3339 UTC text, `%Y-%m-%dT%H:%M:%SZ`.
pub fn window_key(start: DateTime<Utc>) -> String {
    start.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The start of the business-time-zone minute holding `ts`. Zone offsets are whole minutes
/// (since well before 2000, the earliest valid purchase), so this is the UTC minute.
pub fn minute_start(ts: DateTime<Utc>) -> DateTime<Utc> {
    let secs = ts.timestamp().div_euclid(60) * 60;
    DateTime::from_timestamp(secs, 0).unwrap_or(ts)
}

/// The start of the business-time-zone hour holding `ts`: `ts` less the minutes and seconds
/// past the local hour, so a +05:30 zone's hours start at half past a UTC hour, and the two
/// local 02:00 hours of a daylight-saving fall-back are two windows.
pub fn hour_start(ts: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let local = ts.with_timezone(&tz);
    let past = i64::from(local.minute() * 60 + local.second());
    DateTime::from_timestamp(ts.timestamp() - past, 0).unwrap_or(ts)
}

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub clients: u64,
    pub sellers: u64,
    pub products: u64,
    /// Distinct valid purchases (each purchase_id once), known and unknown.
    pub purchases: u64,
    /// Valid purchases with an unknown product or seller.
    pub unknown_purchases: u64,
    /// Exact re-sends of a valid purchase.
    pub duplicates: u64,
    /// Invalid records, all kinds (including conflicting duplicates).
    pub bad: u64,
    /// Invalid records by the reason validation gives them.
    pub bad_by_reason: BTreeMap<Reason, u64>,
    /// Messages produced to the purchases topic: purchases + duplicates + bad.
    pub purchase_messages: u64,
    /// Interaction events produced.
    pub interactions: u64,
    /// Interaction events by kind.
    pub interactions_by_kind: BTreeMap<String, u64>,
}

/// The ground-truth file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truth {
    /// Version of this file's format.
    pub schema_version: u32,
    /// Identifies the run; every message carries it in the `lakeshop-run` header.
    pub run_id: Uuid,
    pub seed: u64,
    pub generated_at: DateTime<Utc>,
    /// Business time zone of `days`.
    pub timezone: String,
    pub purchases_topic: Option<String>,
    pub interactions_topic: Option<String>,
    /// Version of the source product table after this run.
    pub products_version: Option<u64>,
    pub counts: Counts,
    /// Per business day (YYYY-MM-DD).
    pub days: BTreeMap<NaiveDate, DayTruth>,
    /// Seconds the run took.
    pub seconds: f64,
    #[serde(skip)]
    index: Option<Index>,
    /// The zone `timezone` names, kept from the options (a loaded file parses `timezone`).
    #[serde(skip)]
    tz: Option<Tz>,
}

#[derive(Debug, Clone)]
struct Index {
    sellers: HashSet<Uuid>,
    products: HashMap<Uuid, String>,
}

impl Truth {
    pub(crate) fn new(opts: &GenOptions, now: DateTime<Utc>) -> Self {
        Self {
            schema_version: 1,
            run_id: Uuid::new_v4(),
            seed: opts.seed,
            generated_at: now,
            timezone: opts.timezone.name().to_string(),
            purchases_topic: None,
            interactions_topic: None,
            products_version: None,
            counts: Counts::default(),
            days: BTreeMap::new(),
            seconds: 0.0,
            index: None,
            tz: Some(opts.timezone),
        }
    }

    pub(crate) fn index(&mut self, world: &World) {
        self.index = Some(Index {
            sellers: world.sellers.iter().map(|s| s.seller_id).collect(),
            products: world
                .products
                .iter()
                .map(|p| (p.product_id, p.category.clone()))
                .collect(),
        });
    }

    /// The business time zone: the one the run was made with, else the one `timezone`
    /// names (UTC when it names none).
    pub fn tz(&self) -> Tz {
        self.tz
            .or_else(|| self.timezone.parse().ok())
            .unwrap_or(Tz::UTC)
    }

    /// Counts a distinct valid purchase.
    pub(crate) fn purchase(&mut self, p: &Purchase, day: NaiveDate) {
        let tz = self.tz();
        let index = self.index.as_ref().expect("index() before purchase()");
        let seller = p
            .seller_id
            .filter(|s| index.sellers.contains(s))
            .map(|s| s.to_string())
            .unwrap_or_else(|| UNKNOWN.to_string());
        let (product, category) = match index.products.get(&p.product_id) {
            Some(category) => (p.product_id.to_string(), category.clone()),
            None => (UNKNOWN.to_string(), UNKNOWN.to_string()),
        };
        let unknown = seller == UNKNOWN || product == UNKNOWN;
        let d = self.days.entry(day).or_default();
        d.total.add(p);
        d.by_seller.entry(seller).or_default().add(p);
        d.by_category.entry(category).or_default().add(p);
        d.by_product.entry(product).or_default().add(p);
        if d.clients.insert(p.client_id) {
            d.distinct_clients += 1;
        }
        let minute = minute_start(p.timestamp);
        let minute_key = window_key(minute);
        d.by_minute.entry(minute_key.clone()).or_default().add(p);
        let clients = d.minute_clients.entry(minute_key).or_default();
        if d.minute_seen.insert((minute.timestamp(), p.client_id)) {
            *clients += 1;
        }
        let hour = hour_start(p.timestamp, tz);
        let hour_key = window_key(hour);
        d.by_hour.entry(hour_key.clone()).or_default().add(p);
        let clients = d.hour_clients.entry(hour_key).or_default();
        if d.hour_seen.insert((hour.timestamp(), p.client_id)) {
            *clients += 1;
        }
        self.counts.purchases += 1;
        if unknown {
            d.unknown_purchases += 1;
            self.counts.unknown_purchases += 1;
        }
        self.counts.purchase_messages += 1;
    }

    pub(crate) fn duplicate(&mut self) {
        self.counts.duplicates += 1;
        self.counts.purchase_messages += 1;
    }

    pub(crate) fn bad(&mut self, reason: Reason) {
        self.counts.bad += 1;
        *self.counts.bad_by_reason.entry(reason).or_default() += 1;
        self.counts.purchase_messages += 1;
    }

    pub(crate) fn interaction(&mut self, kind: &str) {
        self.counts.interactions += 1;
        *self
            .counts
            .interactions_by_kind
            .entry(kind.to_string())
            .or_default() += 1;
    }
}
