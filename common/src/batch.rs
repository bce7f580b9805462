//! Group commit: one writer task that takes every job queued while it was
//! busy and does them in one round of writes.
//!
//! Requests and handlers run concurrently; each write they need costs the
//! database a command (and, in a transaction, a commit) however small it is.
//! A [`Batcher`] turns N concurrent writes into one: callers
//! [`submit`](Batcher::submit) a job and wait for its answer; a single task
//! takes whatever is queued (up to `max`), hands the batch to the
//! [`Batch`], and answers each caller, in arrival order. Under no load a
//! batch is one job and costs what the direct write did (plus a channel
//! hop); under load the batch grows by itself, because while one round
//! runs the next jobs queue.
//!
//! Used for order placement (order-svc), guarded status moves (order-svc and
//! delivery-svc, [`crate::transition`]) and timeline appends (notify-svc).
//!
//! A writer may run up to `depth` batches at once ([`Batcher::pipelined`]):
//! while one batch's transaction commits, the jobs queued meanwhile start
//! the next, instead of waiting for the commit and then for their own
//! transaction. Only for writes whose concurrent batches do not meet on
//! the same documents in the common case (status moves of different
//! orders): when they do, the database's write conflict runs one of them
//! again, which is correct and only slower. Placements keep one batch at a
//! time, because every batch decrements the same dishes.
//!
//! A writer may also *linger* ([`Batcher::with_linger`]): having taken
//! the first job, it waits up to the linger for more before it writes,
//! until it holds `enough` submissions. Only for writes nobody waits on to
//! go on (notify-svc's timeline appends, off the path of both the pipeline
//! and the live pushes): each write command costs the database the same
//! whether it carries one job or fifty, and at a moderate pace the jobs
//! come one by one, just too far apart to meet. A burst (a consumer's whole
//! read, when its stream has a backlog) is a batch by itself: waiting on
//! top of it would only hold up the reader behind it, whose next read waits
//! for this write, and a linger paid on every read caps how fast a backlog
//! drains (docs/performance.md, 23).
//!
//! The writer starts with the first job, on that job's runtime (so a handle
//! can be built outside a runtime, and tests with several runtimes each get
//! theirs), and ends when every handle is dropped, after answering what was
//! queued. A panic in one batch answers its jobs with
//! [`Batch::failed`] and the writer goes on.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

/// Requests waiting for the writer, at most; more wait to be queued.
const QUEUE: usize = 1024;

/// What a writer does with a batch.
pub trait Batch: Send + Sync + 'static {
    /// One caller's job.
    type Job: Send + 'static;
    /// Its answer.
    type Output: Send + 'static;
    /// Does every job (at least one); one answer per job, in order.
    fn run(&self, jobs: &[Self::Job]) -> impl Future<Output = Vec<Self::Output>> + Send;
    /// The answer to a job whose batch panicked.
    fn failed(&self, job: &Self::Job) -> Self::Output;
}

/// The writer went away (its task panicked outside a batch, or the runtime
/// is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} writer stopped")]
pub struct Stopped(pub &'static str);

/// One submission: a job, or a run of jobs that go into the same batch.
type Queued<B> = Vec<(<B as Batch>::Job, oneshot::Sender<<B as Batch>::Output>)>;

/// The writer's end of the queue, before the writer starts.
type Idle<B> = Option<(mpsc::Receiver<Queued<B>>, B)>;

/// A handle to one writer (cheap to clone); see the module docs.
pub struct Batcher<B: Batch> {
    tx: mpsc::Sender<Queued<B>>,
    idle: Arc<Mutex<Idle<B>>>,
    max: usize,
    depth: usize,
    linger: Linger,
    name: &'static str,
}

/// How long a writer waits for more after a batch's first job, and for
/// how many submissions at most (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Linger {
    time: Duration,
    enough: usize,
}

impl<B: Batch> Clone for Batcher<B> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            idle: self.idle.clone(),
            max: self.max,
            depth: self.depth,
            linger: self.linger,
            name: self.name,
        }
    }
}

