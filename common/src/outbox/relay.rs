//! The relay: one active per service across replicas (a lease in Redis),
//! publishing the outbox in written order, each key's events in `seq` order.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{Document, doc, oid::ObjectId};
use contract::redis::Conn;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Outbox, OutboxSettings, Written};
use contract::{Envelope, StreamEntry, streams::Stream};

use crate::{
    backoff::Backoff, failpoint, lease::Lease, publisher::Publisher,
    settings::RETENTION_SWEEP_EVERY,
};

/// Publishes an outbox while holding its lease; see the module docs.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    client: contract::redis::Client,
    conn: Conn,
    publisher: Publisher,
    lease: Lease,
    settings: OutboxSettings,
}

impl Relay {
    pub(super) fn new(
        outbox: Outbox,
        client: contract::redis::Client,
        conn: Conn,
        publisher: Publisher,
        holder: &str,
        settings: OutboxSettings,
    ) -> Self {
        Self {
            lease: Lease::new(
                outbox.ns.key(&format!("outbox-lease:{}", outbox.service)),
                holder,
                settings.lease_ttl,
            ),
            outbox,
            client,
            conn,
            publisher,
            settings,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("malformed outbox entry {0}")]
    Malformed(String),
}

impl RelayError {
    /// The events went out but too few replicas acknowledged them.
    fn is_not_replicated(&self) -> bool {
        matches!(self, RelayError::Redis(e) if crate::publisher::is_not_replicated(e))
    }
}

impl Relay {
    /// Runs until `shutdown`; releases the lease on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let listener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(listen(
            self.client.clone(),
            self.outbox.bell_channel(),
            self.outbox.wake.clone(),
            self.outbox.rung.clone(),
            shutdown.clone(),
        )));
        let mut held = false;
        let mut renewed_at = tokio::time::Instant::now();
        let mut last_sweep = tokio::time::Instant::now();
        let mut sent = Sent::default();
        // Read the collection at the start, when rung, after a poll interval
        // without one, and while a round leaves entries behind.
        let mut read = true;
        let mut read_at = tokio::time::Instant::now();
        // After a publish too few replicas acknowledged (its events were
        // written, and will be again): wait before the next, so that a
        // replica that is down costs a bounded rate of duplicates. Capped at
        // a third of the lease TTL, so the lease is renewed meanwhile.
        let mut unreplicated = Backoff::new(
            Duration::from_millis(200).min(self.settings.lease_ttl / 3),
            self.settings.lease_ttl / 3,
        );
        info!(lease = %self.lease.key(), holder = %self.lease.holder(), "outbox relay started");
        while !shutdown.is_cancelled() {
            // A holder renews at a third of the TTL, not on every round: the
            // check before each publish (see `relay_once`) keeps it safe.
            if !held || renewed_at.elapsed() >= self.settings.lease_ttl / 3 {
                let was_held = held;
                let asked = tokio::time::Instant::now();
                held = match self.hold_lease(held).await {
                    Ok(h) => h,
                    Err(e) => {
                        warn!(error = %e, "outbox lease check failed");
                        false
                    }
                };
                renewed_at = tokio::time::Instant::now();
                self.outbox.held.store(held, Ordering::Relaxed);
                if held != was_held {
                    // What another holder published meanwhile is not known.
                    self.flush(&mut sent).await;
                    sent = Sent::default();
                    read = true;
                }
                // Nobody else can take the lease before its TTL, counted
                // by Redis from after `asked`; half of it leaves a margin.
                sent.lease_sure_until = held.then(|| asked + self.settings.lease_ttl / 2);
            }
            metrics::gauge!("outbox_relay_active").set(if held { 1.0 } else { 0.0 });
            let handed = self.outbox.take_handed();
            read |= self.outbox.rung.swap(false, Ordering::Relaxed)
                || read_at.elapsed() >= self.settings.poll;
            if held && !read && !handed.is_empty() {
                match self.relay_handed(handed, &mut sent).await {
                    Ok(must_read) => {
                        read = must_read;
                        unreplicated.reset();
                    }
                    Err(e) => {
                        warn!(error = %e, "outbox hand-off failed; reading the outbox");
                        read = true;
                        if e.is_not_replicated() && !unreplicated.sleep(&shutdown).await {
                            break;
                        }
                    }
                }
            }
            if held && read {
                // Published entries go before the read, or it would find them.
                self.flush(&mut sent).await;
                read_at = tokio::time::Instant::now();
                read = match self.relay_once(&mut sent).await {
                    Ok(left) => {
                        unreplicated.reset();
                        left
                    }
                    Err(e) => {
                        warn!(error = %e, "outbox relay round failed; retrying");
                        if e.is_not_replicated() && !unreplicated.sleep(&shutdown).await {
                            break;
                        }
                        false
                    }
                };
                if last_sweep.elapsed() > RETENTION_SWEEP_EVERY {
                    self.sweep().await;
                    last_sweep = tokio::time::Instant::now();
                }
            }
            if held && sent.due() {
                self.flush(&mut sent).await;
            }
            if read {
                continue;
            }
            // The lease holder waits for work (or for its deletes to be due);
            // the others check the lease at a third of its TTL.
            let wait = if held {
                let mut wait = self
                    .settings
                    .poll
                    .saturating_sub(read_at.elapsed())
                    .min((self.settings.lease_ttl / 3).saturating_sub(renewed_at.elapsed()));
                if let Some(due) = sent.due_in() {
                    wait = wait.min(due);
                }
                wait
            } else {
                self.settings.lease_ttl / 3
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.outbox.wake.notified(), if held => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.flush(&mut sent).await;
        self.outbox.held.store(false, Ordering::Relaxed);
        if held {
            let _ = self.lease.release(&mut self.conn.clone()).await;
        }
        drop(listener);
        info!("outbox relay stopped");
    }

    /// Keeps (or takes) the lease; `true` while this relay holds it.
    async fn hold_lease(&self, held: bool) -> Result<bool, RelayError> {
        let now = self.lease.hold(&mut self.conn.clone(), held).await?;
        if held && !now {
            warn!("outbox lease lost");
        } else if !held && now {
            info!(holder = %self.lease.holder(), "outbox lease acquired; this replica relays");
        }
        Ok(now)
    }

    /// One round: read, publish, and leave the entries to [`Relay::flush`].
    /// Returns whether entries were left for the next round.
    async fn relay_once(&self, sent: &mut Sent) -> Result<bool, RelayError> {
        let docs: Vec<Document> = self
            .outbox
            .coll
            .find(doc! { "published": false })
            .sort(doc! { "written_at": 1, "_id": 1 })
            .limit(self.settings.batch)
            .await?
            .try_collect()
            .await?;
        if docs.is_empty() {
            return Ok(false);
        }
        // Whole entries, in written order, until `batch` events.
        let mut events = Vec::new();
        let mut ids = Vec::new();
        for d in &docs {
            if !events.is_empty() && events.len() as i64 >= self.settings.batch {
                break;
            }
            let (id, parsed) = events_of(d)?;
            ids.push(id);
            events.extend(parsed);
        }
        let more = ids.len() < docs.len() || docs.len() as i64 >= self.settings.batch;
        self.publish(events, ids, sent).await?;
        Ok(more)
    }

    /// Publishes what this process handed over (see "Hand-off" in the module
    /// docs) without reading it back, when every event in it is the next of
    /// its key, or skips it when a read already published it. Returns
    /// whether the collection must be read instead (an event whose
    /// predecessor this relay has not published: it may still be in the
    /// outbox, and must go first).
    async fn relay_handed(
        &self,
        handed: Vec<Written>,
        sent: &mut Sent,
    ) -> Result<bool, RelayError> {
        let entries = handed
            .into_iter()
            .map(|w| events_of(&doc! { "_id": w.id, "events": w.events }))
            .collect::<Result<Vec<_>, _>>()?;
        let Some((ids, events)) = hand_off(entries, &sent.seqs) else {
            return Ok(true);
        };
        if !ids.is_empty() {
            self.publish(events, ids, sent).await?;
        }
        Ok(false)
    }

    /// Publishes `events` (of the entries `ids`) in one pipeline, each key's
    /// in `seq` order, if the lease is still this relay's; the entries are
    /// then due for deletion.
    async fn publish(
        &self,
        events: Vec<Parsed>,
        ids: Vec<ObjectId>,
        sent: &mut Sent,
    ) -> Result<(), RelayError> {
        sent.note(&events);
        let ordered = order_by_key(events);
        failpoint::hit(self.publisher.namespace(), "outbox.before_publish").await;
        // Another relay may have taken over while this one slept: unless
        // the lease was renewed lately (by this process's monotonic clock,
        // which a pause moves on too), ask Redis.
        let sure = sent
            .lease_sure_until
            .is_some_and(|until| tokio::time::Instant::now() < until);
        if !sure && !self.lease.is_held(&mut self.conn.clone()).await? {
            sent.seqs.clear();
            return Ok(());
        }
        let out: Vec<(Stream, &Envelope)> = ordered.iter().map(|(s, e)| (*s, e)).collect();
        if let Err(e) = self.publisher.publish_all(&out).await {
            // Some may have gone out, some not: read back what is left.
            sent.seqs.clear();
            return Err(e.into());
        }
        failpoint::hit(self.publisher.namespace(), "outbox.after_publish").await;
        sent.published(ids);
        metrics::counter!("outbox_published_total").increment(out.len() as u64);
        debug!(events = out.len(), "outbox events published");
        Ok(())
    }

    /// Deletes (or marks) the published entries: one write for all that
    /// were published since the last, so under light load several rounds
    /// share it. A crash before it republishes them, as a crash between
    /// publishing and deleting always did (a duplicate message, never a
    /// duplicate effect).
    async fn flush(&self, sent: &mut Sent) {
        if sent.unflushed.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut sent.unflushed);
        sent.since = None;
        let filter = doc! { "_id": { "$in": &ids } };
        let written = if self.settings.retention.is_zero() {
            // Nothing to keep: one write instead of a mark and a later sweep.
            self.outbox.coll.delete_many(filter).await.map(drop)
        } else {
            self.outbox
                .coll
                .update_many(
                    filter,
                    doc! { "$set": { "published": true }, "$currentDate": { "published_at": true } },
                )
                .await
                .map(drop)
        };
        if let Err(e) = written {
            // They stay unpublished and go out again: duplicates, no loss.
            warn!(error = %e, entries = ids.len(), "published outbox entries not removed");
            sent.seqs.clear();
        }
    }

    async fn sweep(&self) {
        if self.settings.retention.is_zero() {
            return;
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = bson::DateTime::from_chrono(cutoff);
        match self
            .outbox
            .coll
            .delete_many(doc! { "published": true, "published_at": { "$lt": cutoff } })
            .await
        {
            Ok(r) if r.deleted_count > 0 => {
                debug!(deleted = r.deleted_count, "old outbox entries removed")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "outbox sweep failed"),
        }
    }
}

