//! The faults, and how each is injected and measured.

use std::time::{Duration, Instant};

use anyhow::Context;

use contract::streams::Stream;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    cluster::{Cluster, Svc},
    load::AcceptedBy,
};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 the order-svc replica that just answered 201.
    KillOrderAfterAccept,
    /// kill -9 the replica holding an outbox relay lease.
    KillRelayHolder,
    /// kill -9 a delivery-svc replica while orders flow.
    KillDeliveryMidBatch,
    /// kill -9 a notify-svc replica with trackers connected.
    KillNotifyWithTrackers,
    /// kill -9 a simulator replica while timers are pending.
    KillSimulatorWithTimers,
    /// SIGSTOP a consumer replica past the reclaim idle time, then SIGCONT.
    PauseConsumer,
    /// Graceful restart of Redis.
    RestartRedis,
    /// Graceful restart of MongoDB.
    RestartMongo,
    /// Malformed messages into every event stream.
    Poison,
    /// kill -9 of Redis (with the configured appendfsync), then start it again.
    KillRedis,
    /// What an OS crash does under `appendfsync everysec`: kill -9 Redis and
    /// drop the AOF tail written during the last second (never fsynced).
    LoseRedisLastSecond,
    /// With `--redis-cluster`: kill -9 of the primary holding the streams;
    /// its replica is promoted; the node comes back as a replica.
    KillRedisPrimary,
}

impl Fault {
    /// The faults of a standard run (every kind but `kill-redis`, which has
    /// its own scenario: it may break invariants by design).
    pub const STANDARD: [Fault; 9] = [
        Fault::KillOrderAfterAccept,
        Fault::KillRelayHolder,
        Fault::KillDeliveryMidBatch,
        Fault::KillNotifyWithTrackers,
        Fault::KillSimulatorWithTimers,
        Fault::PauseConsumer,
        Fault::RestartRedis,
        Fault::RestartMongo,
        Fault::Poison,
    ];

    /// The standard faults, on one Redis or on a Redis Cluster (where the
    /// streams' primary is killed instead of Redis restarted gracefully).
    pub fn standard(redis_cluster: bool) -> Vec<Fault> {
        Self::STANDARD
            .into_iter()
            .map(|f| match f {
                Fault::RestartRedis if redis_cluster => Fault::KillRedisPrimary,
                f => f,
            })
            .collect()
    }
}

/// One injected fault and how the system took it.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// What.
    pub fault: Fault,
    /// Seconds after the load started.
    pub at_secs: f64,
    /// Which part.
    pub target: String,
    /// From the fault until every replica answered ready again.
    pub recovery_secs: Option<f64>,
    /// Anything worth saying.
    pub note: String,
}

/// A schedule: `count` faults drawn from `kinds`, each kind at least once
/// (as far as `count` allows), in a seeded random order.
pub fn schedule(kinds: &[Fault], count: usize, seed: u64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut out: Vec<Fault> = kinds.iter().copied().cycle().take(count).collect();
    out.shuffle(&mut rng);
    out
}

