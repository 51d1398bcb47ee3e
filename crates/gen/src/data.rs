//! The synthetic world: sellers, clients, products, and the purchase and interaction
//! streams, all drawn from one seeded generator.

use chrono::{DateTime, Datelike as _, Duration as TimeDelta, NaiveDate, TimeZone as _, Utc};
use lakeshop_model::{
    parse_purchase, Client, Interaction, InteractionKind, Product, Purchase, Reason, Seller,
};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution as _;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::GenOptions;

const FIRST_NAMES: &[&str] = &[
    "Ivan", "Anna", "Olga", "Dmitry", "Maria", "Sergey", "Elena", "Alexey", "Natalia", "Pavel",
    "James", "Mary", "John", "Linda", "Robert", "Sofia", "Lucas", "Emma", "Noah", "Mia",
];
const LAST_NAMES: &[&str] = &[
    "Ivanov",
    "Petrova",
    "Smirnov",
    "Kuznetsova",
    "Popov",
    "Sokolova",
    "Lebedev",
    "Novikova",
    "Smith",
    "Johnson",
    "Brown",
    "Garcia",
    "Miller",
    "Davis",
    "Martin",
    "Lee",
    "Walker",
    "Hall",
];
const STREETS: &[&str] = &[
    "Lenina", "Main", "Oak", "Pushkina", "Park", "Sadovaya", "Elm", "River",
];
const CITIES: &[&str] = &[
    "Moscow",
    "Kazan",
    "Berlin",
    "Lisbon",
    "Austin",
    "Novosibirsk",
    "Riga",
    "Porto",
];
const REGIONS: &[&str] = &["north", "south", "east", "west", "central"];
const CATEGORIES: &[(&str, f64, f64)] = &[
    // (category, median price, spread)
    ("Electronics", 400.0, 0.9),
    ("Books", 15.0, 0.5),
    ("Clothing", 40.0, 0.6),
    ("Home", 60.0, 0.8),
    ("Toys", 25.0, 0.6),
    ("Sports", 55.0, 0.8),
    ("Beauty", 20.0, 0.5),
    ("Grocery", 6.0, 0.6),
    ("Garden", 45.0, 0.7),
    ("Auto", 90.0, 0.9),
    ("Pets", 18.0, 0.6),
    ("Office", 12.0, 0.6),
];
const ADJECTIVES: &[&str] = &[
    "Smart", "Classic", "Eco", "Pro", "Mini", "Ultra", "Cozy", "Rapid", "Bright", "Solid",
];
const NOUNS: &[&str] = &[
    "Widget", "Kit", "Set", "Box", "Lamp", "Bag", "Pack", "Case", "Tool", "Mug", "Phone", "Book",
];
/// Share of a day's purchases in each hour (a shop's daily curve: quiet night, evening peak).
const HOUR_WEIGHTS: [u32; 24] = [
    2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 11, 12, 12, 11, 11, 12, 14, 17, 19, 18, 14, 8, 4,
];

/// Everything drawn for one run.
#[derive(Debug, Clone)]
pub struct World {
    pub sellers: Vec<Seller>,
    pub clients: Vec<Client>,
    pub products: Vec<Product>,
    /// Seed of the event streams, drawn after the dimensions.
    event_seed: u64,
    /// Product popularity: index into `products`, most popular first.
    popularity: Vec<usize>,
}

