//! The dimension cache: the product and seller attributes a purchase is counted under, read
//! from the stage tables and read again whenever their Delta version moves (no restart).
//!
//! A purchase whose product is not in `stage.products` counts under product and category
//! `unknown`; one whose seller is absent or not in `stage.sellers` under seller `unknown`,
//! exactly as the batch job and the generator's truth do. Nothing waits for a dimension.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::prelude::SessionContext;
use lakeshop_model::{Purchase, UNKNOWN};
use lakeshop_stage::{Stage, Table};

use crate::{Error, Result};

/// The keys one purchase is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub seller: Arc<str>,
    pub category: Arc<str>,
    pub product: Arc<str>,
}

/// One snapshot of the dimensions.
#[derive(Debug, Default)]
pub struct Dims {
    /// product id → (product key, category).
    products: HashMap<u128, (Arc<str>, Arc<str>)>,
    /// seller id → seller key.
    sellers: HashMap<u128, Arc<str>>,
    /// Delta versions read (products, sellers); `None`: the table does not exist yet.
    pub versions: (Option<u64>, Option<u64>),
    unknown: Arc<str>,
    /// Interned category names.
    categories: HashMap<String, Arc<str>>,
}

impl Dims {
    /// No dimension: everything is `unknown`.
    pub fn empty() -> Self {
        Self {
            unknown: Arc::from(UNKNOWN),
            ..Self::default()
        }
    }

    /// Adds a product (tests and loading).
    pub fn add_product(&mut self, id: uuid::Uuid, category: &str) {
        let category = match self.categories.get(category) {
            Some(c) => c.clone(),
            None => {
                let c: Arc<str> = Arc::from(category);
                self.categories.insert(category.to_string(), c.clone());
                c
            }
        };
        self.products
            .insert(id.as_u128(), (Arc::from(id.to_string().as_str()), category));
    }

    /// Adds a seller (tests and loading).
    pub fn add_seller(&mut self, id: uuid::Uuid) {
        self.sellers
            .insert(id.as_u128(), Arc::from(id.to_string().as_str()));
    }

    /// The keys `p` counts under now.
    pub fn keys(&self, p: &Purchase) -> Keys {
        let seller = p
            .seller_id
            .and_then(|s| self.sellers.get(&s.as_u128()))
            .cloned()
            .unwrap_or_else(|| self.unknown.clone());
        let (product, category) = self
            .products
            .get(&p.product_id.as_u128())
            .cloned()
            .unwrap_or_else(|| (self.unknown.clone(), self.unknown.clone()));
        Keys {
            seller,
            category,
            product,
        }
    }

    /// Keys as stored with a counted purchase (restored after a restart).
    pub fn stored_keys(&self, seller: &str, category: &str, product: &str) -> Keys {
        let intern = |s: &str| -> Arc<str> {
            if s == UNKNOWN {
                self.unknown.clone()
            } else {
                Arc::from(s)
            }
        };
        Keys {
            seller: intern(seller),
            category: self
                .categories
                .get(category)
                .cloned()
                .unwrap_or_else(|| intern(category)),
            product: intern(product),
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

/// Strings of one column of `batches` (ids as canonical text).
fn strings(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
    col: usize,
) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let c = deltalake::arrow::compute::cast(b.column(col), &DataType::Utf8)
            .map_err(|e| Error::Dimensions(e.to_string()))?;
        let s = c.as_string::<i32>();
        for i in 0..s.len() {
            out.push((!s.is_null(i)).then(|| s.value(i).to_string()));
        }
    }
    Ok(out)
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
    for (id, category) in strings(&products, 0)?
        .into_iter()
        .zip(strings(&products, 1)?)
    {
        if let (Some(Ok(id)), Some(category)) = (id.map(|s| uuid::Uuid::parse_str(&s)), category) {
            dims.add_product(id, &category);
        }
    }
    let sellers = q("SELECT seller_id FROM sellers").await?;
    for id in strings(&sellers, 0)?.into_iter().flatten() {
        if let Ok(id) = uuid::Uuid::parse_str(&id) {
            dims.add_seller(id);
        }
    }
    Ok(dims)
}
