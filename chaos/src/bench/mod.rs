//! The benchmark: how fast the system is when nothing breaks, and how much
//! memory each service takes doing it.
//!
//! It starts the same local deployment as a chaos run (real processes, Redis
//! with AOF, MongoDB), with the simulator's delays at zero so that what is
//! measured is the system and not the pretend kitchen, then:
//!
//! 1. **order creation**: `orders` POSTs (two distinct dishes of seven, 1–2 each, with an
//!    `Idempotency-Key`) from `concurrency` closed-loop clients. Each is a
//!    replica-set transaction (stock decrement + order + outbox) plus the
//!    idempotency record. Prints throughput and latency percentiles.
//! 2. **the event pipeline**: for every order, the time from its
//!    `created_at` to the `order:delivered` entry in its timeline: eight
//!    events through the outbox relays, six streams, four consumer groups
//!    and the simulator's durable timers. Prints percentiles, and how long
//!    the whole backlog took to drain after the last POST.
//! 3. **CPU**: user + system time of every process, the servers included,
//!    from the first measured POST until drained, per delivered order;
//! 4. **memory**: peak and current resident set of every service process
//!    (`VmHWM`, `VmRSS` from `/proc`).
//!
//! 5. **the ladder** ([`rates`]): closed-loop creation at each concurrency
//!    (default 1, 8, 32, 256) for a fixed time, 5xx counted apart; then
//!    c=1 again with the simulator paused, creation without the delivery
//!    of earlier orders competing for the cores and the database;
//! 6. **pace**: created → delivered and the median hop at 10 orders/s (or
//!    the rates given with `--pace`), and at 80 % of the sustained rate;
//! 7. **the sustained rate** ([`rates::sustained_rate`]): the highest offered
//!    rate at which the backlog does not grow;
//! 8. **the floor** ([`floor`]): the same servers without the services, at
//!    each concurrency of the ladder, and ours ÷ floor;
//! 9. **WebSocket fan-out** ([`fanout`]): thousands of trackers on one
//!    notify-svc, memory per idle session, push latency (last: it stops the
//!    simulator).
//!
//! Numbers, not assertions: run it, compare with the previous run.

pub mod fanout;
pub mod floor;
pub mod rates;
pub mod top;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    cluster::{Cluster, Options, Svc},
    load::{FULL_FLOW, menu},
};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Orders to place (after a warm-up of 50).
    pub orders: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Replicas per service.
    pub replicas: usize,
    /// Redis `appendfsync`.
    pub fsync: &'static str,
    /// The streams on a local Redis Cluster (3 primaries, 3 replicas).
    pub redis_cluster: bool,
    /// Partitions of every stream.
    pub partitions: u16,
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Logs and `bench.json`.
    pub out: PathBuf,
    /// Concurrencies of the ladder (empty: no ladder, no floor).
    pub ladder: Vec<usize>,
    /// Length of each ladder step, open-loop window and floor measurement.
    pub step: Duration,
    /// Search the sustained rate (and measure the pace at 80 % of it).
    pub sustained: bool,
    /// Offered rates of the open-loop pace phase (orders/s; empty: none).
    pub pace: Vec<f64>,
    /// Measure the floor at each concurrency of the ladder.
    pub floor: bool,
    /// WebSocket fan-out: trackers and the orders they watch (0: skip).
    pub fanout_sockets: usize,
    /// Orders the fan-out's trackers watch.
    pub fanout_orders: usize,
    /// Extra environment for every service (after the bench's own).
    pub env: Vec<(String, String)>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (nearest rank).
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Self {
            n: samples.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            self.p50, self.p95, self.p99, self.max, self.n
        )
    }
}

/// Memory of one process, in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Replica name.
    pub process: String,
    /// Peak resident set.
    pub peak_mib: f64,
    /// Resident set at the end.
    pub current_mib: f64,
}

