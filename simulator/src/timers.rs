//! Durable timers: the simulated kitchen and courier.
//!
//! A pending step is a member of a Redis sorted set scored by its due time
//! in milliseconds, one set per partition (`<prefix>simulator:timers`, or
//! `<prefix>simulator:timers:{p<i>}` with several partitions: the slot of
//! the order's streams, so a script may touch both), so timers survive a
//! restart of the simulator and any replica can fire them. A replica fires
//! the sets of the partitions it reads (`common::partition`): with one
//! partition every replica fires the one set.
//!
//! * **Starting** a simulation (one script): set a marker
//!   `<prefix>simulator:started:<kind>:<id>` with `NX` (kept 7 days) and only if
//!   it was not there add the first step. A redelivered request therefore
//!   never starts a second simulation. A first step without delay fires
//!   in the same round trip (the firing script pipelined after the start),
//!   instead of waiting for the loop to look.
//! * **Firing** a due step (one script): only if the member is still in the
//!   set, `XADD` the status event, `ZREM` the member and `ZADD` the next step.
//!   Publication, removal and scheduling are one atomic unit: a crash cannot
//!   publish a step twice or lose the rest of the chain, and two replicas
//!   racing for a timer publish it once. The `XADD` comes first because it is
//!   the command Redis refuses at its memory ceiling (`noeviction`): the
//!   script then fails before it has removed anything, and the step fires
//!   later. The steps due at one look go out as one pipeline of these
//!   scripts: one round trip and one AOF write for the lot, instead of one
//!   fsync per step, which had made the timer loop the pipeline's
//!   bottleneck (docs/performance.md).
//! * **Rejecting**: at the confirm step, the kitchen refuses the order with
//!   probability `SIMULATOR_REJECT_RATE`, drawn from `SIMULATOR_SEED` and the
//!   order id, so a run with the same seed rejects the same orders, whatever
//!   the timing. A rejection publishes `status: rejected` with a reason and
//!   ends the chain.
//! * **Dropping**: when an order is cancelled or rejected, its pending timer
//!   is removed (the hash `<prefix>simulator:timer-of` indexes the pending
//!   member of each chain), and its "started" marker is set, so a simulation
//!   request that arrives after the cancellation starts nothing.
//! * **Waking**: the loop sleeps until the earliest due step or the poll
//!   interval, whichever is sooner, and a chain started by this process wakes
//!   it at once (with zero delays a step is due the moment it starts).

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use contract::redis::Conn;
use contract::{
    DeliveryId, Envelope, OrderId,
    events::{DeliveryStatusChanged, Event, OrderStatusChanged},
    status::{DeliveryStatus, HANDOVER, Lifecycle, OrderStatus},
    streams::{Namespace, Stream},
};
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::settings::{Delays, Kitchen};

/// Which lifecycle a timer drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The kitchen: confirmed, preparing, out_for_delivery.
    Order,
    /// The courier: on_the_way, delivered.
    Delivery,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Delivery => "delivery",
        }
    }

    /// How many steps this lifecycle's chain fires.
    fn steps(self) -> usize {
        match self {
            Kind::Order => kitchen_steps().len(),
            Kind::Delivery => courier_steps().len(),
        }
    }
}

/// The statuses the kitchen moves an order to, in order: from `created` up
/// to handing it to a courier (the courier's `delivered` moves it on after).
fn kitchen_steps() -> &'static [OrderStatus] {
    let handover = HANDOVER.rank().expect("the handover is on the order flow");
    &OrderStatus::FLOW[1..=handover]
}

/// The statuses the courier moves a delivery to, in order: all after the first.
fn courier_steps() -> &'static [DeliveryStatus] {
    &DeliveryStatus::FLOW[1..]
}

/// Due timers fired per look at the set; more wait for the next look, which
/// comes at once when this many were due.
const FIRE_BATCH: usize = 200;

