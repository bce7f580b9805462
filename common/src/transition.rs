//! Guarded status transitions of a versioned document, at most once.
//!
//! order-svc (orders) and delivery-svc (deliveries) apply status events the
//! same way, and this module is that way, written once. Moves are
//! group-committed ([`Guarded`], via [`crate::batch`]): the moves asked for
//! while a transaction runs wait and share the next one. In one retried
//! replica-set transaction (snapshot reads):
//!
//! 1. one query reads every document the batch names;
//! 2. each move is decided in memory, in arrival order, by the
//!    [`Lifecycle`]: it applies only if the document's current status is
//!    one the move is allowed from ([`Lifecycle::predecessors`]: the
//!    previous status of the path, or the statuses an exit may leave from).
//!    Otherwise a status at or behind the current one, or any status after
//!    a terminal one, is [`StatusChange::Stale`] (acknowledged, never moved
//!    backwards); one that skips ahead is [`StatusChange::Early`] (the
//!    consumer defers it until its predecessor is applied); an exit no
//!    longer allowed is [`StatusChange::Refused`]. A later move of the same
//!    document in the batch is decided on the document as the earlier one
//!    left it;
//! 3. for each move that applies, an [`Effect`] may run on the document
//!    after it (putting a cancelled order's stock back);
//! 4. one command writes the moves that apply (the status, the extra
//!    fields, `version + 1`), each statement guarded by the version it was
//!    decided on, and the outbox entry of their events, with the new
//!    versions as sequence numbers (a `bulkWrite`, see [`crate::writes`]);
//!    one commit.
//!
//! This makes every move idempotent by itself: a redelivered, reclaimed or
//! republished event finds the document already moved and changes nothing,
//! whenever it comes back (no inbox of processed event ids to write and
//! expire). Inside the snapshot transaction the decision cannot be raced: a
//! concurrent change of a document between the read and the write is a
//! write conflict, and the whole batch runs again. A batch costs three
//! commands however many moves it holds (docs/performance.md). A batch of
//! one (no load) takes a shorter way with the same guard: one
//! `findAndModify` that matches only from the allowed statuses (the
//! document is read only if it did not match, to say why), the outbox
//! command and the commit.
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
use std::collections::HashMap;

use mongodb::{ClientSession, Collection, options::ReturnDocument};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    batch::{Batch, Batcher},
    consumer::{HandlerError, Outcome},
    mongo::{BoxFuture, RetryPolicy, run_transaction},
    outbox::{Outbox, Written},
    writes::Writes,
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
    /// Its `_id`.
    fn id(&self) -> ObjectId;
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
pub trait Effect<T>: Send + Sync + 'static {
    /// Runs inside the move's transaction.
    fn run<'a>(
        &'a self,
        s: &'a mut ClientSession,
        after: &'a T,
    ) -> BoxFuture<'a, mongodb::error::Result<()>>;
}

/// Where one kind of document lives and where its events go.
pub struct Spec<T: Versioned> {
    /// The client (for the session).
    pub client: mongodb::Client,
    /// The documents.
    pub collection: Collection<T>,
    /// Where the resulting events are written.
    pub outbox: Outbox,
    /// Their stream.
    pub stream: Stream,
    /// Builds the resulting event: `(document after, previous status, correlation id)`.
    pub event: fn(&T, T::Status, &str) -> Envelope,
    /// Run in the transaction after every move, on the document after it.
    pub effect: Option<Box<dyn Effect<T>>>,
}

impl<T: Versioned> std::fmt::Debug for Spec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("collection", &self.collection.name())
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Most moves in one transaction.
pub const MAX_BATCH: usize = 64;

/// Batches of moves in flight at once (see [`crate::batch`]): moves of
/// different documents do not conflict, so one batch can start while the
/// one before it commits. Under a backlog this drained it sooner
/// (docs/performance.md, 17); at a steady pace it made no difference.
const DEPTH: usize = 2;

/// The guarded moves of one collection, group-committed: the moves asked
/// for concurrently (by a consumer's lanes, and by requests such as a
/// cancel) are applied by one writer in one transaction, each with its own
/// guard and outcome, the updates and their events written with one command
/// ([`crate::writes`]), and one commit (see [`crate::batch`]); up to
/// two such transactions run at once. Under no load a batch is one
/// move. A batch that fails for a reason other than a conflict (which
/// re-runs the whole transaction) is split, each move run alone, so that one
/// move's error is only its own.
pub struct Guarded<T: Versioned> {
    writer: Batcher<Moves<T>>,
}

impl<T: Versioned> Clone for Guarded<T> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
        }
    }
}

impl<T: Versioned> std::fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").finish_non_exhaustive()
    }
}

impl<T: Versioned> Guarded<T> {
    /// The moves of `spec.collection`; `name` labels the writer's metrics.
    pub fn new(name: &'static str, spec: Spec<T>) -> Self {
        Self {
            writer: Batcher::pipelined(name, MAX_BATCH, DEPTH, Moves(spec)),
        }
    }

