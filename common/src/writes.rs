//! A transaction's writes in one round trip.
//!
//! A state change here is several writes in one transaction: an order
//! placement decrements stock, inserts the orders, their outbox entry and
//! their idempotency records; a batch of status moves updates the documents
//! and inserts the outbox entry. Sent as one command per collection, each
//! costs the database a command and the caller a round trip, and on this
//! system's servers a command costs more than the documents it writes
//! (docs/performance.md, 16). [`Writes`] collects the statements of one
//! transaction, across collections, and sends them as one `bulkWrite`
//! (MongoDB 8.0 and later, and SecantusDB): a placement is then three round
//! trips (read the dishes, write everything, commit) instead of six.
//!
//! Every statement must take effect: a guarded update that matches nothing
//! (its guard no longer holds: a [`NotApplied`]), an insert that collides,
//! any statement error fails the whole call, and the caller's transaction
//! is aborted and run again or reported, as before. The statements run in order and stop
//! at the first error (`ordered`).
//!
//! A `bulkWrite` must not be the first command of a transaction with a read
//! concern: the driver sends the transaction's read concern with its first
//! command, and SecantusDB refuses a read concern on `bulkWrite`. A
//! transaction that decides on what it read reads first anyway; one that
//! only writes guarded statements runs without a read concern
//! ([`crate::mongo::run_write_transaction`]), and its `bulkWrite` may come
//! first.
//!
//! Servers before 8.0 (the `mongo:7` image, say) have no `bulkWrite`: there
//! [`Mode::PerCollection`] sends each run of consecutive statements of one
//! kind on one collection as one `update` or `insert` command, which is what
//! the services did before. [`Support`] asks the server once (`hello`'s
//! `maxWireVersion`) and remembers the answer.
//!
//! Errors: a statement's error becomes a [`StatementError`] (inside a
//! [`mongodb::error::Error`]), with its server code. Inside a transaction a
//! `bulkWrite` reports a write conflict as a statement error (code 112)
//! rather than as a labelled command error, so [`is_write_conflict`] treats
//! both as the transient error they are, and [`crate::mongo::run_transaction`]
//! runs the transaction again on either.

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

use bson::{Document, doc};
use mongodb::{Client, ClientSession, Collection, error::Error};

use crate::mongo::count;

/// The server's code for a write conflict.
const WRITE_CONFLICT: i32 = 112;

/// The first wire version of MongoDB 8.0, which has `bulkWrite`.
const BULK_WRITE_WIRE_VERSION: i32 = 25;

/// How [`Writes::run`] sends its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `bulkWrite` for everything.
    Bulk,
    /// One `update` or `insert` command per run of statements of one kind on
    /// one collection.
    PerCollection,
}

/// Whether a server has `bulkWrite`, asked once (cheap to clone; clones
/// share the answer). Starts not knowing (0).
#[derive(Debug, Clone, Default)]
pub struct Support(Arc<AtomicU8>);

const BULK: u8 = 1;
const PER_COLLECTION: u8 = 2;

impl Support {
    /// The mode for `client`'s server: asked with `hello` the first time;
    /// if that fails, [`Mode::PerCollection`] this once (it works on every
    /// server) and the question is asked again next time.
    pub async fn mode(&self, client: &Client) -> Mode {
        match self.0.load(Ordering::Relaxed) {
            BULK => return Mode::Bulk,
            PER_COLLECTION => return Mode::PerCollection,
            _ => {}
        }
        let Ok(hello) = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await
        else {
            return Mode::PerCollection;
        };
        let wire = count(&hello, "maxWireVersion");
        let mode = if wire >= i64::from(BULK_WRITE_WIRE_VERSION) {
            Mode::Bulk
        } else {
            Mode::PerCollection
        };
        let code = if mode == Mode::Bulk {
            BULK
        } else {
            PER_COLLECTION
        };
        self.0.store(code, Ordering::Relaxed);
        mode
    }
}

/// One statement's error, with the server's code (11000: duplicate key, 112:
/// write conflict). Displayed as `E<code> <message>`, as the server words
/// its errors.
#[derive(Debug, Clone, thiserror::Error)]
#[error("E{code} {message}")]
pub struct StatementError {
    /// The server's error code.
    pub code: i32,
    /// The server's message.
    pub message: String,
}

impl StatementError {
    /// The error of a raw reply's error document (`code`, `errmsg`).
    pub(crate) fn from_reply(e: &Document) -> Self {
        Self {
            code: e.get_i32("code").unwrap_or_default(),
            message: e.get_str("errmsg").unwrap_or("write error").to_owned(),
        }
    }
}

/// Fewer documents written than statements sent: a guarded update whose
/// guard did not hold (an insert that collides is a [`StatementError`]).
/// The caller's transaction is aborted; one that wrote on a guess (a cached
/// price, say) can tell this from other errors and decide again on a read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a write took effect on {written} of {expected} documents")]
pub struct NotApplied {
    /// Documents matched, upserted or inserted.
    pub written: i64,
    /// Statements sent.
    pub expected: i64,
}

/// Whether `e` is a [`NotApplied`].
pub fn is_not_applied(e: &Error) -> bool {
    e.get_custom::<NotApplied>().is_some()
}

/// The statement error inside `e`, if it is one.
pub fn statement_error(e: &Error) -> Option<&StatementError> {
    e.get_custom::<StatementError>()
}

/// Whether `e` is a write conflict: labelled transient by the server, or a
/// statement's code 112 (see the module docs).
pub fn is_write_conflict(e: &Error) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || statement_error(e).is_some_and(|s| s.code == WRITE_CONFLICT)
}

