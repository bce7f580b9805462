//! MongoDB client set-up and the retried multi-document transaction.
//!
//! Every state change in this system happens in a transaction on a replica
//! set. Under contention MongoDB aborts one of two conflicting transactions
//! with `WriteConflict`, labelled `TransientTransactionError`: the right
//! response is to run the *whole* transaction again, not to report an error.
//! A commit whose outcome is unknown (`UnknownTransactionCommitResult`, e.g. a
//! primary step-down mid-commit) is retried as a commit; commits are
//! idempotent. [`run_transaction`] does both, a bounded number of times, with
//! jittered exponential backoff so that colliding writers spread out, within
//! a time budget. Errors of the body's own (insufficient stock, ...) abort at
//! once.
//!
//! A transaction whose client died in the middle of `commitTransaction` is
//! left open on the server and keeps its documents locked until the server's
//! `transactionLifetimeLimitSeconds` (60 s by default): the driver marks the
//! transaction committed *before* sending the commit, so no abort follows.
//! Writers of those documents see write conflicts until then. The shipped
//! deployments lower the limit to 10 s, and consumers treat exhausted
//! conflicts as "unavailable" (retried without using up attempts).

use std::{future::Future, pin::Pin, time::Duration};

use mongodb::{
    Client, ClientSession,
    bson::doc,
    error::{Error, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT},
    options::{ClientOptions, ReadConcern, TransactionOptions, WriteConcern},
};
use rand::Rng;
use tracing::{debug, warn};

/// A boxed future borrowing for `'a`, as transaction bodies return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connects (lazily) with short timeouts, so readiness checks and requests
/// fail within seconds when the database is away instead of hanging for 30 s.
pub async fn connect(url: &str, app_name: &str) -> mongodb::error::Result<Client> {
    let mut opts = ClientOptions::parse(url).await?;
    opts.app_name = Some(app_name.to_owned());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    opts.connect_timeout.get_or_insert(Duration::from_secs(3));
    Client::with_options(opts)
}

/// `ping` against `db`.
pub async fn ping(client: &Client, db: &str) -> mongodb::error::Result<()> {
    client
        .database(db)
        .run_command(doc! { "ping": 1 })
        .await
        .map(drop)
}

/// Errors that may wrap a MongoDB error (so retries can read its labels).
pub trait MaybeMongoError: From<Error> {
    /// The MongoDB error inside, if this is one.
    fn as_mongo(&self) -> Option<&Error>;
}

impl MaybeMongoError for Error {
    fn as_mongo(&self) -> Option<&Error> {
        Some(self)
    }
}

/// How persistently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Runs of the whole transaction before giving up.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, randomised ±50 %.
    pub base_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// No new attempt starts after this much time: the caller then gets the
    /// last transient error (keep it below any timeout around the call).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(250),
            max_elapsed: Duration::from_millis(800),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        exp.mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

/// Runs `body` in a transaction (snapshot reads, majority writes) and commits,
/// retrying as the module docs describe. `ctx` is lent to every run of `body`.
pub async fn run_transaction<C, T, E, F>(
    client: &Client,
    policy: RetryPolicy,
    ctx: &C,
    body: F,
) -> Result<T, E>
where
    C: Sync + ?Sized,
    E: MaybeMongoError,
    F: for<'a> FnMut(&'a mut ClientSession, &'a C) -> BoxFuture<'a, Result<T, E>>,
{
    let options = TransactionOptions::builder()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .build();
    transaction(client, options, policy, ctx, body).await
}

/// [`run_transaction`] for a body that only writes, every write guarded by
/// its filter (a guarded update that matches nothing fails the call, see
/// [`crate::writes`]): no read concern is sent, so the first command may be
/// a `bulkWrite`, which SecantusDB refuses with one (`crate::writes`), and
/// the transaction saves the read it would otherwise start with. Safe
/// because nothing is decided on a snapshot: each guard is checked by the
/// write itself, and a concurrent change of a written document is a write
/// conflict, retried as in [`run_transaction`].
pub async fn run_write_transaction<C, T, E, F>(
    client: &Client,
    policy: RetryPolicy,
    ctx: &C,
    body: F,
) -> Result<T, E>
where
    C: Sync + ?Sized,
    E: MaybeMongoError,
    F: for<'a> FnMut(&'a mut ClientSession, &'a C) -> BoxFuture<'a, Result<T, E>>,
{
    let options = TransactionOptions::builder()
        .write_concern(WriteConcern::majority())
        .build();
    transaction(client, options, policy, ctx, body).await
}

