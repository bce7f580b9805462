//! Which replica of a service reads which partition of its streams.
//!
//! With `STREAM_PARTITIONS = P` each stream is `P` keys (see
//! [`contract::streams::Namespace`]). A service runs, per partition, one
//! consumer per stream it reads (and, for the simulator, the timer loop of
//! the partition): the partition's *workers*. Its consumer group must cover
//! every partition, and for the sake of each order's ordering a partition
//! should be read by one replica of the group at a time (two would still be
//! correct, every effect being guarded, but could take one order's events
//! out of order and defer them).
//!
//! * **One partition** (the default): every replica runs the workers of the
//!   one partition, as before partitions existed; the consumer group shares
//!   the stream's messages among them.
//! * **Several partitions: leases.** A replica runs the workers of the
//!   partitions whose lease it holds ([`Lease`] at
//!   `<prefix>partitions:<group>:lease:{p<i>}`, `PARTITION_LEASE_MS`). Every
//!   third of the TTL it renews its membership in the sorted set
//!   `<prefix>partitions:<group>:members` (scored by Redis's own clock, so
//!   the replicas' clocks do not matter), counts the live members `n`, and
//!   aims for `ceil(P / n)` partitions: it renews the leases it holds, gives
//!   up those above its share (stops their workers, waits for them to drain,
//!   then releases the lease), and takes free ones up to its share, trying
//!   them from an offset of its own so that replicas starting together do
//!   not all try the same. A dead replica stops renewing: its leases expire
//!   and the survivors take them, whose consumers then take over what it
//!   left pending (`XAUTOCLAIM` after `RECLAIM_MIN_IDLE_MS`, as for any dead
//!   consumer). A replica that stops gracefully releases its leases and
//!   leaves the member set, so the others take over within a third of the
//!   TTL. A replica that cannot renew a lease for a whole TTL (Redis
//!   unreachable) stops that partition's workers, since another replica may
//!   hold it by then.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use contract::redis::Conn;
use redis::Script;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::{consumer::LoopStatus, lease::Lease, mongo::BoxFuture};

/// Records `partitions` as this deployment's partition count (the key of
/// [`contract::streams::partitions_key`], set if absent) and checks that it
/// is the count already recorded. Services split differently would publish
/// to keys the others do not read, so a service configured with another
/// count must not start: the error says what to do.
pub async fn check_recorded(conn: &mut Conn, prefix: &str, partitions: u16) -> Result<(), String> {
    let key = contract::streams::partitions_key(prefix);
    let (recorded,): (Option<u16>,) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(partitions)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| format!("could not read {key}: {e}"))?;
    match recorded {
        Some(n) if n != partitions => Err(format!(
            "STREAM_PARTITIONS={partitions}, but this deployment's streams are split into {n} \
             (Redis key {key}): every service, dlq and chaos check must use the same count; \
             changing it means draining first (docs/scaling.md §2)"
        )),
        _ => Ok(()),
    }
}

/// What a worker of one partition is: started with the partition and a
/// token that stops it (a child of the shutdown token).
pub(crate) type Worker =
    Arc<dyn Fn(u16, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// Adds `ARGV[1]` to the member set `KEYS[1]` until Redis's now + `ARGV[2]`
/// ms, drops members past their time, and returns how many are left.
static HEARTBEAT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
",
    )
});

/// The partitions of one consumer group, as this replica runs them.
pub(crate) struct Assignment {
    group: String,
    partitions: u16,
    conn: Conn,
    members_key: String,
    me: String,
    ttl: Duration,
    leases: Vec<Lease>,
    workers: Vec<Worker>,
    /// Readiness of the group's streams (aggregates of their loops).
    statuses: Vec<LoopStatus>,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("group", &self.group)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// The workers of one partition this replica runs.
struct Running {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Last time its lease was renewed (or taken).
    renewed: tokio::time::Instant,
}

impl Running {
    /// Stops the workers and waits until they have drained.
    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Partitions whose workers are stopping, before their lease is released.
#[derive(Default)]
struct Releasing {
    tasks: JoinSet<u16>,
    partitions: std::collections::BTreeSet<u16>,
}

impl Releasing {
    fn add(&mut self, p: u16, running: Running) {
        self.partitions.insert(p);
        self.tasks.spawn(async move {
            running.stop().await;
            p
        });
    }

    fn has(&self, p: u16) -> bool {
        self.partitions.contains(&p)
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next partition whose workers have stopped.
    async fn next(&mut self) -> Option<u16> {
        loop {
            match self.tasks.join_next().await? {
                Ok(p) => {
                    self.partitions.remove(&p);
                    return Some(p);
                }
                // Aborted (only when the whole assignment is dropped).
                Err(_) => continue,
            }
        }
    }
}

impl Assignment {
    /// The assignment of `group`'s partitions among the replicas (each
    /// named by its consumer name `me`), running `workers` for each
    /// partition held. `statuses` are marked running while it runs.
    pub(crate) fn new(
        conn: Conn,
        ns: &contract::streams::Namespace,
        group: &str,
        me: &str,
        ttl: Duration,
        workers: Vec<Worker>,
        statuses: Vec<LoopStatus>,
    ) -> Self {
        let leases = ns
            .partition_range()
            .map(|p| Lease::new(ns.key_at(&format!("partitions:{group}:lease"), p), me, ttl))
            .collect();
        Self {
            group: group.to_owned(),
            partitions: ns.partitions(),
            conn,
            members_key: ns.key(&format!("partitions:{group}:members")),
            me: me.to_owned(),
            ttl,
            leases,
            workers,
            statuses,
        }
    }