/// One pending step (the sorted-set member, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// Lifecycle.
    pub kind: Kind,
    /// Order id or delivery id.
    pub id: String,
    /// The order (envelope key).
    pub order_id: OrderId,
    /// Carried into every event of the chain.
    pub correlation_id: String,
    /// Index of the step this timer fires.
    pub step: usize,
}

const STARTED_TTL_SECS: u64 = 7 * 24 * 3600;

/// KEYS: started marker, timer set, timer index. ARGV: marker TTL, due,
/// member, index field.
static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
  return 1
end
return 0
",
    )
});

/// KEYS: timer set, stream, timer index. ARGV: member, next member (empty:
/// the chain ends), next due, index field, then each event to publish, in
/// order, as its field count followed by its fields (the due step's, and
/// those of the steps after it that are due at once). The stream is not
/// trimmed here (see `common::trim`). At Redis's memory ceiling the first
/// XADD fails: the script errors before it has written anything, so the
/// step stays due and fires once there is room. Redis refuses a script for
/// memory only before its first write, so the later XADDs of the same
/// script cannot fail that way (and a script's writes are one unit in the
/// AOF and on replicas).
static FIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
else
  redis.call('HDEL', KEYS[3], ARGV[4])
end
return 1
",
    )
});

/// KEYS: started marker, timer set, timer index. ARGV: marker TTL, index
/// field. Returns how many timers it removed (0 or 1).
static DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
local member = redis.call('HGET', KEYS[3], ARGV[2])
if not member then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
return redis.call('ZREM', KEYS[2], member)
",
    )
});

/// What one `FIRE` publishes: the due step's timer, and the type of each
/// event, from that step on.
type Fired = (Timer, Vec<String>);

/// The log lines of the steps a `FIRE` published.
fn log_fired((timer, types): &Fired) {
    for (step, event_type) in (timer.step..).zip(types) {
        info!(kind = timer.kind.name(), id = %timer.id, order_id = %timer.order_id, step, event_type = %event_type, "simulated step");
    }
}

/// Why the simulated kitchen refuses an order (one, chosen by the draw).
const REJECTIONS: [&str; 3] = [
    "the kitchen is out of an ingredient",
    "the kitchen is closing",
    "too many orders in the kitchen right now",
];