/// Injects one fault; waits for the system to be ready again.
pub async fn inject(
    cluster: &Cluster,
    conn: &mut contract::redis::Conn,
    fault: Fault,
    accepted: &mut mpsc::UnboundedReceiver<AcceptedBy>,
    poison: &mut Vec<(Stream, String)>,
    rng: &mut StdRng,
    load_started: Instant,
) -> anyhow::Result<Injected> {
    let at_secs = load_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut note = String::new();
    let target = match fault {
        Fault::KillOrderAfterAccept => {
            while accepted.try_recv().is_ok() {}
            let by = tokio::time::timeout(Duration::from_secs(30), accepted.recv())
                .await
                .ok()
                .flatten();
            let replica = by
                .and_then(|b| {
                    (0..cluster.replicas)
                        .find(|r| cluster.url(Svc::OrderSvc, *r).as_deref() == Some(b.url.as_str()))
                })
                .unwrap_or(0);
            kill_and_restart(cluster, Svc::OrderSvc, replica, rng).await?
        }
        Fault::KillRelayHolder => {
            let svc = if rng.random_bool(0.5) {
                Svc::OrderSvc
            } else {
                Svc::DeliverySvc
            };
            let replica = cluster.lease_holder(conn, svc).await.unwrap_or(0);
            note = format!("held the {} outbox lease", svc.name());
            kill_and_restart(cluster, svc, replica, rng).await?
        }
        Fault::KillDeliveryMidBatch => {
            let replica = rng.random_range(0..cluster.replicas);
            kill_and_restart(cluster, Svc::DeliverySvc, replica, rng).await?
        }
        Fault::KillNotifyWithTrackers => {
            // Wait (up to 20 s) for a replica that has trackers connected.
            let wait_until = Instant::now() + Duration::from_secs(20);
            let (replica, sessions) = loop {
                let best = busiest_notify(cluster).await.unwrap_or((0, 0.0));
                if best.1 > 0.0 || Instant::now() > wait_until {
                    break best;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            note = format!("{sessions} tracker(s) connected");
            kill_and_restart(cluster, Svc::NotifySvc, replica, rng).await?
        }
        Fault::KillSimulatorWithTimers => {
            let ns = cluster.namespace();
            let mut pending = 0;
            for p in ns.partition_range() {
                pending += redis::cmd("ZCARD")
                    .arg(ns.key_at("simulator:timers", p))
                    .query_async::<usize>(conn)
                    .await
                    .unwrap_or(0);
            }
            note = format!("{pending} timer(s) pending");
            let replica = rng.random_range(0..cluster.replicas);
            kill_and_restart(cluster, Svc::Simulator, replica, rng).await?
        }
        Fault::PauseConsumer => {
            let svc = [Svc::DeliverySvc, Svc::OrderSvc, Svc::NotifySvc][rng.random_range(0..3)];
            let replica = rng.random_range(0..cluster.replicas);
            cluster.pause(svc, replica)?;
            // Past RECLAIM_MIN_IDLE_MS (2 s): its pending messages are taken over.
            let pause = Duration::from_millis(rng.random_range(4500..7000));
            tokio::time::sleep(pause).await;
            cluster.resume(svc, replica)?;
            note = format!("stopped {:.1}s", pause.as_secs_f64());
            format!("{}/{replica}", svc.name())
        }
        Fault::RestartRedis => {
            cluster.redis.single()?.restart().await;
            "redis".into()
        }
        Fault::RestartMongo => {
            cluster.mongo.restart().await;
            "mongodb".into()
        }
        Fault::KillRedis => {
            let redis = cluster.redis.single()?;
            redis.kill().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.restart().await;
            "redis (kill -9)".into()
        }
        Fault::KillRedisPrimary => {
            let partition = rng.random_range(0..cluster.partitions);
            let (target, promoted) = kill_primary(cluster, conn, partition).await?;
            note = format!("replica promoted in {promoted:.1}s; the node rejoined as a replica");
            target
        }
        Fault::LoseRedisLastSecond => {
            let (file, size) = aof_size_a_second_ago(cluster).await?;
            let redis = cluster.redis.single()?;
            redis.kill().await;
            let before = std::fs::metadata(&file)?.len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)?
                .set_len(size)?;
            note = format!("dropped the last {} AOF bytes", before.saturating_sub(size));
            redis.restart().await;
            "redis (OS crash)".into()
        }
        Fault::Poison => {
            let ns = cluster.namespace();
            for (i, stream) in Stream::ALL
                .into_iter()
                .filter(|s| *s != Stream::DeadLetters)
                .enumerate()
            {
                // Spread over the partitions (poison has no ordering key).
                let p = u16::try_from(i).unwrap_or(0) % ns.partitions();
                let mut xadd = redis::cmd("XADD");
                xadd.arg(ns.stream_at(stream, p))
                    .arg("*")
                    .arg("poison")
                    .arg(format!("injected at {at_secs:.1}s"));
                // After a Redis restart the driver's connection fails its
                // first command and reconnects: try again before giving up.
                let mut attempt = 0;
                let id: String = loop {
                    attempt += 1;
                    match xadd.query_async(conn).await {
                        Ok(id) => break id,
                        Err(e) if attempt < 5 => {
                            tracing::debug!(error = %e, "poison XADD failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                poison.push((stream, id));
            }
            note = "one malformed message per event stream".into();
            "every stream".into()
        }
    };
    let recovery = cluster
        .wait_all_ready(Duration::from_secs(120))
        .await
        .ok()
        .map(|_| started.elapsed().as_secs_f64());
    Ok(Injected {
        fault,
        at_secs,
        target,
        recovery_secs: recovery,
        note,
    })
}

/// The incremental AOF file and its size one second ago.
async fn aof_size_a_second_ago(cluster: &Cluster) -> anyhow::Result<(std::path::PathBuf, u64)> {
    let dir = cluster.redis.single()?.dir().join("appendonlydir");
    let file = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max()
        .ok_or_else(|| anyhow::anyhow!("no incremental AOF in {}", dir.display()))?;
    let size = std::fs::metadata(&file)?.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((file, size))
}

/// Kills (-9) the primary that holds the hash slot of partition
/// `partition`'s streams (all of them, with one partition), waits
/// until a replica took its slots over, restarts the node and waits until
/// it follows as a replica. Returns the target and the seconds until the
/// promotion.
async fn kill_primary(
    cluster: &Cluster,
    conn: &mut contract::redis::Conn,
    partition: u16,
) -> anyhow::Result<(String, f64)> {
    let bus = cluster.redis.cluster()?;
    let key = cluster.namespace().stream_at(Stream::Orders, partition);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(conn)
        .await?;
    let mut victim = None;
    for (i, node) in bus.nodes().iter().enumerate() {
        if owns_slot(node, slot).await {
            victim = Some(i);
        }
    }
    let victim = victim.context("no primary owns the partition's slot")?;
    let node = &bus.nodes()[victim];
    node.kill().await;
    let killed = Instant::now();
    // A replica takes the slot over once the others agree the node failed
    // (cluster-node-timeout 2 s).
    let promoted = loop {
        let mut found = false;
        for (i, other) in bus.nodes().iter().enumerate() {
            if i != victim && owns_slot(other, slot).await {
                found = true;
            }
        }
        if found {
            break killed.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no replica took slot {slot} over within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    node.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = node.info("replication").await.unwrap_or_default();
        if info.contains("role:slave") && info.contains("master_link_status:up") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the killed primary did not rejoin as a replica: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.wait_ok().await;
    Ok((
        format!(
            "redis node :{} (slot {slot}, partition {partition})",
            node.port()
        ),
        promoted,
    ))
}

/// Whether `node` is a primary that serves `slot`, by its own account.
async fn owns_slot(node: &testkit::RedisServer, slot: i64) -> bool {
    let (Some(info), Some(nodes)) = (node.info("replication").await, node.cluster_nodes().await)
    else {
        return false;
    };
    let Some(mine) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    info.contains("role:master") && mine.split_whitespace().skip(8).any(|range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        matches!((a.parse::<i64>(), b.parse::<i64>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
    })
}

async fn kill_and_restart(
    cluster: &Cluster,
    svc: Svc,
    replica: usize,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let target = format!("{}/{replica}", svc.name());
    cluster.kill(svc, replica).await?;
    // Down for a moment, as a crashed pod is before it is replaced.
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..2000))).await;
    cluster.restart(svc, replica).await?;
    Ok(target)
}

/// The notify replica with the most open WebSockets, and how many.
async fn busiest_notify(cluster: &Cluster) -> Option<(usize, f64)> {
    let mut best = None;
    for r in 0..cluster.replicas {
        let Some(url) = cluster.url(Svc::NotifySvc, r) else {
            continue;
        };
        let Ok(resp) = cluster.http.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let text = resp.text().await.unwrap_or_default();
        let sessions: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("websocket_sessions "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if best.is_none_or(|(_, s)| sessions > s) {
            best = Some((r, sessions));
        }
    }
    best
}
