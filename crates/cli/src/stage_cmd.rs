//! Wiring of `stage optimize | vacuum | show`.

use anyhow::{bail, Context as _, Result};
use lakeshop_stage::Table;
use std::process::ExitCode;

use crate::config::Config;
use crate::{stage, StageCommand, StageTablesArgs};

pub async fn run(config: &Config, cmd: StageCommand) -> Result<ExitCode> {
    let stage = stage(config);
    match cmd {
        StageCommand::Optimize(args) => {
            let mut out = Vec::new();
            for table in tables(&args)? {
                let r = stage
                    .optimize(table)
                    .await
                    .with_context(|| format!("optimize {}", table.name()))?;
                if !args.json {
                    outln!(
                        "{:<14} files -{} +{}  partitions {}  checkpoint at version {}",
                        r.table,
                        r.files_removed,
                        r.files_added,
                        r.partitions_optimized,
                        r.checkpoint_version
                            .map_or_else(|| "-".to_string(), |v| v.to_string())
                    );
                }
                out.push(r);
            }
            if args.json {
                outln!("{}", serde_json::to_string(&out)?);
            }
        }
        StageCommand::Vacuum(args) => {
            let mut out = Vec::new();
            for table in tables(&args.tables)? {
                let r = stage
                    .vacuum(table, args.retain, args.dry_run, args.force)
                    .await
                    .with_context(|| format!("vacuum {}", table.name()))?;
                if !args.tables.json {
                    outln!(
                        "{:<14} {} files {}",
                        r.table,
                        r.files_deleted,
                        if r.dry_run {
                            "would be deleted"
                        } else {
                            "deleted"
                        }
                    );
                }
                out.push(r);
            }
            if args.tables.json {
                outln!("{}", serde_json::to_string(&out)?);
            }
        }
        StageCommand::Show(args) => {
            let ids = app_ids(config);
            let mut out = Vec::new();
            for table in Table::ALL {
                out.push(
                    stage
                        .info(table, &ids)
                        .await
                        .with_context(|| format!("reading {}", table.name()))?,
                );
            }
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                outln!(
                    "{:<14} {:>8} {:>7} {:>12} {:>12}  positions",
                    "table",
                    "version",
                    "files",
                    "rows",
                    "bytes"
                );
                for t in &out {
                    let positions = t
                        .positions
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    outln!(
                        "{:<14} {:>8} {:>7} {:>12} {:>12}  {}",
                        t.table,
                        t.version.map_or_else(|| "-".into(), |v| v.to_string()),
                        t.files,
                        t.rows,
                        t.bytes,
                        positions
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tables(args: &StageTablesArgs) -> Result<Vec<Table>> {
    if args.table.is_empty() {
        return Ok(Table::ALL.to_vec());
    }
    args.table
        .iter()
        .map(|name| match Table::ALL.iter().find(|t| t.name() == name) {
            Some(t) => Ok(*t),
            None => bail!(
                "unknown stage table {name:?} (tables: {})",
                Table::ALL.map(|t| t.name()).join(", ")
            ),
        })
        .collect()
}

/// The `txn` app ids this pipeline writes: Kafka partitions, dimension watermarks, the
/// product source version.
fn app_ids(config: &Config) -> Vec<String> {
    let mut ids = Vec::new();
    for role in ["purchases", "interactions"] {
        let topic = config.kafka.topic(role);
        let partitions = config
            .kafka
            .topics
            .get(role)
            .map_or(1, |t| t.partitions.max(1));
        for p in 0..partitions {
            ids.push(lakeshop_stage::app_id(&topic, p));
        }
    }
    for table in [
        &config.postgres.clients_table,
        &config.postgres.sellers_table,
    ] {
        ids.push(lakeshop_sources::postgres::watermark_app_id(
            table,
            &config.postgres.watermark_column,
        ));
    }
    ids.push(lakeshop_sources::products::source_app_id(
        &config.products.uri,
    ));
    ids
}