/// The time between two consecutive statuses of one order (their events'
/// `occurred_at`).
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// Earlier status.
    pub from: String,
    /// Next status.
    pub to: String,
    /// Percentiles over the orders.
    pub latency: Percentiles,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Orders placed in the measured phase.
    pub orders: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Replicas per service.
    pub replicas: usize,
    /// Redis `appendfsync`, `cluster` on a 3+3 Redis Cluster, and the
    /// stream partitions.
    pub fsync: String,
    /// Orders per second accepted (201).
    pub create_per_sec: f64,
    /// POST latency.
    pub create_latency: Percentiles,
    /// Answers other than 201.
    pub create_errors: usize,
    /// `created_at` → `order:delivered`.
    pub pipeline_latency: Percentiles,
    /// Between each two consecutive statuses of the flow.
    pub hops: Vec<Hop>,
    /// From the last 201 until every order was delivered.
    pub drain_secs: f64,
    /// Per process.
    pub memory: Vec<Memory>,
    /// CPU time of every process (services, Redis, MongoDB) from the first
    /// measured POST until every order was delivered.
    pub cpu: Vec<Cpu>,
    /// The sum of `cpu`, per delivered order, in milliseconds.
    pub cpu_ms_per_order: f64,
    /// Stream entries added per delivered order (every stream).
    pub xadds_per_order: f64,
    /// Entries read and acknowledged by a group per delivered order.
    pub reads_per_order: f64,
    /// MongoDB commands per delivered order, by collection and kind.
    pub mongo_commands: Vec<top::Commands>,
    /// Redis commands per delivered order (`INFO commandstats`).
    pub redis_commands: Vec<top::Commands>,
    /// Closed-loop creation per concurrency.
    pub ladder: Vec<rates::Step>,
    /// One client with the simulator paused: creation without the rest of
    /// the pipeline running behind it (what the ladder's c=1 would be if
    /// delivering the earlier orders cost nothing).
    pub c1_alone: Option<rates::Step>,
    /// Open-loop windows with created → delivered measured (10/s, and 80 %
    /// of the sustained rate).
    pub pace: Vec<rates::RateRun>,
    /// The highest sustained rate found, orders/s.
    pub sustained_rate: Option<f64>,
    /// Every window of the search.
    pub sustained_search: Vec<rates::RateRun>,
    /// The bare servers, per concurrency of the ladder.
    pub floor: Vec<floor::Floor>,
    /// WebSocket fan-out.
    pub fanout: Option<fanout::Fanout>,
}

/// One table of commands per order, with its total.
fn write_commands(
    f: &mut std::fmt::Formatter<'_>,
    title: &str,
    source: &str,
    commands: &[top::Commands],
) -> std::fmt::Result {
    if commands.is_empty() {
        return Ok(());
    }
    let total: f64 = commands.iter().map(|c| c.per_order).sum();
    writeln!(f, "{title}: {total:.1} ({source})")?;
    for c in commands {
        writeln!(f, "  {:<32} {:>5.2}", c.what, c.per_order)?;
    }
    Ok(())
}

