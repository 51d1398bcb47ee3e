//! `lakeshop`: the one binary. Loads the pipeline file and `.env`, sets up tracing and hands
//! each command to its library crate; wiring only.

/// `println!` that returns the write error instead of panicking: a reader that went away
/// (`lakeshop report ... | head`) ends the command quietly.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` that returns the write error instead of panicking (see [`outln`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))?
    };
}

mod analytics;
mod config;
mod dead_letters;
mod extract;
mod progress;
mod reconcile;
mod serve;
mod stage_cmd;
mod stream;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use config::Config;

/// mimalloc instead of the system allocator: the query engine, Arrow and Parquet allocate
/// and free many short-lived buffers, and glibc's malloc took about a tenth of a batch
/// run's CPU. Built without transparent huge pages (`no_thp`): with them, every fresh
/// 2 MiB page was zeroed whole and the kernel's page clearing took a third of the run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before giving it back to the OS, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Its default (10 ms) hands back a day's buffers
/// between one step of the batch job and the next, and every page of them is then
/// faulted in and zeroed again: a tenth of a 7-day run's wall time went to that. Memory
/// idle for this long still goes back, so a long-running extractor does not hold its peak.
const PURGE_DELAY_MS: std::ffi::c_long = 5_000;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h of the pinned
/// libmimalloc-sys, v3): the crate exports no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores one integer option; it is called first thing in
        // `main`, before any other thread exists (it is not thread safe).
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "lakeshop",
    version,
    about = "Shop analytics pipelines: PostgreSQL, Delta Lake and Kafka into a Delta stage layer and ClickHouse"
)]
struct Cli {
    /// Pipeline file.
    #[arg(
        long,
        short,
        global = true,
        env = "LAKESHOP_CONFIG",
        default_value = "pipelines/shop.toml"
    )]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    overrides: config::Overrides,
    /// Give up after this long (e.g. `30m`): the command ends with an error and exit 1, as
    /// when a source or ClickHouse stops answering. Every extract and the batch job are safe
    /// to interrupt (the next run resumes from the last commit).
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<std::time::Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate synthetic shop data into PostgreSQL, the source Delta table and Kafka, with a ground-truth file.
    #[command(
        after_help = "Example: lakeshop gen --clients 10000 --products 1000 --purchases 200000 --seed 7"
    )]
    Gen(GenArgs),
    /// Extract a source into the stage layer, incrementally and exactly once.
    #[command(
        subcommand,
        after_help = "Example: lakeshop extract purchases --until-end"
    )]
    Extract(ExtractCommand),
    /// Maintain and inspect the stage layer.
    #[command(subcommand, after_help = "Example: lakeshop stage show")]
    Stage(StageCommand),
    /// Apply the ClickHouse migrations in schemas/clickhouse (re-runnable).
    #[command(after_help = "Example: lakeshop migrate")]
    Migrate,
    /// The daily batch job: stage into ClickHouse, one business day at a time.
    #[command(
        subcommand,
        after_help = "Example: lakeshop batch run --date 2026-11-21"
    )]
    Batch(BatchCommand),
    /// Re-run the batch job over a range of days, deterministically.
    #[command(after_help = "Example: lakeshop replay --from 2026-11-01 --to 2026-11-21")]
    Replay(RangeArgs),
    /// Canned reports read from ClickHouse.
    #[command(
        subcommand,
        after_help = "Example: lakeshop report top --date 2026-11-21 --format json"
    )]
    Report(ReportCommand),
    /// The streaming loader: Kafka purchases into windowed ClickHouse aggregates.
    #[command(subcommand, after_help = "Example: lakeshop stream run")]
    Stream(StreamCommand),
    /// Check that a closed day's streaming totals equal the batch totals exactly.
    ///
    /// Compares the stream's day windows (total, sellers, products, categories) and hour
    /// windows with the batch tables, money exactly. Exit status 0 when every difference is
    /// explained by dimension drift (products re-categorised between the stream and the batch
    /// run), 1 otherwise.
    #[command(after_help = "Example: lakeshop reconcile --date 2026-11-21 --json")]
    Reconcile(ReconcileArgs),
    /// Serve the REST ingest API, reports, OpenAPI and /metrics.
    #[command(after_help = "Example: lakeshop serve --listen 127.0.0.1:8080")]
    Serve(ServeArgs),
    /// Inspect, export and replay the records the extractors could not stage.
    #[command(subcommand, after_help = "Example: lakeshop dead-letters count")]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Check a pipeline file without connecting to anything.
    #[command(after_help = "Example: lakeshop validate pipelines/shop.toml")]
    Validate {
        /// The pipeline file to check (default: --config).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct GenArgs {
    /// Clients written to PostgreSQL.
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// Sellers (shops) written to PostgreSQL.
    #[arg(long, default_value_t = 50)]
    sellers: u64,
    /// Products written to the source Delta table.
    #[arg(long, default_value_t = 200)]
    products: u64,
    /// Distinct purchases (history mode), spread over --days ending yesterday.
    #[arg(long, default_value_t = 10_000)]
    purchases: u64,
    /// Interaction events (view, cart_add, click) in history mode [default: purchases / 2].
    #[arg(long)]
    interactions: Option<u64>,
    /// Days of history, ending yesterday in the business time zone.
    #[arg(long, default_value_t = 3)]
    days: u32,
    /// Live mode: purchases per second, stamped now (with --duration).
    #[arg(long)]
    rate: Option<u64>,
    /// Live mode: how long to produce, e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration, requires = "rate")]
    duration: Option<std::time::Duration>,
    /// Fraction of purchases re-sent unchanged, as retrying producers do.
    #[arg(long, default_value_t = 0.0)]
    duplicate_fraction: f64,
    /// Fraction of valid purchases of a product or seller not in the catalogue.
    #[arg(long, default_value_t = 0.0)]
    unknown_fraction: f64,
    /// Fraction of invalid records, of many kinds, each counted in the truth.
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// Fraction of valid purchases stamped 6 to 30 minutes before their time (in live mode
    /// their produce time, the Kafka timestamp), later than the streaming loader's default
    /// lateness; history mode shifts them the same way. Counted in the truth under their
    /// stamp.
    #[arg(long, default_value_t = 0.0)]
    late_fraction: f64,
    /// Fraction of valid purchases stamped 2 to 60 minutes after their time (in live mode
    /// their produce time, the Kafka timestamp), further ahead than the streaming loader's
    /// default clock skew; history mode shifts them the same way. Counted in the truth under
    /// their stamp.
    #[arg(long, default_value_t = 0.0)]
    future_fraction: f64,
    /// How much a few products dominate sales: the Zipf exponent of product popularity
    /// (0: every product equally likely).
    #[arg(long, default_value_t = 1.1)]
    product_skew: f64,
    /// Seed: the same seed gives the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the ground-truth JSON goes.
    #[arg(long, default_value = "data/truth.json")]
    truth: PathBuf,
    /// Write only these parts (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<lakeshop_gen::Part>,
    /// Leave existing rows and topics as they are instead of starting clean.
    #[arg(long)]
    append: bool,
    /// Create the source product table with Change Data Feed on (`extract products` then
    /// reads changes from it instead of comparing with the stage).
    #[arg(long)]
    products_cdf: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum ExtractCommand {
    /// Clients from PostgreSQL (incremental by watermark; --full finds deletions).
    #[command(after_help = "Example: lakeshop extract clients --full")]
    Clients(ExtractArgs),
    /// Sellers from PostgreSQL.
    #[command(after_help = "Example: lakeshop extract sellers")]
    Sellers(ExtractArgs),
    /// Products from the source Delta table: only versions newer than the last extracted.
    #[command(after_help = "Example: lakeshop extract products")]
    Products(ExtractArgs),
    /// Purchases from Kafka, offsets in the same Delta commit.
    #[command(after_help = "Example: lakeshop extract purchases --follow")]
    Purchases(ExtractArgs),
    /// Interactions from Kafka, offsets in the same Delta commit.
    #[command(after_help = "Example: lakeshop extract interactions --until-end")]
    Interactions(ExtractArgs),
    /// Every source, once.
    #[command(after_help = "Example: lakeshop extract all --until-end")]
    All(ExtractArgs),
}

#[derive(Debug, Args)]
struct ExtractArgs {
    /// Full extract (dimensions): also finds deletions.
    #[arg(long)]
    full: bool,
    /// Kafka: keep consuming, flushing by size or time. Clients, sellers, products: extract
    /// again every `follow_interval` of their section until SIGTERM.
    #[arg(long, conflicts_with = "until_end")]
    follow: bool,
    /// Kafka: drain what is there and exit (the default without --follow).
    #[arg(long)]
    until_end: bool,
    /// Kafka: share partitions with the other extractors of the consumer group
    /// (default: read every partition, no group coordination).
    #[arg(long)]
    group: bool,
    /// Kafka with --follow: serve /metrics and /healthz on this address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: std::net::SocketAddr,
    /// Kafka with --follow: do not serve /metrics and /healthz.
    #[arg(long)]
    no_metrics: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Kafka with --until-end: how long every partition must stay at its end before the
    /// extract stops.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    idle: std::time::Duration,
    /// Clients and sellers: read and decode into Arrow, stage nothing (a speed and
    /// connectivity check). Other sources refuse it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum StageCommand {
    /// Compact small files and write a checkpoint; safe beside a live extractor.
    #[command(after_help = "Example: lakeshop stage optimize --table purchases")]
    Optimize(StageTablesArgs),
    /// Delete files no longer referenced by any retained version.
    #[command(after_help = "Example: lakeshop stage vacuum --retain 7d --dry-run")]
    Vacuum(VacuumArgs),
    /// Tables, versions, row counts and last offsets.
    #[command(after_help = "Example: lakeshop stage show --json")]
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct StageTablesArgs {
    /// Only these tables (default: all).
    #[arg(long, value_delimiter = ',')]
    table: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VacuumArgs {
    #[command(flatten)]
    tables: StageTablesArgs,
    /// Keep files every version of this age still needs (readers and time travel). Less
    /// than the table's `delta.deletedFileRetentionDuration` (7 days) needs `--force`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    retain: std::time::Duration,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Allow a retention shorter than the table's: a reader that started before it, or time
    /// travel to an older version, may then miss files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Build a day (default: yesterday) into stage.sales and ClickHouse, atomically.
    #[command(after_help = "Example: lakeshop batch run --from 2026-11-01 --to 2026-11-07 --json")]
    Run(BatchRunArgs),
}

#[derive(Debug, Args)]
struct BatchRunArgs {
    /// Business day, YYYY-MM-DD (default: yesterday).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    date: Option<String>,
    /// First day of a range.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Last day of a range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Print the run summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar (there is none either when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RangeArgs {
    /// First day (inclusive), YYYY-MM-DD.
    #[arg(long)]
    from: String,
    /// Last day (inclusive), YYYY-MM-DD.
    #[arg(long)]
    to: String,
    /// No progress bar (there is none either when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct ReconcileArgs {
    /// Business day, YYYY-MM-DD (default: yesterday).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    date: Option<String>,
    /// First day of a range.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Last day of a range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Print the whole comparison (every row of every check) as JSON.
    #[arg(long)]
    json: bool,
    /// Compare days the stream has not closed yet (a partition's watermark short of the
    /// day's end plus the allowed lateness), which are otherwise refused with exit status 3.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Revenue, purchases, items and average check per day.
    #[command(after_help = "Example: lakeshop report daily --from 2026-11-01 --to 2026-11-21")]
    Daily(ReportArgs),
    /// Per product.
    #[command(after_help = "Example: lakeshop report products --date 2026-11-21 --format csv")]
    Products(ReportArgs),
    /// Per category.
    #[command(after_help = "Example: lakeshop report categories --date 2026-11-21")]
    Categories(ReportArgs),
    /// Per shop (seller).
    #[command(after_help = "Example: lakeshop report shops --date 2026-11-21 --format json")]
    Shops(ReportArgs),
    /// Average check per day and shop.
    #[command(after_help = "Example: lakeshop report avg-check --date 2026-11-21")]
    AvgCheck(ReportArgs),
    /// Top-N products by revenue (`--limit`, default 10, at most 100 per day).
    #[command(after_help = "Example: lakeshop report top --date 2026-11-21 --limit 20")]
    Top(ReportArgs),
    /// Per month of the range: revenue, purchases, items, average check, distinct clients.
    #[command(after_help = "Example: lakeshop report monthly --from 2026-01-01 --to 2026-12-31")]
    Monthly(ReportArgs),
    /// Per year of the range: the same.
    #[command(after_help = "Example: lakeshop report yearly --from 2025-01-01 --to 2026-12-31")]
    Yearly(ReportArgs),
}

#[derive(Debug, Args)]
struct ReportArgs {
    #[arg(long)]
    date: Option<String>,
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// table | json | csv
    #[arg(long, default_value = "table")]
    format: String,
    /// At most N rows per day (products, categories, shops, avg-check, top), or in all.
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum StreamCommand {
    /// Consume purchases, enrich, aggregate in windows and upsert into ClickHouse.
    #[command(after_help = "Example: lakeshop stream run")]
    Run(StreamRunArgs),
}

#[derive(Debug, Args)]
struct StreamRunArgs {
    /// Share the partitions with the other loaders of the consumer group (default: read
    /// every partition, no group coordination).
    #[arg(long)]
    group: bool,
    /// Stop once every partition reached its end and everything is in ClickHouse
    /// (default: follow forever).
    #[arg(long)]
    until_end: bool,
    /// With --until-end: how long every partition must stay at its end before stopping.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    idle: std::time::Duration,
    /// Flush at least this often (overrides `[stream] flush_interval`).
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_interval: Option<std::time::Duration>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long, default_value = "127.0.0.1:9465")]
    metrics_listen: std::net::SocketAddr,
    /// Do not serve /metrics and /healthz.
    #[arg(long)]
    no_metrics: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Listen address [default: api.listen of the pipeline file, 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
}

/// The whole command tree with each command's purpose and example, for `--help`.
fn command_tree(cmd: &clap::Command) -> String {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut String) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{prefix}{}", sub.get_name());
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            out.push_str(&format!("  {name:<26} {about}\n"));
            if let Some(example) = sub.get_after_help() {
                out.push_str(&format!("  {:<26} {example}\n", ""));
            }
            walk(sub, &format!("{name} "), out);
        }
    }
    let mut out = String::from("Commands (the whole tree):\n");
    walk(cmd, "", &mut out);
    out
}

