//! Stream and consumer-group names, in one place.
//!
//! The streams are named after *what flows through them*, not after who
//! produces or consumes them, so that a new consumer never needs a new stream:
//!
//! | stream | written by | read by (group) | carries |
//! |---|---|---|---|
//! | `orders-stream` | order-svc | delivery-svc, notify-svc, simulator | `order.created.v1`, `order.status_updated.v1`, `order.cancelled.v1`, `order.rejected.v1` |
//! | `deliveries-stream` | delivery-svc | order-svc, notify-svc | `delivery.created.v1`, `delivery.status_updated.v1` |
//! | `order-status-stream` | simulator | order-svc | `order.status_changed.v1` (the kitchen moved an order on) |
//! | `delivery-status-stream` | simulator | delivery-svc | `delivery.status_changed.v1` (the courier moved a delivery on) |
//! | `simulate-order-stream` | order-svc | simulator | `simulation.order_requested.v1` |
//! | `simulate-delivery-stream` | delivery-svc | simulator | `simulation.delivery_requested.v1` |
//! | `dead-letters` | every consumer loop | operators (the `dlq` CLI) | messages that could not be handled |
//!
//! Each consuming service has one group per stream, named after the service,
//! so every service sees every event once however many replicas it runs.
//!
//! A [`Namespace`] prefixes every Redis key a deployment uses (`STREAM_PREFIX`),
//! so that tests, or two deployments, can share one Redis without seeing each
//! other's messages.

use std::fmt;

/// The event streams of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Order facts published by order-svc.
    Orders,
    /// Delivery facts published by delivery-svc.
    Deliveries,
    /// Status changes of orders decided by the kitchen (simulator).
    OrderStatus,
    /// Status changes of deliveries decided by the courier (simulator).
    DeliveryStatus,
    /// Requests to simulate an order's kitchen lifecycle.
    SimulateOrder,
    /// Requests to simulate a delivery's courier lifecycle.
    SimulateDelivery,
    /// Messages that exhausted their attempts or could not be parsed.
    DeadLetters,
}

impl Stream {
    /// Every stream, in a stable order.
    pub const ALL: [Stream; 7] = [
        Stream::Orders,
        Stream::Deliveries,
        Stream::OrderStatus,
        Stream::DeliveryStatus,
        Stream::SimulateOrder,
        Stream::SimulateDelivery,
        Stream::DeadLetters,
    ];

    /// The stream's name without any prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Orders => "orders-stream",
            Stream::Deliveries => "deliveries-stream",
            Stream::OrderStatus => "order-status-stream",
            Stream::DeliveryStatus => "delivery-status-stream",
            Stream::SimulateOrder => "simulate-order-stream",
            Stream::SimulateDelivery => "simulate-delivery-stream",
            Stream::DeadLetters => "dead-letters",
        }
    }

    /// What flows through it, in one line (documentation, AsyncAPI).
    pub const fn description(self) -> &'static str {
        match self {
            Stream::Orders => "Order facts: an order was accepted, an order moved to a new status.",
            Stream::Deliveries => {
                "Delivery facts: a delivery was created, a delivery moved to a new status."
            }
            Stream::OrderStatus => "The kitchen moved an order on.",
            Stream::DeliveryStatus => "The courier moved a delivery on.",
            Stream::SimulateOrder => "Requests to simulate an order's kitchen.",
            Stream::SimulateDelivery => "Requests to simulate a delivery's courier.",
            Stream::DeadLetters => {
                "Messages a consumer group gave up on, with their full context (see the dlq CLI)."
            }
        }
    }

    /// The service that writes it (`None`: every consumer loop, for the dead letters).
    pub const fn producer(self) -> Option<&'static str> {
        match self {
            Stream::Orders | Stream::SimulateOrder => Some(services::ORDER_SVC),
            Stream::Deliveries | Stream::SimulateDelivery => Some(services::DELIVERY_SVC),
            Stream::OrderStatus | Stream::DeliveryStatus => Some(services::SIMULATOR),
            Stream::DeadLetters => None,
        }
    }

    /// The consumer groups that read it (one per consuming service).
    pub const fn groups(self) -> &'static [&'static str] {
        match self {
            Stream::Orders => &[groups::DELIVERY_SVC, groups::NOTIFY_SVC, groups::SIMULATOR],
            Stream::Deliveries => &[groups::ORDER_SVC, groups::NOTIFY_SVC],
            Stream::OrderStatus => &[groups::ORDER_SVC],
            Stream::DeliveryStatus => &[groups::DELIVERY_SVC],
            Stream::SimulateOrder | Stream::SimulateDelivery => &[groups::SIMULATOR],
            Stream::DeadLetters => &[],
        }
    }

    /// The stream whose (unprefixed) name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Service names: the `source` of the events each one publishes.