impl<B: Batch> std::fmt::Debug for Batcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("name", &self.name)
            .field("max", &self.max)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl<B: Batch> Batcher<B> {
    /// A writer doing batches of at most `max` jobs with `batch`; `name`
    /// labels its `write_batch_size` histogram (`writer="<name>"`).
    pub fn new(name: &'static str, max: usize, batch: B) -> Self {
        Self::pipelined(name, max, 1, batch)
    }

    /// A writer running up to `depth` batches at once (see the module
    /// docs), each of at most `max` jobs.
    pub fn pipelined(name: &'static str, max: usize, depth: usize, batch: B) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            idle: Arc::new(Mutex::new(Some((rx, batch)))),
            max: max.max(1),
            depth: depth.max(1),
            linger: Linger {
                time: Duration::ZERO,
                enough: 1,
            },
            name,
        }
    }

    /// The same writer, lingering up to `linger` after a batch's first job
    /// for more while it holds fewer than `enough` submissions (see the
    /// module docs); a zero `linger`: none.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration, enough: usize) -> Self {
        self.linger = Linger {
            time: linger,
            enough: enough.clamp(1, self.max),
        };
        self
    }

    /// Queues `job` and waits for its answer.
    pub async fn submit(&self, job: B::Job) -> Result<B::Output, Stopped> {
        let mut answers = self.submit_all(vec![job]).await?;
        answers.pop().ok_or(Stopped(self.name))
    }

    /// Queues `jobs` as one unit, in order, and waits for their answers:
    /// they go into the same batch (which may then hold a little more than
    /// `max` jobs), so a [`Batch`] that decides its jobs in order decides
    /// each on what the ones before it did.
    pub async fn submit_all(&self, jobs: Vec<B::Job>) -> Result<Vec<B::Output>, Stopped> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let start = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((rx, batch)) = start {
            let shape = Shape {
                max: self.max,
                depth: self.depth,
                linger: self.linger,
            };
            tokio::spawn(write(rx, batch, shape, self.name));
        }
        let (queued, answers): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|job| {
                let (done, answer) = oneshot::channel();
                ((job, done), answer)
            })
            .unzip();
        self.tx.send(queued).await.map_err(|_| Stopped(self.name))?;
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(answer.await.map_err(|_| Stopped(self.name))?);
        }
        Ok(out)
    }
}

/// How a writer cuts its batches.
#[derive(Clone, Copy)]
struct Shape {
    max: usize,
    depth: usize,
    linger: Linger,
}

/// The writer: batches of what is queued, up to `depth` at a time.
async fn write<B: Batch>(
    mut rx: mpsc::Receiver<Queued<B>>,
    batch: B,
    shape: Shape,
    name: &'static str,
) {
    let Shape { max, depth, linger } = shape;
    let batch = &batch;
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        let mut queued = Vec::with_capacity(max);
        tokio::select! {
            // Answer finished batches first, so their callers go on.
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            // `recv_many` is cancel-safe: nothing queued is lost when a
            // finished batch wins the race.
            n = rx.recv_many(&mut queued, max), if open && running.len() < depth => {
                if n == 0 {
                    open = false; // every handle dropped: finish what runs
                } else {
                    linger_for_more(&mut rx, &mut queued, linger, &mut running).await;
                    running.push(run_batch(batch, queued, name));
                }
            }
            else => break,
        }
    }
    debug!(writer = name, "writer stopped");
}

