//! Integer keys for the daily aggregates.
//!
//! Counting distinct clients per seller, category, product and hour groups the sales rows on
//! (key, client); on the id strings that hashes and compares two 36-byte strings per row
//! and query. Instead, the cached dimension tables carry a `UInt32` key per row (its row
//! number; categories ranked by name), the sales query joins the keys along with the other
//! dimension columns, the few clients missing from the stage get keys of their own, and the
//! aggregates group on integers. The strings come back from the dimensions on the
//! aggregated rows only.
//!
//! A purchase whose product, seller or category is unknown has no key there (NULL): it is
//! the `unknown` group. So is a dimension row whose id or category is the text `unknown`,
//! which the string keys would have merged with that group too.

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array, UInt32Builder,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The client's key in `clients` (its row number), on every sales row.
pub(crate) const CLIENT_KEY: &str = "client_key";
/// The seller's key in `sellers`; NULL for the `unknown` seller.
pub(crate) const SELLER_KEY: &str = "seller_key";
/// The product's key in `products`; NULL for the `unknown` product.
pub(crate) const PRODUCT_KEY: &str = "product_key";
/// The category's rank among the categories of `products`; NULL for `unknown`.
pub(crate) const CATEGORY_KEY: &str = "category_key";

/// The group that the text `unknown` stands for in the aggregates.
const UNKNOWN: &str = "unknown";

fn key_field(name: &str) -> Field {
    Field::new(name, DataType::UInt32, true)
}

/// `schema` with the four key columns after its own.
pub(crate) fn with_key_fields(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([CLIENT_KEY, SELLER_KEY, CATEGORY_KEY, PRODUCT_KEY].map(key_field));
    Arc::new(Schema::new(fields))
}

