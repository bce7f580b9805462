//! `chaos`: prove, under faults, that nothing is lost, oversold or applied twice.
//!
//! * `chaos run`: starts Redis, MongoDB and two replicas of every service as
//!   processes, drives load with trackers, injects faults on a seeded
//!   schedule, then checks the invariants and prints a report (exit 1 on any
//!   violation);
//! * `chaos load`: only the load driver, against a running deployment;
//! * `chaos check`: only the invariant checker, against any deployment;
//! * `chaos bench`: throughput, latency and memory with nothing breaking.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use contract::streams::Namespace;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use chaos::{
    bench::{self, BenchConfig},
    check::{self, Record, Target, Verdict},
    cluster::{Cluster, Options, Svc},
    faults::{self, Fault, Injected},
    load::{self, Accepted, LoadConfig, LoadResult, Targets, TrackerResult, menu},
};

#[derive(Parser)]
#[command(
    version,
    about = "Chaos runs for foodchain: load + faults + invariant checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything locally, load it, break it, check it.
    Run(RunArgs),
    /// Drive load against a running deployment and record what was accepted.
    Load(LoadArgs),
    /// Check the invariants of a running deployment.
    Check(CheckArgs),
    /// Measure throughput, latency and memory with nothing breaking.
    Bench(BenchArgs),
    /// Start everything locally (one replica each, seeded menu), write the
    /// services' URLs to a file, and run until SIGINT / SIGTERM: a real
    /// system for tools such as the REST fuzzer.
    Up(UpArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Where to write `{"order-svc": "http://...", ...}` once every service is ready.
    #[arg(long)]
    ready_file: PathBuf,
    /// Directory for logs (default target/up/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the service binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Extra environment for every service, `NAME=value` (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=value, got {s:?}"))
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Orders to place (after a warm-up of 50).
    #[arg(long, default_value_t = 2000)]
    orders: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Replicas per service.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Redis appendfsync policy.
    #[arg(long, default_value = "always", value_parser = ["always", "everysec", "no"])]
    fsync: String,
    /// The streams on a local Redis Cluster (3 primaries, 3 replicas, each
    /// with the same AOF) instead of one Redis: the 1-node-vs-cluster
    /// comparison.
    #[arg(long)]
    redis_cluster: bool,
    /// Partitions of every stream (`STREAM_PARTITIONS` of the services).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    partitions: u16,
    /// Directory for logs and bench.json (default target/bench/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the service binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Concurrencies of the closed-loop ladder (comma-separated; 0 skips it
    /// and the floor).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,256")]
    ladder: Vec<usize>,
    /// Seconds of each ladder step, open-loop window and floor measurement.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Skip the sustained-rate search.
    #[arg(long)]
    no_sustained: bool,
    /// Offered rates (orders/s, comma-separated) of the open-loop pace
    /// phase, each for one step; the pace at 80 % of the sustained rate
    /// comes after these. 0 skips the phase, which also does not run
    /// without a ladder or the sustained-rate search.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pace: Vec<f64>,
    /// Skip the floor (bare MongoDB and Redis) measurements.
    #[arg(long)]
    no_floor: bool,
    /// WebSocket trackers of the fan-out phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    fanout_sockets: usize,
    /// Orders the fan-out's trackers watch.
    #[arg(long, default_value_t = 1_000)]
    fanout_orders: usize,
    /// Only the first phases (creation, pipeline, CPU, memory): no ladder,
    /// pace, sustained rate, floor or fan-out.
    #[arg(long)]
    quick: bool,
    /// Extra environment for every service, `NAME=value` (repeatable): to
    /// compare settings, e.g. `--env OUTBOX_BATCH=100`.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    orders: usize,
    /// Orders per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Faults to inject (default: one of each standard kind).
    #[arg(long)]
    faults: Option<usize>,
    /// Only these kinds (repeatable); default: every kind except kill-redis.
    #[arg(long = "fault", value_enum)]
    kinds: Vec<Fault>,
    /// Fraction of accepted orders tracked over WebSocket.
    #[arg(long, default_value_t = 0.1)]
    track: f64,
    /// Fraction of accepted orders the client cancels (racing the kitchen).
    #[arg(long, default_value_t = 0.1)]
    cancel: f64,
    /// Share of orders the simulated kitchen rejects (`SIMULATOR_REJECT_RATE`).
    #[arg(long, default_value_t = 0.05)]
    reject_rate: f64,
    /// Redis appendfsync policy.
    #[arg(long, default_value = "always", value_parser = ["always", "everysec", "no"])]
    fsync: String,
    /// The streams on a local Redis Cluster (3 primaries, 3 replicas); the
    /// standard faults then kill the streams' primary instead of
    /// restarting Redis (kill-redis-primary).
    #[arg(long)]
    redis_cluster: bool,
    /// Partitions of every stream (`STREAM_PARTITIONS` of the services).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    partitions: u16,
    /// RNG seed (random if unset; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest wait for the system to settle after the load.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Directory for logs and the report (default target/chaos/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the service binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// order-svc base URLs (repeatable).
    #[arg(long = "order-url", required = true)]
    order_urls: Vec<String>,
    /// notify-svc base URLs (repeatable).
    #[arg(long = "notify-url")]
    notify_urls: Vec<String>,
    /// Orders to place.
    #[arg(long, default_value_t = 100)]
    orders: usize,
    /// Orders per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Fraction tracked over WebSocket.
    #[arg(long, default_value_t = 0.1)]
    track: f64,
    /// Fraction of accepted orders cancelled.
    #[arg(long, default_value_t = 0.0)]
    cancel: f64,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the record (accepted orders, initial stock) here, for `check`.
    #[arg(long)]
    record: PathBuf,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Redis.
    #[arg(long, env = "REDIS_URL", default_value = common::settings::DEFAULT_REDIS_URL)]
    redis_url: String,
    /// MongoDB.
    #[arg(long, env = "MONGO_URL", default_value = common::settings::DEFAULT_MONGO_URL)]
    mongo_url: String,
    /// Database.
    #[arg(long, env = "MONGO_DB", default_value = "foodchain")]
    db: String,
    /// Stream prefix.
    #[arg(long, env = "STREAM_PREFIX", default_value = "")]
    prefix: String,
    /// Partitions of every stream (as the services' STREAM_PARTITIONS;
    /// default: the count the services recorded in Redis, else 1).
    #[arg(long, env = "STREAM_PARTITIONS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    partitions: Option<u16>,
    /// A record written by `chaos load` (enables the conservation checks).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Longest wait for the system to settle.
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,
}