pub mod services {
    /// The REST API for menu and orders.
    pub const ORDER_SVC: &str = "order-svc";
    /// Owns deliveries.
    pub const DELIVERY_SVC: &str = "delivery-svc";
    /// Timelines and trackers.
    pub const NOTIFY_SVC: &str = "notify-svc";
    /// Plays kitchen and courier.
    pub const SIMULATOR: &str = "simulator";
}

/// Consumer-group names: one per consuming service.
pub mod groups {
    /// order-svc's group (on `order-status-stream`, `deliveries-stream`).
    pub const ORDER_SVC: &str = "order-svc";
    /// delivery-svc's group (on `orders-stream`, `delivery-status-stream`).
    pub const DELIVERY_SVC: &str = "delivery-svc";
    /// notify-svc's persisting group (on `orders-stream`, `deliveries-stream`).
    pub const NOTIFY_SVC: &str = "notify-svc";
    /// simulator's group (on `simulate-order-stream`, `simulate-delivery-stream`,
    /// and `orders-stream`, to drop the timers of cancelled orders).
    pub const SIMULATOR: &str = "simulator";
}

/// The most partitions a stream may be split into (`STREAM_PARTITIONS`).
pub const MAX_PARTITIONS: u16 = 1024;

/// The Redis key where a deployment records how many partitions its streams
/// have (`<prefix>stream-partitions`, from the prefix as configured, so that
/// it is found without knowing the count): the first service to start sets
/// it, a service configured with another count refuses to start, and the
/// CLIs read it when not told.
pub fn partitions_key(prefix: &str) -> String {
    format!("{prefix}stream-partitions")
}

/// FNV-1a 64 of `key`'s bytes: the hash that places an ordering key in its
/// partition ([`Namespace::partition_of`]).
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The key prefix of one deployment (or one test), and how many partitions
/// each of its streams is split into.
///
/// # Partitions
///
/// With `P` partitions (`STREAM_PARTITIONS`, default 1) a logical stream is
/// `P` Redis keys, `<prefix><stream>:{p<i>}` for `i` in `0..P`; with `P = 1`
/// it is the one key `<prefix><stream>` (as before partitions existed). An
/// event goes to the partition of its ordering key (the order id,
/// [`Namespace::partition_of`]: FNV-1a 64 of its bytes, mod `P`), so one
/// order's events stay in one partition, in order. Every other key that a
/// script touches together with a partition's stream (its dead letters, its
/// last-errors hash, the simulator's timers) carries the same hash tag
/// `{p<i>}` ([`Namespace::key_at`]), so that on a Redis Cluster every script
/// and pipeline stays in one slot. docs/scaling.md has the whole design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
    partitions: u16,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new("")
    }
}