/// Waits up to the linger for more submissions, until `queued` holds
/// `enough`, answering batches that finish meanwhile. Out of time, or every
/// handle dropped (which the next receive sees): it returns.
async fn linger_for_more<T, F: Future<Output = ()>>(
    rx: &mut mpsc::Receiver<T>,
    queued: &mut Vec<T>,
    linger: Linger,
    running: &mut FuturesUnordered<F>,
) {
    if linger.time.is_zero() {
        return;
    }
    let until = tokio::time::Instant::now() + linger.time;
    while queued.len() < linger.enough {
        let room = linger.enough - queued.len();
        let more = tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => continue,
            more = tokio::time::timeout_at(until, rx.recv_many(queued, room)) => more,
        };
        if !matches!(more, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Runs one batch and answers each of its callers.
async fn run_batch<B: Batch>(batch: &B, queued: Vec<Queued<B>>, name: &'static str) {
    let (jobs, senders): (Vec<B::Job>, Vec<_>) = queued.into_iter().flatten().unzip();
    metrics::histogram!("write_batch_size", "writer" => name).record(jobs.len() as f64);
    let results = match AssertUnwindSafe(batch.run(&jobs)).catch_unwind().await {
        Ok(results) if results.len() == jobs.len() => results,
        Ok(_) | Err(_) => {
            error!(writer = name, "a write batch panicked or lost answers");
            jobs.iter().map(|j| batch.failed(j)).collect()
        }
    };
    for (done, result) in senders.into_iter().zip(results) {
        // The caller may have given up (timeout, client gone).
        let _ = done.send(result);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Doubles numbers; records batch sizes; panics on 13.
    struct Double(Arc<Mutex<Vec<usize>>>, AtomicUsize);

    impl Batch for Double {
        type Job = u32;
        type Output = Option<u32>;
        async fn run(&self, jobs: &[u32]) -> Vec<Option<u32>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.lock().unwrap().push(jobs.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(!jobs.contains(&13), "unlucky");
            jobs.iter().map(|j| Some(j * 2)).collect()
        }
        fn failed(&self, _: &u32) -> Option<u32> {
            None
        }
    }

    #[tokio::test]
    async fn concurrent_jobs_share_batches_and_each_gets_its_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::new("test", 8, Double(sizes.clone(), AtomicUsize::new(0)));
        let jobs = (100..120).collect::<Vec<u32>>();
        let answers = futures::future::join_all(jobs.iter().map(|&i| {
            let b = b.clone();
            async move { b.submit(i).await.unwrap() }
        }))
        .await;
        assert_eq!(
            answers,
            jobs.iter().map(|i| Some(i * 2)).collect::<Vec<_>>()
        );
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 20, "no batching happened: {sizes:?}");
    }

    /// Counts how many of its batches run at once.
    #[derive(Default)]
    struct Overlap {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Batch for Arc<Overlap> {
        type Job = u32;
        type Output = u32;
        async fn run(&self, jobs: &[u32]) -> Vec<u32> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            jobs.to_vec()
        }
        fn failed(&self, _: &u32) -> u32 {
            0
        }
    }

    /// 40 jobs from 40 callers, 4 per batch: what ran at once at most.
    async fn most_at_once(depth: usize) -> usize {
        let overlap = Arc::new(Overlap::default());
        let b = Batcher::pipelined("test", 4, depth, overlap.clone());
        let answers = futures::future::join_all((0..40).map(|i| {
            let b = b.clone();
            async move { b.submit(i).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, (0..40).collect::<Vec<u32>>());
        overlap.most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_pipelined_writer_runs_up_to_depth_batches_at_once() {
        assert_eq!(most_at_once(1).await, 1);
        assert_eq!(most_at_once(2).await, 2);
        assert_eq!(most_at_once(3).await, 3);
    }

    /// Three jobs 7 ms apart, each waited for by its own task: the batch
    /// sizes.
    async fn three_jobs_7_ms_apart(linger: Duration, enough: usize) -> Vec<usize> {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::new("test", 8, Double(sizes.clone(), AtomicUsize::new(0)))
            .with_linger(linger, enough);
        let mut tasks = Vec::new();
        for i in 0..3 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.submit(i).await.unwrap() }));
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
        let answers: Vec<Option<u32>> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers, [Some(0), Some(2), Some(4)]);
        sizes.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_writer_waits_for_jobs_that_come_soon_after() {
        // Without: the first goes alone, the two queued while it ran together.
        assert_eq!(three_jobs_7_ms_apart(Duration::ZERO, 8).await, [1, 2]);
        assert_eq!(
            three_jobs_7_ms_apart(Duration::from_millis(25), 8).await,
            [3]
        );
        // A linger shorter than the gaps changes nothing.
        assert_eq!(
            three_jobs_7_ms_apart(Duration::from_millis(5), 8).await,
            [1, 2]
        );
        // It stops waiting once it holds enough.
        assert_eq!(
            three_jobs_7_ms_apart(Duration::from_millis(25), 2).await,
            [2, 1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_enough_jobs_is_written_without_lingering() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::new("test", 8, Double(sizes.clone(), AtomicUsize::new(0)))
            .with_linger(Duration::from_secs(1), 3);
        let started = tokio::time::Instant::now();
        let answers = futures::future::join_all((0..3).map(|i| b.submit(i))).await;
        assert_eq!(
            answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [Some(0), Some(2), Some(4)]
        );
        assert_eq!(sizes.lock().unwrap().clone(), [3]);
        // Written at once: no second of lingering.
        assert!(started.elapsed() < Duration::from_millis(100));
        // Fewer than enough wait for the linger.
        let started = tokio::time::Instant::now();
        b.submit(5).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_jobs_and_the_writer_goes_on() {
        let b = Batcher::new("test", 8, Double(Arc::default(), AtomicUsize::new(0)));
        assert_eq!(b.submit(13).await.unwrap(), None);
        assert_eq!(b.submit(2).await.unwrap(), Some(4));
    }
}
