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
fn global_flags_override_the_pipeline_file() {
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    let file = root().join("pipelines/shop.toml");
    // Before or after the subcommand.
    for args in [
        vec!["--stage-uri", "/tmp/elsewhere", "validate"],
        vec!["validate", "--stage-uri", "/tmp/elsewhere"],
    ] {
        let out = Command::new(bin)
            .args(&args)
            .arg(&file)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("stage /tmp/elsewhere"), "{args:?}: {text}");
    }
    let out = Command::new(bin)
        .args(["validate", "--topic", "orders=x"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("orders"), "{err}");
}

/// A broker that accepts connections and never answers: `--timeout` ends the drain with exit
/// 1 and a clear error. A failed command asked for JSON says so in JSON on stdout too.
#[test]
fn timeout_ends_a_run_against_a_server_that_never_answers() {
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    let config = root().join("pipelines/shop.toml");
    // Connections complete in the kernel's backlog; nothing ever reads or answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tmp");
    let started = std::time::Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--brokers", &addr.to_string(), "--stage-uri"])
        .arg(dir.path().join("stage"))
        .args([
            "--timeout",
            "3s",
            "extract",
            "purchases",
            "--until-end",
            "--quiet",
        ])
        .output()
        .expect("run");
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    assert!(err.contains("--timeout 3s"), "{err}");
    drop(silent);

    // Nothing listens on port 1: the report fails at once, in JSON as asked.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--clickhouse-url", "http://127.0.0.1:1"])
        .args([
            "report",
            "daily",
            "--date",
            "2026-01-01",
            "--format",
            "json",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON error on stdout");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stdout}"
    );
}

/// Runs with a PostgreSQL password in the URL, a ClickHouse password and a Kafka SASL
/// password, logging at debug in JSON: none of them appears in anything the runs print.
#[test]
fn no_secret_reaches_the_output_or_the_logs() {
    let bin = env!("CARGO_BIN_EXE_lakeshop");
    let dir = tempfile::tempdir().expect("tmp");
    let pipeline = dir.path().join("pipeline.toml");
    let pg = lakeshop_testkit::pg_server_url();
    // Trust auth ignores the password; it must still never be shown.
    let pg_url = pg.replacen("postgres@", "postgres:pg-SECRET-1@", 1) + "/lakeshop";
    std::fs::write(
        &pipeline,
        format!(
            "[postgres]\nurl = \"${{T_PG}}\"\ntls = \"disable\"\n[clickhouse]\npassword = \"${{T_CH}}\"\n\
             [kafka.properties]\n\"sasl.username\" = \"app\"\n\"sasl.password\" = \"${{T_SASL}}\"\n\
             [stage]\nuri = \"{}\"\n",
            dir.path().join("stage").display()
        ),
    )
    .expect("write");
    let mut printed = String::new();
    for args in [
        vec!["extract", "clients", "--quiet"],
        vec![
            "report",
            "daily",
            "--date",
            "2026-01-01",
            "--format",
            "json",
        ],
        vec!["validate"],
    ] {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&pipeline)
            .args(["--log-format", "json", "--timeout", "30s"])
            .args(&args)
            .env("T_PG", &pg_url)
            .env("T_CH", "ch-SECRET-2")
            .env("T_SASL", "sasl-SECRET-3")
            .env("RUST_LOG", "debug")
            .output()
            .expect("run");
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        printed.len() > 100,
        "the runs printed next to nothing: {printed}"
    );
    for secret in ["pg-SECRET-1", "ch-SECRET-2", "sasl-SECRET-3"] {
        assert!(
            !printed.contains(secret),
            "{secret} was printed:\n{printed}"
        );
    }
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
        "report monthly",
        "report yearly",
        "stream run",
        "reconcile",
        "serve",
        "dead-letters count",
        "dead-letters show",
        "dead-letters export",
        "dead-letters replay",
        "validate",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lists `{cmd}`:\n{help}"
        );
    }
    assert!(
        help.matches("Example: lakeshop").count() >= 35,
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

/// Cooperative (incremental) rebalancing through `[kafka.properties]` is refused at start
/// with a clear error (the extractors and the loader share the consumer that refuses it).
#[test]
fn cooperative_rebalancing_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[kafka.properties]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n[stage]\nuri = \"{}\"\n",
            dir.path().join("stage").display()
        ),
    )
    .expect("write");
    for args in [
        vec!["extract", "purchases", "--until-end", "--group", "--quiet"],
        vec!["extract", "interactions", "--until-end", "--quiet"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lakeshop"))
            .arg("--config")
            .arg(&pipeline)
            .args(["--timeout", "60s"])
            .args(&args)
            .output()
            .expect("runs lakeshop");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cooperative rebalancing is not supported"),
            "{args:?}: {stderr}"
        );
    }
}
