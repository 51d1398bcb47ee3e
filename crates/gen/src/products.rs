//! The product catalogue as the source Delta table (on S3 in production).

use deltalake::arrow::array::{
    ArrayRef, Decimal128Builder, Int32Array, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use lakeshop_model::{arrow_schema, money};
use std::collections::HashMap;
use std::sync::Arc;

use crate::data::World;
use crate::{Error, Result, Targets};

/// The table property that turns Change Data Feed on.
pub const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

/// Writes the catalogue as a new table version (replacing the rows unless `append`) and
/// returns that version. With `change_data_feed`, a new table is created with Change Data
/// Feed on, and an existing one without it gets it in a version of its own first (changes
/// are recorded from then on).
pub async fn write(
    world: &World,
    targets: &Targets,
    append: bool,
    change_data_feed: bool,
) -> Result<u64> {
    let err = |source| Error::Products {
        uri: targets.products_uri.clone(),
        source,
    };
    let batch = batch(world)?;
    let url = deltalake::table::builder::ensure_table_uri(&targets.products_uri).map_err(err)?;
    let mut table =
        DeltaTable::try_from_url_with_storage_options(url, targets.storage_options.clone())
            .await
            .map_err(err)?;
    if change_data_feed && table.version().is_some() {
        let on = table
            .snapshot()
            .map_err(err)?
            .table_config()
            .enable_change_data_feed;
        if on != Some(true) {
            table = table
                .set_tbl_properties()
                .with_properties(HashMap::from([(
                    CHANGE_DATA_FEED.to_string(),
                    "true".to_string(),
                )]))
                .await
                .map_err(err)?;
        }
    }
    let mut write = table.write(vec![batch]).with_save_mode(if append {
        SaveMode::Append
    } else {
        SaveMode::Overwrite
    });
    if change_data_feed {
        // Applies when the write creates the table.
        write = write.with_configuration([(CHANGE_DATA_FEED, Some("true"))]);
    }
    let table = write.await.map_err(err)?;
    Ok(table.version().unwrap_or_default())
}

fn batch(world: &World) -> Result<RecordBatch> {
    let p = &world.products;
    let mut price = Decimal128Builder::with_capacity(p.len());
    for x in p {
        price.append_value(money::to_decimal128(x.price));
    }
    let price = price
        .finish()
        .with_precision_and_scale(money::MONEY_PRECISION, money::MONEY_SCALE)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.product_id.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.category.as_str()),
        )),
        Arc::new(price),
        Arc::new(Int32Array::from_iter_values(
            p.iter().map(|x| x.available_stock),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.seller_id.to_string()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                p.iter().map(|x| x.updated_at.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(arrow_schema::product(), columns)?)
}
