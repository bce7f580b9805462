//! The Tokio runtime of a service's process (`WORKER_THREADS`).
//!
//! A service is a few dozen small tasks that mostly wait on Redis, MongoDB
//! and sockets; a core's worth of work is hundreds of orders a second. With
//! one worker thread per core (Tokio's default) every service of a shared
//! host (compose, `make run`, the benchmark: four services, Redis and
//! MongoDB on the same cores) keeps parking and waking a second thread for
//! work the first could have done: futex and epoll round trips, context
//! switches and cache misses that the whole host pays for. So a service runs
//! **one worker thread by default**; it scales out with replicas (the
//! partitions and leases are built for that), or up with `WORKER_THREADS=N`
//! (`0`: one per core) on a host of its own. Measured in docs/performance.md
//! (29): creation at c=1 rose by about 12 %, and at 240 orders/s created →
//! delivered fell by about a third on a fresh system (after a full ladder
//! it was the same as before); CPU per order did not change.
//!
//! The runtime is built by `main` from the settings, before anything else
//! runs; tests run a service inside their own runtime instead.

use crate::settings::Env;

/// The variable.
pub const VAR: &str = "WORKER_THREADS";

/// Worker threads when `WORKER_THREADS` is unset.
pub const DEFAULT: usize = 1;

/// Reads `WORKER_THREADS` (0 to 1024; 0 means one per core).
pub fn from_env(env: &mut Env) -> usize {
    let threads = env.parse(VAR, DEFAULT);
    env.check(
        threads <= 1024,
        format!("{VAR}={threads}: must be between 0 (one per core) and 1024"),
    );
    threads
}

/// A multi-threaded runtime with `threads` workers (0: one per core), every
/// driver enabled. The thread that calls `block_on` on it runs the future
/// it is given; the tasks that future spawns run on the workers.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(value: Option<&str>) -> Result<usize, String> {
        let mut env = match value {
            Some(v) => Env::from_map([(VAR, v)]),
            None => Env::from_map::<&str, &str>([]),
        };
        let n = from_env(&mut env);
        env.finish().map(|()| n).map_err(|e| e.to_string())
    }

    #[test]
    fn one_worker_unless_told_otherwise() {
        assert_eq!(read(None).unwrap(), 1);
        assert_eq!(read(Some("0")).unwrap(), 0);
        assert_eq!(read(Some("4")).unwrap(), 4);
        assert!(read(Some("2000")).unwrap_err().contains(VAR));
        assert!(read(Some("-1")).is_err());
    }

    #[test]
    fn the_runtime_has_the_workers_asked_for() {
        for threads in [1, 3] {
            let rt = build(threads).unwrap();
            assert_eq!(rt.metrics().num_workers(), threads);
            assert_eq!(
                rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
                7
            );
        }
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(build(0).unwrap().metrics().num_workers(), cores);
    }
}
