//! Failpoints: named places where a test can make a service "crash".
//!
//! Compiled in only with the `failpoints` cargo feature, which nothing but
//! the test crates enables; in every other build [`hit`] is an empty inline
//! function. Even when compiled in, a failpoint does nothing until armed.
//!
//! * In-process tests arm one with [`arm`] and [`Action::Hang`]: the task that
//!   reaches it stops there forever (it never acknowledges, never marks, never
//!   answers), and [`wait_hit`] tells the test, which then kills the service
//!   (drops its tasks) as a `kill -9` would.
//! * Process-level tests set `FAILPOINTS=name=abort,...`: the process aborts
//!   on the spot.
//!
//! Names are scoped by the deployment's stream prefix, so tests running
//! side by side in one process do not trip each other's failpoints.
//!
//! | name | where |
//! |---|---|
//! | `order-svc.after_commit` | an order committed, before the HTTP response |
//! | `outbox.before_publish` | the relay read a batch, before XADD |
//! | `outbox.after_publish` | the relay XADDed a batch, before marking it published |
//! | `<group>.before_ack` | a handler of `<group>` succeeded (its effect committed), before XACK |

use crate::streams::Namespace;

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the task here forever (the test then kills the service).
    Hang,
    /// Abort the process.
    Abort,
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::{
        collections::HashMap,
        sync::{Arc, LazyLock, Mutex},
    };

    use tokio::sync::Notify;

    use super::Action;

    #[derive(Default)]
    struct Point {
        action: Option<Action>,
        hits: usize,
        notify: Arc<Notify>,
    }

    static POINTS: LazyLock<Mutex<HashMap<String, Point>>> = LazyLock::new(|| {
        let mut points = HashMap::new();
        for spec in std::env::var("FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let (name, action) = spec.split_once('=').unwrap_or((spec, "abort"));
            let action = if action == "hang" {
                Action::Hang
            } else {
                Action::Abort
            };
            points.insert(
                name.to_owned(),
                Point {
                    action: Some(action),
                    ..Point::default()
                },
            );
        }
        Mutex::new(points)
    });

    fn points() -> std::sync::MutexGuard<'static, HashMap<String, Point>> {
        POINTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The scoped name (`key`) wins; the bare name is how `FAILPOINTS` arms
    /// a whole process.
    pub(super) async fn hit(key: &str, bare: &str) {
        let action = {
            let mut points = points();
            match points.get_mut(key).filter(|p| p.action.is_some()) {
                Some(point) => {
                    point.hits += 1;
                    point.notify.notify_waiters();
                    point.action
                }
                None => points.get(bare).and_then(|p| p.action),
            }
        };
        act(action, key).await;
    }

    async fn act(action: Option<Action>, name: &str) {
        match action {
            None => {}
            Some(Action::Abort) => {
                eprintln!("failpoint {name}: aborting the process");
                std::process::abort();
            }
            Some(Action::Hang) => {
                tracing::warn!(failpoint = name, "failpoint hit: this task stops here");
                std::future::pending::<()>().await;
            }
        }
    }

    pub(super) fn arm(key: String, action: Option<Action>) {
        let mut points = points();
        let point = points.entry(key).or_default();
        point.action = action;
        point.hits = 0;
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
    imp::hit(&format!("{}{name}", ns.prefix()), name).await;
}

/// Passes the failpoint `name` (no-op: failpoints are not compiled in).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_ns: &Namespace, _name: &str) {}

/// Arms (`Some`) or disarms (`None`) failpoint `name` of namespace `ns`.
#[cfg(feature = "failpoints")]
pub fn arm(ns: &Namespace, name: &str, action: Option<Action>) {
    imp::arm(format!("{}{name}", ns.prefix()), action);
}

/// Waits until failpoint `name` of namespace `ns` was hit since it was armed.
#[cfg(feature = "failpoints")]
pub async fn wait_hit(ns: &Namespace, name: &str) {
    imp::wait_hit(&format!("{}{name}", ns.prefix())).await;
}
