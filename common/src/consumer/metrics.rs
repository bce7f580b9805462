//! The consumer loop's metrics, created once per loop with its labels.

use metrics::{Counter, Histogram};

use super::ConsumerConfig;
use contract::dead_letter::Reason;

pub(super) struct LoopMetrics {
    pub(super) done: Counter,
    pub(super) skipped: Counter,
    pub(super) failed: Counter,
    pub(super) reclaimed: Counter,
    /// Indexed by `Reason as usize`.
    dead_lettered: Vec<Counter>,
    pub(super) duration: Histogram,
    /// From `XADD` to this group's read (the entry id's time).
    pub(super) stream_wait: Histogram,
}

impl LoopMetrics {
    pub(super) fn new(cfg: &ConsumerConfig) -> Self {
        let (s, g) = (cfg.label.clone(), cfg.group.clone());
        let handled = |outcome: &'static str| metrics::counter!("events_handled_total", "stream" => s.clone(), "group" => g.clone(), "outcome" => outcome);
        let dead = |reason: Reason| metrics::counter!("events_dead_lettered_total", "stream" => s.clone(), "group" => g.clone(), "reason" => reason.as_str());
        Self {
            done: handled("done"),
            skipped: handled("skipped"),
            failed: metrics::counter!("events_failed_total", "stream" => s.clone(), "group" => g.clone()),
            reclaimed: metrics::counter!("events_reclaimed_total", "stream" => s.clone(), "group" => g.clone()),
            dead_lettered: Reason::ALL.into_iter().map(dead).collect(),
            duration: metrics::histogram!("handler_duration_seconds", "stream" => s.clone(), "group" => g.clone()),
            stream_wait: metrics::histogram!("stream_wait_seconds", "stream" => s.clone(), "group" => g.clone()),
        }
    }

    pub(super) fn dead_lettered(&self, reason: Reason) -> &Counter {
        &self.dead_lettered[reason as usize]
    }
}