#[derive(Debug)]
enum Kind {
    Update {
        q: Document,
        u: Document,
        upsert: bool,
    },
    Insert(Document),
}

#[derive(Debug)]
struct Statement {
    /// `db.collection`.
    ns: String,
    kind: Kind,
}

/// The writes of one transaction, in order (see the module docs).
#[derive(Debug, Default)]
pub struct Writes {
    statements: Vec<Statement>,
}

fn namespace<T: Send + Sync>(coll: &Collection<T>) -> String {
    coll.namespace().to_string()
}

impl Writes {
    /// No writes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An update of the one document `q` matches; matching none is an error.
    pub fn update<T: Send + Sync>(&mut self, coll: &Collection<T>, q: Document, u: Document) {
        self.statements.push(Statement {
            ns: namespace(coll),
            kind: Kind::Update {
                q,
                u,
                upsert: false,
            },
        });
    }

    /// An update of the document `q` matches, inserting it if none does.
    pub fn upsert<T: Send + Sync>(&mut self, coll: &Collection<T>, q: Document, u: Document) {
        self.statements.push(Statement {
            ns: namespace(coll),
            kind: Kind::Update { q, u, upsert: true },
        });
    }

    /// An insert.
    pub fn insert<T: Send + Sync>(&mut self, coll: &Collection<T>, doc: Document) {
        self.statements.push(Statement {
            ns: namespace(coll),
            kind: Kind::Insert(doc),
        });
    }

    /// Writes everything in the session's transaction, in order; an error
    /// if any statement fails or does not take effect. In [`Mode::Bulk`],
    /// not as the transaction's first command (see the module docs).
    pub async fn run(
        self,
        client: &Client,
        s: &mut ClientSession,
        mode: Mode,
    ) -> Result<(), Error> {
        if self.statements.is_empty() {
            return Ok(());
        }
        match mode {
            Mode::Bulk => self.run_bulk(client, s).await,
            Mode::PerCollection => self.run_per_collection(client, s).await,
        }
    }

    async fn run_bulk(self, client: &Client, s: &mut ClientSession) -> Result<(), Error> {
        let mut namespaces: Vec<String> = Vec::new();
        let (mut updates, mut inserts) = (0_i64, 0_i64);
        let ops: Vec<Document> = self
            .statements
            .into_iter()
            .map(|st| {
                let index = match namespaces.iter().position(|n| *n == st.ns) {
                    Some(i) => i,
                    None => {
                        namespaces.push(st.ns);
                        namespaces.len() - 1
                    }
                };
                let index = i32::try_from(index).unwrap_or(i32::MAX);
                match st.kind {
                    Kind::Update { q, u, upsert } => {
                        updates += 1;
                        doc! { "update": index, "filter": q, "updateMods": u, "upsert": upsert }
                    }
                    Kind::Insert(d) => {
                        inserts += 1;
                        doc! { "insert": index, "document": d }
                    }
                }
            })
            .collect();
        let ns_info: Vec<Document> = namespaces.iter().map(|ns| doc! { "ns": ns }).collect();
        let reply = client
            .database("admin")
            .run_command(doc! {
                "bulkWrite": 1,
                "ops": ops,
                "nsInfo": ns_info,
                "ordered": true,
                "errorsOnly": true,
            })
            .session(&mut *s)
            .await?;
        if count(&reply, "nErrors") > 0 {
            let first = reply
                .get_document("cursor")
                .and_then(|c| c.get_array("firstBatch"))
                .ok()
                .and_then(|b| b.iter().find_map(|e| e.as_document()))
                .map_or_else(
                    || StatementError {
                        code: 0,
                        message: "a bulk write failed".to_owned(),
                    },
                    StatementError::from_reply,
                );
            return Err(Error::custom(first));
        }
        let updated = count(&reply, "nMatched") + count(&reply, "nUpserted");
        let inserted = count(&reply, "nInserted");
        if updated < updates || inserted < inserts {
            return Err(Error::custom(NotApplied {
                written: updated.min(updates) + inserted.min(inserts),
                expected: updates + inserts,
            }));
        }
        Ok(())
    }

    async fn run_per_collection(self, client: &Client, s: &mut ClientSession) -> Result<(), Error> {
        let mut statements = self.statements.into_iter().peekable();
        while let Some(first) = statements.next() {
            let is_update = matches!(first.kind, Kind::Update { .. });
            let mut run = vec![first.kind];
            while let Some(next) = statements.peek() {
                if next.ns != first.ns || matches!(next.kind, Kind::Update { .. }) != is_update {
                    break;
                }
                if let Some(next) = statements.next() {
                    run.push(next.kind);
                }
            }
            let (db, coll) = first.ns.split_once('.').unwrap_or((&first.ns, ""));
            let expected = run.len();
            let command = if is_update {
                let updates: Vec<Document> = run
                    .into_iter()
                    .filter_map(|k| match k {
                        Kind::Update { q, u, upsert } => {
                            Some(doc! { "q": q, "u": u, "upsert": upsert })
                        }
                        Kind::Insert(_) => None,
                    })
                    .collect();
                doc! { "update": coll, "updates": updates, "ordered": true }
            } else {
                let documents: Vec<Document> = run
                    .into_iter()
                    .filter_map(|k| match k {
                        Kind::Insert(d) => Some(d),
                        Kind::Update { .. } => None,
                    })
                    .collect();
                doc! { "insert": coll, "documents": documents, "ordered": true }
            };
            let reply = client
                .database(db)
                .run_command(command)
                .session(&mut *s)
                .await?;
            crate::mongo::check_write_reply(&reply, expected)?;
        }
        Ok(())
    }
}