fn main() -> ExitCode {
    // Before `.env` is read: mimalloc read its own variables from the real environment.
    tune_allocator();
    // `.env` first, so config interpolation and clap's `env` see it; real env wins.
    let _ = dotenvy::dotenv();
    let cmd = Cli::command();
    let tree = command_tree(&cmd);
    let matches = cmd
        .after_long_help(tree.clone())
        .after_help(tree)
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = cli.timeout;
    let result = runtime.block_on(async move {
        match timeout {
            None => run(cli).await,
            Some(t) => match tokio::time::timeout(t, run(cli)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "did not finish within --timeout {}: a source, the broker or ClickHouse may \
                     not be answering (a rerun resumes from the last commit)",
                    humantime::format_duration(t)
                )),
            },
        }
    });
    // Threads still blocked on a server that stopped answering do not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if wants_json() {
                // Machine-readable output stays machine-readable on failure.
                let v = serde_json::json!({ "error": format!("{e:#}") });
                println!("{v}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the command line asked for JSON output (`--json` or `--format json`).
fn wants_json() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--json" || a == "--format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--format" && w[1] == "json")
}

/// Log filter when `RUST_LOG` is unset or empty: lakeshop at info, libraries at warn. The
/// Delta kernel logs a missing table (a normal first run) as an error; its failures reach
/// lakeshop as results anyway.
const DEFAULT_LOG: &str = "warn,lakeshop=info,lakeshop_model=info,lakeshop_stage=info,\
lakeshop_sources=info,lakeshop_clickhouse=info,lakeshop_batch=info,lakeshop_stream=info,\
lakeshop_api=info,lakeshop_gen=info,lakeshop_service=info,buoyant_kernel=off,\
deltalake_core::writer::stats=error,deltalake_core::operations::merge=error";

