//! Exponential backoff for loops that wait for a dependency to come back.
//!
//! One type for every "try, and if it failed wait a little longer before the
//! next try" loop of the runtime: the consumer loop's group creation and
//! reads, the start-up work, the outbox's change-stream watcher and
//! notify-svc's live tail. The delay starts at `initial`, doubles after every
//! failed try up to `max`, and goes back to `initial` after a success
//! ([`Backoff::reset`]). Waiting ends early when the shutdown token is
//! cancelled, so no loop delays a shutdown by its backoff.
//!
//! (Transaction retries have their own jittered policy,
//! [`crate::mongo::RetryPolicy`], and failed messages their own schedule in
//! the consumer loop: those are not "wait for a dependency" loops.)

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A doubling delay between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s: reconnecting to Redis or MongoDB.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// A backoff starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// After a success: the next wait is `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay the next [`Backoff::sleep`] waits, which it then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Sleeps for the next delay; `false` if `shutdown` was cancelled first.
    pub async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_token_ends_the_wait_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        assert!(!b.sleep(&token).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
