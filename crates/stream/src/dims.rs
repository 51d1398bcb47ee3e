//! The dimension cache: the product and seller attributes a purchase is counted under, read
//! from the stage tables and read again whenever their Delta version moves (no restart).
//!
//! A purchase whose product is not in `stage.products` counts under product and category
//! `unknown`; one whose seller is absent or not in `stage.sellers` under seller `unknown`,
//! exactly as the batch job and the generator's truth do. Nothing waits for a dimension.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::prelude::SessionContext;
use futures::StreamExt as _;
use lakeshop_clickhouse::RowBinary;
use lakeshop_model::{Purchase, UNKNOWN};
use lakeshop_stage::{Stage, Table};

use crate::{Error, Result};

/// A dimension key as counted and stored: the total's empty key, `unknown`, an id (stored as
/// its canonical text) or a name. Each stored text has one `Key` (a category named `unknown`
/// is [`Key::Unknown`]), so two keys are equal exactly when their stored texts are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The total's key: the empty text.
    Total,
    /// Not in the dimension (or absent from the purchase).
    Unknown,
    /// A product or seller id.
    Id(u128),
    /// A category name.
    Name(Arc<str>),
}

impl Key {
    /// The key of a stored id text (`unknown`, or an id).
    pub fn stored_id(s: &str) -> Self {
        match uuid::Uuid::parse_str(s) {
            Ok(id) if s == id.hyphenated().to_string() => Key::Id(id.as_u128()),
            _ if s.is_empty() => Key::Total,
            _ if s == UNKNOWN => Key::Unknown,
            _ => Key::Name(Arc::from(s)),
        }
    }

    /// Calls `f` with the stored text.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Key::Total => f(""),
            Key::Unknown => f(UNKNOWN),
            Key::Name(n) => f(n),
            Key::Id(id) => f(uuid::Uuid::from_u128(*id)
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())),
        }
    }
}

