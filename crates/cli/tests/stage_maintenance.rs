//! `stage optimize` and `stage vacuum` through the binary, on a stage in a folder and on S3:
//! vacuum refuses a retention shorter than the table's own (7 days) unless `--force`, deletes
//! nothing a retained version needs (the files compaction replaced are younger than 7 days),
//! and with `--force` removes exactly those files while every row stays readable.

use anyhow::{Context as _, Result};
use lakeshop_stage::Table;
use lakeshop_testkit::world::{append_sellers, stage_query, Setup, StageKind, World};

async fn sellers(world: &World) -> Result<usize> {
    let b = stage_query(
        &world.stage(),
        &[Table::Sellers],
        "SELECT seller_id FROM sellers",
    )
    .await?;
    Ok(b.iter().map(|b| b.num_rows()).sum())
}

fn deleted(world: &World, args: &[&str]) -> Result<u64> {
    let mut all = vec!["stage", "vacuum", "--table", "sellers", "--json"];
    all.extend_from_slice(args);
    let v = world.json(&all)?;
    v[0]["files_deleted"].as_u64().context("files_deleted")
}

async fn check(kind: StageKind) -> Result<()> {
    let world = World::new(kind, Setup::default())?;
    let stage = world.stage();
    for i in 0..4u128 {
        let id = uuid::Uuid::from_u128(0x5e11e4 + i).to_string();
        append_sellers(&stage, &[(id.as_str(), "Shop")]).await?;
    }
    assert_eq!(sellers(&world).await?, 4);
    world.run(&["stage", "optimize", "--table", "sellers"])?;

    // Shorter than the table's retention: refused, nothing deleted.
    let (ok, _, err) =
        world.try_run(&["stage", "vacuum", "--table", "sellers", "--retain", "1h"])?;
    assert!(!ok && err.contains("--force"), "{err}");
    // The default (7 days) keeps the replaced files: a reader of an older version needs them.
    assert_eq!(deleted(&world, &[])?, 0);
    // Forced: a dry run lists them, the real run deletes them, the rows stay.
    let would = deleted(&world, &["--retain", "0s", "--force", "--dry-run"])?;
    assert!(
        would >= 4,
        "{would} files would go after compacting 4 appends"
    );
    assert_eq!(deleted(&world, &["--retain", "0s", "--force"])?, would);
    if kind == StageKind::Local {
        // Only the compacted file is left.
        let dir = std::path::Path::new(&world.stage_uri).join("sellers");
        let parquet = std::fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count();
        assert_eq!(parquet, 1, "data files left in {}", dir.display());
    }
    assert_eq!(sellers(&world).await?, 4, "every row is still readable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vacuum_keeps_what_readers_need_on_a_folder() -> Result<()> {
    check(StageKind::Local).await
}

#[tokio::test(flavor = "multi_thread")]
async fn vacuum_keeps_what_readers_need_on_s3() -> Result<()> {
    check(StageKind::S3).await
}