    fn start(&self, p: u16, shutdown: &CancellationToken) -> Running {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        for worker in &self.workers {
            tasks.spawn(worker(p, stop.clone()).instrument(info_span!("partition", partition = p)));
        }
        Running {
            stop,
            tasks,
            renewed: tokio::time::Instant::now(),
        }
    }

    /// Runs until `shutdown` is cancelled, then stops every worker (each
    /// drains what it holds) and hands its partitions back.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        if self.partitions == 1 {
            let running = self.start(0, &shutdown);
            self.set_running(true);
            shutdown.cancelled().await;
            running.stop().await;
        } else {
            self.run_leased(&shutdown).await;
        }
        self.set_running(false);
    }

    /// Readiness: the group's streams count as up once the partitions this
    /// replica reads are known (and then while each loop it runs is up).
    fn set_running(&self, running: bool) {
        self.statuses.iter().for_each(|s| s.set_running(running));
    }

    async fn run_leased(&self, shutdown: &CancellationToken) {
        let mut held: BTreeMap<u16, Running> = BTreeMap::new();
        // Partitions given up (or lost), draining before their lease is
        // released; not taken again until then.
        let mut releasing = Releasing::default();
        let round_every = self.ttl / 3;
        info!(group = %self.group, partitions = self.partitions, "partition assignment started");
        while !shutdown.is_cancelled() {
            if self.round(&mut held, &mut releasing, shutdown).await {
                self.set_running(true);
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(round_every) => {}
                Some(p) = releasing.next(), if !releasing.is_empty() => {
                    self.released(p).await;
                }
            }
        }
        // Drain everything, then hand the partitions back at once.
        futures::future::join_all(held.into_values().map(Running::stop)).await;
        while releasing.next().await.is_some() {}
        let mut conn = self.conn.clone();
        for lease in &self.leases {
            let _ = lease.release(&mut conn).await;
        }
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(&self.members_key)
            .arg(&self.me)
            .query_async(&mut conn)
            .await;
        info!(group = %self.group, "partition assignment stopped; partitions released");
    }

    async fn released(&self, p: u16) {
        let _ = self.leases[usize::from(p)]
            .release(&mut self.conn.clone())
            .await;
        info!(group = %self.group, partition = p, "partition handed over");
    }

    /// One round: membership, renewals, giving up above the share, taking
    /// free partitions below it. `false` when Redis did not answer the
    /// membership.
    async fn round(
        &self,
        held: &mut BTreeMap<u16, Running>,
        releasing: &mut Releasing,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut conn = self.conn.clone();
        let members = HEARTBEAT
            .key(&self.members_key)
            .arg(&self.me)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async::<u16>(&mut conn)
            .await;
        // Renew what is held; a lease lost (or not renewed for a whole TTL)
        // stops its workers: another replica may read the partition now.
        let mut lost = Vec::new();
        for (p, running) in held.iter_mut() {
            match self.leases[usize::from(*p)].renew(&mut conn).await {
                Ok(true) => running.renewed = tokio::time::Instant::now(),
                Ok(false) => lost.push(*p),
                Err(e) => {
                    if running.renewed.elapsed() >= self.ttl {
                        lost.push(*p);
                    }
                    warn!(group = %self.group, partition = p, error = %e, "could not renew a partition lease");
                }
            }
        }
        for p in lost {
            if let Some(running) = held.remove(&p) {
                warn!(group = %self.group, partition = p, "partition lease lost; stopping its workers");
                // "Released" once stopped: a no-op, the script checks the
                // holder, and the partition is not taken again before.
                releasing.add(p, running);
            }
        }
        let members = match members {
            Ok(n) => n.max(1),
            Err(e) => {
                warn!(group = %self.group, error = %e, "partition membership failed; keeping what is held");
                return false;
            }
        };
        let share = usize::from(self.partitions.div_ceil(members));
        // Above the share (others joined): give up the highest partitions.
        while held.len() > share {
            let Some((p, running)) = held.pop_last() else {
                break;
            };
            info!(group = %self.group, partition = p, members, share, "giving up a partition to another replica");
            releasing.add(p, running);
        }
        // Below the share: take free partitions, from an offset of our own.
        if held.len() < share {
            let offset = self.offset();
            for i in 0..self.partitions {
                if held.len() >= share {
                    break;
                }
                let p = (offset + i) % self.partitions;
                if held.contains_key(&p) || releasing.has(p) {
                    continue;
                }
                match self.leases[usize::from(p)].acquire(&mut conn).await {
                    Ok(true) => {
                        info!(group = %self.group, partition = p, members, share, "partition taken");
                        held.insert(p, self.start(p, shutdown));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(group = %self.group, partition = p, error = %e, "could not take a partition lease");
                        break;
                    }
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("partitions_held", "group" => self.group.clone()).set(held.len() as f64);
        true
    }

    /// Where this replica starts looking for free partitions.
    fn offset(&self) -> u16 {
        u16::try_from(contract::streams::key_hash(&self.me) % u64::from(self.partitions))
            .unwrap_or(0)
    }
}
