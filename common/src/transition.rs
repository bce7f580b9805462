//! Guarded status transitions of a versioned document, at most once.
//!
//! order-svc (orders) and delivery-svc (deliveries) apply status events the
//! same way, and this module is that way, written once. In one retried
//! replica-set transaction:
//!
//! 1. one `findAndModify` moves the document to the new status only if its
//!    current status is one the [`Lifecycle`] allows the move from
//!    ([`Lifecycle::predecessors`]: the previous status of the path, or the
//!    statuses an exit may leave from), sets the extra fields and
//!    increments `version`;
//! 2. if it matched, an [`Effect`] may run on the document after the move
//!    (putting a cancelled order's stock back), and the resulting event goes
//!    into the [`Outbox`] in the same transaction, with the new version as
//!    its sequence number;
//! 3. if it did not, the document is read and the lifecycle says why: a
//!    status at or behind the current one, or any status after a terminal
//!    one, is [`StatusChange::Stale`] (acknowledged, never moved backwards);
//!    one that skips ahead is [`StatusChange::Early`] (the consumer defers it
//!    until its predecessor is applied); an exit no longer allowed is
//!    [`StatusChange::Refused`].
//!
//! This makes every move idempotent by itself: a redelivered, reclaimed or
//! republished event finds the document already moved and changes nothing,
//! whenever it comes back (no inbox of processed event ids to write and
//! expire). Inside the snapshot transaction the guard cannot be raced: a
//! concurrent change of the document is a write conflict, and a retry.
//!
//! A move can be requested by a user rather than by an event
//! ([`Cause::Request`], a cancel): its idempotency is the guard's too (a
//! second cancel finds the order cancelled) plus the caller's own
//! `Idempotency-Key`.

use bson::{Document, doc, oid::ObjectId};
use contract::{
    Envelope,
    status::{Lifecycle, Transition},
    streams::Stream,
};
use mongodb::{ClientSession, Collection, options::ReturnDocument};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    consumer::{HandlerError, Outcome},
    mongo::{BoxFuture, MaybeMongoError, RetryPolicy, run_transaction},
    outbox::Outbox,
};

/// A document with a status lifecycle and a version counter (fields `status`
/// and `version`).
pub trait Versioned: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// Its status.
    type Status: Lifecycle + Serialize + Send + Sync + std::fmt::Debug;
    /// The current status.
    fn status(&self) -> Self::Status;
    /// The current version.
    fn version(&self) -> u32;
}

/// What applying a status event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange<S> {
    /// Moved on from `previous`; the event is in the outbox.
    Moved {
        /// Status before.
        previous: S,
    },
    /// Already at or past it (a stale or duplicate event), or already
    /// terminal: nothing changed.
    Stale(S),
    /// Skips ahead of the current status: nothing changed, try again later.
    Early(S),
    /// An exit the current status no longer allows: nothing changed.
    Refused(S),
    /// No such document.
    Missing,
}

impl<S: Lifecycle> StatusChange<S> {
    /// What the consumer does with a status event for `what` (`"order"`)
    /// `id` that asked for status `to`, with a log line: moved → done;
    /// stale (a duplicate too) or refused → acknowledged and skipped (refused: the
    /// document left the point where `to` was possible, e.g. a rejection of
    /// an order the customer already cancelled); early → deferred until its
    /// predecessor is applied; missing → retried (its creation may still be
    /// on its way), then dead-lettered.
    pub fn outcome(self, what: &'static str, id: &str, to: S) -> Result<Outcome, HandlerError> {
        let status = to.name();
        match self {
            Self::Moved { .. } => {
                info!(what, id, status, "status updated");
                Ok(Outcome::Done)
            }
            Self::Stale(current) | Self::Refused(current) => {
                info!(
                    what,
                    id,
                    current = current.name(),
                    event = status,
                    "stale status event ignored"
                );
                Ok(Outcome::Skipped)
            }
            Self::Early(current) => Err(HandlerError::defer(format!(
                "{what} {id} is {}; {status} must wait for the statuses before it",
                current.name()
            ))),
            Self::Missing => Err(HandlerError::retry(format!("{what} {id} does not exist"))),
        }
    }
}

/// Why a document moves.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// An event a consumer group handles.
    Event(&'a Envelope),
    /// A user's request.
    Request {
        /// Ties the move to the request in logs and in the resulting event.
        correlation_id: &'a str,
    },
}

impl Cause<'_> {
    fn correlation_id(&self) -> &str {
        match self {
            Cause::Event(e) => &e.correlation_id,
            Cause::Request { correlation_id } => correlation_id,
        }
    }
}