/// How long published entries wait to be deleted together.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Published entries that are deleted at once, however recent.
const FLUSH_AT: usize = 256;
/// Keys whose last published `seq` is remembered (then forgotten at once:
/// a key not remembered is read from the outbox, which is only slower).
const REMEMBERED_KEYS: usize = 100_000;

/// What this relay published and has not deleted yet, and the last `seq`
/// it published of each key (to hand entries off in order).
#[derive(Debug, Default)]
struct Sent {
    unflushed: Vec<ObjectId>,
    since: Option<tokio::time::Instant>,
    seqs: HashMap<(Stream, String), i64>,
    /// Until when the lease is surely this relay's without asking Redis
    /// (see [`Relay::publish`]).
    lease_sure_until: Option<tokio::time::Instant>,
}

impl Sent {
    fn note(&mut self, events: &[Parsed]) {
        if self.seqs.len() + events.len() > REMEMBERED_KEYS {
            self.seqs.clear();
        }
        for p in events {
            let seq = self.seqs.entry((p.stream, p.key.clone())).or_insert(p.seq);
            *seq = (*seq).max(p.seq);
        }
    }

    fn published(&mut self, ids: Vec<ObjectId>) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
        self.unflushed.extend(ids);
    }

    fn due_in(&self) -> Option<Duration> {
        self.since.map(|t| FLUSH_AFTER.saturating_sub(t.elapsed()))
    }

    fn due(&self) -> bool {
        self.unflushed.len() >= FLUSH_AT || self.due_in().is_some_and(|d| d.is_zero())
    }
}