    /// Moves document `id` to status `to` because of `cause`, at most once,
    /// setting `set` too (see the module doc).
    pub async fn apply(
        &self,
        id: ObjectId,
        to: T::Status,
        cause: Cause<'_>,
        set: Document,
    ) -> mongodb::error::Result<StatusChange<T::Status>> {
        self.apply_run(vec![(id, to, cause, set)])
            .await
            .pop()
            .unwrap_or_else(|| Err(mongodb::error::Error::custom("the move got no answer")))
    }

    /// Applies `moves` (document, status, cause, extra fields) in order, as
    /// one unit of the writer's queue: they share a transaction, and each is
    /// decided on the documents as the ones before it left them, so a run of
    /// one document's events (a consumer's lane, see
    /// [`crate::consumer::Handler::handle_run`]) costs one transaction
    /// instead of one each. One result per move, in order.
    pub async fn apply_run(
        &self,
        moves: Vec<(ObjectId, T::Status, Cause<'_>, Document)>,
    ) -> Vec<mongodb::error::Result<StatusChange<T::Status>>> {
        let n = moves.len();
        let jobs = moves
            .into_iter()
            .map(|(id, to, cause, set)| Move {
                id,
                to,
                correlation_id: cause.correlation_id().to_owned(),
                set,
            })
            .collect();
        match self.writer.submit_all(jobs).await {
            Ok(changes) => changes,
            Err(stopped) => (0..n)
                .map(|_| Err(mongodb::error::Error::custom(stopped)))
                .collect(),
        }
    }
}

/// One requested move.
struct Move<S> {
    id: ObjectId,
    to: S,
    correlation_id: String,
    set: Document,
}

/// The writer's side of [`Guarded`].
struct Moves<T: Versioned>(Spec<T>);

type Changes<S> = Vec<mongodb::error::Result<StatusChange<S>>>;

impl<T: Versioned> Batch for Moves<T> {
    type Job = Move<T::Status>;
    type Output = mongodb::error::Result<StatusChange<T::Status>>;

    async fn run(&self, jobs: &[Move<T::Status>]) -> Changes<T::Status> {
        match self.commit(jobs).await {
            Ok(changes) => changes.into_iter().map(Ok).collect(),
            // One move, or the database itself failing: everyone's error.
            Err(e) if jobs.len() == 1 || crate::mongo::is_unavailable(&e) => {
                jobs.iter().map(|_| Err(e.clone())).collect()
            }
            Err(_) => {
                // Not a conflict (those re-run the whole transaction): find
                // whose error it is by running each move alone.
                let mut out = Vec::with_capacity(jobs.len());
                for job in jobs {
                    out.push(
                        self.commit(std::slice::from_ref(job))
                            .await
                            .map(|mut c| c.remove(0)),
                    );
                }
                out
            }
        }
    }

    fn failed(&self, _: &Move<T::Status>) -> Self::Output {
        Err(mongodb::error::Error::custom("applying the status failed"))
    }
}

impl<T: Versioned> Moves<T> {
    /// One transaction for `jobs`, retried as a whole on conflicts.
    async fn commit(
        &self,
        jobs: &[Move<T::Status>],
    ) -> mongodb::error::Result<Vec<StatusChange<T::Status>>> {
        let (changes, written) = run_transaction(
            &self.0.client,
            RetryPolicy::default(),
            &(self, jobs),
            |s, (this, jobs)| Box::pin(this.apply_all(s, jobs)),
        )
        .await?;
        // The events are in the outbox, committed with the changes.
        self.0.outbox.committed(written);
        Ok(changes)
    }

    /// The batch's moves in the transaction `s`, then their events with one
    /// outbox command. A move that does not apply writes nothing.
    async fn apply_all(
        &self,
        s: &mut ClientSession,
        jobs: &[Move<T::Status>],
    ) -> mongodb::error::Result<(Vec<StatusChange<T::Status>>, Option<Written>)> {
        let mut events = Vec::new();
        let mut writes = Writes::new();
        let changes = match jobs {
            [job] => vec![self.apply_one(s, job, &mut events).await?],
            _ => self.apply_many(s, jobs, &mut writes, &mut events).await?,
        };
        let entries: Vec<_> = events
            .iter()
            .map(|(event, seq)| (self.0.stream, event, *seq))
            .collect();
        // The moves' updates and their events in one round trip.
        let written = self.0.outbox.write_with(&mut *s, writes, &entries).await?;
        Ok((changes, written))
    }