/// More work in the transaction of a move, on the document after it.
pub trait Effect<T>: Sync {
    /// Runs inside the move's transaction.
    fn run<'a>(
        &'a self,
        s: &'a mut ClientSession,
        after: &'a T,
    ) -> BoxFuture<'a, mongodb::error::Result<()>>;
}

/// Where one kind of document lives and where its events go.
pub struct Guarded<'a, T: Versioned> {
    /// The client (for the session).
    pub client: &'a mongodb::Client,
    /// The documents.
    pub collection: &'a Collection<T>,
    /// Where the resulting events are written.
    pub outbox: &'a Outbox,
    /// Their stream.
    pub stream: Stream,
    /// Builds the resulting event: `(document after, previous status, correlation id)`.
    pub event: fn(&T, T::Status, &str) -> Envelope,
    /// Run in the transaction after every move, on the document after it.
    pub effect: Option<&'a dyn Effect<T>>,
}

impl<T: Versioned> std::fmt::Debug for Guarded<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
enum Abort<S: std::fmt::Debug> {
    #[error("no such document")]
    Missing,
    #[error("early: the document is {0:?}")]
    Early(S),
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
}

impl<S: std::fmt::Debug> MaybeMongoError for Abort<S> {
    fn as_mongo(&self) -> Option<&mongodb::error::Error> {
        match self {
            Abort::Mongo(e) => Some(e),
            _ => None,
        }
    }
}

impl<T: Versioned> Guarded<'_, T> {
    /// Moves document `id` to status `to` because of `cause`, at most once,
    /// setting `set` too (see the module doc).
    pub async fn apply(
        &self,
        id: ObjectId,
        to: T::Status,
        cause: Cause<'_>,
        set: Document,
    ) -> mongodb::error::Result<StatusChange<T::Status>> {
        let ctx = (self, id, to, cause, set);
        let result = run_transaction(
            self.client,
            RetryPolicy::default(),
            &ctx,
            |s, (this, id, to, cause, set)| Box::pin(this.apply_in(s, *id, *to, *cause, set)),
        )
        .await;
        match result {
            Ok(change) => {
                if matches!(change, StatusChange::Moved { .. }) {
                    // The event is in the outbox, committed with the change.
                    self.outbox.wake();
                }
                Ok(change)
            }
            Err(Abort::Missing) => Ok(StatusChange::Missing),
            Err(Abort::Early(current)) => Ok(StatusChange::Early(current)),
            Err(Abort::Mongo(e)) => Err(e),
        }
    }

    async fn apply_in(
        &self,
        s: &mut ClientSession,
        id: ObjectId,
        to: T::Status,
        cause: Cause<'_>,
        set: &Document,
    ) -> Result<StatusChange<T::Status>, Abort<T::Status>> {
        let status = bson::to_bson(&to).map_err(mongodb::error::Error::custom)?;
        let from = bson::to_bson(to.predecessors()).map_err(mongodb::error::Error::custom)?;
        let mut fields = set.clone();
        fields.insert("status", status);
        fields.insert("updated_at", bson::DateTime::now());
        let before = self
            .collection
            .find_one_and_update(
                doc! { "_id": id, "status": { "$in": from } },
                doc! { "$set": &fields, "$inc": { "version": 1 } },
            )
            .return_document(ReturnDocument::Before)
            .session(&mut *s)
            .await?;
        let Some(before) = before else {
            // Not moved: say why.
            let Some(current) = self
                .collection
                .find_one(doc! { "_id": id })
                .session(&mut *s)
                .await?
            else {
                return Err(Abort::Missing);
            };
            let current = current.status();
            return match current.transition(to) {
                Transition::Stale => Ok(StatusChange::Stale(current)),
                Transition::Refused => Ok(StatusChange::Refused(current)),
                // (Apply cannot be: the guard would have matched.)
                Transition::Early | Transition::Apply => Err(Abort::Early(current)),
            };
        };
        let previous = before.status();
        let after = moved(&before, fields)?;
        if let Some(effect) = self.effect {
            effect.run(&mut *s, &after).await?;
        }
        let event = (self.event)(&after, previous, cause.correlation_id());
        self.outbox
            .add(&mut *s, self.stream, &event, after.version())
            .await?;
        Ok(StatusChange::Moved { previous })
    }
}

/// The document after the update `findAndModify` applied to `before`:
/// `fields` set and the version incremented (the same update, in memory,
/// so the move costs one round trip).
fn moved<T: Versioned>(before: &T, fields: Document) -> mongodb::error::Result<T> {
    let mut d = bson::to_document(before).map_err(mongodb::error::Error::custom)?;
    for (k, v) in fields {
        d.insert(k, v);
    }
    d.insert("version", i64::from(before.version()) + 1);
    bson::from_document(d).map_err(mongodb::error::Error::custom)
}