/// Draws a random v4 UUID from the seeded stream.
pub fn uuid(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn cents(rng: &mut impl Rng, median: f64, spread: f64) -> Decimal {
    // Log-normal price via Box-Muller; rounded to cents so the value is exact from here on.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let price = (median * (spread * z).exp()).clamp(0.5, 50_000.0);
    Decimal::new((price * 100.0).round() as i64, 2)
}

impl World {
    /// Draws sellers, clients and products. `now` anchors registration dates.
    pub fn generate(opts: &GenOptions, now: DateTime<Utc>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let day = now.date_naive();
        let at = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
        let sellers: Vec<Seller> = (0..opts.sellers)
            .map(|i| {
                let created = at(day - TimeDelta::days(rng.random_range(30..2000)));
                Seller {
                    seller_id: uuid(&mut rng),
                    name: format!(
                        "{} {} #{i}",
                        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
                        "Shop"
                    ),
                    region: REGIONS[rng.random_range(0..REGIONS.len())].to_string(),
                    created_at: created,
                    updated_at: created,
                    deleted_at: None,
                }
            })
            .collect();
        let clients: Vec<Client> = (0..opts.clients)
            .map(|i| {
                let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
                let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
                let registered = at(day - TimeDelta::days(rng.random_range(1..1500)))
                    + TimeDelta::seconds(rng.random_range(0..86_400));
                Client {
                    client_id: uuid(&mut rng),
                    first_name: first.to_string(),
                    last_name: last.to_string(),
                    email: format!(
                        "{}.{}.{i}@example.com",
                        first.to_lowercase(),
                        last.to_lowercase()
                    ),
                    address: format!(
                        "{} {}, {}",
                        rng.random_range(1..200),
                        STREETS[rng.random_range(0..STREETS.len())],
                        CITIES[rng.random_range(0..CITIES.len())]
                    ),
                    registration_date: registered,
                    updated_at: registered,
                    deleted_at: None,
                }
            })
            .collect();
        // A few big shops sell most products.
        let seller_pick =
            WeightedIndex::new((0..sellers.len()).map(|i| 1.0 / (i as f64 + 1.0).powf(0.8)))
                .expect("sellers is not empty");
        let products: Vec<Product> = (0..opts.products)
            .map(|i| {
                let (category, median, spread) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
                Product {
                    product_id: uuid(&mut rng),
                    name: format!(
                        "{} {} {i}",
                        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
                        NOUNS[rng.random_range(0..NOUNS.len())]
                    ),
                    category: category.to_string(),
                    price: cents(&mut rng, median, spread),
                    available_stock: rng.random_range(0..5_000),
                    seller_id: sellers[seller_pick.sample(&mut rng)].seller_id,
                    updated_at: at(day - TimeDelta::days(rng.random_range(1..365))),
                }
            })
            .collect();
        let mut popularity: Vec<usize> = (0..products.len()).collect();
        popularity.shuffle(&mut rng);
        let event_seed = rng.random();
        Self {
            sellers,
            clients,
            products,
            event_seed,
            popularity,
        }
    }

    /// The random stream for events, split off so sellers/clients/products stay the same
    /// whatever events are asked for.
    pub fn event_rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.event_seed)
    }

    pub(crate) fn popularity(&self) -> &[usize] {
        &self.popularity
    }
}

/// Draws purchase events that look like a real shop's.
pub struct PurchaseDraw<'w> {
    world: &'w World,
    /// Product popularity: Zipf with the given exponent, or uniform when it is 0.
    zipf: Option<rand_distr::Zipf<f64>>,
    hours: WeightedIndex<u32>,
}

/// What an unknown purchase is unknown for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The product is not in the catalogue.
    Product,
    /// The seller id is not a known seller.
    Seller,
    /// The purchase carries no seller id.
    NoSeller,
}

impl<'w> PurchaseDraw<'w> {
    /// Draws from `world`, products by popularity with Zipf exponent `skew` (0: uniform).
    pub fn new(world: &'w World, skew: f64) -> Self {
        let n = world.products.len().max(1) as f64;
        Self {
            world,
            zipf: (skew > 0.0).then(|| rand_distr::Zipf::new(n, skew).expect("n >= 1 and s > 0")),
            hours: WeightedIndex::new(HOUR_WEIGHTS).expect("weights are positive"),
        }
    }