/// The timer set and how to fire it.
#[derive(Clone)]
pub struct Timers {
    conn: Conn,
    ns: Namespace,
    delays: Delays,
    source: String,
    poll: Duration,
    kitchen: Kitchen,
    /// Wakes this process's timer loop of a partition when a chain starts
    /// there, so a step due now does not wait for the next poll.
    started: Arc<[Notify]>,
    /// Whether the scripts ran here without `NOSCRIPT` last time (see
    /// [`Timers::scripts`]).
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers")
            .field("ns", &self.ns)
            .field("delays", &self.delays)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Timers {
    /// Timers of namespace `ns` (a set per partition), publishing as `source`.
    pub fn new(conn: Conn, ns: Namespace, delays: Delays, source: &str) -> Self {
        Self {
            started: ns.partition_range().map(|_| Notify::new()).collect(),
            loaded: Arc::default(),
            conn,
            ns,
            delays,
            source: source.to_owned(),
            poll: Duration::from_millis(100),
            kitchen: Kitchen {
                reject_rate: 0.0,
                seed: 0,
            },
        }
    }

    /// Sets what the kitchen refuses (default: nothing).
    pub fn with_kitchen(mut self, kitchen: Kitchen) -> Self {
        self.kitchen = kitchen;
        self
    }

    /// The timer set of partition `p`.
    pub fn set_key(&self, p: u16) -> String {
        self.ns.key_at("simulator:timers", p)
    }

    /// The index of partition `p`'s pending members, by chain.
    fn index_key(&self, p: u16) -> String {
        self.ns.key_at("simulator:timer-of", p)
    }

    fn started_key(&self, p: u16, kind: Kind, id: &str) -> String {
        format!(
            "{}:{}:{id}",
            self.ns.key_at("simulator:started", p),
            kind.name()
        )
    }

    /// Field of a chain in the timer index.
    fn index_field(kind: Kind, id: &str) -> String {
        format!("{}:{id}", kind.name())
    }

    /// Stops the kitchen of a cancelled (or rejected) order: removes its
    /// pending timer, and marks it started so a late request starts nothing.
    /// Returns whether a timer was pending.
    pub async fn drop_order(&self, order_id: OrderId) -> redis::RedisResult<bool> {
        let id = order_id.to_string();
        let p = self.ns.partition_of(&id);
        let removed: i64 = DROP
            .key(self.started_key(p, Kind::Order, &id))
            .key(self.set_key(p))
            .key(self.index_key(p))
            .arg(STARTED_TTL_SECS)
            .arg(Self::index_field(Kind::Order, &id))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    fn delay(&self, kind: Kind, step: usize) -> Duration {
        let base = match kind {
            Kind::Order => self.delays.order.get(step),
            Kind::Delivery => self.delays.delivery.get(step),
        };
        self.delays.actual(base.copied().unwrap_or_default())
    }

    /// Starts a simulation unless one was already started for `(kind, id)`.
    ///
    /// When the first step is due at once (no delay), it fires in the same
    /// round trip: the pipeline runs `START` and then that step's `FIRE`,
    /// each its own atomic script as in the timer loop, so the step costs no
    /// trip through the loop. `FIRE` finds the step only if it is still
    /// pending (a start that found the chain dropped, or fired already,
    /// fires nothing); one it cannot fire (Redis's memory ceiling) stays due
    /// for the loop.
    pub async fn start(
        &self,
        kind: Kind,
        id: &str,
        order_id: OrderId,
        correlation_id: &str,
    ) -> redis::RedisResult<bool> {
        let first = Timer {
            kind,
            id: id.to_owned(),
            order_id,
            correlation_id: correlation_id.to_owned(),
            step: 0,
        };
        let member = serde_json::to_string(&first)
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?;
        let delay = self.delay(kind, 0);
        // The partition of the order, as its events' streams.
        let p = self.ns.partition_of(&order_id.to_string());
        let mut start = START.key(self.started_key(p, kind, id));
        start
            .key(self.set_key(p))
            .key(self.index_key(p))
            .arg(STARTED_TTL_SECS)
            .arg(now_ms() + millis(delay))
            .arg(&member)
            .arg(Self::index_field(kind, id));
        let fire_now = if delay.is_zero() {
            self.step(p, &member)
        } else {
            None
        };
        let started = match fire_now {
            None => start.invoke_async::<i64>(&mut self.conn.clone()).await? == 1,
            Some((step, fire)) => {
                let mut replies = self
                    .scripts(|pipe| {
                        pipe.invoke_script(&start).invoke_script(&fire);
                    })
                    .await?;
                let fired = replies.pop().unwrap_or(Ok(redis::Value::Nil));
                let started = replies.pop().unwrap_or(Ok(redis::Value::Nil));
                let started = redis::from_redis_value::<i64>(started?)? == 1;
                match fired.and_then(|v| Ok(redis::from_redis_value::<i64>(v)?)) {
                    Ok(1) => log_fired(&step),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "the first step could not fire with its start; the timer loop will fire it")
                    }
                }
                started
            }
        };
        if started && let Some(wake) = self.started.get(usize::from(p)) {
            wake.notify_one();
        }
        Ok(started)
    }

    /// How many steps are waiting, in every partition.
    pub async fn pending(&self) -> redis::RedisResult<usize> {
        let mut total = 0;
        for p in self.ns.partition_range() {
            total += redis::cmd("ZCARD")
                .arg(self.set_key(p))
                .query_async::<usize>(&mut self.conn.clone())
                .await?;
        }
        Ok(total)
    }