async fn transaction<C, T, E, F>(
    client: &Client,
    options: TransactionOptions,
    policy: RetryPolicy,
    ctx: &C,
    mut body: F,
) -> Result<T, E>
where
    C: Sync + ?Sized,
    E: MaybeMongoError,
    F: for<'a> FnMut(&'a mut ClientSession, &'a C) -> BoxFuture<'a, Result<T, E>>,
{
    let mut session = client.start_session().await?;
    let started = std::time::Instant::now();
    let may_retry =
        |attempt: u32| attempt < policy.max_attempts && started.elapsed() < policy.max_elapsed;
    let mut attempt = 0;
    loop {
        attempt += 1;
        session
            .start_transaction()
            .with_options(options.clone())
            .await?;
        let value = match body(&mut session, ctx).await {
            Ok(v) => v,
            Err(e) => {
                // Aborting an already-aborted transaction fails harmlessly.
                let _ = session.abort_transaction().await;
                if is_transient(&e) && may_retry(attempt) {
                    metrics::counter!("transaction_retries_total").increment(1);
                    debug!(
                        attempt,
                        "transient transaction error; running the transaction again"
                    );
                    tokio::time::sleep(policy.backoff(attempt)).await;
                    continue;
                }
                return Err(e);
            }
        };
        match commit(&mut session, policy).await {
            Ok(()) => return Ok(value),
            Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && may_retry(attempt) => {
                metrics::counter!("transaction_retries_total").increment(1);
                debug!(
                    attempt,
                    "commit hit a transient error; running the transaction again"
                );
                tokio::time::sleep(policy.backoff(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn commit(session: &mut ClientSession, policy: RetryPolicy) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match session.commit_transaction().await {
            Err(e)
                if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && attempt < policy.max_attempts =>
            {
                warn!(attempt, error = %e, "commit outcome unknown; committing again");
                tokio::time::sleep(policy.backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

/// A write conflict, labelled or a statement's (see [`crate::writes`]).
fn is_transient<E: MaybeMongoError>(e: &E) -> bool {
    e.as_mongo().is_some_and(crate::writes::is_write_conflict)
}

/// Whether `e` means "the database is unreachable or contended right now"
/// (answer 503 and let the client retry) rather than a bug.
pub fn is_unavailable(e: &Error) -> bool {
    use mongodb::error::ErrorKind;
    crate::writes::is_write_conflict(e)
        || e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
        || matches!(
            *e.kind,
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
        )
}

/// Checks the reply of a raw write command (`update`, `insert`) sent with
/// `run_command`: write errors become a command error carrying the first
/// one's code (so [`is_duplicate_key`] and the error labels still apply), and
/// fewer documents than `expected` written is an error too.
pub fn check_write_reply(reply: &mongodb::bson::Document, expected: usize) -> Result<(), Error> {
    if let Some((_, first)) = write_errors(reply).into_iter().next() {
        return Err(first);
    }
    let n = count(reply, "n");
    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
    if n < expected {
        return Err(Error::custom(crate::writes::NotApplied {
            written: n,
            expected,
        }));
    }
    Ok(())
}

/// The per-statement errors of a raw write command's reply, as `(statement
/// index, error)`, each a [`crate::writes::StatementError`] carrying the
/// statement's code (so [`is_duplicate_key`] and the conflict check apply). For unordered writes,
/// where every other statement was applied.
pub fn write_errors(reply: &mongodb::bson::Document) -> Vec<(usize, Error)> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Vec::new();
    };
    errors
        .iter()
        .filter_map(|e| e.as_document())
        .map(|e| {
            let index = e
                .get_i32("index")
                .ok()
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or_default();
            (
                index,
                Error::custom(crate::writes::StatementError::from_reply(e)),
            )
        })
        .collect()
}

/// Whether `e` is a duplicate-key error (code 11000), e.g. a unique index
/// doing its job.
pub fn is_duplicate_key(e: &Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        _ => {
            crate::writes::statement_error(e).is_some_and(|s| s.code == 11000)
                || e.to_string().contains("E11000")
        }
    }
}

/// A count in a raw reply (`int32` or `int64`; 0 when absent).
pub(crate) fn count(reply: &mongodb::bson::Document, field: &str) -> i64 {
    reply
        .get_i32(field)
        .map(i64::from)
        .or_else(|_| reply.get_i64(field))
        .unwrap_or_default()
}
