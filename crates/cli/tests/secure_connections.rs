//! TLS to ClickHouse and PostgreSQL, for real: each test makes a private CA and certificates
//! with openssl, starts its own server on a free 127.0.0.1 port in a temp dir (the local
//! stack's servers are never touched), runs `lakeshop` against it and stops it on drop.

use anyhow::{Context as _, Result};
use lakeshop_testkit::tls::{free_port, CertPair, TestCa};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `lakeshop --config FILE ARGS…` and returns its output, whatever the exit status.
fn lakeshop(config: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_lakeshop"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("LAKESHOP_CONFIG")
        .output()?)
}

/// stdout of a run that must succeed.
fn lakeshop_ok(config: &Path, args: &[&str]) -> Result<String> {
    let out = lakeshop(config, args)?;
    anyhow::ensure!(
        out.status.success(),
        "lakeshop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// stderr of a run that must fail with exit status 1.
fn lakeshop_fails(config: &Path, args: &[&str]) -> Result<String> {
    let out = lakeshop(config, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    anyhow::ensure!(
        out.status.code() == Some(1),
        "lakeshop {args:?} should fail with 1, got {:?}: {stderr}",
        out.status.code()
    );
    Ok(stderr)
}

/// The last JSON line of a stdout.
fn last_json(stdout: &str) -> Result<serde_json::Value> {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .context("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

/// Waits until something accepts TCP connections on the port.
fn wait_for_port(port: u16, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "{what} did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

// ---------------------------------------------------------------- ClickHouse over HTTPS

fn clickhouse_server_binary() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "clickhouse-server".into())
}

/// A ClickHouse server of its own (the Debian package's binary) with only an HTTPS port.
struct PrivateClickHouse {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateClickHouse {
    fn start(server: &CertPair) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let port = free_port()?;
        std::fs::write(
            root.join("users.xml"),
            "<?xml version=\"1.0\"?>\n<yandex>\n\
             <profiles><default></default></profiles>\n\
             <users><default><password></password><networks><ip>127.0.0.1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\n\
             <quotas><default><interval><duration>3600</duration><queries>0</queries>\
             <errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows>\
             <execution_time>0</execution_time></interval></default></quotas>\n</yandex>\n",
        )?;
        let r = root.display();
        std::fs::write(
            root.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n\
                 <logger><level>warning</level><log>{r}/server.log</log>\
                 <errorlog>{r}/server.err.log</errorlog><console>0</console></logger>\n\
                 <listen_host>127.0.0.1</listen_host>\n<https_port>{port}</https_port>\n\
                 <openSSL><server><certificateFile>{}</certificateFile>\
                 <privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode>\
                 <loadDefaultCAFile>false</loadDefaultCAFile><cacheSessions>true</cacheSessions>\
                 <disableProtocols>sslv2,sslv3</disableProtocols>\
                 <preferServerCiphers>true</preferServerCiphers></server></openSSL>\n\
                 <path>{r}/data/</path><tmp_path>{r}/tmp/</tmp_path>\
                 <user_files_path>{r}/user_files/</user_files_path>\
                 <format_schema_path>{r}/format_schemas/</format_schema_path>\n\
                 <users_config>{r}/users.xml</users_config>\n\
                 <default_profile>default</default_profile>\
                 <default_database>default</default_database>\n\
                 <timezone>UTC</timezone><mlock_executable>false</mlock_executable>\n\
                 <mark_cache_size>268435456</mark_cache_size>\n</yandex>\n",
                server.cert.display(),
                server.key.display()
            ),
        )?;
        let child = Command::new(clickhouse_server_binary())
            .arg(format!("--config-file={r}/config.xml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting clickhouse-server (Debian package clickhouse-server)")?;
        let log = root.join("server.err.log");
        let me = Self {
            child,
            port,
            _dir: dir,
        };
        wait_for_port(port, "clickhouse-server", &log)?;
        Ok(me)
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `migrate` and a report against `https://127.0.0.1:PORT` with `[clickhouse] ca_file` =
/// the private CA; the same server is refused without the CA (system roots) and with
/// another CA, and plain `http://` to the TLS port gets no answer.
#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_over_https_trusts_the_configured_ca_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new(&dir.path().join("ca"), "lakeshop-test-ca")?;
    let other = TestCa::new(&dir.path().join("other"), "other-ca")?;
    let server = ca.server("localhost", &["IP:127.0.0.1", "DNS:localhost"])?;
    let ch = PrivateClickHouse::start(&server)?;
    let database = lakeshop_testkit::unique("lakeshop_tls");
    let url = format!("https://127.0.0.1:{}", ch.port);
    let pipeline = |name: &str, ca_file: Option<&Path>, url: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        let ca_line = ca_file
            .map(|p| format!("ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        std::fs::write(
            &path,
            format!("[clickhouse]\nurl = \"{url}\"\ndatabase = \"{database}\"\n{ca_line}"),
        )?;
        Ok(path)
    };

    let trusted = pipeline("trusted.toml", Some(&ca.cert), &url)?;
    let first = last_json(&lakeshop_ok(&trusted, &["migrate"])?)?;
    assert!(
        first["server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("18.16")),
        "{first}"
    );
    let applied = first["applied"].as_array().map_or(0, Vec::len);
    assert!(applied > 0, "{first}");
    // A second run reads what the first recorded, over TLS again.
    let second = last_json(&lakeshop_ok(&trusted, &["migrate"])?)?;
    assert_eq!(
        second["applied"].as_array().map(Vec::len),
        Some(0),
        "{second}"
    );
    assert_eq!(
        second["already_applied"].as_array().map(Vec::len),
        Some(applied),
        "{second}"
    );
    let report = lakeshop_ok(
        &trusted,
        &[
            "report",
            "daily",
            "--date",
            "2024-01-02",
            "--format",
            "json",
        ],
    )?;
    assert!(report.trim_start().starts_with(['[', '{']), "{report}");
    // The tables are there, read through the library with the same CA.
    let client = lakeshop_clickhouse::ClickHouse::with_tls(
        &lakeshop_clickhouse::ClickHouseOptions {
            url: url.clone(),
            database: database.clone(),
            user: "default".into(),
            password: String::new(),
            compression: lakeshop_clickhouse::Compression::default(),
        },
        &lakeshop_clickhouse::TlsOptions {
            ca_file: Some(ca.cert.clone()),
        },
    )?;
    client.require_tables(&["sales", "daily_total"]).await?;

    // The system roots do not know the private CA; another CA does not sign the server.
    for (name, ca_file) in [("system.toml", None), ("other.toml", Some(&other.cert))] {
        let path = pipeline(name, ca_file.map(PathBuf::as_path), &url)?;
        let stderr = lakeshop_fails(&path, &["migrate"])?;
        assert!(
            stderr.contains("UnknownIssuer") || stderr.contains("certificate"),
            "{name}: {stderr}"
        );
    }
    // Plain HTTP to the TLS port is no ClickHouse answer.
    let plain = pipeline("plain.toml", None, &format!("http://127.0.0.1:{}", ch.port))?;
    lakeshop_fails(&plain, &["migrate"])?;
    // A CA file with a plain URL is refused before connecting.
    let mixed = pipeline(
        "mixed.toml",
        Some(&ca.cert),
        &format!("http://127.0.0.1:{}", ch.port),
    )?;
    let stderr = lakeshop_fails(&mixed, &["validate", mixed.to_str().context("utf-8")?])?;
    assert!(stderr.contains("clickhouse.ca_file"), "{stderr}");
    Ok(())
}

// ----------------------------------------------------------- PostgreSQL with verify-full

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL 15 cluster of its own (initdb into a temp dir; as the `postgres` OS user
/// when the test runs as root, which initdb refuses), TLS on with a certificate of the test
/// CA, client certificates checked against it. pg_hba: `certuser` authenticates by
/// certificate, everyone else is trusted, and only over TLS.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PrivatePostgres {
    fn command(&self, program: &str) -> Command {
        let program = format!("{PG_BIN}/{program}");
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, mut command: Command, what: &str) -> Result<String> {
        let out = command.output().with_context(|| what.to_string())?;
        anyhow::ensure!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(server: &CertPair, ca: &TestCa) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let me = Self {
            port: free_port()?,
            as_postgres: is_root(),
            dir,
        };
        let root = me.dir.path();
        let (certs, data) = (root.join("certs"), me.data());
        std::fs::create_dir_all(&certs)?;
        std::fs::create_dir_all(&data)?;
        std::fs::copy(&server.cert, certs.join("server.pem"))?;
        std::fs::copy(&server.key, certs.join("server.key"))?;
        std::fs::copy(&ca.cert, certs.join("ca.pem"))?;
        if me.as_postgres {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&certs)
                .arg(&data)
                .output()?;
            anyhow::ensure!(out.status.success(), "chown: {out:?}");
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                certs.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut initdb = me.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        me.run(initdb, "initdb")?;
        let c = certs.display();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{c}/server.pem'\nssl_key_file = '{c}/server.key'\n\
             ssl_ca_file = '{c}/ca.pem'\nfsync = off\n",
            me.port,
            data.display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf"))?;
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )?;
        let mut pg_ctl = me.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        me.run(pg_ctl, "pg_ctl start")?;
        Ok(me)
    }

    /// Runs SQL as `postgres` over the cluster's own unix socket.
    fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut psql = self.command("psql");
        psql.arg("-h")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        self.run(psql, "psql")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}

/// `verify-full` against a private CA (`postgres.ca_file`): `extract clients` stages the
/// rows over a checked TLS connection; without the CA, under another host name, or without
/// the client certificate a `cert` user needs, the connection is refused with the reason.
/// The URL's `sslmode`/`sslrootcert` are honoured, and a conflict with the file is an error.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_full_with_a_private_ca_and_client_certificates() -> Result<()> {
    use lakeshop_sources::postgres::{connect, PgTls, TlsMode};
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new(&dir.path().join("ca"), "lakeshop-test-ca")?;
    // The server's certificate names 127.0.0.1 only: `localhost` is the wrong host name.
    let server = ca.server("127.0.0.1", &["IP:127.0.0.1"])?;
    let client = ca.client("certuser")?;
    let stranger = ca.client("someone_else")?;
    let pg = PrivatePostgres::start(&server, &ca)?;
    pg.psql("postgres", "CREATE DATABASE lakeshop")?;
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/postgres/clients.sql"),
    )?;
    pg.psql("lakeshop", &schema)?;
    pg.psql(
        "lakeshop",
        "INSERT INTO clients (client_id, first_name, last_name, email, address, registration_date) \
         SELECT gen_random_uuid(), 'Ada', 'L' || i, 'ada' || i || '@example.com', 'Street ' || i, now() \
         FROM generate_series(1, 7) AS i; \
         CREATE ROLE certuser LOGIN; GRANT SELECT ON clients TO certuser;",
    )?;
    let port = pg.port;
    let stage = dir.path().join("stage");
    let pipeline = |name: &str, url: &str, keys: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[pipeline]\nname = \"{}\"\n[postgres]\nurl = \"{url}\"\n{keys}\n[stage]\nuri = \"{}\"\n",
                lakeshop_testkit::unique("tls"),
                stage.join(name).display()
            ),
        )?;
        Ok(path)
    };
    let ca_key = format!("ca_file = \"{}\"\n", ca.cert.display());
    let by_ip = format!("postgres://postgres@127.0.0.1:{port}/lakeshop");
    let by_name = format!("postgres://postgres@localhost:{port}/lakeshop");

    // verify-full with the CA: the extract reads and stages every row.
    let good = pipeline(
        "good.toml",
        &by_ip,
        &format!("tls = \"verify-full\"\n{ca_key}"),
    )?;
    let summary = last_json(&lakeshop_ok(&good, &["extract", "clients"])?)?;
    assert_eq!(summary["read"].as_u64(), Some(7), "{summary}");
    assert_eq!(summary["inserted"].as_u64(), Some(7), "{summary}");
    // The library's connection is TLS, as the server sees it.
    let verified = PgTls {
        mode: Some(TlsMode::VerifyFull),
        ca_file: Some(ca.cert.clone()),
        ..PgTls::default()
    };
    let c = connect(&by_ip, &verified).await?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "the connection is encrypted");

    // Without the CA (system roots only) the server's certificate is unknown.
    let no_ca = pipeline("no_ca.toml", &by_ip, "tls = \"verify-full\"\n")?;
    let stderr = lakeshop_fails(&no_ca, &["extract", "clients"])?;
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    // Under another host name verify-full refuses; require (no check) still connects.
    let wrong_name = pipeline(
        "wrong_name.toml",
        &by_name,
        &format!("tls = \"verify-full\"\n{ca_key}"),
    )?;
    let stderr = lakeshop_fails(&wrong_name, &["extract", "clients"])?;
    assert!(stderr.contains("not valid for name"), "{stderr}");
    let unchecked = pipeline("unchecked.toml", &by_name, "tls = \"require\"\n")?;
    lakeshop_ok(&unchecked, &["extract", "clients", "--dry-run"])?;

    // Client certificates: certuser gets in with its own, not without, not with another's.
    let as_certuser = format!("postgres://certuser@127.0.0.1:{port}/lakeshop");
    let with_cert = PgTls {
        cert_file: Some(client.cert.clone()),
        key_file: Some(client.key.clone()),
        ..verified.clone()
    };
    let c = connect(&as_certuser, &with_cert).await?;
    let row = c
        .query_one("SELECT current_user::text, count(*) FROM clients", &[])
        .await?;
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("certuser".to_string(), 7)
    );
    let Err(err) = connect(&as_certuser, &verified).await else {
        anyhow::bail!("a cert user got in without a client certificate");
    };
    assert!(format!("{err:?}").contains("certificate"), "{err:?}");
    let others = PgTls {
        cert_file: Some(stranger.cert.clone()),
        key_file: Some(stranger.key.clone()),
        ..verified.clone()
    };
    let Err(err) = connect(&as_certuser, &others).await else {
        anyhow::bail!("a cert user got in with another user's certificate");
    };
    assert!(format!("{err:?}").contains("certificate"), "{err:?}");
    // The CLI passes the certificate through too.
    let cert_pipeline = pipeline(
        "cert.toml",
        &as_certuser,
        &format!(
            "tls = \"verify-full\"\n{ca_key}cert_file = \"{}\"\nkey_file = \"{}\"\n",
            client.cert.display(),
            client.key.display()
        ),
    )?;
    let summary = last_json(&lakeshop_ok(
        &cert_pipeline,
        &["extract", "clients", "--dry-run"],
    )?)?;
    assert_eq!(summary["read"].as_u64(), Some(7), "{summary}");

    // The URL's sslmode against the file's tls: refused, naming both, before connecting.
    let conflict = pipeline(
        "conflict.toml",
        &format!("{by_ip}?sslmode=require"),
        &format!("tls = \"verify-full\"\n{ca_key}"),
    )?;
    let stderr = lakeshop_fails(&conflict, &["extract", "clients"])?;
    assert!(
        stderr.contains("postgres.tls") && stderr.contains("sslmode=require"),
        "{stderr}"
    );
    let stderr = lakeshop_fails(
        &conflict,
        &["validate", conflict.to_str().context("utf-8")?],
    )?;
    assert!(stderr.contains("sslmode=require"), "{stderr}");
    // The URL alone is honoured: its verify-full and sslrootcert connect by IP and refuse
    // the wrong host name (a file default of prefer would have let it in).
    let root = ca.cert.display().to_string().replace('/', "%2F");
    let url_only = pipeline(
        "url_only.toml",
        &format!("{by_ip}?sslmode=verify-full&sslrootcert={root}"),
        "",
    )?;
    let summary = last_json(&lakeshop_ok(
        &url_only,
        &["extract", "clients", "--dry-run"],
    )?)?;
    assert_eq!(summary["read"].as_u64(), Some(7), "{summary}");
    let url_wrong_name = pipeline(
        "url_wrong_name.toml",
        &format!("{by_name}?sslmode=verify-full&sslrootcert={root}"),
        "",
    )?;
    let stderr = lakeshop_fails(&url_wrong_name, &["extract", "clients", "--dry-run"])?;
    assert!(stderr.contains("not valid for name"), "{stderr}");
    Ok(())
}