    /// A time on `day` (business time zone) following the daily curve.
    pub fn time_on(&self, rng: &mut impl Rng, day: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
        let hour = self.hours.sample(rng) as u32;
        let secs = hour * 3600 + rng.random_range(0..3600);
        let ms = rng.random_range(0..1000);
        let local = day
            .and_hms_milli_opt(secs / 3600, (secs / 60) % 60, secs % 60, ms)
            .unwrap_or_default();
        // A local time skipped by a DST change falls back to UTC interpretation.
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&local))
    }

    /// A product's popularity rank.
    fn rank(&self, rng: &mut impl Rng) -> usize {
        let n = self.world.products.len();
        match &self.zipf {
            Some(z) => (z.sample(rng) as usize).saturating_sub(1).min(n - 1),
            None => rng.random_range(0..n),
        }
    }

    /// A valid purchase of a catalogue product at `ts`.
    pub fn purchase(
        &self,
        rng: &mut impl Rng,
        ts: DateTime<Utc>,
        unknown: Option<Unknown>,
    ) -> Purchase {
        let product = &self.world.products[self.world.popularity()[self.rank(rng)]];
        let client = &self.world.clients[rng.random_range(0..self.world.clients.len())];
        let quantity = match rng.random_range(0..100) {
            0..60 => 1,
            60..85 => 2,
            85..95 => 3,
            _ => rng.random_range(4..=12),
        };
        // Most sales at list price, some discounted.
        let price = if rng.random_bool(0.1) {
            let pct = Decimal::new(rng.random_range(70..=90), 2);
            (product.price * pct).round_dp(2)
        } else {
            product.price
        };
        let mut p = Purchase {
            purchase_id: uuid(rng),
            client_id: client.client_id,
            product_id: product.product_id,
            seller_id: Some(product.seller_id),
            quantity,
            price,
            timestamp: ts,
        };
        match unknown {
            None => {}
            Some(Unknown::Product) => {
                p.product_id = uuid(rng);
                p.price = cents(rng, 30.0, 0.7);
            }
            Some(Unknown::Seller) => p.seller_id = Some(uuid(rng)),
            Some(Unknown::NoSeller) => p.seller_id = None,
        }
        p
    }

    /// An interaction event at `ts`.
    pub fn interaction(&self, rng: &mut impl Rng, ts: DateTime<Utc>) -> Interaction {
        let product = &self.world.products[self.world.popularity()[self.rank(rng)]];
        let client = &self.world.clients[rng.random_range(0..self.world.clients.len())];
        let kind = match rng.random_range(0..10) {
            0..7 => InteractionKind::View,
            7..9 => InteractionKind::Click,
            _ => InteractionKind::CartAdd,
        };
        Interaction {
            event_id: uuid(rng),
            client_id: client.client_id,
            product_id: product.product_id,
            kind,
            timestamp: ts,
        }
    }
}

/// An invalid record the generator writes: which validation reason it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKind(pub Reason);

impl BadKind {
    /// Every kind with its relative weight: 1 MiB payloads are rare so a run stays small.
    /// Conflicting duplicates are made apart, from purchases already sent.
    pub const WEIGHTED: [(BadKind, u32); 12] = [
        (BadKind(Reason::MalformedJson), 10),
        (BadKind(Reason::NotAnObject), 10),
        (BadKind(Reason::MissingField), 10),
        (BadKind(Reason::WrongType), 10),
        (BadKind(Reason::BadUuid), 10),
        (BadKind(Reason::BadTimestamp), 10),
        (BadKind(Reason::QuantityOutOfRange), 10),
        (BadKind(Reason::PriceOutOfRange), 10),
        (BadKind(Reason::PriceScale), 10),
        (BadKind(Reason::TimestampTooOld), 10),
        (BadKind(Reason::TimestampInFuture), 10),
        (BadKind(Reason::PayloadTooLarge), 1),
    ];

    /// The validation reason a record of this kind must get.
    pub fn reason(self) -> Reason {
        self.0
    }