impl Namespace {
    /// A namespace whose keys all start with `prefix` (may be empty), with
    /// one partition per stream.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            partitions: 1,
        }
    }

    /// The same namespace with each stream split into `partitions`
    /// (clamped to `1..=MAX_PARTITIONS`).
    #[must_use]
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions.clamp(1, MAX_PARTITIONS);
        self
    }

    /// The namespace of a deployment whose Redis is at `redis_url`, its
    /// streams split into `partitions`. On one Redis, and on a cluster with
    /// several partitions (whose keys carry their partition's hash tag),
    /// `prefix` as given. On a cluster (a list of node URLs) with one
    /// partition, `prefix` as a hash tag, `{prefix}` (or `{foodchain}` when
    /// empty), so that every key of the deployment hashes to one slot and
    /// every script and pipeline stays single-slot. A prefix that already
    /// holds a hash tag (`{...}` with something inside) is kept as given
    /// (with several partitions it then puts every key in one slot too).
    pub fn for_redis(prefix: &str, redis_url: &str, partitions: u16) -> Self {
        let ns = if !redis_url.contains(',') || partitions > 1 || has_hash_tag(prefix) {
            Self::new(prefix)
        } else {
            let inner = if prefix.is_empty() {
                "foodchain"
            } else {
                prefix
            };
            Self::new(&format!("{{{inner}}}"))
        };
        ns.with_partitions(partitions)
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many partitions each stream has.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Every partition index, `0..P`.
    pub fn partition_range(&self) -> std::ops::Range<u16> {
        0..self.partitions
    }

    /// The partition of an ordering key (an order id): FNV-1a 64 of its
    /// bytes, mod `P`. Fixed, so that every service (and any other
    /// language) computes the same one.
    pub fn partition_of(&self, key: &str) -> u16 {
        if self.partitions == 1 {
            return 0;
        }
        u16::try_from(key_hash(key) % u64::from(self.partitions)).unwrap_or(0)
    }

    /// The Redis key of partition `p` of a stream.
    pub fn stream_at(&self, stream: Stream, p: u16) -> String {
        self.key_at(stream.name(), p)
    }

    /// The Redis key of the partition of `stream` that events with ordering
    /// key `key` go to.
    pub fn stream_for(&self, stream: Stream, key: &str) -> String {
        self.stream_at(stream, self.partition_of(key))
    }

    /// The Redis keys of every partition of a stream, in partition order.
    pub fn stream_keys(&self, stream: Stream) -> Vec<String> {
        self.partition_range()
            .map(|p| self.stream_at(stream, p))
            .collect()
    }

    /// Any other Redis key of this deployment that is not tied to a
    /// partition (leases, member lists, ...).
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// A key of partition `p` (`<prefix><name>:{p<p>}`; `<prefix><name>`
    /// with one partition): it hashes to the slot of the partition's
    /// streams, so a script may touch it together with them.
    pub fn key_at(&self, name: &str, p: u16) -> String {
        if self.partitions == 1 {
            self.key(name)
        } else {
            format!("{}{}:{{p{p}}}", self.prefix, name)
        }
    }

    /// The stream and partition of a prefixed key, if it is one of ours.
    pub fn partition_of_key(&self, key: &str) -> Option<(Stream, u16)> {
        let rest = key.strip_prefix(&self.prefix)?;
        if self.partitions == 1 {
            return Stream::from_name(rest).map(|s| (s, 0));
        }
        let (name, tag) = rest.rsplit_once(":{p")?;
        let p: u16 = tag.strip_suffix('}')?.parse().ok()?;
        (p < self.partitions).then_some(())?;
        Stream::from_name(name).map(|s| (s, p))
    }

    /// How an entry of partition `p` (a dead letter, say) is named to
    /// people, in the `dlq` CLI and the operator console: its entry id with
    /// one partition, `p<p>/<id>` with several (ids are per key, so two
    /// partitions may hold the same id).
    pub fn entry_ref(&self, p: u16, id: &str) -> String {
        if self.partitions == 1 {
            id.to_owned()
        } else {
            format!("p{p}/{id}")
        }
    }

    /// The partition and entry id an [`Namespace::entry_ref`] names (a bare
    /// id names partition 0 with one partition, and nothing with several).
    pub fn parse_entry_ref(&self, reference: &str) -> Option<(u16, String)> {
        match reference.split_once('/') {
            None => (self.partitions == 1).then(|| (0, reference.to_owned())),
            Some((p, id)) => {
                let p: u16 = p.strip_prefix('p')?.parse().ok()?;
                (p < self.partitions).then(|| (p, id.to_owned()))
            }
        }
    }

    /// The stream named by a prefixed key (any partition), if it is one of ours.
    pub fn stream_of_key(&self, key: &str) -> Option<Stream> {
        self.partition_of_key(key).map(|(s, _)| s)
    }
}

