//! The contract between foodchain's services: what crosses the streams.
//!
//! The services never call one another; they agree on this crate, and on
//! nothing else. It depends on serde, schemars and a few small crates, not on
//! any runtime: a new consumer of an existing event needs this crate and a
//! Redis client, and no change anywhere else.
//!
//! | module | what it gives |
//! |---|---|
//! | [`auth`] | tracking tokens and their stored hashes |
//! | [`envelope`] | the [`Envelope`] every event travels in, and its stream-entry encoding |
//! | [`events`] | one type per event ([`events::Event`]: name, version, stream), one enum per stream ([`events::StreamEvent`]), the [`events::catalog`] |
//! | [`streams`] | stream, service and consumer-group names, with who publishes and who reads each stream; the per-deployment key prefix |
//! | [`ids`] | `OrderId`, `DeliveryId`, `MenuItemId` |
//! | [`status`] | order and delivery statuses with their flows, the tracking flow a tracker follows |
//! | [`dead_letter`] | the `dead-letters` entry format and why a message went there |
//! | [`entry`] | a raw stream entry |
//! | [`schema`] | JSON Schemas derived from the types |
//! | [`asyncapi`] | the AsyncAPI 3.0 document of the streams |
//! | `redis` (feature `redis`) | reply parsers and connections for the runtime and the `dlq` CLI |
//!
//! With feature `openapi`, the types the REST APIs show also derive
//! `utoipa::ToSchema`.

pub mod asyncapi;
pub mod auth;
pub mod dead_letter;
pub mod entry;
pub mod envelope;
pub mod events;
pub mod ids;
#[cfg(feature = "redis")]
pub mod redis;
pub mod schema;
pub mod status;
pub mod streams;

pub use entry::StreamEntry;
pub use envelope::Envelope;
pub use ids::{DeliveryId, MenuItemId, OrderId};