impl Key {
    /// Appends the stored text to a ClickHouse body (ids encoded in place).
    pub fn write(&self, out: &mut RowBinary) {
        match self {
            Key::Id(id) => {
                out.uuid_text(*id);
            }
            other => other.with_str(|s| {
                out.string(s);
            }),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

/// The keys one purchase is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub seller: Key,
    pub category: Key,
    pub product: Key,
}

/// Products compactly: each an id and its category's number (24 bytes), found through a
/// hash index of positions (4 bytes per bucket) — a million products take about 35 MB
/// where a map of id to key took 100 MB.
#[derive(Debug, Default)]
struct Products {
    /// (id halves, category number).
    rows: Vec<([u64; 2], u32)>,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

fn halves(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

impl Products {
    fn reserve(&mut self, n: usize) {
        self.rows.reserve(n);
        let (rows, hasher) = (&self.rows, &self.hasher);
        self.index
            .reserve(n, |&i| hasher.hash_one(rows[i as usize].0));
    }

    fn get(&self, id: u128) -> Option<u32> {
        let id = halves(id);
        let hash = self.hasher.hash_one(id);
        self.index
            .find(hash, |&i| self.rows[i as usize].0 == id)
            .map(|&i| self.rows[i as usize].1)
    }

    fn insert(&mut self, id: u128, category: u32) {
        let id = halves(id);
        let hash = self.hasher.hash_one(id);
        let rows = &mut self.rows;
        if let Some(&i) = self.index.find(hash, |&i| rows[i as usize].0 == id) {
            rows[i as usize].1 = category;
            return;
        }
        rows.push((id, category));
        let i = (rows.len() - 1) as u32;
        let (rows, hasher) = (&self.rows, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(rows[j as usize].0));
    }
}

/// One snapshot of the dimensions.
#[derive(Debug, Default)]
pub struct Dims {
    /// product id → category number.
    products: Products,
    /// Known seller ids.
    sellers: HashSet<u128, foldhash::fast::RandomState>,
    /// Delta versions read (products, sellers); `None`: the table does not exist yet.
    pub versions: (Option<u64>, Option<u64>),
    /// Interned category names and their numbers.
    categories: HashMap<String, u32>,
    /// Category keys by number.
    category_keys: Vec<Key>,
}

impl Dims {
    /// No dimension: everything is `unknown`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The number of a category name (interned).
    fn category(&mut self, name: &str) -> u32 {
        if let Some(n) = self.categories.get(name) {
            return *n;
        }
        let key = if name == UNKNOWN {
            Key::Unknown
        } else {
            Key::Name(Arc::from(name))
        };
        let n = self.category_keys.len() as u32;
        self.category_keys.push(key);
        self.categories.insert(name.to_string(), n);
        n
    }

    /// Adds a product (tests and loading).
    pub fn add_product(&mut self, id: uuid::Uuid, category: &str) {
        let category = self.category(category);
        self.products.insert(id.as_u128(), category);
    }

    /// Adds a seller (tests and loading).
    pub fn add_seller(&mut self, id: uuid::Uuid) {
        self.sellers.insert(id.as_u128());
    }

    /// The keys `p` counts under now.
    pub fn keys(&self, p: &Purchase) -> Keys {
        let seller = match p.seller_id.map(|s| s.as_u128()) {
            Some(s) if self.sellers.contains(&s) => Key::Id(s),
            _ => Key::Unknown,
        };
        let id = p.product_id.as_u128();
        let (product, category) = match self.products.get(id) {
            Some(c) => (Key::Id(id), self.category_keys[c as usize].clone()),
            None => (Key::Unknown, Key::Unknown),
        };
        Keys {
            seller,
            category,
            product,
        }
    }

    /// Keys as stored with a counted purchase (restored after a restart).
    pub fn stored_keys(&self, seller: &str, category: &str, product: &str) -> Keys {
        let category = match self.categories.get(category) {
            Some(&n) => self.category_keys[n as usize].clone(),
            None if category == UNKNOWN => Key::Unknown,
            None => Key::Name(Arc::from(category)),
        };
        Keys {
            seller: Key::stored_id(seller),
            category,
            product: Key::stored_id(product),
        }
    }

    /// Products and sellers known.
    pub fn sizes(&self) -> (usize, usize) {
        (self.products.rows.len(), self.sellers.len())
    }
}

/// The current snapshot, shared between the loop that reads it and the task that refreshes it.
#[derive(Debug, Clone)]
pub struct DimsCache {
    current: Arc<Mutex<Arc<Dims>>>,
}

impl DimsCache {
    /// A cache holding `dims`.
    pub fn new(dims: Dims) -> Self {
        Self {
            current: Arc::new(Mutex::new(Arc::new(dims))),
        }
    }

    /// The snapshot to use now.
    pub fn get(&self) -> Arc<Dims> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, dims: Dims) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(dims);
    }

    /// Reads the dimensions from the stage into a new cache.
    pub async fn load(stage: &Stage) -> Result<Self> {
        let versions = versions(stage).await?;
        Ok(Self::new(read(stage, versions).await?))
    }

    /// Reads the tables again whenever their Delta version moved, every `every`, until the
    /// task is aborted. A failed read keeps the snapshot it has and tries again later.
    pub fn refresh_task(&self, stage: Stage, every: Duration) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let have = cache.get().versions;
                let now = match versions(&stage).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read dimension versions; keeping the cache");
                        continue;
                    }
                };
                if now == have {
                    continue;
                }
                match read(&stage, now).await {
                    Ok(dims) => {
                        let (products, sellers) = dims.sizes();
                        tracing::info!(
                            products,
                            sellers,
                            products_version = ?now.0,
                            sellers_version = ?now.1,
                            "dimension cache refreshed"
                        );
                        cache.set(dims);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot refresh the dimension cache; keeping it")
                    }
                }
            }
        })
    }
}

async fn version(stage: &Stage, table: Table) -> Result<Option<u64>> {
    match stage.open(table).await {
        Ok(t) => Ok(t.version()),
        Err(e) => Err(Error::Stage(e)),
    }
}

async fn versions(stage: &Stage) -> Result<(Option<u64>, Option<u64>)> {
    Ok((
        version(stage, Table::Products).await?,
        version(stage, Table::Sellers).await?,
    ))
}

/// Calls `f` with each row's texts of columns `cols` of `batch` (ids as canonical text),
/// without copying them.
fn each_row<const N: usize>(
    batch: &deltalake::arrow::record_batch::RecordBatch,
    cols: [usize; N],
    mut f: impl FnMut([Option<&str>; N]),
) -> Result<()> {
    let mut arrays = Vec::with_capacity(N);
    for c in cols {
        arrays.push(
            deltalake::arrow::compute::cast(batch.column(c), &DataType::Utf8)
                .map_err(|e| Error::Dimensions(e.to_string()))?,
        );
    }
    let strings: Vec<_> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
    for i in 0..batch.num_rows() {
        f(std::array::from_fn(|c| {
            let s = strings[c];
            (!s.is_null(i)).then(|| s.value(i))
        }));
    }
    Ok(())
}

