//! The stack's files agree with each other: `infra/docker-compose.yml` uses exactly the env
//! names `.env.example` documents (no Docker engine is needed to check that), and every
//! pipeline file passes `lakeshop validate`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_example_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(".env.example")).expect(".env.example");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, _)| k.trim().trim_start_matches("export ").to_string())
        })
        .collect()
}

/// `${NAME}`, `${NAME:-x}` and `$NAME` references in a string.
fn references(s: &str, out: &mut BTreeSet<String>) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            let (start, braced) = if bytes[i + 1] == b'{' {
                (i + 2, true)
            } else {
                (i + 1, false)
            };
            let end = s[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(|e| start + e)
                .unwrap_or(s.len());
            let name = &s[start..end];
            if !name.is_empty()
                && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && (braced || end > start)
            {
                out.insert(name.to_string());
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
}

fn walk(v: &serde_yaml::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_yaml::Value::String(s) => references(s, out),
        serde_yaml::Value::Sequence(seq) => seq.iter().for_each(|x| walk(x, out)),
        serde_yaml::Value::Mapping(m) => m.iter().for_each(|(k, x)| {
            walk(k, out);
            walk(x, out)
        }),
        _ => {}
    }
}

#[test]
fn compose_env_names_are_documented_in_env_example() {
    let text =
        std::fs::read_to_string(root().join("infra/docker-compose.yml")).expect("compose file");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose file is YAML");
    let services = doc
        .get("services")
        .and_then(|s| s.as_mapping())
        .expect("services");
    for wanted in [
        "postgres",
        "kafka",
        "minio",
        "clickhouse",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services
                .keys()
                .any(|k| k.as_str().is_some_and(|k| k.contains(wanted))),
            "compose has a {wanted} service"
        );
    }
    let mut used = BTreeSet::new();
    walk(&doc, &mut used);
    let documented = env_example_names();
    let missing: Vec<_> = used.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "compose uses env names .env.example lacks: {missing:?}"
    );
    for name in [
        "LAKESHOP_PG_URL",
        "KAFKA_BROKERS",
        "AWS_ENDPOINT_URL",
        "CLICKHOUSE_URL",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(documented.contains(name), ".env.example documents {name}");
    }
    // Same host ports as the local stack, published on loopback.
    let mut published = BTreeSet::new();
    for (_, svc) in services {
        for p in svc
            .get("ports")
            .and_then(|p| p.as_sequence())
            .into_iter()
            .flatten()
        {
            let p = p.as_str().expect("ports are strings");
            let parts: Vec<&str> = p.split(':').collect();
            assert!(
                parts.len() == 3 && parts[0] == "127.0.0.1",
                "{p} is published on 127.0.0.1 only"
            );
            published.insert(parts[1].to_string());
        }
    }
    for port in ["5432", "9092", "9100", "8123", "9000"] {
        assert!(
            published.contains(port),
            "compose publishes {port}: {published:?}"
        );
    }
}

#[test]
fn pipeline_files_validate_and_errors_name_the_key() {
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    for entry in std::fs::read_dir(root().join("pipelines")).expect("pipelines/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(bin)
                .arg("validate")
                .arg(&path)
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[kafka.topics.purchases]\nname = \"p\"\npartitions = -1\n",
    )
    .expect("write");
    let out = Command::new(bin)
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.topics.purchases.partitions"), "{err}");
}

#[test]
fn help_shows_the_whole_command_tree() {
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    let out = Command::new(bin).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "gen",
        "extract clients",
        "extract sellers",
        "extract products",
        "extract purchases",
        "extract all",
        "stage optimize",
        "stage vacuum",
        "stage show",
        "migrate",
        "batch run",
        "replay",
        "report daily",
        "report products",
        "report categories",
        "report shops",
        "report avg-check",
        "report top",
        "stream run",
        "reconcile",
        "serve",
        "validate",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lists `{cmd}`:\n{help}"
        );
    }
    assert!(
        help.matches("Example: lakeshop").count() >= 28,
        "each command has an example"
    );
    // `serve` checks its listen address before it binds or connects.
    let out = Command::new(bin)
        .arg("--config")
        .arg(root().join("pipelines/shop.toml"))
        .args(["serve", "--listen", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--listen \"nowhere\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A built command checks its flags before it connects to anything.
    let out = Command::new(bin)
        .arg("--config")
        .arg(root().join("pipelines/shop.toml"))
        .args(["reconcile", "--date", "2026-13-01"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a YYYY-MM-DD date"), "{err}");
}

/// A reader that went away (`lakeshop ... | head`) ends a command quietly: exit 0 and no
/// panic, rather than Rust's "failed printing to stdout" panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("validate")
        .arg(root().join("pipelines/shop.toml"))
        .stdout(writer)
        .output()
        .expect("runs lakeshop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--dry-run` is built for the PostgreSQL extracts only; the others refuse it before
/// touching anything rather than staging rows.
#[test]
fn dry_run_is_refused_where_it_would_stage() {
    for source in ["purchases", "interactions", "products", "all"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lakeshop"))
            .arg("--config")
            .arg(root().join("pipelines/shop.toml"))
            .args(["extract", source, "--dry-run", "--quiet"])
            .output()
            .expect("runs lakeshop");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{source}: {stderr}");
        assert!(stderr.contains("--dry-run"), "{source}: {stderr}");
    }
}
