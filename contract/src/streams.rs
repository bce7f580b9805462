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

/// The key prefix of one deployment (or one test).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
}

impl Namespace {
    /// A namespace whose keys all start with `prefix` (may be empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The namespace of a deployment whose Redis is at `redis_url`: `prefix`
    /// as given on one Redis; on a cluster (a list of node URLs), `prefix`
    /// as a hash tag, `{prefix}` (or `{foodchain}` when empty), so that every
    /// key of the deployment hashes to one slot and every script and
    /// pipeline stays single-slot. A prefix that already holds a hash tag
    /// (`{...}` with something inside) is kept as given.
    pub fn for_redis(prefix: &str, redis_url: &str) -> Self {
        if !redis_url.contains(',') || has_hash_tag(prefix) {
            return Self::new(prefix);
        }
        let inner = if prefix.is_empty() {
            "foodchain"
        } else {
            prefix
        };
        Self::new(&format!("{{{inner}}}"))
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a stream.
    pub fn stream(&self, stream: Stream) -> String {
        format!("{}{}", self.prefix, stream.name())
    }

    /// Any other Redis key of this deployment (timers, leases, ...).
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The stream named by a prefixed key, if it is one of ours.
    pub fn stream_of_key(&self, key: &str) -> Option<Stream> {
        key.strip_prefix(&self.prefix).and_then(Stream::from_name)
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
        assert_eq!(Namespace::for_redis("t1:", one).prefix(), "t1:");
        assert_eq!(Namespace::for_redis("", one).prefix(), "");
        assert_eq!(Namespace::for_redis("t1:", cluster).prefix(), "{t1:}");
        assert_eq!(Namespace::for_redis("", cluster).prefix(), "{foodchain}");
        assert_eq!(Namespace::for_redis("{a}b:", cluster).prefix(), "{a}b:");
        // `{}` is no tag: Redis hashes the whole key then.
        assert_eq!(Namespace::for_redis("{}x", cluster).prefix(), "{{}x}");
        let ns = Namespace::for_redis("t1:", cluster);
        assert_eq!(ns.stream(Stream::Orders), "{t1:}orders-stream");
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
            assert_eq!(ns.stream_of_key(&ns.stream(s)), Some(s));
        }
        assert_eq!(ns.stream_of_key("other:orders-stream"), None);
    }
}