fn init_tracing(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes to stdout (see [`outln`]).
fn write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.flush()
}

/// Whether `e` is stdout's reader having gone away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let overrides = cli.overrides.clone();
    let load = |path: &std::path::Path| Config::load_with(path, &overrides);
    match cli.command {
        Command::Validate { file } => {
            let path = file.unwrap_or(cli.config);
            let config = load(&path)?;
            outln!(
                "{}: ok (pipeline {:?}, time zone {}, stage {}, {} topics)",
                path.display(),
                config.pipeline.name,
                config.pipeline.timezone,
                config.stage.uri,
                config.kafka.topics.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen(args) => {
            let config = load(&cli.config)?;
            gen(&config, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Extract(cmd) => extract::run(&load(&cli.config)?, cmd).await,
        Command::Stage(cmd) => stage_cmd::run(&load(&cli.config)?, cmd).await,
        Command::Migrate => analytics::migrate(&load(&cli.config)?).await,
        Command::Batch(BatchCommand::Run(args)) => {
            analytics::batch_run(&load(&cli.config)?, args).await
        }
        Command::Replay(args) => analytics::replay(&load(&cli.config)?, args).await,
        Command::Report(cmd) => analytics::report(&load(&cli.config)?, cmd).await,
        Command::Stream(StreamCommand::Run(args)) => stream::run(&load(&cli.config)?, args).await,
        Command::Reconcile(args) => reconcile::run(&load(&cli.config)?, args).await,
        Command::Serve(args) => serve::run(&load(&cli.config)?, args).await,
        Command::DeadLetters(cmd) => dead_letters::run(&load(&cli.config)?, cmd).await,
    }
}

fn stage(config: &Config) -> lakeshop_stage::Stage {
    lakeshop_stage::Stage::new(lakeshop_stage::StageOptions {
        uri: config.stage.uri.clone(),
        storage_options: config.s3.storage_options(),
    })
}

async fn gen(config: &Config, args: GenArgs) -> Result<()> {
    let live = match (args.rate, args.duration) {
        (Some(rate), Some(duration)) => Some(lakeshop_gen::Live { rate, duration }),
        (Some(_), None) => anyhow::bail!("--rate needs --duration"),
        _ => None,
    };
    let opts = lakeshop_gen::GenOptions {
        clients: args.clients,
        sellers: args.sellers,
        products: args.products,
        purchases: args.purchases,
        interactions: args.interactions.unwrap_or(args.purchases / 2),
        days: args.days,
        live,
        duplicate_fraction: args.duplicate_fraction,
        unknown_fraction: args.unknown_fraction,
        bad_fraction: args.bad_fraction,
        late_fraction: args.late_fraction,
        future_fraction: args.future_fraction,
        product_skew: args.product_skew,
        seed: args.seed,
        timezone: config.timezone()?,
        parts: args.only,
        append: args.append,
        products_cdf: args.products_cdf,
        progress: !args.quiet,
    };
    let targets = lakeshop_gen::Targets {
        postgres_url: config.postgres.url.clone(),
        clients_table: config.postgres.clients_table.clone(),
        sellers_table: config.postgres.sellers_table.clone(),
        kafka: config.kafka.client_config(),
        purchases_topic: config.kafka.topic("purchases"),
        interactions_topic: config.kafka.topic("interactions"),
        products_uri: config.products.uri.clone(),
        storage_options: config.s3.storage_options(),
    };
    let truth = lakeshop_gen::run(&opts, &targets).await.context("gen")?;
    if let Some(dir) = args.truth.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.truth, serde_json::to_vec_pretty(&truth)?)
        .with_context(|| format!("writing {}", args.truth.display()))?;
    tracing::info!(truth = %args.truth.display(), "ground truth written");
    Ok(())
}
