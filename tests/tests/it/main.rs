//! End-to-end tests on real Redis and MongoDB (started by this process).

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

mod cancel;
mod effectively_once;
mod flow;
mod ops;
mod order_api;
mod partitions;
mod privacy;
mod replication;
mod tracker;
mod trim;
