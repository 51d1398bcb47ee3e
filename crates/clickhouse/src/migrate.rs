//! Ordered DDL migrations from `schemas/clickhouse`, each recorded once applied.
//!
//! The files are compiled into the binary ([`MIGRATIONS`]), so `lakeshop migrate` needs no
//! checkout. A file is split into statements at lines ending with `;` (full-line `--`
//! comments are dropped) and sent one statement at a time, as the HTTP interface takes them.
//! Applied files are recorded in `schema_migrations` (name, SHA-256 of the text, time): a
//! recorded file is skipped, a recorded file whose text changed is an error, and a file that
//! failed half-way runs again from its first statement (every statement is
//! `... IF [NOT] EXISTS`).

use sha2::Digest as _;
use std::collections::BTreeMap;

use crate::{ClickHouse, Error, Result};

/// The migration files of `schemas/clickhouse`, in the order they apply.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_batch_tables.sql",
        include_str!("../../../schemas/clickhouse/0001_batch_tables.sql"),
    ),
    (
        "0002_batch_rollups.sql",
        include_str!("../../../schemas/clickhouse/0002_batch_rollups.sql"),
    ),
    (
        "0003_stream_tables.sql",
        include_str!("../../../schemas/clickhouse/0003_stream_tables.sql"),
    ),
    (
        "0004_stream_minutes.sql",
        include_str!("../../../schemas/clickhouse/0004_stream_minutes.sql"),
    ),
    (
        "0005_stream_windows_moved.sql",
        include_str!("../../../schemas/clickhouse/0005_stream_windows_moved.sql"),
    ),
    (
        "0006_stream_flagged.sql",
        include_str!("../../../schemas/clickhouse/0006_stream_flagged.sql"),
    ),
];

/// The table recording applied migrations.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// File name, e.g. `0001_batch_tables.sql`; migrations apply in name order.
    pub name: String,
    /// Statements in file order, without their `;`.
    pub statements: Vec<String>,
    /// Hex SHA-256 of the file text.
    pub checksum: String,
}

impl Migration {
    /// Parses a migration file.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            statements: split_statements(name, text)?,
            checksum: sha256_hex(text.as_bytes()),
        })
    }

    /// The migrations compiled into this binary, in order.
    pub fn all() -> Result<Vec<Migration>> {
        let mut out: Vec<Migration> = MIGRATIONS
            .iter()
            .map(|(name, text)| Migration::parse(name, text))
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits a file into statements: a statement ends at a line whose text ends with `;`;
/// full-line `--` comments and blank lines between statements are dropped.
pub fn split_statements(file: &str, text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut started_at = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        if current.is_empty() {
            started_at = i + 1;
        }
        match trimmed.strip_suffix(';') {
            Some(last) => {
                current.push_str(last.trim_end());
                let statement = std::mem::take(&mut current);
                if statement.trim().is_empty() {
                    return Err(Error::MigrationFile {
                        file: file.to_string(),
                        message: format!("line {}: empty statement", i + 1),
                    });
                }
                out.push(statement);
            }
            None => {
                current.push_str(line.trim_end());
                current.push('\n');
            }
        }
    }
    if !current.trim().is_empty() {
        return Err(Error::MigrationFile {
            file: file.to_string(),
            message: format!(
                "the statement starting at line {started_at} does not end with ';' at the end of a line"
            ),
        });
    }
    if out.is_empty() {
        return Err(Error::MigrationFile {
            file: file.to_string(),
            message: "no statements".into(),
        });
    }
    Ok(out)
}

/// What a `migrate` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// The server's `version()`.
    pub server_version: String,
    /// The database migrated.
    pub database: String,
    /// Files applied by this run, in order.
    pub applied: Vec<String>,
    /// Files found already applied.
    pub already_applied: Vec<String>,
}