/// CPU time a process used during the measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Process (replica) name, `redis` or `mongodb`.
    pub process: String,
    /// User + system CPU seconds.
    pub secs: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "=== bench: {} orders, {} clients, {} replica(s) per service, Redis {} ===",
            self.orders, self.concurrency, self.replicas, self.fsync
        )?;
        writeln!(
            f,
            "order creation   {:.0} orders/s; {}; {} non-201",
            self.create_per_sec, self.create_latency, self.create_errors
        )?;
        writeln!(
            f,
            "created→delivered {}; backlog drained {:.1} s after the last POST",
            self.pipeline_latency, self.drain_secs
        )?;
        for h in &self.hops {
            writeln!(
                f,
                "  {:<28} → {:<28} p50 {:>6.1} ms, p99 {:>6.1} ms",
                h.from, h.to, h.latency.p50, h.latency.p99
            )?;
        }
        writeln!(
            f,
            "CPU per delivered order {:.1} ms (all processes, until drained)",
            self.cpu_ms_per_order
        )?;
        for c in &self.cpu {
            writeln!(f, "  {:<16} {:>7.2} s", c.process, c.secs)?;
        }
        writeln!(
            f,
            "stream entries per order: {:.1} added, {:.1} read and acknowledged",
            self.xadds_per_order, self.reads_per_order
        )?;
        write_commands(
            f,
            "MongoDB commands per order",
            "top; transactions' commits not counted",
            &self.mongo_commands,
        )?;
        write_commands(
            f,
            "Redis commands per order",
            "INFO commandstats; scripts count their inner calls too",
            &self.redis_commands,
        )?;
        writeln!(f, "memory (MiB)     peak   now")?;
        for m in &self.memory {
            writeln!(
                f,
                "  {:<16} {:>5.1} {:>5.1}",
                m.process, m.peak_mib, m.current_mib
            )?;
        }
        if !self.ladder.is_empty() {
            writeln!(f, "creation, closed loop:")?;
            for step in &self.ladder {
                let floor = self
                    .floor
                    .iter()
                    .find(|fl| fl.concurrency == step.concurrency);
                match floor {
                    Some(fl) => writeln!(
                        f,
                        "{step}  (floor {:.0} txn/s: ours ÷ floor {:.2})",
                        fl.order_txn_per_sec(),
                        step.per_sec / fl.order_txn_per_sec()
                    )?,
                    None => writeln!(f, "{step}")?,
                }
            }
        }
        if let Some(step) = &self.c1_alone {
            writeln!(f, "{step}  {PAUSED}")?;
        }
        if !self.pace.is_empty() {
            writeln!(f, "created → delivered at a steady rate:")?;
            for run in &self.pace {
                writeln!(f, "{run}")?;
            }
        }
        if let Some(rate) = self.sustained_rate {
            writeln!(
                f,
                "sustained rate: {rate:.1} orders/s (backlog does not grow)"
            )?;
        }
        for fl in &self.floor {
            write!(f, "{fl}")?;
        }
        if let (Some(rate), Some(fl)) = (
            self.sustained_rate,
            self.floor.iter().max_by_key(|fl| fl.concurrency),
        ) {
            let xadds = rate * self.xadds_per_order;
            let reads = rate * self.reads_per_order;
            writeln!(
                f,
                "Redis at the sustained rate: {xadds:.0} XADD/s (floor {:.0}/s, {:.1} %), {reads:.0} reads+acks/s (floor {:.0}/s, {:.1} %)",
                fl.xadd_per_sec,
                100.0 * xadds / fl.xadd_per_sec,
                fl.read_ack_per_sec,
                100.0 * reads / fl.read_ack_per_sec
            )?;
        }
        if let Some(fan) = &self.fanout {
            write!(f, "{fan}")?;
        }
        Ok(())
    }
}

/// User + system CPU seconds of a process so far (`/proc/<pid>/stat`).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of the whole line: 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of every process of the deployment, by name.
fn cpu_of(cluster: &Cluster) -> Vec<(String, f64)> {
    let servers = cluster
        .redis
        .pids()
        .into_iter()
        .chain([("mongodb".to_owned(), cluster.mongo.pid())]);
    cluster
        .pids()
        .into_iter()
        .map(|(name, pid)| (name, Some(pid)))
        .chain(servers)
        .filter_map(|(name, pid)| Some((name, cpu_secs(pid?)?)))
        .collect()
}

/// `VmHWM` and `VmRSS` of a process, in MiB.
fn memory_of(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some((kib("VmHWM:")? / 1024.0, kib("VmRSS:")? / 1024.0))
}

async fn post_order(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    lines: &[(&str, u32)],
) -> anyhow::Result<(u16, Value)> {
    let body = json!({
        "customer": {"name": "Bench Mark", "address": "1 Fast Lane", "phone": "+1 555 0199"},
        "items": lines.iter().map(|(id, q)| json!({"item_id": id, "quantity": q})).collect::<Vec<_>>(),
    });
    let r = http
        .post(format!("{url}/api/v1/orders"))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or_default()))
}