/// One event read from an entry.
#[derive(Debug)]
struct Parsed {
    key: String,
    seq: i64,
    stream: Stream,
    envelope: Envelope,
}

/// An entry's id and events: the `events` of a commit, or (the earlier
/// shape) the entry itself as one event.
fn events_of(d: &Document) -> Result<(ObjectId, Vec<Parsed>), RelayError> {
    let id = d
        .get_object_id("_id")
        .map_err(|_| RelayError::Malformed("without _id".into()))?;
    let bad = || RelayError::Malformed(id.to_hex());
    let one = |e: &Document| -> Result<Parsed, RelayError> {
        let stream = e
            .get_str("stream")
            .ok()
            .and_then(Stream::from_name)
            .ok_or_else(bad)?;
        let fields = e.get_document("fields").map_err(|_| bad())?;
        let entry = StreamEntry {
            id: id.to_hex(),
            fields: fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.as_bytes().to_vec())))
                .collect(),
        };
        Ok(Parsed {
            key: e.get_str("key").map_err(|_| bad())?.to_owned(),
            seq: e.get_i64("seq").map_err(|_| bad())?,
            stream,
            envelope: Envelope::from_entry(&entry).map_err(|_| bad())?,
        })
    };
    let events = match d.get_array("events") {
        Ok(list) => list
            .iter()
            .map(|e| e.as_document().ok_or_else(bad).and_then(one))
            .collect::<Result<_, _>>()?,
        Err(_) => vec![one(d)?],
    };
    Ok((id, events))
}

