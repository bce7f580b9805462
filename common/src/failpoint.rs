//! Failpoints: named places where a test can make a service "crash".
//!
//! Compiled in only with the `failpoints` cargo feature, which only the
//! end-to-end test crate enables, and only as a dev-dependency: a build of any
//! binary (`cargo build --release`, `make run`, the Dockerfile) never has it,
//! and `scripts/check-release.sh` (part of `make test`) proves it by looking
//! for [`MARKER`] in every release binary. Without the feature [`hit`] is an
//! empty inline function. Even when compiled in, a failpoint does nothing
//! until a test arms it.
//!
//! A test arms one with [`arm`]: the task that reaches it stops there (it
//! never acknowledges, never marks, never answers), [`wait_hit`] tells the
//! test, which then kills the service (drops its tasks) as a `kill -9` would.
//! [`arm_once`] stops only the first task that reaches it, until [`disarm`]
//! lets it go on: a pause, as a `SIGSTOP` of that one task and a `SIGCONT`
//! would be.
//! Names are scoped by the deployment's stream prefix, so tests running side
//! by side in one process do not trip each other's failpoints.
//!
//! | name | where |
//! |---|---|
//! | `order-svc.after_commit` | an order committed, before the HTTP response |
//! | `outbox.before_publish` | the relay read a batch, before XADD |
//! | `outbox.after_publish` | the relay XADDed a batch, before marking it published |
//! | `<group>.before_ack` | a handler of `<group>` succeeded (its effect committed), before XACK |

use contract::streams::Namespace;

/// Text that is in a binary exactly when failpoints are compiled into it (the
/// log line of a failpoint that was hit): what the release check looks for.
pub const MARKER: &str = "foodchain failpoint reached; this task stops here";

#[cfg(feature = "failpoints")]
mod imp {
    use std::{
        collections::HashMap,
        sync::{Arc, LazyLock, Mutex},
    };

    use tokio::sync::Notify;

    #[derive(Default)]
    struct Point {
        armed: bool,
        /// Only the first task to reach it stops.
        once: bool,
        hits: usize,
        notify: Arc<Notify>,
        /// Wakes the stopped tasks when it is disarmed.
        released: Arc<Notify>,
    }

    static POINTS: LazyLock<Mutex<HashMap<String, Point>>> = LazyLock::new(Mutex::default);

    fn points() -> std::sync::MutexGuard<'static, HashMap<String, Point>> {
        POINTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn hit(key: &str) {
        let stopped = match points().get_mut(key) {
            Some(point) if point.armed && !(point.once && point.hits > 0) => {
                point.hits += 1;
                point.notify.notify_waiters();
                Some((point.once, point.released.clone()))
            }
            _ => None,
        };
        let Some((once, released)) = stopped else {
            return;
        };
        tracing::warn!(failpoint = key, "{}", super::MARKER);
        if !once {
            // A crash: the task never goes on, even if the service it ran
            // in left it behind when it was killed.
            std::future::pending::<()>().await;
        }
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !points().get(key).is_some_and(|p| p.armed) {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn arm(key: String, armed: bool, once: bool) {
        let mut points = points();
        let point = points.entry(key).or_default();
        point.armed = armed;
        point.once = once;
        point.hits = 0;
        if !armed {
            point.released.notify_waiters();
        }
    }

    pub(super) async fn wait_hit(key: &str) {
        loop {
            let notify = {
                let mut points = points();
                let point = points.entry(key.to_owned()).or_default();
                if point.hits > 0 {
                    return;
                }
                point.notify.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if points().get(key).is_some_and(|p| p.hits > 0) {
                return;
            }
            notified.await;
        }
    }
}

/// Passes the failpoint `name` of namespace `ns`.
#[cfg(feature = "failpoints")]
pub async fn hit(ns: &Namespace, name: &str) {
    imp::hit(&format!("{}{name}", ns.prefix())).await;
}

/// Passes the failpoint `name` (no-op: failpoints are not compiled in).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_ns: &Namespace, _name: &str) {}

/// Arms failpoint `name` of namespace `ns`: every task that reaches it
/// stops there for good (disarming only lets later ones pass).
#[cfg(feature = "failpoints")]
pub fn arm(ns: &Namespace, name: &str) {
    imp::arm(format!("{}{name}", ns.prefix()), true, false);
}

/// Arms failpoint `name` of namespace `ns` for the first task that reaches
/// it only, which stops there until it is disarmed; the others pass.
#[cfg(feature = "failpoints")]
pub fn arm_once(ns: &Namespace, name: &str) {
    imp::arm(format!("{}{name}", ns.prefix()), true, true);
}

/// Disarms failpoint `name` of namespace `ns`: later tasks pass, and a task
/// stopped by [`arm_once`] goes on.
#[cfg(feature = "failpoints")]
pub fn disarm(ns: &Namespace, name: &str) {
    imp::arm(format!("{}{name}", ns.prefix()), false, false);
}

/// Waits until failpoint `name` of namespace `ns` was hit since it was armed.
#[cfg(feature = "failpoints")]
pub async fn wait_hit(ns: &Namespace, name: &str) {
    imp::wait_hit(&format!("{}{name}", ns.prefix())).await;
}