/// What `chaos load` writes and `chaos check` reads.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedRecord {
    initial_stock: HashMap<String, i64>,
    load: LoadResult,
}

/// The report of a run.
#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    orders: usize,
    accepted: usize,
    refused: usize,
    client_errors: Vec<String>,
    client_retries: usize,
    trackers: usize,
    faults: Vec<Injected>,
    faults_by_kind: HashMap<String, usize>,
    invariants: Vec<Verdict>,
    load_secs: f64,
    total_secs: f64,
    log_dir: PathBuf,
}

struct ClusterTargets(Arc<Cluster>);

impl Targets for ClusterTargets {
    fn orders(&self) -> Vec<String> {
        self.0.urls(Svc::OrderSvc)
    }
    fn notify(&self) -> Vec<String> {
        self.0.urls(Svc::NotifySvc)
    }
}

struct FixedTargets(Vec<String>, Vec<String>);

impl Targets for FixedTargets {
    fn orders(&self) -> Vec<String> {
        self.0.clone()
    }
    fn notify(&self) -> Vec<String> {
        self.1.clone()
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a).await,
        Command::Load(a) => load_only(a).await.map(|()| true),
        Command::Check(a) => check_only(a).await,
        Command::Bench(a) => bench_cmd(a).await.map(|()| true),
        Command::Up(a) => up(a).await.map(|()| true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let seed = a.seed.unwrap_or_else(rand::random);
    let bin_dir = default_bin_dir(a.bin_dir)?;
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from("target/chaos").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    let fsync = fsync_policy(&a.fsync);
    let redis = if a.redis_cluster {
        format!("a Redis Cluster of 3 primaries and 3 replicas, appendfsync {fsync}")
    } else {
        format!("Redis appendfsync {fsync}")
    } + &format!(", {} stream partition(s)", a.partitions);
    println!(
        "chaos run: seed {seed}, {} orders at {}/s ({:.0}% cancelled, {:.0}% rejected by the kitchen), {redis}, logs in {}",
        a.orders,
        a.rate,
        a.cancel * 100.0,
        a.reject_rate * 100.0,
        out.display()
    );
    let cluster = Arc::new(
        Cluster::start(
            bin_dir,
            out.clone(),
            Options {
                fsync,
                env: vec![
                    ("SIMULATOR_REJECT_RATE".into(), a.reject_rate.to_string()),
                    ("SIMULATOR_SEED".into(), seed.to_string()),
                ],
                redis_cluster: a.redis_cluster,
                partitions: a.partitions,
                ..Options::default()
            },
        )
        .await?,
    );
    let redis_client = contract::redis::client(&cluster.redis.url())?;
    let mut conn = contract::redis::commands(&redis_client)?;
    let mongo = common::mongo::connect(&cluster.mongo.url(), "chaos").await?;
    let db = mongo.database(&cluster.db);

    // Plenty of stock: refusals are not what this run is about.
    db.collection::<bson::Document>("menu")
        .update_many(
            bson::doc! {},
            bson::doc! { "$set": { "stock": 1_000_000_i64 } },
        )
        .await?;
    let order_url = cluster
        .urls(Svc::OrderSvc)
        .first()
        .cloned()
        .context("no order-svc")?;
    let initial_stock = menu(&cluster.http, &order_url).await?;

    let kinds = if a.kinds.is_empty() {
        Fault::standard(a.redis_cluster)
    } else {
        a.kinds.clone()
    };
    let schedule = faults::schedule(&kinds, a.faults.unwrap_or(kinds.len()), seed);
    let load_secs = a.orders as f64 / a.rate;
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = LoadConfig {
        orders: a.orders,
        rate: a.rate,
        track: a.track,
        seed,
        tracker_deadline: Duration::from_secs((load_secs as u64) + 180),
        cancel: a.cancel,
        // The kitchen hands an order over about 0.45 s after it is placed
        // (SIMULATOR_DELAY_SCALE 0.05): some cancels win, some lose.
        cancel_within: Duration::from_millis(600),
    };
    let load_started = Instant::now();
    let load = tokio::spawn(load::run(
        Arc::new(ClusterTargets(cluster.clone())),
        initial_stock.keys().cloned().collect(),
        cfg,
        accepted_tx,
    ));

    let mut injected = Vec::new();
    let mut poison = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let n = schedule.len();
    for (i, fault) in schedule.into_iter().enumerate() {
        let at = Duration::from_secs_f64(load_secs * (0.1 + 0.8 * (i as f64) / (n.max(1) as f64)));
        tokio::time::sleep_until((load_started + at).into()).await;
        let inj = faults::inject(
            &cluster,
            &mut conn,
            fault,
            &mut accepted_rx,
            &mut poison,
            &mut rng,
            load_started,
        )
        .await?;
        println!(
            "  {:>6.1}s  {:<28} {:<16} recovered in {}  {}",
            inj.at_secs,
            format!("{:?}", inj.fault),
            inj.target,
            inj.recovery_secs.map_or("-".into(), |s| format!("{s:.1}s")),
            inj.note
        );
        injected.push(inj);
    }
    let load_result = load.await?;
    let load_secs_actual = load_started.elapsed().as_secs_f64();
    println!("load done: {load_result}");

    let record = Record {
        accepted: Some(load_result.accepted.clone()),
        initial_stock: Some(initial_stock),
        poison: Some(poison),
        trackers: Some(load_result.trackers.clone()),
    };
    let target = Target {
        conn: conn.clone(),
        db,
        ns: cluster.namespace(),
    };
    let mut invariants = check::check(&target, &record, Duration::from_secs(a.settle_secs)).await?;
    invariants.insert(
        0,
        Verdict {
            invariant:
                "the client got an answer for every order (201 or 409) and cancel (200 or 409)"
                    .into(),
            passed: load_result.errors.is_empty(),
            detail: if load_result.errors.is_empty() {
                format!("{} answered", a.orders)
            } else {
                load_result
                    .errors
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        },
    );
    cluster.shutdown().await;

    let mut by_kind: HashMap<String, usize> = HashMap::new();
    for f in &injected {
        *by_kind.entry(format!("{:?}", f.fault)).or_default() += 1;
    }
    let report = Report {
        seed,
        orders: a.orders,
        accepted: load_result.accepted.len(),
        refused: load_result.refused,
        client_errors: load_result.errors.clone(),
        client_retries: load_result.retries,
        trackers: load_result.trackers.len(),
        faults: injected,
        faults_by_kind: by_kind,
        invariants,
        load_secs: load_secs_actual,
        total_secs: started.elapsed().as_secs_f64(),
        log_dir: out.clone(),
    };
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print_report(&report);
    Ok(report.invariants.iter().all(|v| v.passed))
}

fn print_report(r: &Report) {
    println!("\n=== chaos report (seed {}) ===", r.seed);
    println!(
        "orders: {} placed, {} accepted, {} refused, {} client retries, {} trackers",
        r.orders, r.accepted, r.refused, r.client_retries, r.trackers
    );
    println!("faults: {} injected", r.faults.len());
    let mut kinds: Vec<_> = r.faults_by_kind.iter().collect();
    kinds.sort();
    for (k, n) in kinds {
        let recoveries: Vec<String> = r
            .faults
            .iter()
            .filter(|f| format!("{:?}", f.fault) == *k)
            .map(|f| {
                f.recovery_secs
                    .map_or("never".into(), |s| format!("{s:.1}s"))
            })
            .collect();
        println!("  {n} x {k:<26} recovered in {}", recoveries.join(", "));
    }
    println!("invariants:");
    for v in &r.invariants {
        println!(
            "  {} {:<66} {}",
            if v.passed { "PASS" } else { "FAIL" },
            v.invariant,
            v.detail
        );
    }
    let failed = r.invariants.iter().filter(|v| !v.passed).count();
    println!(
        "load {:.0}s, total {:.0}s; {}",
        r.load_secs,
        r.total_secs,
        if failed == 0 {
            "all invariants hold".to_owned()
        } else {
            format!("{failed} invariant(s) VIOLATED")
        }
    );
    println!("report: {}", r.log_dir.join("report.json").display());
}

async fn load_only(a: LoadArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let initial_stock = menu(&http, &a.order_urls[0]).await?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = LoadConfig {
        orders: a.orders,
        rate: a.rate,
        track: a.track,
        seed: a.seed,
        tracker_deadline: Duration::from_secs(300),
        cancel: a.cancel,
        cancel_within: Duration::from_secs(10),
    };
    let targets = Arc::new(FixedTargets(a.order_urls.clone(), a.notify_urls.clone()));
    let result = load::run(targets, initial_stock.keys().cloned().collect(), cfg, tx).await;
    println!("{result}");
    std::fs::write(
        &a.record,
        serde_json::to_string_pretty(&SavedRecord {
            initial_stock,
            load: result,
        })?,
    )?;
    println!("record written to {}", a.record.display());
    Ok(())
}

async fn check_only(a: CheckArgs) -> anyhow::Result<bool> {
    let client = contract::redis::client(&a.redis_url)?;
    let mut conn = contract::redis::commands(&client)?;
    let partitions = match a.partitions {
        Some(p) => p,
        None => contract::redis::recorded_partitions(&mut conn, &a.prefix)
            .await?
            .unwrap_or(1),
    };
    let mongo = common::mongo::connect(&a.mongo_url, "chaos-check").await?;
    let target = Target {
        conn,
        db: mongo.database(&a.db),
        ns: Namespace::for_redis(&a.prefix, &a.redis_url, partitions),
    };
    let record = match &a.record {
        Some(path) => {
            let saved: SavedRecord = serde_json::from_str(&std::fs::read_to_string(path)?)?;
            let trackers: Vec<TrackerResult> = saved.load.trackers;
            let accepted: Vec<Accepted> = saved.load.accepted;
            Record {
                accepted: Some(accepted),
                initial_stock: Some(saved.initial_stock),
                poison: None,
                trackers: Some(trackers),
            }
        }
        None => Record::default(),
    };
    let verdicts = check::check(&target, &record, Duration::from_secs(a.settle_secs)).await?;
    for v in &verdicts {
        println!(
            "{} {:<66} {}",
            if v.passed { "PASS" } else { "FAIL" },
            v.invariant,
            v.detail
        );
    }
    Ok(verdicts.iter().all(|v| v.passed))
}

fn fsync_policy(s: &str) -> &'static str {
    match s {
        "everysec" => "everysec",
        "no" => "no",
        _ => "always",
    }
}

fn default_bin_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no executable directory")?
            .to_path_buf()),
    }
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from("target/up").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    let cluster = Cluster::start(
        default_bin_dir(a.bin_dir)?,
        out.clone(),
        Options {
            fsync: "everysec",
            replicas: 1,
            env: a.env,
            redis_cluster: false,
            partitions: 1,
        },
    )
    .await?;
    let urls: serde_json::Map<String, serde_json::Value> = Svc::ALL
        .into_iter()
        .filter_map(|svc| Some((svc.name().to_owned(), cluster.url(svc, 0)?.into())))
        .collect();
    std::fs::write(&a.ready_file, serde_json::to_string_pretty(&urls)?)?;
    println!(
        "up: every service ready; URLs in {}, logs in {}",
        a.ready_file.display(),
        out.display()
    );
    common::shutdown::on_signals().cancelled().await;
    println!("up: stopping");
    drop(cluster);
    Ok(())
}

