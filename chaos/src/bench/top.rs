//! MongoDB commands per order, from the server's own accounting (`top`):
//! how many `find`, `insert`, `update`, `delete`, `getMore` and other
//! commands (`findAndModify`, `commitTransaction`, ...) each collection
//! received during the CPU phase. Counts are per command, not per document,
//! so a batch of 64 inserts counts once: this is the round-trip count.
//! `bulkWrite`s (one command writing to several collections, see
//! common::writes) come from `serverStatus` instead, as `(several) bulkWrite`.
//! The same for Redis, from `INFO commandstats` (calls per command).
//! [`Tally`] is the short form, for each step of the ladder: all the
//! database's commands and its committed transactions (`serverStatus`;
//! commits are not in `top`), per order, from before a step until its
//! orders are delivered.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use serde::Serialize;

/// The sections of `top` counted, in its own order (`total` is their sum).
const SECTIONS: [&str; 5] = ["queries", "getmore", "insert", "update", "remove"];

/// Commands a collection received, by kind.
#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    /// `collection kind`, e.g. `orders update`.
    pub what: String,
    /// Per delivered order.
    pub per_order: f64,
}

/// A snapshot of `top`: `(collection, section) → count`, for the
/// collections of database `db`.
pub async fn snapshot(client: &mongodb::Client, db: &str) -> BTreeMap<String, u64> {
    let reply = client
        .database("admin")
        .run_command(doc! { "top": 1 })
        .await
        .unwrap_or_default();
    let mut counts = BTreeMap::new();
    let Ok(totals) = reply.get_document("totals") else {
        return counts;
    };
    let prefix = format!("{db}.");
    for (ns, value) in totals {
        let (Some(coll), Bson::Document(sections)) = (ns.strip_prefix(&prefix), value) else {
            continue;
        };
        let total = count(sections, "total");
        let named: u64 = SECTIONS.iter().map(|s| count(sections, s)).sum();
        for s in SECTIONS {
            counts.insert(format!("{coll} {s}"), count(sections, s));
        }
        // findAndModify, aggregate, count, ... land in `commands`.
        counts.insert(format!("{coll} commands"), total.saturating_sub(named));
    }
    // A `bulkWrite` runs on `admin` and writes to several collections, so
    // `top` leaves it out: it is counted from the server's command metrics
    // (server-wide, so whatever else runs meanwhile counts too; nothing
    // else writes with it during a run).
    let status = client
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .unwrap_or_default();
    let bulk = status
        .get_document("metrics")
        .and_then(|m| m.get_document("commands"))
        .and_then(|c| c.get_document("bulkWrite"))
        .ok()
        .map_or(0, |b| count_of(b.get("total")));
    counts.insert("(several) bulkWrite".to_owned(), bulk);
    counts
}

fn count(sections: &Document, section: &str) -> u64 {
    sections
        .get_document(section)
        .ok()
        .map_or(0, |d| count_of(d.get("count")))
}

fn count_of(value: Option<&Bson>) -> u64 {
    match value {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// What changed between two snapshots, per order, largest first, zeros left out.
pub fn per_order(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    orders: usize,
) -> Vec<Commands> {
    let mut out: Vec<Commands> = after
        .iter()
        .filter_map(|(what, n)| {
            let d = n.saturating_sub(before.get(what).copied().unwrap_or(0));
            (d > 0).then(|| Commands {
                what: what.clone(),
                per_order: d as f64 / orders.max(1) as f64,
            })
        })
        .collect();
    out.sort_by(|a, b| b.per_order.total_cmp(&a.per_order));
    out
}

/// A snapshot of Redis's `INFO commandstats`: `redis <command> → calls`,
/// summed over the nodes of a cluster (a list of node URLs).
pub async fn redis_snapshot(url: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for node in url.split(',') {
        for (name, calls) in node_snapshot(node).await {
            *counts.entry(name).or_insert(0) += calls;
        }
    }
    counts
}

async fn node_snapshot(url: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let Ok(client) = redis::Client::open(url) else {
        return counts;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return counts;
    };
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    // cmdstat_xadd:calls=123,usec=456,...
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        counts.insert(format!("redis {name}"), calls);
    }
    counts
}

/// The database's counters at one moment: commands on the run's
/// collections (all kinds of [`snapshot`]) and transactions committed.
#[derive(Debug, Clone)]
pub struct Tally {
    commands: BTreeMap<String, u64>,
    commits: u64,
    aborts: u64,
}

/// Per order, between two [`Tally`]s.
#[derive(Debug, Clone, Serialize)]
pub struct Spent {
    /// MongoDB commands (commits not counted) per order.
    pub commands: f64,
    /// Transactions committed per order.
    pub commits: f64,
    /// Transactions aborted per order (write conflicts, mostly: each is
    /// run again).
    pub aborts: f64,
    /// The commands by collection and kind, largest first.
    pub by_kind: Vec<Commands>,
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MongoDB per order: {:.1} commands, {:.2} commits, {:.2} aborts (most:",
            self.commands, self.commits, self.aborts
        )?;
        for c in self.by_kind.iter().take(4) {
            write!(f, " {} {:.2}", c.what, c.per_order)?;
        }
        write!(f, ")")
    }
}

impl Tally {
    /// Reads both counters.
    pub async fn now(client: &mongodb::Client, db: &str) -> Self {
        let commands = snapshot(client, db).await;
        let status = client
            .database("admin")
            .run_command(doc! { "serverStatus": 1 })
            .await
            .unwrap_or_default();
        let transactions = status.get_document("transactions").ok();
        let count = |what| transactions.map_or(0, |t| count_of(t.get(what)));
        Self {
            commands,
            commits: count("totalCommitted"),
            aborts: count("totalAborted"),
        }
    }

    /// What was spent per order from `self` to `later`.
    pub fn until(&self, later: &Self, orders: usize) -> Spent {
        let by_kind = per_order(&self.commands, &later.commands, orders);
        Spent {
            commands: by_kind.iter().map(|c| c.per_order).sum(),
            commits: later.commits.saturating_sub(self.commits) as f64 / orders.max(1) as f64,
            aborts: later.aborts.saturating_sub(self.aborts) as f64 / orders.max(1) as f64,
            by_kind,
        }
    }
}
