//! Reading: the consumer group, XREADGROUP, and a batch split into lanes by
//! ordering key; a lane of several messages is one run for the handler
//! ([`super::Handler::handle_run`]).

use std::{collections::HashMap, sync::atomic::Ordering};

use futures::StreamExt;
use redis::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use contract::{StreamEntry, events::StreamEvent, redis as wire};

use super::{Handler, Inner, LoopError, duration_ms};
use crate::backoff::Backoff;

impl<E: StreamEvent, H: Handler<E>> Inner<E, H> {
    async fn ensure_group(&self) -> redis::RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) async fn ensure_group_until_ok(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.ensure_group().await {
                Ok(()) => return true,
                Err(e) => warn!(error = %e, "cannot create consumer group yet; retrying"),
            }
            if !backoff.sleep(shutdown).await {
                return false;
            }
        }
    }

    pub(super) async fn read_loop(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.read_new().await {
                Ok(entries) => {
                    backoff.reset();
                    self.status.0.reading.store(true, Ordering::Relaxed);
                    if !entries.is_empty() {
                        for e in &entries {
                            self.metrics.stream_wait.record(super::entry_age(e));
                        }
                        self.process_batch(entries.into_iter().map(|e| (e, 1)).collect())
                            .await;
                    }
                }
                Err(e) => {
                    self.status.0.reading.store(false, Ordering::Relaxed);
                    if matches!(&e, LoopError::Redis(r) if r.code() == Some("NOGROUP")) {
                        warn!("consumer group vanished (Redis lost its data?); recreating it");
                        if let Err(e) = self.ensure_group().await {
                            warn!(error = %e, "recreating the group failed");
                        }
                    } else {
                        warn!(error = %e, "reading the stream failed; retrying");
                    }
                    backoff.sleep(shutdown).await;
                }
            }
        }
    }

    async fn read_new(&self) -> Result<Vec<StreamEntry>, LoopError> {
        let s = self.settings();
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(s.batch_size)
            .arg("BLOCK")
            .arg(duration_ms(s.block))
            .arg("STREAMS")
            .arg(&self.cfg.stream)
            .arg(">")
            .query_async(&mut self.read_conn.clone())
            .await?;
        Ok(wire::xread(reply)?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Handles a batch: lanes by ordering key, lanes concurrently.
    pub(super) async fn process_batch(&self, items: Vec<(StreamEntry, u32)>) {
        let mut lanes: Vec<Vec<(StreamEntry, u32)>> = Vec::new();
        let mut lane_of: HashMap<String, usize> = HashMap::new();
        for (entry, count) in items {
            let key = match entry.get_str("key") {
                Some(k) if !k.is_empty() => k.to_owned(),
                _ => entry.id.clone(),
            };
            let lane = *lane_of.entry(key).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            lanes[lane].push((entry, count));
        }
        futures::stream::iter(lanes)
            .for_each_concurrent(self.settings().concurrency, |mut lane| async move {
                if lane.len() == 1
                    && let Some((entry, count)) = lane.pop()
                {
                    self.process_one(entry, count).await;
                } else {
                    self.process_run(lane).await;
                }
            })
            .await;
    }
}
