//! Reclaiming: retries and deferrals of this consumer's own messages, and the
//! XAUTOCLAIM takeover of messages other consumers left pending.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use redis::{Script, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use contract::{
    StreamEntry,
    events::StreamEvent,
    redis::{self as wire, ReplyError},
};

use super::{Handler, Inner, LoopError, Pending, duration_ms, lock};

/// Consumers holding nothing and idle this long are removed from the group.
const FORGET_IDLE_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// Takeover scans between two clean-ups of idle consumers.
const SCANS_PER_CLEANUP: u64 = 300;

/// Claims messages this consumer still owns, for a retry. Checking the owner
/// and claiming in one script keeps a retry from stealing a message another
/// consumer took over meanwhile. A retry counts as a delivery (the count goes
/// up); a deferral does not (`RETRYCOUNT` keeps it). KEYS: stream.
/// ARGV: group, consumer, then pairs of (id, `1` to keep the count or `0`).
/// Returns `[[entry, delivery_count], ...]`.
const CLAIM_OWN_SCRIPT: &str = r"
local out = {}
for i = 3, #ARGV, 2 do
  local id, keep = ARGV[i], ARGV[i + 1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    local count = p[1][4] + 1
    if keep == '1' then count = p[1][4] end
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', count)
    if c[1] then
      table.insert(out, {c[1], count})
    end
  end
end
return out
";

impl<E: StreamEvent, H: Handler<E>> Inner<E, H> {
    pub(super) async fn reclaim_loop(&self, shutdown: CancellationToken) {
        let interval = self.settings().reclaim_interval;
        // Scan at once: messages of consumers that died before we started.
        let mut next_scan = Instant::now();
        let mut scans = 0u64;
        loop {
            let next_retry = lock(&self.retries).iter().map(|p| p.due).min();
            let wake = next_retry.map_or(next_scan, |t| t.min(next_scan));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.retry_added.notified() => continue,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            let due: Vec<Pending> = {
                let mut retries = lock(&self.retries);
                let (due, later) = retries.drain(..).partition(|p| p.due <= now);
                *retries = later;
                due
            };
            if !due.is_empty()
                && let Err(e) = self.retry_own(due).await
            {
                warn!(error = %e, "retry claim failed; the messages will be taken over when idle");
            }
            if now >= next_scan {
                if let Err(e) = self.take_over_idle(&shutdown).await {
                    warn!(error = %e, "XAUTOCLAIM scan failed");
                }
                next_scan = Instant::now() + interval;
                scans += 1;
                if scans.is_multiple_of(SCANS_PER_CLEANUP)
                    && let Err(e) = self.forget_idle_consumers().await
                {
                    debug!(error = %e, "consumer clean-up failed");
                }
            }
        }
    }

    async fn retry_own(&self, due: Vec<Pending>) -> Result<(), LoopError> {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(CLAIM_OWN_SCRIPT));
        let mut inv = SCRIPT.key(&self.cfg.stream);
        inv.arg(&self.cfg.group).arg(&self.cfg.consumer);
        for p in &due {
            inv.arg(&p.id).arg(if p.keep_count { "1" } else { "0" });
        }
        let reply: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut items = Vec::new();
        for pair in wire::array(reply)? {
            let mut pair = wire::array(pair)?.into_iter();
            let (Some(entry), Some(count)) = (pair.next(), pair.next()) else {
                return Err(ReplyError("claim reply without delivery count".into()).into());
            };
            let count = u32::try_from(wire::int(&count)?).unwrap_or(u32::MAX);
            items.push((wire::entry(entry)?, count));
        }
        if !items.is_empty() {
            self.process_batch(items).await;
        }
        Ok(())
    }

    async fn take_over_idle(&self, shutdown: &CancellationToken) -> Result<(), LoopError> {
        let s = self.settings();
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(duration_ms(s.reclaim_min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(s.batch_size)
                .query_async(&mut self.conn.clone())
                .await?;
            let mut parts = wire::array(reply)?.into_iter();
            let next = wire::text(&parts.next().unwrap_or(Value::Nil))?;
            let (busy, claimed): (Vec<StreamEntry>, Vec<StreamEntry>) =
                wire::entries(parts.next().unwrap_or(Value::Nil))?
                    .into_iter()
                    .partition(|e| lock(&self.in_flight).contains(&e.id));
            if !busy.is_empty() {
                // A handler here is still on these (it ran past the min-idle):
                // the claim counted a delivery that did not happen; undo it.
                self.restore_counts(&busy).await?;
            }
            if !claimed.is_empty() {
                let counts = self.delivery_counts(&claimed).await?;
                info!(count = claimed.len(), "took over idle pending messages");
                self.metrics.reclaimed.increment(claimed.len() as u64);
                let items = claimed
                    .into_iter()
                    .map(|e| {
                        let count = counts.get(&e.id).copied().unwrap_or(2);
                        (e, count)
                    })
                    .collect();
                self.process_batch(items).await;
            }
            if next == "0-0" || shutdown.is_cancelled() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Sets the delivery count of entries this consumer holds back by one.
    async fn restore_counts(&self, entries: &[StreamEntry]) -> Result<(), LoopError> {
        let counts = self.delivery_counts(entries).await?;
        let mut pipe = redis::pipe();
        for e in entries {
            let Some(count) = counts.get(&e.id) else {
                continue;
            };
            pipe.cmd("XCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(0)
                .arg(&e.id)
                .arg("RETRYCOUNT")
                .arg(count.saturating_sub(1))
                .arg("JUSTID")
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Delivery counts of entries this consumer just claimed, from the PEL.
    async fn delivery_counts(
        &self,
        claimed: &[StreamEntry],
    ) -> Result<HashMap<String, u32>, LoopError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(HashMap::new());
        };
        let room = claimed.len() + lock(&self.in_flight).len() + lock(&self.retries).len() + 16;
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(room)
            .arg(&self.cfg.consumer)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut counts = HashMap::new();
        for row in wire::array(reply)? {
            let row = wire::array(row)?;
            if let [id, _, _, count] = row.as_slice() {
                let count = u32::try_from(wire::int(count)?).unwrap_or(u32::MAX);
                counts.insert(wire::text(id)?, count);
            }
        }
        Ok(counts)
    }

    async fn forget_idle_consumers(&self) -> Result<(), LoopError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .query_async(&mut self.conn.clone())
            .await?;
        for info in wire::array(reply)? {
            let fields = wire::fields_of(info);
            let (Some(name), Some(pending), Some(idle)) = (
                fields.get("name"),
                fields.get("pending"),
                fields.get("idle"),
            ) else {
                continue;
            };
            let idle = Duration::from_millis(idle.parse().unwrap_or(0));
            let pending: u64 = pending.parse().unwrap_or(1);
            if *name != self.cfg.consumer && pending == 0 && idle > FORGET_IDLE_CONSUMERS_AFTER {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.cfg.stream)
                    .arg(&self.cfg.group)
                    .arg(name)
                    .query_async::<()>(&mut self.conn.clone())
                    .await?;
                info!(consumer = %name, "forgot an idle consumer");
            }
        }
        Ok(())
    }
}