async fn bench_cmd(a: BenchArgs) -> anyhow::Result<()> {
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from("target/bench").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    let cfg = BenchConfig {
        orders: a.orders,
        concurrency: a.concurrency,
        replicas: a.replicas,
        fsync: fsync_policy(&a.fsync),
        redis_cluster: a.redis_cluster,
        partitions: a.partitions,
        bin_dir: default_bin_dir(a.bin_dir)?,
        out: out.clone(),
        ladder: if a.quick {
            Vec::new()
        } else {
            a.ladder.into_iter().filter(|c| *c > 0).collect()
        },
        step: Duration::from_secs(a.step_secs.max(1)),
        sustained: !a.quick && !a.no_sustained,
        pace: if a.quick {
            Vec::new()
        } else {
            a.pace.into_iter().filter(|r| *r > 0.0).collect()
        },
        floor: !a.quick && !a.no_floor,
        fanout_sockets: if a.quick { 0 } else { a.fanout_sockets },
        fanout_orders: a.fanout_orders.max(1),
        env: a.env,
    };
    println!(
        "bench: {} orders, {} clients, {} replica(s), binaries in {}, logs in {}{}",
        cfg.orders,
        cfg.concurrency,
        cfg.replicas,
        cfg.bin_dir.display(),
        out.display(),
        cfg.env
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    let report = bench::run(cfg).await?;
    print!("{report}");
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("report: {}", out.join("bench.json").display());
    Ok(())
}
