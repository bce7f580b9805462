//! Guarded status transitions of a versioned document, once per event.
//!
//! order-svc (orders) and delivery-svc (deliveries) apply status events the
//! same way, and this module is that way, written once. In one retried
//! replica-set transaction:
//!
//! 1. the event id is claimed in the consumer group's [`Inbox`]; a second
//!    delivery of the same event finds it claimed and changes nothing
//!    ([`StatusChange::Duplicate`]);
//! 2. the document is read and the [`Lifecycle`] decides: the next status is
//!    applied; one at or behind the current status is acknowledged and
//!    ignored ([`StatusChange::Stale`], never moved backwards); one that
//!    skips ahead ([`StatusChange::Early`]) aborts, so the consumer can defer
//!    it until its predecessor has been applied;
//! 3. the status is set and `version` incremented, guarded by the version read
//!    (inside the transaction a concurrent change is a write conflict, and a
//!    retry, never a lost update);
//! 4. the resulting event goes into the [`Outbox`] in the same transaction,
//!    with the new version as its sequence number.
//!
//! Early, duplicate and missing abort the transaction, so the inbox claim is
//! rolled back with them: a deferred or retried event is still new when it
//! comes back.
//!
//! A move may carry more in the same transaction: extra fields to set (a
//! cancellation's reason) and an [`Effect`] run on the document after the move
//! (putting a cancelled order's stock back). A move can also be requested by
//! a user rather than by an event ([`Cause::Request`]): there is no event id
//! to claim then, and the caller's idempotency is its own (an
//! `Idempotency-Key`, or the guard itself: a second cancel finds the order
//! cancelled). An exit the current status no longer allows is
//! [`StatusChange::Refused`].

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
    inbox::Inbox,
    mongo::{BoxFuture, MaybeMongoError, RetryPolicy, run_transaction},
    outbox::Outbox,
};

/// A document with a status lifecycle and a version counter (fields `status`
/// and `version`).
pub trait Versioned: DeserializeOwned + Send + Sync + Unpin + 'static {
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
    /// This event was applied before (inbox): nothing changed.
    Duplicate,
    /// No such document.
    Missing,
}

impl<S: Lifecycle> StatusChange<S> {
    /// What the consumer does with a status event for `what` (`"order"`)
    /// `id` that asked for status `to`, with a log line: moved → done;
    /// duplicate, stale or refused → acknowledged and skipped (refused: the
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
            Self::Duplicate => {
                info!(what, id, "event already applied (inbox); duplicate ignored");
                Ok(Outcome::Skipped)
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
    /// An event of a consumer group (its id is claimed in the group's inbox).
    Event(&'a Envelope),
    /// A user's request (no inbox: the request's own idempotency applies).
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
    /// The consumer group's inbox.
    pub inbox: &'a Inbox,
    /// The consumer group applying the events.
    pub group: &'a str,
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
            .field("group", &self.group)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
enum Abort<S: std::fmt::Debug> {
    #[error("already processed")]
    Duplicate,
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
    /// Moves document `id` to status `to` because of `cause`, at most once per
    /// event, setting `set` too (see the module doc).
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
            Err(Abort::Duplicate) => Ok(StatusChange::Duplicate),
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
        if let Cause::Event(event) = cause
            && !self
                .inbox
                .claim(&mut *s, self.group, event.event_id)
                .await?
        {
            return Err(Abort::Duplicate);
        }
        let Some(current) = self
            .collection
            .find_one(doc! { "_id": id })
            .session(&mut *s)
            .await?
        else {
            return Err(Abort::Missing);
        };
        let previous = current.status();
        match previous.transition(to) {
            Transition::Stale => return Ok(StatusChange::Stale(previous)),
            Transition::Refused => return Ok(StatusChange::Refused(previous)),
            Transition::Early => return Err(Abort::Early(previous)),
            Transition::Apply => {}
        }
        let status = bson::to_bson(&to).map_err(mongodb::error::Error::custom)?;
        let mut fields = set.clone();
        fields.insert("status", status);
        fields.insert("updated_at", bson::DateTime::now());
        let updated = self
            .collection
            .find_one_and_update(
                doc! { "_id": id, "version": current.version() },
                doc! { "$set": fields, "$inc": { "version": 1 } },
            )
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?;
        // The version guard cannot miss inside a transaction: a concurrent
        // change would have been a write conflict (and a retry).
        let Some(after) = updated else {
            return Err(Abort::Missing);
        };
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