    /// Fires the due timers of partition `p` until `shutdown`.
    pub async fn run(self, p: u16, shutdown: CancellationToken) {
        info!(key = %self.set_key(p), "timer loop started");
        let poll = self.poll_interval();
        let Some(started) = self.started.get(usize::from(p)) else {
            error!(partition = p, "no such partition");
            return;
        };
        while !shutdown.is_cancelled() {
            if let Err(e) = self.fire_due(p).await {
                warn!(error = %e, "firing timers failed; retrying");
            }
            let wait = match self.next_due(p).await {
                Ok(Some(due)) => {
                    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(poll)
                }
                _ => poll,
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = started.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        info!("timer loop stopped");
    }

    fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// Sets the longest sleep between two looks at the set (default 100 ms).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    async fn next_due(&self, p: u16) -> redis::RedisResult<Option<i64>> {
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.set_key(p))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        #[allow(clippy::cast_possible_truncation)]
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    /// Fires every due timer of partition `p`; returns how many this call
    /// fired.
    ///
    /// The due steps go out in one pipeline, one `FIRE` script each: every
    /// step stays its own atomic unit, but a round is one round trip, and
    /// Redis writes (and with `appendfsync always` fsyncs) the whole round
    /// once instead of once per step. A step that fails (say `OOM` at the
    /// memory ceiling) stays due; the others of the round still fire.
    pub async fn fire_due(&self, p: u16) -> redis::RedisResult<usize> {
        let key = self.set_key(p);
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(FIRE_BATCH)
            .query_async(&mut self.conn.clone())
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut steps = Vec::with_capacity(due.len());
        let mut invocations = Vec::with_capacity(due.len());
        let mut unusable = Vec::new();
        for member in &due {
            match self.step(p, member) {
                Some((step, inv)) => {
                    steps.push(step);
                    invocations.push(inv);
                }
                None => unusable.push(member),
            }
        }
        let replies = self
            .scripts(|pipe| {
                for inv in &invocations {
                    pipe.invoke_script(inv);
                }
                if !unusable.is_empty() {
                    pipe.cmd("ZREM").arg(&key).arg(&unusable);
                }
            })
            .await?;
        let mut fired = 0;
        let mut failed = None;
        for (step, reply) in steps.iter().zip(replies) {
            match reply.and_then(|v| Ok(redis::from_redis_value::<i64>(v)?)) {
                Ok(1) => {
                    fired += step.1.len();
                    log_fired(step);
                }
                Ok(_) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(fired),
        }
    }

    /// Runs a pipeline of invocations of this module's scripts (`fill`
    /// adds them; `ignore_errors`: one reply each, errors included), so
    /// that a round or a start is one round trip. The scripts are loaded in
    /// the same pipeline only until this process has seen them run; a
    /// `NOSCRIPT` reply (Redis restarted empty, a failover to a node that
    /// never saw them, another cluster node) loads them and runs the whole
    /// pipeline once more, which every script here allows: `START` finds
    /// its marker, `FIRE` finds its step gone. Loading them every time cost
    /// four `SCRIPT LOAD`s per order (docs/performance.md).
    async fn scripts(
        &self,
        fill: impl Fn(&mut redis::Pipeline),
    ) -> redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> {
        let mut load = !self.loaded.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if load {
                pipe.load_script(&START).load_script(&FIRE);
            }
            fill(&mut pipe);
            let mut replies: Vec<redis::RedisResult<redis::Value>> =
                pipe.query_async(&mut self.conn.clone()).await?;
            if load {
                replies.drain(..2);
            }
            let missing = replies.iter().any(|r| {
                r.as_ref().is_err_and(|e| {
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                })
            });
            self.loaded
                .store(!missing, std::sync::atomic::Ordering::Relaxed);
            if !missing || load {
                return Ok(replies);
            }
            load = true;
        }
    }

    /// The `FIRE` invocation of a due member of partition `p`, with what to
    /// log once it fired; `None` for a member that can never fire
    /// (unreadable, or past the last step), which is then removed.
    ///
    /// The steps after the due one whose delay is zero go out in the same
    /// script, in order: with zero delays a chain is published whole by one
    /// script (one round trip, one AOF write), instead of one trip through
    /// the loop per step, and its events reach the consumers together, as
    /// one run of their key. The timer left pending is the first step that
    /// waits, if any.
    fn step(&self, p: u16, member: &str) -> Option<(Fired, redis::ScriptInvocation<'static>)> {
        let timer: Timer = match serde_json::from_str(member) {
            Ok(t) => t,
            Err(e) => {
                error!(member, error = %e, "dropping an unreadable timer");
                return None;
            }
        };
        let Some((stream, first)) = self.event_for(&timer) else {
            error!(member, "dropping a timer past the last step");
            return None;
        };
        let mut events = vec![first];
        let mut at = timer.clone();
        let (next, next_due) = loop {
            let last = events.last().map(|e| &e.payload["status"]);
            let rejected = last == Some(&OrderStatus::Rejected.as_str().into());
            if rejected || at.step + 1 >= at.kind.steps() {
                break (None, 0);
            }
            at.step += 1;
            let delay = self.delay(at.kind, at.step);
            let due_now = delay.is_zero().then(|| self.event_for(&at)).flatten();
            match due_now {
                Some((_, event)) => events.push(event),
                // Waits, or cannot be built (then the loop drops it).
                None => break (Some(at), now_ms() + millis(delay)),
            }
        };
        let next_member = next
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok())
            .unwrap_or_default();
        let mut inv = FIRE.key(self.set_key(p));
        inv.key(self.ns.stream_at(stream, p))
            .key(self.index_key(p))
            .arg(member)
            .arg(&next_member)
            .arg(next_due)
            .arg(Self::index_field(timer.kind, &timer.id));
        let mut types = Vec::with_capacity(events.len());
        for event in events {
            let fields = event.to_fields();
            inv.arg(fields.len() * 2);
            for (k, v) in fields {
                inv.arg(k).arg(v);
            }
            types.push(event.event_type);
        }
        Some(((timer, types), inv))
    }