/// Runs `sql` and folds its rows into `f` one record batch at a time: only the batches in
/// flight are held, never the whole table (a million products would otherwise be a few
/// hundred MB of Arrow buffers at the loader's start).
async fn each_batch(
    ctx: &SessionContext,
    sql: &str,
    mut f: impl FnMut(&deltalake::arrow::record_batch::RecordBatch) -> Result<()>,
) -> Result<()> {
    let dimensions =
        |e: deltalake::datafusion::error::DataFusionError| Error::Dimensions(e.to_string());
    let mut stream = ctx
        .sql(sql)
        .await
        .map_err(dimensions)?
        .execute_stream()
        .await
        .map_err(dimensions)?;
    while let Some(batch) = stream.next().await {
        f(&batch.map_err(dimensions)?)?;
    }
    Ok(())
}

async fn read(stage: &Stage, versions: (Option<u64>, Option<u64>)) -> Result<Dims> {
    let ctx = SessionContext::new();
    stage
        .register(&ctx, &[Table::Products, Table::Sellers])
        .await?;
    let mut dims = Dims::empty();
    dims.versions = versions;
    // Sized once from the log's row counts (no data read), not grown while filled.
    let rows = stage.info(Table::Products, &[]).await?.rows;
    dims.products.reserve(usize::try_from(rows).unwrap_or(0));
    each_batch(&ctx, "SELECT product_id, category FROM products", |batch| {
        each_row(batch, [0, 1], |[id, category]| {
            if let (Some(Ok(id)), Some(category)) = (id.map(uuid::Uuid::parse_str), category) {
                dims.add_product(id, category);
            }
        })
    })
    .await?;
    each_batch(&ctx, "SELECT seller_id FROM sellers", |batch| {
        each_row(batch, [0], |[id]| {
            if let Some(Ok(id)) = id.map(uuid::Uuid::parse_str) {
                dims.add_seller(id);
            }
        })
    })
    .await?;
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(product: u128, seller: Option<u128>) -> Purchase {
        Purchase {
            purchase_id: uuid::Uuid::from_u128(1),
            client_id: uuid::Uuid::from_u128(2),
            product_id: uuid::Uuid::from_u128(product),
            seller_id: seller.map(uuid::Uuid::from_u128),
            quantity: 1,
            price: rust_decimal::Decimal::ONE,
            timestamp: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn products_count_under_their_category_and_the_rest_under_unknown() {
        let mut dims = Dims::empty();
        for i in 0..10_000u128 {
            let category = ["books", "games", UNKNOWN][(i % 3) as usize];
            dims.add_product(uuid::Uuid::from_u128(i << 64 | i), category);
        }
        dims.add_seller(uuid::Uuid::from_u128(77));
        assert_eq!(dims.sizes(), (10_000, 1));
        let games = dims.keys(&purchase(4 << 64 | 4, Some(77)));
        assert_eq!(games.product, Key::Id(4 << 64 | 4));
        assert_eq!(games.category.to_string(), "games");
        assert_eq!(games.seller, Key::Id(77));
        let named_unknown = dims.keys(&purchase(5 << 64 | 5, None));
        assert_eq!(named_unknown.category, Key::Unknown);
        assert_eq!(named_unknown.seller, Key::Unknown);
        let absent = dims.keys(&purchase(10_001, Some(78)));
        assert_eq!(
            (absent.product, absent.category, absent.seller),
            (Key::Unknown, Key::Unknown, Key::Unknown)
        );
        // A product added again moves to its new category; the count stays.
        dims.add_product(uuid::Uuid::from_u128(4 << 64 | 4), "books");
        assert_eq!(dims.sizes().0, 10_000);
        let moved = dims.keys(&purchase(4 << 64 | 4, None));
        assert_eq!(moved.category.to_string(), "books");
        // Stored keys come back as the same keys.
        let stored = dims.stored_keys("", "books", "");
        assert_eq!(stored.category, moved.category);
        assert_eq!(
            dims.stored_keys("", "toys", "").category.to_string(),
            "toys"
        );
    }
}