/// The column `name` of `batch` as `Utf8` (the engine may read strings as views).
fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray, ArrowError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))?;
    Ok(deltalake::arrow::compute::cast(c, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// `batch` with the `extra` columns after its own.
pub(crate) fn with_columns(
    batch: &RecordBatch,
    extra: Vec<(Field, ArrayRef)>,
) -> Result<RecordBatch, ArrowError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for (field, values) in extra {
        fields.push(field);
        arrays.push(values);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

/// `batch` with the key columns `keys` appended.
fn append(batch: &RecordBatch, keys: Vec<(&str, UInt32Array)>) -> Result<RecordBatch, ArrowError> {
    with_columns(
        batch,
        keys.into_iter()
            .map(|(name, values)| (key_field(name), Arc::new(values) as ArrayRef))
            .collect(),
    )
}

/// The row number of each row across `batches`, NULL where `id` is `unknown`.
fn row_keys(
    batches: &[RecordBatch],
    id: &str,
    key: &'static str,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut next = 0u32;
    batches
        .iter()
        .map(|b| {
            let ids = strings(b, id)?;
            let keys: UInt32Array = ids
                .iter()
                .map(|v| {
                    let k = next;
                    next += 1;
                    v.filter(|v| *v != UNKNOWN).map(|_| k)
                })
                .collect();
            append(b, vec![(key, keys)])
        })
        .collect()
}

/// `clients` rows with [`CLIENT_KEY`].
pub(crate) fn clients(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut next = 0u32;
    batches
        .iter()
        .map(|b| {
            let n = b.num_rows() as u32;
            let keys = UInt32Array::from_iter_values(next..next + n);
            next += n;
            append(b, vec![(CLIENT_KEY, keys)])
        })
        .collect()
}

/// `sellers` rows with [`SELLER_KEY`].
pub(crate) fn sellers(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
    row_keys(batches, "seller_id", SELLER_KEY)
}

/// `products` rows with [`PRODUCT_KEY`] and [`CATEGORY_KEY`], and the categories
/// (`category_key`, `category`) those keys stand for.
pub(crate) fn products(
    batches: &[RecordBatch],
) -> Result<(Vec<RecordBatch>, RecordBatch), ArrowError> {
    let keyed = row_keys(batches, "product_id", PRODUCT_KEY)?;
    let mut names: BTreeSet<String> = BTreeSet::new();
    for b in batches {
        for v in strings(b, "category")?.iter().flatten() {
            if v != UNKNOWN && !names.contains(v) {
                names.insert(v.to_string());
            }
        }
    }
    let rank: HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let keyed = keyed
        .iter()
        .map(|b| {
            let keys: UInt32Array = strings(b, "category")?
                .iter()
                .map(|v| v.and_then(|v| rank.get(v).copied()))
                .collect();
            append(b, vec![(CATEGORY_KEY, keys)])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let categories = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            key_field(CATEGORY_KEY),
            Field::new("category", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..names.len() as u32)),
            Arc::new(StringArray::from_iter_values(names.iter())),
        ],
    )?;
    Ok((keyed, categories))
}

/// Gives the sales rows of clients missing from `clients` (no [`CLIENT_KEY`]) keys from
/// `known` on, one per distinct `client_id`, so that they count as distinct clients too.
pub(crate) fn fill_client_keys(
    batches: Vec<RecordBatch>,
    known: u32,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut missing: HashMap<String, u32> = HashMap::new();
    batches
        .into_iter()
        .map(|b| {
            let (i, keys) = b
                .schema()
                .column_with_name(CLIENT_KEY)
                .map(|(i, _)| (i, b.column(i).clone()))
                .ok_or_else(|| ArrowError::SchemaError(format!("no column {CLIENT_KEY}")))?;
            if keys.null_count() == 0 {
                return Ok(b);
            }
            let keys = keys.as_primitive::<deltalake::arrow::datatypes::UInt32Type>();
            let ids = strings(&b, "client_id")?;
            let mut filled = UInt32Builder::with_capacity(keys.len());
            for (k, id) in keys.iter().zip(ids.iter()) {
                let k = match k {
                    Some(k) => k,
                    None => {
                        let id = id.unwrap_or_default();
                        match missing.get(id) {
                            Some(k) => *k,
                            None => {
                                let k =
                                    known.checked_add(missing.len() as u32).ok_or_else(|| {
                                        ArrowError::ComputeError(
                                            "too many clients for a UInt32 key".into(),
                                        )
                                    })?;
                                missing.insert(id.to_string(), k);
                                k
                            }
                        }
                    }
                };
                filled.append_value(k);
            }
            let mut columns = b.columns().to_vec();
            columns[i] = Arc::new(filled.finish());
            RecordBatch::try_new(b.schema(), columns)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::datatypes::UInt32Type;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).expect("batch")
    }

    fn keys(batches: &[RecordBatch], name: &str) -> Vec<Option<u32>> {
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name(name)
                    .expect("key")
                    .as_primitive::<UInt32Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn dimension_rows_are_numbered_and_unknown_has_no_key() {
        let a = batch(vec![(
            "seller_id",
            Arc::new(StringArray::from(vec!["s1", "unknown"])) as ArrayRef,
        )]);
        let b = batch(vec![(
            "seller_id",
            Arc::new(StringArray::from(vec!["s3"])) as ArrayRef,
        )]);
        let keyed = sellers(&[a, b]).expect("keys");
        assert_eq!(keys(&keyed, SELLER_KEY), vec![Some(0), None, Some(2)]);
    }

    #[test]
    fn categories_are_ranked_by_name() {
        let p = batch(vec![
            (
                "product_id",
                Arc::new(StringArray::from(vec!["p1", "p2", "p3", "p4", "p5"])) as ArrayRef,
            ),
            (
                "category",
                Arc::new(StringArray::from(vec![
                    Some("toys"),
                    None,
                    Some("books"),
                    Some("unknown"),
                    Some("toys"),
                ])) as ArrayRef,
            ),
        ]);
        let (keyed, categories) = products(&[p]).expect("keys");
        assert_eq!(
            keys(&keyed, CATEGORY_KEY),
            vec![Some(1), None, Some(0), None, Some(1)]
        );
        assert_eq!(
            keys(&keyed, PRODUCT_KEY),
            (0..5).map(Some).collect::<Vec<_>>()
        );
        let names: Vec<_> = categories
            .column(1)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(names, vec!["books", "toys"]);
    }

    #[test]
    fn missing_clients_get_one_key_per_id_after_the_known_ones() {
        let rows = |ids: Vec<&str>, keys: Vec<Option<u32>>| {
            batch(vec![
                ("client_id", Arc::new(StringArray::from(ids)) as ArrayRef),
                (CLIENT_KEY, Arc::new(UInt32Array::from(keys)) as ArrayRef),
            ])
        };
        let filled = fill_client_keys(
            vec![
                rows(vec!["a", "x", "b", "y"], vec![Some(0), None, Some(1), None]),
                rows(vec!["x", "a"], vec![None, Some(0)]),
            ],
            10,
        )
        .expect("filled");
        assert_eq!(
            keys(&filled, CLIENT_KEY),
            vec![Some(0), Some(10), Some(1), Some(11), Some(10), Some(0)]
        );
    }
}