    /// An invalid payload of this kind made from a valid purchase.
    pub fn corrupt(self, rng: &mut impl Rng, p: &Purchase, now: DateTime<Utc>) -> Vec<u8> {
        let json = p.to_json();
        let set = |field: &str, value: &str| -> String {
            let mut f = raw_fields(p);
            match f.iter_mut().find(|(k, _)| *k == field) {
                Some(slot) => slot.1 = value.to_string(),
                None => f.push((field_name(field), value.to_string())),
            }
            render(&f)
        };
        let text = match self.0 {
            Reason::MalformedJson => {
                let cut = rng.random_range(1..json.len() - 1);
                json[..cut].to_string()
            }
            Reason::NotAnObject => match rng.random_range(0..3) {
                0 => format!("[{json}]"),
                1 => format!("\"{}\"", p.purchase_id),
                _ => p.quantity.to_string(),
            },
            Reason::MissingField => {
                let field = [
                    "purchase_id",
                    "client_id",
                    "product_id",
                    "quantity",
                    "price",
                    "timestamp",
                ][rng.random_range(0..6)];
                let mut f = raw_fields(p);
                f.retain(|(k, _)| *k != field);
                render(&f)
            }
            Reason::WrongType => match rng.random_range(0..4) {
                0 => set("quantity", &format!("\"{}\"", p.quantity)),
                1 => set("price", &format!("\"{}\"", p.price)),
                2 => set("client_id", "12345"),
                _ => set("timestamp", &p.timestamp.timestamp().to_string()),
            },
            Reason::BadUuid => {
                let bad = [
                    "\"not-a-uuid\"",
                    "\"123e4567-e89b-12d3-a456\"",
                    "\"zzze4567-e89b-12d3-a456-426614174000\"",
                    "\"\"",
                ];
                let field =
                    ["purchase_id", "client_id", "product_id", "seller_id"][rng.random_range(0..4)];
                set(field, bad[rng.random_range(0..bad.len())])
            }
            Reason::BadTimestamp => {
                let bad = [
                    "\"2025-13-45T25:00:00Z\"",
                    "\"yesterday\"",
                    "\"2025-04-06 12:00:00\"",
                    "\"\"",
                ];
                set("timestamp", bad[rng.random_range(0..bad.len())])
            }
            Reason::QuantityOutOfRange => {
                let bad = ["0", "-3", "1000001", "99999999999"];
                set("quantity", bad[rng.random_range(0..bad.len())])
            }
            Reason::PriceOutOfRange => {
                let bad = ["-5.00", "-0.01", "1000000000000.01", "1e13"];
                set("price", bad[rng.random_range(0..bad.len())])
            }
            Reason::PriceScale => set("price", &format!("{}{}", p.price, rng.random_range(1..10))),
            Reason::TimestampTooOld => {
                let secs = rng.random_range(0..946_684_800_i64);
                let ts = DateTime::from_timestamp(secs, 0).unwrap_or_default();
                set(
                    "timestamp",
                    &format!("\"{}\"", ts.format("%Y-%m-%dT%H:%M:%SZ")),
                )
            }
            Reason::TimestampInFuture => {
                let ts = now + TimeDelta::days(rng.random_range(3..400));
                set(
                    "timestamp",
                    &format!("\"{}\"", ts.format("%Y-%m-%dT%H:%M:%SZ")),
                )
            }
            // Interaction kinds and conflicts are not made here: an empty payload is
            // malformed JSON, and the verdict check says so if it is ever asked for.
            // Not purchase faults (made apart, or reasons of dimension writes).
            Reason::BadKind
            | Reason::ConflictingDuplicate
            | Reason::TooLong
            | Reason::OutOfRange => String::new(),
            Reason::PayloadTooLarge => {
                let pad = "x".repeat(lakeshop_model::MAX_PAYLOAD_BYTES + rng.random_range(1..4096));
                format!("{},\"comment\":\"{pad}\"}}", &json[..json.len() - 1])
            }
        };
        text.into_bytes()
    }
}

/// The fields of a purchase as (name, raw JSON text), in wire order.
fn raw_fields(p: &Purchase) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("purchase_id", format!("\"{}\"", p.purchase_id)),
        ("client_id", format!("\"{}\"", p.client_id)),
        ("product_id", format!("\"{}\"", p.product_id)),
    ];
    if let Some(s) = p.seller_id {
        f.push(("seller_id", format!("\"{s}\"")));
    }
    f.push(("quantity", p.quantity.to_string()));
    f.push(("price", p.price.to_string()));
    f.push((
        "timestamp",
        format!("\"{}\"", lakeshop_model::event::format_ts(p.timestamp)),
    ));
    f
}

fn field_name(field: &str) -> &'static str {
    match field {
        "seller_id" => "seller_id",
        _ => "extra",
    }
}

fn render(fields: &[(&'static str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// Checks that a generated record gets the verdict the truth will record for it.
pub fn check_verdict(
    payload: &[u8],
    expected: Option<Reason>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let got = parse_purchase(payload, now).err().map(|r| r.reason);
    if got == expected {
        Ok(())
    } else {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned();
        Err(format!(
            "generated record {shown:?} validates as {got:?}, expected {expected:?}"
        ))
    }
}

/// The business days of a history run: `days` days ending yesterday in `tz`.
pub fn history_days(now: DateTime<Utc>, tz: chrono_tz::Tz, days: u32) -> Vec<NaiveDate> {
    let today = now.with_timezone(&tz).date_naive();
    (1..=days as i64)
        .rev()
        .map(|d| today - TimeDelta::days(d))
        .collect()
}

/// The business day of an instant.
pub fn business_day(ts: DateTime<Utc>, tz: chrono_tz::Tz) -> NaiveDate {
    let local = ts.with_timezone(&tz);
    NaiveDate::from_ymd_opt(local.year(), local.month(), local.day()).unwrap_or_default()
}