/// Which handed-over entries the relay publishes as they are: `None` when
/// it must read the collection instead (see "Hand-off" in the module docs),
/// given the last `seq` it published of each key. Entries whose events it
/// all published already are left out.
fn hand_off(
    entries: Vec<(ObjectId, Vec<Parsed>)>,
    seqs: &HashMap<(Stream, String), i64>,
) -> Option<(Vec<ObjectId>, Vec<Parsed>)> {
    // The last seq of each key once the entries accepted so far go out.
    let mut next: HashMap<(Stream, String), i64> = HashMap::new();
    let (mut ids, mut events) = (Vec::new(), Vec::new());
    for (id, mut parsed) in entries {
        // (One commit may move a document twice: its seqs in order.)
        parsed.sort_by_key(|p| p.seq);
        let mut after = HashMap::new();
        let (mut old, mut new) = (0, 0);
        for p in &parsed {
            let k = (p.stream, p.key.clone());
            let last = after
                .get(&k)
                .or_else(|| next.get(&k))
                .or_else(|| seqs.get(&k))
                .copied();
            if last >= Some(p.seq) {
                old += 1;
            } else if (p.seq <= 1 && last.is_none()) || last == Some(p.seq - 1) {
                new += 1;
                after.insert(k, p.seq);
            } else {
                return None;
            }
        }
        match (old, new) {
            (_, 0) => continue, // a read published it already
            (0, _) => {}
            _ => return None, // half of it known: the read sorts it out
        }
        next.extend(after);
        ids.push(id);
        events.extend(parsed);
    }
    Some((ids, events))
}

/// The events in publishing order: they keep their written order, except
/// that each key's events go out in `seq` order.
fn order_by_key(parsed: Vec<Parsed>) -> Vec<(Stream, Envelope)> {
    // Slots of each key, in written order, refilled in seq order.
    let mut slots: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        slots.entry(p.key.clone()).or_default().push(i);
    }
    let mut out: Vec<Option<(Stream, Envelope)>> = vec![None; parsed.len()];
    let mut by_key: HashMap<String, Vec<Parsed>> = HashMap::new();
    for p in parsed {
        by_key.entry(p.key.clone()).or_default().push(p);
    }
    for (key, mut entries) in by_key {
        entries.sort_by_key(|p| p.seq);
        for (slot, p) in slots[&key].iter().zip(entries) {
            out[*slot] = Some((p.stream, p.envelope));
        }
    }
    out.into_iter().flatten().collect()
}

/// Wakes the relay when another replica rings (see the module docs).
/// Without the subscription the relay still polls.
async fn listen(
    client: contract::redis::Client,
    channel: String,
    wake: Arc<Notify>,
    rung: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    while !shutdown.is_cancelled() {
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                backoff.reset();
                let mut rings = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        ring = rings.next() => match ring {
                            Some(_) => {
                                rung.store(true, Ordering::Relaxed);
                                wake.notify_one();
                            }
                            None => { debug!("outbox wake-up subscription closed; reopening"); break }
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "outbox wake-up subscription unavailable; polling"),
        }
        if !backoff.sleep(&shutdown).await {
            return;
        }
    }
}