    fn event_for(&self, t: &Timer) -> Option<(Stream, Envelope)> {
        fn envelope<E: Event>(e: &E, t: &Timer, source: &str) -> (Stream, Envelope) {
            (E::STREAM, Envelope::of(e, &t.correlation_id, source))
        }
        Some(match t.kind {
            Kind::Order => {
                let mut p = OrderStatusChanged {
                    order_id: t.order_id,
                    status: *kitchen_steps().get(t.step)?,
                    reason: None,
                };
                // The confirm step is where the kitchen may refuse instead.
                if t.step == 0
                    && let Some(why) = self.kitchen.rejects(t.order_id.bytes())
                {
                    p.status = OrderStatus::Rejected;
                    p.reason = Some(REJECTIONS[why % REJECTIONS.len()].to_owned());
                }
                envelope(&p, t, &self.source)
            }
            Kind::Delivery => {
                let status = *courier_steps().get(t.step)?;
                let p = DeliveryStatusChanged {
                    delivery_id: DeliveryId::parse(&t.id).ok()?,
                    order_id: t.order_id,
                    status,
                };
                envelope(&p, t, &self.source)
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_chains_are_the_flows_after_their_first_status() {
        assert_eq!(
            kitchen_steps(),
            [
                OrderStatus::Confirmed,
                OrderStatus::Preparing,
                OrderStatus::OutForDelivery
            ]
        );
        assert_eq!(
            courier_steps(),
            [DeliveryStatus::OnTheWay, DeliveryStatus::Delivered]
        );
        // One configured delay per step (SIM_CONFIRM_MS ... SIM_DELIVER_MS).
        let d = crate::Settings::from_env(common::settings::Env::from_map::<&str, &str>([]))
            .unwrap()
            .delays;
        assert_eq!(d.order.len(), Kind::Order.steps());
        assert_eq!(d.delivery.len(), Kind::Delivery.steps());
    }
}
