//! The inbox: "this group already applied this event", recorded in the same
//! transaction as the effect.
//!
//! Redis Streams deliver at least once: a message is redelivered after a crash
//! between its effect and its XACK, taken over from a paused consumer, or
//! published twice by an outbox relay that crashed before marking it. A
//! handler with a side effect therefore claims `(group, event_id)` in the
//! `inbox` collection inside its transaction: the first claim inserts, any
//! later one finds the entry and the handler skips the event. The claim and
//! the effect commit together, so there is no window in which one exists
//! without the other.
//!
//! Entries are removed after `INBOX_RETENTION_SECS` (default 7 days) by a
//! sweep. An event redelivered after that (a dead letter replayed weeks
//! later) is still caught by the guarded state transitions, which ignore
//! duplicate and stale statuses.

use std::time::Duration;

use bson::{Document, doc};
use mongodb::{ClientSession, Collection};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::mongo::is_duplicate_key;

/// Default retention of inbox entries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The inbox of one database (shared by the services using it; entries are
/// keyed by group).
#[derive(Debug, Clone)]
pub struct Inbox {
    coll: Collection<Document>,
}

impl Inbox {
    /// The `inbox` collection of `db`.
    pub fn new(db: &mongodb::Database) -> Self {
        Self {
            coll: db.collection("inbox"),
        }
    }

    /// Claims `event_id` for `group` inside the caller's transaction:
    /// `true` the first time, `false` if it was already processed.
    pub async fn claim(
        &self,
        s: &mut ClientSession,
        group: &str,
        event_id: Uuid,
    ) -> mongodb::error::Result<bool> {
        let entry = doc! { "_id": format!("{group}:{event_id}"), "at": bson::DateTime::now() };
        match self.coll.insert_one(entry).session(&mut *s).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `group` processed `event_id` (outside any transaction).
    pub async fn contains(&self, group: &str, event_id: Uuid) -> mongodb::error::Result<bool> {
        Ok(self
            .coll
            .find_one(doc! { "_id": format!("{group}:{event_id}") })
            .await?
            .is_some())
    }

    /// Deletes entries older than `retention`.
    pub async fn sweep(&self, retention: Duration) {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        match self
            .coll
            .delete_many(doc! { "at": { "$lt": bson::DateTime::from_chrono(cutoff) } })
            .await
        {
            Ok(r) if r.deleted_count > 0 => {
                debug!(deleted = r.deleted_count, "expired inbox entries removed")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "inbox sweep failed"),
        }
    }
}