    /// A batch of one (no load): one guarded `findAndModify`, so a lone move
    /// costs no more round trips than it did before group commit; the
    /// document is read only when the guard did not match, to say why.
    async fn apply_one(
        &self,
        s: &mut ClientSession,
        job: &Move<T::Status>,
        events: &mut Vec<(Envelope, u32)>,
    ) -> mongodb::error::Result<StatusChange<T::Status>> {
        let spec = &self.0;
        let fields = job.fields()?;
        let from = bson::to_bson(job.to.predecessors()).map_err(mongodb::error::Error::custom)?;
        let before = spec
            .collection
            .find_one_and_update(
                doc! { "_id": job.id, "status": { "$in": from } },
                doc! { "$set": &fields, "$inc": { "version": 1 } },
            )
            .return_document(ReturnDocument::Before)
            .session(&mut *s)
            .await?;
        if let Some(before) = before {
            return self
                .moved(s, &before, job, fields, events)
                .await
                .map(|(c, _)| c);
        }
        let current = spec
            .collection
            .find_one(doc! { "_id": job.id })
            .session(&mut *s)
            .await?;
        Ok(match current {
            None => StatusChange::Missing,
            // (Apply cannot be: the guard would have matched.)
            Some(d) => unapplied(d.status(), job.to),
        })
    }

    /// A batch of several: one query reads every document the batch names;
    /// each move is decided in memory, in arrival order, on the document as
    /// the moves before it left it (so two moves of one document in one
    /// batch apply in order, and a duplicate is stale); the moves that apply
    /// are added to `writes`, each statement guarded by the version it was
    /// decided on, and go out with the events (one round trip). Inside the snapshot transaction nobody
    /// else can change a document between the read and the write: that
    /// would be a write conflict, and the whole batch runs again.
    async fn apply_many(
        &self,
        s: &mut ClientSession,
        jobs: &[Move<T::Status>],
        writes: &mut Writes,
        events: &mut Vec<(Envelope, u32)>,
    ) -> mongodb::error::Result<Vec<StatusChange<T::Status>>> {
        let spec = &self.0;
        let mut ids: Vec<ObjectId> = jobs.iter().map(|j| j.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut cursor = spec
            .collection
            .find(doc! { "_id": { "$in": &ids } })
            .session(&mut *s)
            .await?;
        let mut docs = HashMap::with_capacity(ids.len());
        while let Some(d) = cursor.next(&mut *s).await {
            let d = d?;
            docs.insert(d.id(), d);
        }
        let mut changes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(doc) = docs.get_mut(&job.id) else {
                changes.push(StatusChange::Missing);
                continue;
            };
            if doc.status().transition(job.to) != Transition::Apply {
                changes.push(unapplied(doc.status(), job.to));
                continue;
            }
            let fields = job.fields()?;
            writes.update(
                &spec.collection,
                doc! { "_id": job.id, "version": i64::from(doc.version()) },
                doc! { "$set": &fields, "$inc": { "version": 1 } },
            );
            let (change, after) = self.moved(s, doc, job, fields, events).await?;
            *doc = after;
            changes.push(change);
        }
        Ok(changes)
    }

    /// A move that applies, on `before`: the effect on the document after
    /// it, and its event.
    async fn moved(
        &self,
        s: &mut ClientSession,
        before: &T,
        job: &Move<T::Status>,
        fields: Document,
        events: &mut Vec<(Envelope, u32)>,
    ) -> mongodb::error::Result<(StatusChange<T::Status>, T)> {
        let spec = &self.0;
        let previous = before.status();
        let after = moved(before, fields)?;
        if let Some(effect) = &spec.effect {
            effect.run(&mut *s, &after).await?;
        }
        events.push((
            (spec.event)(&after, previous, &job.correlation_id),
            after.version(),
        ));
        Ok((StatusChange::Moved { previous }, after))
    }
}

impl<S: Lifecycle + Serialize> Move<S> {
    /// What a move sets: its extra fields, the status, the time.
    fn fields(&self) -> mongodb::error::Result<Document> {
        let mut fields = self.set.clone();
        fields.insert(
            "status",
            bson::to_bson(&self.to).map_err(mongodb::error::Error::custom)?,
        );
        fields.insert("updated_at", bson::DateTime::now());
        Ok(fields)
    }
}

/// Why a move from `current` to `to` does not apply.
fn unapplied<S: Lifecycle>(current: S, to: S) -> StatusChange<S> {
    match current.transition(to) {
        Transition::Stale => StatusChange::Stale(current),
        Transition::Refused => StatusChange::Refused(current),
        Transition::Early | Transition::Apply => StatusChange::Early(current),
    }
}

/// The document after the update a move writes: `fields` set and the
/// version incremented (the same update, in memory, so the event is built
/// without reading the document again).
fn moved<T: Versioned>(before: &T, fields: Document) -> mongodb::error::Result<T> {
    let mut d = bson::to_document(before).map_err(mongodb::error::Error::custom)?;
    for (k, v) in fields {
        d.insert(k, v);
    }
    d.insert("version", i64::from(before.version()) + 1);
    bson::from_document(d).map_err(mongodb::error::Error::custom)
}
