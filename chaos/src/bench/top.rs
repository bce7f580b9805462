//! MongoDB commands per order, from the server's own accounting (`top`):
//! how many `find`, `insert`, `update`, `delete`, `getMore` and other
//! commands (`findAndModify`, `commitTransaction`, ...) each collection
//! received during the CPU phase. Counts are per command, not per document,
//! so a batch of 64 inserts counts once: this is the round-trip count.
//! The same for Redis, from `INFO commandstats` (calls per command).

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
    counts
}

fn count(sections: &Document, section: &str) -> u64 {
    sections
        .get_document(section)
        .ok()
        .and_then(|d| match d.get("count") {
            Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
            Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(0)
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

/// A snapshot of Redis's `INFO commandstats`: `redis <command> → calls`.
pub async fn redis_snapshot(url: &str) -> BTreeMap<String, u64> {
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
