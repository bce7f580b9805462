//! The invariants, checked against a deployment's Redis and MongoDB.
//!
//! Without a load record it checks what the data alone can tell (stock never
//! negative, every order ended (delivered, cancelled or rejected), one
//! delivery per delivered order and none for the others, complete timelines
//! ending in the order's terminal step, nothing pending, outbox drained).
//! With the record of a run it also checks that exactly the accepted orders
//! exist, that stock is conserved (initial = current + sold − restocked,
//! where cancelled and rejected orders are restocked), that every cancel's
//! answer holds, what the trackers saw, and that the dead letters hold
//! exactly the injected poison.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use bson::{Document, doc};
use contract::{
    dead_letter::DeadLetter,
    redis as stream_entry,
    streams::{Namespace, Stream},
};
use futures::TryStreamExt;
use serde::Serialize;

use crate::load::{Accepted, CancelAnswer, FULL_FLOW, TrackerResult, is_complete_timeline};

/// The statuses an order ends in.
const TERMINAL: [&str; 3] = ["delivered", "cancelled", "rejected"];

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What must hold.
    pub invariant: String,
    /// Whether it does.
    pub passed: bool,
    /// Counts, or the first violations.
    pub detail: String,
}

/// What the checker knows about a run.
#[derive(Debug, Default)]
pub struct Record {
    /// Orders answered 201.
    pub accepted: Option<Vec<Accepted>>,
    /// Stock per item before the load.
    pub initial_stock: Option<HashMap<String, i64>>,
    /// Poison messages injected: (stream, entry id).
    pub poison: Option<Vec<(Stream, String)>>,
    /// Tracker outcomes.
    pub trackers: Option<Vec<TrackerResult>>,
}

/// Every (stream, group) that consumes, from the stream table of the contract.
pub fn groups() -> Vec<(Stream, &'static str)> {
    Stream::ALL
        .into_iter()
        .flat_map(|s| s.groups().iter().map(move |g| (s, *g)))
        .collect()
}

/// Connections to the deployment.
#[derive(Debug)]
pub struct Target {
    /// Redis.
    pub conn: contract::redis::Conn,
    /// The database.
    pub db: mongodb::Database,
    /// Key prefix.
    pub ns: Namespace,
}

fn verdict(invariant: &str, problems: &[String], ok_detail: String) -> Verdict {
    Verdict {
        invariant: invariant.to_owned(),
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            ok_detail
        } else {
            let more = problems.len().saturating_sub(5);
            let mut d = problems
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if more > 0 {
                d.push_str(&format!("; and {more} more"));
            }
            d
        },
    }
}