/// Places `n` orders from `concurrency` clients; returns `(order id, tracking
/// token, latency ms)` of the accepted ones and the number of other answers.
async fn place_many(
    http: &reqwest::Client,
    urls: &[String],
    items: &[String],
    n: usize,
    concurrency: usize,
    tag: &str,
) -> (Vec<(String, String, f64)>, usize) {
    let errors = Arc::new(AtomicUsize::new(0));
    let mut rng = StdRng::seed_from_u64(7);
    let picks: Vec<[(usize, u32); 2]> =
        (0..n).map(|_| rates::pick(items.len(), &mut rng)).collect();
    let accepted: Vec<(String, String, f64)> = stream::iter(picks.into_iter().enumerate())
        .map(|(i, pick)| {
            let errors = errors.clone();
            let url = &urls[i % urls.len()];
            let key = format!("bench-{tag}-{i}");
            async move {
                let started = Instant::now();
                let lines: Vec<(&str, u32)> =
                    pick.iter().map(|(i, q)| (items[*i].as_str(), *q)).collect();
                match post_order(http, url, &key, &lines).await {
                    Ok((201, order)) => Some((
                        order["id"].as_str()?.to_owned(),
                        order["tracking_token"].as_str()?.to_owned(),
                        started.elapsed().as_secs_f64() * 1e3,
                    )),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|x| async move { x })
        .collect()
        .await;
    (accepted, errors.load(Ordering::Relaxed))
}

/// `created_at` → the `order:delivered` entry, and the time between each
/// two consecutive timeline entries, in milliseconds.
async fn pipeline_ms(
    http: &reqwest::Client,
    order_url: &str,
    notify_url: &str,
    id: &str,
    token: &str,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let order: Value = http
        .get(format!("{order_url}/api/v1/orders/{id}"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let timeline: Value = http
        .get(format!("{notify_url}/api/v1/orders/{id}/timeline"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let created: DateTime<Utc> = order["created_at"]
        .as_str()
        .context("no created_at")?
        .parse()?;
    let entries = timeline["timeline"].as_array().context("no timeline")?;
    let mut at: Vec<DateTime<Utc>> = Vec::with_capacity(FULL_FLOW.len());
    for stage in FULL_FLOW {
        let (kind, status) = stage.split_once(':').unwrap_or_default();
        let entry = entries
            .iter()
            .find(|e| e["kind"] == kind && e["status"] == status)
            .with_context(|| format!("no {stage}"))?;
        at.push(entry["at"].as_str().context("no at")?.parse()?);
    }
    let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
        (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
    };
    let hops = at.windows(2).map(|w| ms(w[0], w[1])).collect();
    Ok((ms(created, at[at.len() - 1]), hops))
}

/// Runs the benchmark.
pub async fn run(cfg: BenchConfig) -> anyhow::Result<BenchReport> {
    let env = [
        ("SIMULATOR_DELAY_SCALE", "0"),
        // The services' own defaults, not the chaos runs' tighter polling.
        ("SIM_POLL_MS", "100"),
        ("OUTBOX_POLL_MS", "250"),
        ("STREAM_TRIM_INTERVAL_MS", "5000"),
        // The fan-out's trackers all come from this machine.
        ("WS_MAX_SESSIONS_PER_CLIENT", "1000000"),
    ];
    let cluster = Cluster::start(
        cfg.bin_dir.clone(),
        cfg.out.clone(),
        Options {
            fsync: cfg.fsync,
            replicas: cfg.replicas,
            redis_cluster: cfg.redis_cluster,
            partitions: cfg.partitions,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain(cfg.env.iter().cloned())
                .collect(),
        },
    )
    .await?;
    let result = measure(&cluster, &cfg).await;
    cluster.shutdown().await;
    result
}

async fn measure(cluster: &Cluster, cfg: &BenchConfig) -> anyhow::Result<BenchReport> {
    let mongo = common::mongo::connect(&cluster.mongo.url(), "bench").await?;
    let orders = mongo
        .database(&cluster.db)
        .collection::<bson::Document>("orders");
    mongo
        .database(&cluster.db)
        .collection::<bson::Document>("menu")
        .update_many(
            bson::doc! {},
            bson::doc! { "$set": { "stock": 10_000_000_i64 } },
        )
        .await?;
    let order_urls = cluster.urls(Svc::OrderSvc);
    let notify_urls = cluster.urls(Svc::NotifySvc);
    let (Some(order_url), Some(notify_url)) = (order_urls.first(), notify_urls.first()) else {
        bail!("no order-svc or notify-svc running");
    };
    let items: Vec<String> = menu(&cluster.http, order_url).await?.into_keys().collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    let (warm, _) = place_many(&http, &order_urls, &items, 50, cfg.concurrency, "warm").await;
    wait_delivered(&orders, Duration::from_secs(120)).await?;
    drop(warm);

    // Redis 7's `entries-added` and `entries-read` counters: trimming does
    // not change them.
    let streams = Streams::new(&cluster.redis.url(), &cluster.namespace())?;
    let entries_before = streams.counts().await?;
    let mut top_before = top::snapshot(&mongo, &cluster.db).await;
    top_before.extend(top::redis_snapshot(&cluster.redis.url()).await);
    let cpu_before = cpu_of(cluster);
    let started = Instant::now();
    let (accepted, create_errors) = place_many(
        &http,
        &order_urls,
        &items,
        cfg.orders,
        cfg.concurrency,
        "run",
    )
    .await;
    let create_secs = started.elapsed().as_secs_f64();
    let last_post = Instant::now();
    wait_delivered(&orders, Duration::from_secs(600)).await?;
    let drain_secs = last_post.elapsed().as_secs_f64();
    let cpu: Vec<Cpu> = cpu_of(cluster)
        .into_iter()
        .map(|(process, now)| {
            let before = cpu_before
                .iter()
                .find(|(p, _)| *p == process)
                .map_or(0.0, |(_, s)| *s);
            Cpu {
                process: process.trim_end_matches("-g1").to_owned(),
                secs: now - before,
            }
        })
        .collect();
    let cpu_ms_per_order =
        cpu.iter().map(|c| c.secs).sum::<f64>() * 1e3 / accepted.len().max(1) as f64;
    let mut top_after = top::snapshot(&mongo, &cluster.db).await;
    let redis_after = top::redis_snapshot(&cluster.redis.url()).await;
    let (mongo_commands, redis_commands) = {
        let redis_before: std::collections::BTreeMap<_, _> = top_before
            .iter()
            .filter(|(k, _)| k.starts_with("redis "))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        top_before.retain(|k, _| !k.starts_with("redis "));
        top_after.retain(|k, _| !k.starts_with("redis "));
        (
            top::per_order(&top_before, &top_after, accepted.len()),
            top::per_order(&redis_before, &redis_after, accepted.len()),
        )
    };
    let entries_after = streams.counts().await?;
    let per_order = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / accepted.len().max(1) as f64;
    let xadds_per_order = per_order(entries_after.added, entries_before.added);
    let reads_per_order = per_order(entries_after.read, entries_before.read);

    let create_latency = Percentiles::of(accepted.iter().map(|(_, _, ms)| *ms).collect());
    let measured: Vec<(f64, Vec<f64>)> = stream::iter(&accepted)
        .map(|(id, token, _)| pipeline_ms(&http, order_url, notify_url, id, token))
        .buffer_unordered(16)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let hops = FULL_FLOW
        .windows(2)
        .enumerate()
        .map(|(i, w)| Hop {
            from: w[0].to_owned(),
            to: w[1].to_owned(),
            latency: Percentiles::of(measured.iter().map(|(_, h)| h[i]).collect()),
        })
        .collect();
    let pipeline = measured.into_iter().map(|(total, _)| total).collect();
    let memory = cluster
        .pids()
        .into_iter()
        .filter_map(|(process, pid)| {
            let (peak_mib, current_mib) = memory_of(pid)?;
            Some(Memory {
                process: process.trim_end_matches("-g1").to_owned(),
                peak_mib,
                current_mib,
            })
        })
        .collect();
    let load = rates::Load {
        urls: order_urls.clone(),
        items: items.clone(),
        tag: "run".into(),
    };
    let ladder = rates::ladder(&http, &load, &orders, &cfg.ladder, cfg.step).await?;
    let c1_alone = if cfg.ladder.contains(&1) {
        Some(alone(cluster, &http, &load, &orders, cfg).await?)
    } else {
        None
    };
    let mut pace = Vec::new();
    let paced = if cfg.sustained || !cfg.ladder.is_empty() {
        cfg.pace.as_slice()
    } else {
        &[]
    };
    for &rate in paced {
        let run = rates::open_loop(
            &http,
            &load,
            &orders,
            &streams,
            rate,
            cfg.step,
            Some(notify_url),
        )
        .await?;
        println!("{run}");
        pace.push(run);
    }
    let (mut sustained_rate, mut sustained_search) = (None, Vec::new());
    if cfg.sustained {
        // From a quarter of the best closed-loop rate (half of it is
        // beyond what the pipeline sustains on two cores, and the search
        // then bisected from zero), and four bisections: the rate found is
        // within a few per cent of the one that fails.
        let best = ladder.iter().map(|s| s.per_sec).fold(20.0, f64::max);
        let (rate, runs) = rates::sustained_rate(
            &http,
            &load,
            &orders,
            &streams,
            best * SUSTAINED_START,
            cfg.step,
            SUSTAINED_BISECTIONS,
        )
        .await?;
        sustained_rate = Some(rate);
        sustained_search = runs;
        if rate > 0.0 {
            let run = rates::open_loop(
                &http,
                &load,
                &orders,
                &streams,
                rate * 0.8,
                cfg.step,
                Some(notify_url),
            )
            .await?;
            println!("{run}");
            pace.push(run);
        }
    }
    let mut floors = Vec::new();
    if cfg.floor {
        for &c in &cfg.ladder {
            let fl =
                floor::measure(&cluster.mongo.url(), &cluster.redis.url(), c, cfg.step).await?;
            print!("{fl}");
            floors.push(fl);
        }
    }
    let fanout = if cfg.fanout_sockets > 0 {
        Some(fan_out(cluster, &http, &order_urls, &items, cfg).await?)
    } else {
        None
    };
    Ok(BenchReport {
        mongo_commands,
        redis_commands,
        xadds_per_order,
        reads_per_order,
        ladder,
        c1_alone,
        pace,
        sustained_rate,
        sustained_search,
        floor: floors,
        fanout,
        orders: cfg.orders,
        concurrency: cfg.concurrency,
        replicas: cfg.replicas,
        fsync: if cfg.redis_cluster {
            format!(
                "cluster 3+3, {} partitions, appendfsync {}",
                cfg.partitions, cfg.fsync
            )
        } else {
            format!("appendfsync {}, {} partitions", cfg.fsync, cfg.partitions)
        },
        create_per_sec: accepted.len() as f64 / create_secs,
        create_latency,
        create_errors,
        pipeline_latency: Percentiles::of(pipeline),
        hops,
        drain_secs,
        memory,
        cpu,
        cpu_ms_per_order,
    })
}

/// Where the sustained-rate search starts, as a share of the best rate of
/// the closed-loop ladder.
const SUSTAINED_START: f64 = 0.25;
/// Halvings of the interval once the search found a rate not sustained.
const SUSTAINED_BISECTIONS: usize = 4;

/// Every stream of a run, to count what was added to them and what their
/// consumer groups have not read yet.
#[derive(Clone)]
pub struct Streams {
    conn: contract::redis::Conn,
    ns: contract::streams::Namespace,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

/// What [`Streams::counts`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Entries ever added, over all streams.
    pub added: u64,
    /// Entries read, summed over every group of every stream.
    pub read: u64,
    /// Entries some group has not read yet, summed over every group (its
    /// `lag`; where Redis cannot tell it, added minus read).
    pub unread: u64,
}

impl Streams {
    pub fn new(redis_url: &str, ns: &contract::streams::Namespace) -> anyhow::Result<Self> {
        Ok(Self {
            conn: contract::redis::commands(&contract::redis::client(redis_url)?)?,
            ns: ns.clone(),
        })
    }

    /// The counts now (`XINFO STREAM` and `XINFO GROUPS` of every stream).
    pub async fn counts(&self) -> anyhow::Result<StreamCounts> {
        let mut c = StreamCounts::default();
        for stream in self.survey().await? {
            c.added += stream.added;
            for g in &stream.groups {
                c.read += g.read;
                c.unread += g.unread;
            }
        }
        Ok(c)
    }

    /// Every stream's entries added, and each of its groups' counts.
    pub async fn survey(&self) -> anyhow::Result<Vec<StreamSurvey>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for name in contract::streams::Stream::ALL
            .into_iter()
            .flat_map(|s| self.ns.stream_keys(s))
        {
            let info: redis::Value = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .unwrap_or(redis::Value::Nil);
            let added = field_u64(info, "entries-added");
            let groups: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let groups = groups
                .into_iter()
                .map(|g| {
                    let fields = contract::redis::fields_of(g);
                    let number = |f: &str| fields.get(f).and_then(|n| n.parse::<u64>().ok());
                    let read = number("entries-read").unwrap_or(0);
                    GroupCounts {
                        name: fields.get("name").cloned().unwrap_or_default(),
                        read,
                        unread: number("lag").unwrap_or_else(|| added.saturating_sub(read)),
                        pending: number("pending").unwrap_or(0),
                    }
                })
                .collect();
            out.push(StreamSurvey {
                stream: name,
                added,
                groups,
            });
        }
        Ok(out)
    }
}

/// One stream in a [`Streams::survey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSurvey {
    /// Its key.
    pub stream: String,
    /// Entries ever added.
    pub added: u64,
    /// Its consumer groups.
    pub groups: Vec<GroupCounts>,
}

/// One consumer group's counts (`XINFO GROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCounts {
    /// The group's name.
    pub name: String,
    /// Entries it has read.
    pub read: u64,
    /// Entries it has not read yet (its `lag`; where Redis cannot tell it,
    /// added minus read).
    pub unread: u64,
    /// Entries it has read and not acknowledged.
    pub pending: u64,
}

/// A number field of an `XINFO` reply.
fn field_u64(reply: redis::Value, name: &str) -> u64 {
    contract::redis::fields_of(reply)
        .get(name)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The fan-out phase: stops the simulator, places the orders, measures.
async fn fan_out(
    cluster: &Cluster,
    http: &reqwest::Client,
    order_urls: &[String],
    items: &[String],
    cfg: &BenchConfig,
) -> anyhow::Result<fanout::Fanout> {
    for r in 0..cluster.replicas {
        cluster.kill(Svc::Simulator, r).await?;
    }
    let (placed, errors) = place_many(
        http,
        order_urls,
        items,
        cfg.fanout_orders,
        cfg.concurrency,
        "fanout",
    )
    .await;
    if errors > 0 {
        bail!("{errors} fan-out orders were not accepted");
    }
    let orders: fanout::Orders = placed
        .into_iter()
        .map(|(id, token, _)| (id, token))
        .collect();
    let notify = cluster.url(Svc::NotifySvc, 0).context("no notify-svc")?;
    let pid = cluster
        .pids()
        .into_iter()
        .find(|(name, _)| name.starts_with("notify-svc"))
        .map(|(_, pid)| pid)
        .context("no notify-svc process")?;
    // Let notify-svc record the created events first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ws_base = notify.replacen("http://", "ws://", 1);
    let fan = fanout::measure(
        &ws_base,
        pid,
        &cluster.redis.url(),
        &cluster.namespace(),
        &orders,
        cfg.fanout_sockets,
    )
    .await?;
    print!("{fan}");
    Ok(fan)
}

/// How the paused step is labelled, live and in the report.
const PAUSED: &str = "(the simulator paused: no pipeline behind it)";

/// The ladder's c=1 again with every simulator replica paused (SIGSTOP), so
/// no order moves on: the orders' delivery stops competing with creation
/// for the two cores and the database. The pipeline catches up afterwards.
async fn alone(
    cluster: &Cluster,
    http: &reqwest::Client,
    load: &rates::Load,
    orders: &mongodb::Collection<bson::Document>,
    cfg: &BenchConfig,
) -> anyhow::Result<rates::Step> {
    for r in 0..cfg.replicas {
        cluster.pause(Svc::Simulator, r)?;
    }
    rates::counted(orders, || async {
        let step = rates::closed_loop(http, load, "alone", 1, cfg.step).await;
        for r in 0..cfg.replicas {
            cluster.resume(Svc::Simulator, r)?;
        }
        println!("{step}  {PAUSED}");
        Ok(step)
    })
    .await
}

async fn wait_delivered(
    orders: &mongodb::Collection<bson::Document>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let open = orders
            .count_documents(bson::doc! { "status": { "$ne": "delivered" } })
            .await?;
        if open == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{open} orders not delivered after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = Percentiles::of((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (p.n, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert!(Percentiles::of(vec![]).p50.is_nan());
        assert_eq!(Percentiles::of(vec![3.0]).p99, 3.0);
    }
}