/// Whether Redis Cluster would hash `key` by a tag: a `{` followed later
/// by a `}` with at least one byte between them (the first such pair).
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_namespace_is_one_hash_tag() {
        let one = "redis://127.0.0.1:6379";
        let cluster = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
        assert_eq!(Namespace::for_redis("t1:", one, 1).prefix(), "t1:");
        assert_eq!(Namespace::for_redis("", one, 1).prefix(), "");
        assert_eq!(Namespace::for_redis("t1:", cluster, 1).prefix(), "{t1:}");
        assert_eq!(Namespace::for_redis("", cluster, 1).prefix(), "{foodchain}");
        assert_eq!(Namespace::for_redis("{a}b:", cluster, 1).prefix(), "{a}b:");
        // `{}` is no tag: Redis hashes the whole key then.
        assert_eq!(Namespace::for_redis("{}x", cluster, 1).prefix(), "{{}x}");
        let ns = Namespace::for_redis("t1:", cluster, 1);
        assert_eq!(ns.stream_at(Stream::Orders, 0), "{t1:}orders-stream");
        assert_eq!(
            ns.stream_of_key("{t1:}dead-letters"),
            Some(Stream::DeadLetters)
        );
    }

    #[test]
    fn names_are_the_documented_ones_and_round_trip() {
        let names: Vec<_> = Stream::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "orders-stream",
                "deliveries-stream",
                "order-status-stream",
                "delivery-status-stream",
                "simulate-order-stream",
                "simulate-delivery-stream",
                "dead-letters"
            ]
        );
        for s in Stream::ALL {
            assert!(!s.description().is_empty());
            if let Some(p) = s.producer() {
                assert!(
                    !s.groups().contains(&p),
                    "{s}: a service never consumes its own stream"
                );
            }
        }
        let ns = Namespace::new("t1:");
        for s in Stream::ALL {
            assert_eq!(ns.stream_of_key(&ns.stream_at(s, 0)), Some(s));
        }
        assert_eq!(ns.stream_of_key("other:orders-stream"), None);
    }

    #[test]
    fn partitions_are_keys_with_their_own_hash_tag() {
        let cluster = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
        let ns = Namespace::for_redis("t1:", cluster, 4);
        assert_eq!(ns.prefix(), "t1:", "partition tags, not one prefix tag");
        assert_eq!(ns.partitions(), 4);
        assert_eq!(ns.stream_at(Stream::Orders, 3), "t1:orders-stream:{p3}");
        assert_eq!(ns.key_at("simulator:timers", 0), "t1:simulator:timers:{p0}");
        assert_eq!(
            ns.stream_keys(Stream::DeadLetters),
            [0, 1, 2, 3].map(|p| format!("t1:dead-letters:{{p{p}}}"))
        );
        for s in Stream::ALL {
            for p in ns.partition_range() {
                assert_eq!(ns.partition_of_key(&ns.stream_at(s, p)), Some((s, p)));
            }
        }
        assert_eq!(ns.partition_of_key("t1:orders-stream:{p4}"), None);
        assert_eq!(ns.entry_ref(2, "17-0"), "p2/17-0");
        assert_eq!(ns.parse_entry_ref("p2/17-0"), Some((2, "17-0".to_owned())));
        assert_eq!(ns.parse_entry_ref("p9/17-0"), None);
        assert_eq!(ns.parse_entry_ref("17-0"), None);
        assert_eq!(ns.partition_of_key("t1:orders-stream"), None);
        // One partition: the keys of before partitions existed.
        let one = Namespace::new("t1:");
        assert_eq!(one.stream_for(Stream::Orders, "abc"), "t1:orders-stream");
        assert_eq!(one.key_at("simulator:timers", 0), "t1:simulator:timers");
        assert_eq!(
            one.partition_of_key("t1:orders-stream"),
            Some((Stream::Orders, 0))
        );
        assert_eq!(one.entry_ref(0, "17-0"), "17-0");
        assert_eq!(one.parse_entry_ref("17-0"), Some((0, "17-0".to_owned())));
    }

    #[test]
    fn an_order_has_one_partition_and_orders_spread_over_all() {
        let ns = Namespace::new("").with_partitions(8);
        // FNV-1a 64, fixed: other languages compute the same.
        assert_eq!(
            ns.partition_of(""),
            u16::try_from(0xcbf2_9ce4_8422_2325_u64 % 8).unwrap_or(9)
        );
        let id = "65f0c0ffee00000000000001";
        assert_eq!(ns.partition_of(id), ns.partition_of(id));
        let mut seen = [0_u32; 8];
        for i in 0..8000 {
            seen[usize::from(ns.partition_of(&format!("65f0c0ffee{i:014}")))] += 1;
        }
        assert!(seen.iter().all(|n| (700..1300).contains(n)), "{seen:?}");
        assert_eq!(Namespace::new("").with_partitions(0).partitions(), 1);
    }
}