/// Runs every check; waits up to `settle` for the system to finish its work.
pub async fn check(t: &Target, record: &Record, settle: Duration) -> anyhow::Result<Vec<Verdict>> {
    let mut out = Vec::new();
    let orders = t.db.collection::<Document>("orders");
    let deadline = Instant::now() + settle;

    // 1. Every order ends: delivered, cancelled or rejected (waiting for stragglers).
    let mut stuck: Vec<String>;
    loop {
        stuck = orders
            .find(doc! { "status": { "$nin": TERMINAL.to_vec() } })
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .iter()
            .map(|o| {
                format!(
                    "{} is {}",
                    o.get_object_id("_id")
                        .map(|i| i.to_hex())
                        .unwrap_or_default(),
                    o.get_str("status").unwrap_or("?")
                )
            })
            .collect();
        if stuck.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_orders: Vec<Document> = orders.find(doc! {}).await?.try_collect().await?;
    let status_of: HashMap<String, String> = all_orders
        .iter()
        .filter_map(|o| {
            Some((
                o.get_object_id("_id").ok()?.to_hex(),
                o.get_str("status").ok()?.to_owned(),
            ))
        })
        .collect();
    let ids: BTreeSet<String> = status_of.keys().cloned().collect();
    let ended = |status: &str| status_of.values().filter(|s| *s == status).count();
    out.push(verdict(
        "every order ends: delivered, cancelled or rejected",
        &stuck,
        format!(
            "{} orders: {} delivered, {} cancelled, {} rejected",
            ids.len(),
            ended("delivered"),
            ended("cancelled"),
            ended("rejected")
        ),
    ));
    let restocked = |id: &str| {
        status_of
            .get(id)
            .is_some_and(|s| s == "cancelled" || s == "rejected")
    };

    // 1b. Every cancel's answer holds: 200 → cancelled, 409 → not cancelled.
    if let Some(accepted) = &record.accepted {
        let mut problems = Vec::new();
        let (mut won, mut lost) = (0, 0);
        for a in accepted {
            let now = status_of.get(&a.order_id).map_or("missing", String::as_str);
            match &a.cancel {
                Some(CancelAnswer::Cancelled) => {
                    won += 1;
                    if now != "cancelled" {
                        problems.push(format!(
                            "{}: cancel answered 200, order is {now}",
                            a.order_id
                        ));
                    }
                }
                Some(CancelAnswer::Refused(then)) => {
                    lost += 1;
                    if now == "cancelled" {
                        problems.push(format!(
                            "{}: cancel answered 409 ({then}), order is cancelled",
                            a.order_id
                        ));
                    }
                }
                None => {
                    if now == "cancelled" {
                        problems.push(format!(
                            "{}: cancelled, but never by its customer",
                            a.order_id
                        ));
                    }
                }
            }
        }
        out.push(verdict(
            "every cancel's answer holds (200: cancelled; 409: not cancelled)",
            &problems,
            format!("{won} cancels won, {lost} refused"),
        ));
    }

    // 2. Exactly the accepted orders exist, once each.
    if let Some(accepted) = &record.accepted {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for a in accepted {
            if !seen.insert(a.order_id.clone()) {
                problems.push(format!(
                    "order {} accepted twice (keys collide?)",
                    a.order_id
                ));
            }
            if !ids.contains(&a.order_id) {
                problems.push(format!("accepted order {} does not exist", a.order_id));
            }
        }
        for id in ids.difference(&seen) {
            problems.push(format!("order {id} exists but was never accepted"));
        }
        out.push(verdict(
            "every accepted order exists exactly once",
            &problems,
            format!("{} accepted, {} stored", accepted.len(), ids.len()),
        ));
    }

    // 3. Stock: never negative; conserved against the record.
    let menu: Vec<Document> =
        t.db.collection::<Document>("menu")
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
    let stock: HashMap<String, i64> = menu
        .iter()
        .filter_map(|m| {
            Some((
                m.get_object_id("_id").ok()?.to_hex(),
                m.get_i64("stock")
                    .or_else(|_| m.get_i32("stock").map(i64::from))
                    .ok()?,
            ))
        })
        .collect();
    let mut problems: Vec<String> = stock
        .iter()
        .filter(|(_, s)| **s < 0)
        .map(|(i, s)| format!("item {i} has stock {s}"))
        .collect();
    if let (Some(initial), Some(accepted)) = (&record.initial_stock, &record.accepted) {
        let mut sold: HashMap<&str, i64> = HashMap::new();
        let mut back: HashMap<&str, i64> = HashMap::new();
        for a in accepted {
            for (item, q) in &a.items {
                *sold.entry(item.as_str()).or_default() += i64::from(*q);
                if restocked(&a.order_id) {
                    *back.entry(item.as_str()).or_default() += i64::from(*q);
                }
            }
        }
        for (item, start) in initial {
            let now = stock.get(item).copied().unwrap_or(0);
            let s = sold.get(item.as_str()).copied().unwrap_or(0);
            let r = back.get(item.as_str()).copied().unwrap_or(0);
            if *start != now + s - r {
                problems.push(format!(
                    "item {item}: initial {start} != current {now} + sold {s} - restocked {r}"
                ));
            }
        }
    }
    out.push(verdict(
        "stock is conserved (initial = current + sold - restocked), never negative",
        &problems,
        format!("{} items", stock.len()),
    ));

    // 4. Exactly one delivery per order.
    let deliveries: Vec<Document> =
        t.db.collection::<Document>("deliveries")
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
    let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
    for d in &deliveries {
        *per_order
            .entry(d.get_str("order_id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let mut problems = Vec::new();
    for id in &ids {
        let n = per_order.get(id).copied().unwrap_or(0);
        match status_of.get(id).map(String::as_str) {
            Some("cancelled" | "rejected") if n > 0 => {
                problems.push(format!("order {id} ended without delivery but has {n}"));
            }
            Some("cancelled" | "rejected") => {}
            _ if n != 1 => problems.push(format!("order {id} has {n} deliveries")),
            _ => {}
        }
    }
    problems.extend(
        per_order
            .keys()
            .filter(|o| !ids.contains(*o))
            .map(|o| format!("delivery for unknown order {o}")),
    );
    out.push(verdict(
        "one delivery per delivered order, none for a cancelled or rejected one",
        &problems,
        format!("{} deliveries", deliveries.len()),
    ));

    // 5. Stored timelines: complete, in order, no duplicates.
    let timelines: Vec<Document> =
        t.db.collection::<Document>("timelines")
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
    let by_order: HashMap<String, &Document> = timelines
        .iter()
        .filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), d)))
        .collect();
    let mut problems = Vec::new();
    for id in &ids {
        let Some(doc) = by_order.get(id) else {
            problems.push(format!("order {id} has no timeline"));
            continue;
        };
        let entries = doc
            .get_array("entries")
            .map(|a| a.iter().filter_map(|e| e.as_document()).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut labels: Vec<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e.get_str("kind").unwrap_or("?"),
                    e.get_str("status").unwrap_or("?")
                )
            })
            .collect();
        let event_ids: BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| e.get_str("event_id").ok())
            .collect();
        if event_ids.len() != entries.len() {
            problems.push(format!("order {id}: duplicate timeline events"));
        }
        labels.sort_by_key(|l| FULL_FLOW.iter().position(|f| f == l).unwrap_or(usize::MAX));
        // (An order that has not ended fails "every order ends".)
        let ends_as_order = status_of.get(id).is_none_or(|s| {
            !TERMINAL.contains(&s.as_str()) || labels.last() == Some(&format!("order:{s}"))
        });
        if !is_complete_timeline(&labels) || !ends_as_order {
            problems.push(format!(
                "order {id} ({}): timeline {labels:?}",
                status_of.get(id).map_or("?", String::as_str)
            ));
        }
    }
    out.push(verdict(
        "every timeline is complete, in order, without duplicates, ending in the order's terminal step",
        &problems,
        format!("{} timelines", ids.len()),
    ));

    // 6. Trackers saw the whole flow, in order, once.
    if let Some(trackers) = &record.trackers {
        let problems: Vec<String> = trackers
            .iter()
            .filter(|t| !t.ok())
            .map(|t| format!("tracker of {}: {:?}", t.order_id, t.violations))
            .collect();
        let reconnects: usize = trackers.iter().map(|t| t.reconnects).sum();
        out.push(verdict(
            "every tracker saw a whole timeline in order, without duplicates",
            &problems,
            format!("{} trackers, {reconnects} reconnects", trackers.len()),
        ));
    }

    // 7. No pending entries once quiet; outbox drained.
    let mut pending;
    let mut backlog;
    loop {
        pending = Vec::new();
        for (stream, group) in groups() {
            for key in t.ns.stream_keys(stream) {
                let v: redis::Value = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(group)
                    .query_async(&mut t.conn.clone())
                    .await
                    .unwrap_or(redis::Value::Nil);
                let n = stream_entry::array(v)
                    .ok()
                    .and_then(|a| a.first().and_then(|c| stream_entry::int(c).ok()))
                    .unwrap_or(0);
                if n > 0 {
                    pending.push(format!("{n} pending in {key}/{group}"));
                }
            }
        }
        backlog = Vec::new();
        for svc in ["order_svc", "delivery_svc"] {
            let n =
                t.db.collection::<Document>(&format!("outbox_{svc}"))
                    .count_documents(doc! { "published": false })
                    .await?;
            if n > 0 {
                backlog.push(format!("{n} unpublished in outbox_{svc}"));
            }
        }
        if (pending.is_empty() && backlog.is_empty()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.push(verdict(
        "no pending entries once quiet",
        &pending,
        "0 pending in every group".into(),
    ));
    out.push(verdict(
        "the outbox is drained",
        &backlog,
        "0 unpublished".into(),
    ));

    // 8. The dead letters hold exactly the injected poison (once per consuming group).
    let mut letters = Vec::new();
    for key in t.ns.stream_keys(Stream::DeadLetters) {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut t.conn.clone())
            .await?;
        letters.extend(stream_entry::entries(v)?);
    }
    let mut found: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut problems = Vec::new();
    for e in letters {
        match DeadLetter::from_entry(&e) {
            Ok(d) => {
                let key = (
                    t.ns.stream_of_key(&d.origin_stream)
                        .map_or(d.origin_stream.clone(), |s| s.name().to_owned()),
                    d.origin_id.clone(),
                    d.group.clone(),
                );
                if !found.insert(key.clone()) {
                    problems.push(format!("{key:?} dead-lettered twice"));
                }
            }
            Err(e) => problems.push(format!("malformed dead letter: {e}")),
        }
    }
    let detail = format!("{} dead letters", found.len());
    match &record.poison {
        Some(poison) => {
            let expected: BTreeSet<(String, String, String)> = poison
                .iter()
                .flat_map(|(stream, id)| {
                    stream
                        .groups()
                        .iter()
                        .map(move |g| (stream.name().to_owned(), id.clone(), (*g).to_owned()))
                })
                .collect();
            problems.extend(
                found
                    .difference(&expected)
                    .map(|(s, id, g)| format!("unexpected dead letter {s} {id} ({g})")),
            );
            problems.extend(
                expected
                    .difference(&found)
                    .map(|(s, id, g)| format!("poison {s} {id} not dead-lettered by {g}")),
            );
            out.push(verdict(
                "the dead letters hold exactly the injected poison",
                &problems,
                format!("{detail}, all injected"),
            ));
        }
        None => out.push(verdict(
            "dead letters are well-formed and unique",
            &problems,
            detail,
        )),
    }
    Ok(out)
}
