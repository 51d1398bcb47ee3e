//! The dimension cache: the product and seller attributes a purchase is counted under, read
//! from the stage tables and read again whenever their Delta version moves (no restart).
//!
//! A purchase whose product is not in `stage.products` counts under product and category
//! `unknown`; one whose seller is absent or not in `stage.sellers` under seller `unknown`,
//! exactly as the batch job and the generator's truth do. Nothing waits for a dimension.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::prelude::SessionContext;
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

/// One snapshot of the dimensions.
#[derive(Debug, Default)]
pub struct Dims {
    /// product id → category.
    products: HashMap<u128, Key, foldhash::fast::RandomState>,
    /// Known seller ids.
    sellers: HashSet<u128, foldhash::fast::RandomState>,
    /// Delta versions read (products, sellers); `None`: the table does not exist yet.
    pub versions: (Option<u64>, Option<u64>),
    /// Interned category names.
    categories: HashMap<String, Key>,
}

impl Dims {
    /// No dimension: everything is `unknown`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The key of a category name (interned).
    fn category(&mut self, name: &str) -> Key {
        if name == UNKNOWN {
            return Key::Unknown;
        }
        if let Some(c) = self.categories.get(name) {
            return c.clone();
        }
        let c = Key::Name(Arc::from(name));
        self.categories.insert(name.to_string(), c.clone());
        c
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
        let (product, category) = match self.products.get(&id) {
            Some(c) => (Key::Id(id), c.clone()),
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
            Some(c) => c.clone(),
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
        (self.products.len(), self.sellers.len())
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

/// Calls `f` with each row's texts of columns `cols` of `batches` (ids as canonical text),
/// without copying them.
fn each_row<const N: usize>(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
    cols: [usize; N],
    mut f: impl FnMut([Option<&str>; N]),
) -> Result<()> {
    for b in batches {
        let mut arrays = Vec::with_capacity(N);
        for c in cols {
            arrays.push(
                deltalake::arrow::compute::cast(b.column(c), &DataType::Utf8)
                    .map_err(|e| Error::Dimensions(e.to_string()))?,
            );
        }
        let strings: Vec<_> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
        for i in 0..b.num_rows() {
            f(std::array::from_fn(|c| {
                let s = strings[c];
                (!s.is_null(i)).then(|| s.value(i))
            }));
        }
    }
    Ok(())
}

async fn read(stage: &Stage, versions: (Option<u64>, Option<u64>)) -> Result<Dims> {
    let ctx = SessionContext::new();
    stage
        .register(&ctx, &[Table::Products, Table::Sellers])
        .await?;
    let q = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            ctx.sql(sql)
                .await
                .map_err(|e| Error::Dimensions(e.to_string()))?
                .collect()
                .await
                .map_err(|e| Error::Dimensions(e.to_string()))
        }
    };
    let mut dims = Dims::empty();
    dims.versions = versions;
    let products = q("SELECT product_id, category FROM products").await?;
    each_row(&products, [0, 1], |[id, category]| {
        if let (Some(Ok(id)), Some(category)) = (id.map(uuid::Uuid::parse_str), category) {
            dims.add_product(id, category);
        }
    })?;
    drop(products);
    let sellers = q("SELECT seller_id FROM sellers").await?;
    each_row(&sellers, [0], |[id]| {
        if let Some(Ok(id)) = id.map(uuid::Uuid::parse_str) {
            dims.add_seller(id);
        }
    })?;
    Ok(dims)
}
