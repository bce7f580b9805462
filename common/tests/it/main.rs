//! Integration tests of `common` against real Redis and MongoDB servers that
//! the test process starts itself (see the `testkit` crate).

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

mod consumer;
mod helpers;
mod mongo;
mod partition;
mod publisher;
mod telemetry;
mod transition;
mod trim;
mod writes;