impl ClickHouse {
    /// Creates the database if needed and applies the migrations not applied yet, in order.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<MigrateReport> {
        let (_, server_version) = self.server_version().await?;
        self.server
            .query_raw(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database))
            .execute()
            .await
            .map_err(Error::query(format!("create database {}", self.database)))?;
        self.execute(
            "create migrations table",
            &format!(
                "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (name String, checksum String, \
                 applied_at DateTime('UTC')) ENGINE = ReplacingMergeTree() ORDER BY name"
            ),
        )
        .await?;
        let applied = self.applied_migrations().await?;
        let mut report = MigrateReport {
            server_version,
            database: self.database.clone(),
            ..Default::default()
        };
        let mut ordered: Vec<&Migration> = migrations.iter().collect();
        ordered.sort_by(|a, b| a.name.cmp(&b.name));
        for m in ordered {
            if let Some(sum) = applied.get(&m.name) {
                if *sum != m.checksum {
                    return Err(Error::MigrationChanged {
                        file: m.name.clone(),
                        applied: sum.clone(),
                        now: m.checksum.clone(),
                    });
                }
                report.already_applied.push(m.name.clone());
                continue;
            }
            for (i, statement) in m.statements.iter().enumerate() {
                self.client
                    .query_raw(statement)
                    .execute()
                    .await
                    .map_err(|source| Error::Migration {
                        file: m.name.clone(),
                        statement: i + 1,
                        source,
                    })?;
            }
            // Names and checksums are ours (file names checked below, hex digests), never data.
            check_file_name(&m.name)?;
            self.execute(
                "record migration",
                &format!(
                    "INSERT INTO {MIGRATIONS_TABLE} (name, checksum, applied_at) \
                     SELECT '{}', '{}', now()",
                    m.name, m.checksum
                ),
            )
            .await?;
            tracing::info!(migration = %m.name, statements = m.statements.len(), "applied");
            report.applied.push(m.name.clone());
        }
        Ok(report)
    }

    /// Applied migrations: name → checksum.
    pub async fn applied_migrations(&self) -> Result<BTreeMap<String, String>> {
        let rows = self
            .rows(
                "read migrations",
                &format!(
                    "SELECT name, argMin(checksum, applied_at) FROM {MIGRATIONS_TABLE} GROUP BY name"
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [name, sum] => Some((name.clone(), sum.clone())),
                _ => None,
            })
            .collect())
    }
}

/// Migration file names: `NNNN_words.sql` in ASCII letters, digits and `_`.
fn check_file_name(name: &str) -> Result<()> {
    let ok = name.len() > 8
        && name.ends_with(".sql")
        && name[..4].chars().all(|c| c.is_ascii_digit())
        && name[..name.len() - 4]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::MigrationFile {
            file: name.to_string(),
            message: "names are NNNN_words.sql (ASCII letters, digits, '_')".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_that_end_a_line() {
        let text = "-- header;\nCREATE TABLE a\n(\n    x String -- a comment; not the end\n);\n\n-- between\nCREATE VIEW v AS SELECT 1;\n";
        let s = split_statements("f.sql", text).expect("splits");
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE a\n("));
        assert!(s[0].ends_with(')'));
        assert_eq!(s[1], "CREATE VIEW v AS SELECT 1");
    }

    #[test]
    fn an_unterminated_statement_is_an_error() {
        let err = split_statements("f.sql", "CREATE TABLE a (x String);\nSELECT 1\n")
            .expect_err("unterminated");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(split_statements("f.sql", "-- only a comment\n").is_err());
        assert!(split_statements("f.sql", "SELECT 1;\n;\n").is_err());
    }

    #[test]
    fn every_file_in_the_schema_folder_is_compiled_in_and_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/clickhouse");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("schemas/clickhouse")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let compiled: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, compiled, "MIGRATIONS lists every file, in order");
        for m in Migration::all().expect("parse") {
            check_file_name(&m.name).expect("file name");
            let text = MIGRATIONS
                .iter()
                .find(|(n, _)| *n == m.name)
                .map(|(_, t)| *t)
                .unwrap_or_default();
            assert!(
                text.starts_with("-- lakeshop schema version"),
                "{} has the version header",
                m.name
            );
            for s in &m.statements {
                let upper = s.to_uppercase();
                for banned in [
                    "LOWCARDINALITY",
                    "DATETIME64",
                    " OVER (",
                    " OVER(",
                    "PARQUET",
                    "ARROW",
                ] {
                    assert!(
                        !upper.contains(banned),
                        "{}: {banned} is not on 18.16",
                        m.name
                    );
                }
                if upper.starts_with("CREATE") {
                    assert!(
                        upper.contains("IF NOT EXISTS"),
                        "{}: rerunnable: {s}",
                        m.name
                    );
                }
            }
        }
    }
}