async fn subscribe(
    client: &contract::redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, seq: i64, n: u8) -> Document {
        let e = Envelope::new(
            "order.status_updated.v1",
            key,
            "c",
            "t",
            &serde_json::json!({"n": n}),
        )
        .unwrap();
        let mut fields = Document::new();
        for (k, v) in e.to_fields() {
            fields.insert(k, v);
        }
        doc! { "stream": "orders-stream", "key": key, "seq": seq, "fields": fields }
    }

    fn commit(events: Vec<Document>) -> Document {
        doc! { "_id": ObjectId::new(), "events": events, "published": false }
    }

    fn legacy(key: &str, seq: i64, n: u8) -> Document {
        let mut d = event(key, seq, n);
        d.insert("_id", ObjectId::new());
        d
    }

    #[test]
    fn each_key_goes_out_in_seq_order_keeping_the_written_order_otherwise() {
        // Written order: a3, b1, a2, c1, a4 (a's v2 committed later than v3
        // by the clock), in two commits and one entry of the earlier shape.
        let entries = [
            commit(vec![event("a", 3, 0), event("b", 1, 1)]),
            legacy("a", 2, 2),
            commit(vec![event("c", 1, 3), event("a", 4, 4)]),
        ];
        let mut parsed = Vec::new();
        for d in &entries {
            let (id, events) = events_of(d).unwrap();
            assert_eq!(id, d.get_object_id("_id").unwrap());
            parsed.extend(events);
        }
        let got: Vec<(String, u64)> = order_by_key(parsed)
            .iter()
            .map(|(_, e)| (e.key.clone(), e.payload["n"].as_u64().unwrap()))
            .collect();
        let want = [("a", 2), ("b", 1), ("a", 0), ("c", 3), ("a", 4)];
        assert_eq!(got, want.map(|(k, n)| (k.to_owned(), n)));
    }

    #[test]
    fn a_malformed_event_names_its_entry() {
        let mut bad = event("a", 1, 0);
        bad.remove("seq");
        let d = commit(vec![event("b", 1, 1), bad]);
        let id = d.get_object_id("_id").unwrap().to_hex();
        match events_of(&d) {
            Err(RelayError::Malformed(got)) => assert_eq!(got, id),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    fn handed(commits: Vec<Vec<Document>>) -> Vec<(ObjectId, Vec<Parsed>)> {
        commits
            .into_iter()
            .map(|events| events_of(&commit(events)).unwrap())
            .collect()
    }

    fn seqs(known: &[(&str, i64)]) -> HashMap<(Stream, String), i64> {
        known
            .iter()
            .map(|(k, s)| ((Stream::Orders, (*k).to_owned()), *s))
            .collect()
    }

    fn keys_and_seqs(events: &[Parsed]) -> Vec<(&str, i64)> {
        events.iter().map(|p| (p.key.as_str(), p.seq)).collect()
    }

    #[test]
    fn a_handed_entry_goes_out_unread_when_each_event_is_the_next_of_its_key() {
        // a is new; b was published up to 2; one commit moved c twice.
        let entries = handed(vec![
            vec![event("a", 1, 0), event("b", 3, 1)],
            vec![event("c", 3, 2), event("c", 2, 3)],
            vec![event("a", 2, 4)],
        ]);
        let ids: Vec<ObjectId> = entries.iter().map(|(id, _)| *id).collect();
        let (out_ids, events) = hand_off(entries, &seqs(&[("b", 2), ("c", 1)])).unwrap();
        assert_eq!(out_ids, ids);
        assert_eq!(
            keys_and_seqs(&events),
            [("a", 1), ("b", 3), ("c", 2), ("c", 3), ("a", 2)]
        );
    }

    #[test]
    fn an_event_whose_predecessor_the_relay_has_not_published_makes_it_read() {
        // b's 2 may still be in the outbox (another replica wrote it).
        let entries = handed(vec![vec![event("a", 1, 0)], vec![event("b", 3, 1)]]);
        assert!(hand_off(entries, &seqs(&[("b", 1)])).is_none());
        // Nor does a key the relay knows nothing of start past 1.
        assert!(hand_off(handed(vec![vec![event("d", 2, 0)]]), &seqs(&[])).is_none());
    }

    #[test]
    fn a_handed_entry_that_a_read_already_published_is_skipped() {
        let entries = handed(vec![vec![event("a", 1, 0)], vec![event("b", 2, 1)]]);
        let fresh = entries[1].0;
        let (ids, events) = hand_off(entries, &seqs(&[("a", 1), ("b", 1)])).unwrap();
        assert_eq!(ids, [fresh]);
        assert_eq!(keys_and_seqs(&events), [("b", 2)]);
        // Half published, half not: read.
        let half = handed(vec![vec![event("a", 1, 0), event("b", 1, 1)]]);
        assert!(hand_off(half, &seqs(&[("a", 1)])).is_none());
    }
}
