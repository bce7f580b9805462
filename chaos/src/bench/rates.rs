//! Creation at several concurrencies, and the sustained rate.
//!
//! * **Ladder**: for each concurrency, closed-loop clients post orders for a
//!   fixed time; throughput, latency, and every answer that is not a 201 by
//!   kind (5xx apart). Between steps the backlog drains, so each step starts
//!   from a quiet system.
//! * **Open loop**: orders posted at a fixed rate (not waiting for answers),
//!   for a fixed time; created → delivered of every accepted order.
//! * **Sustained rate**: the highest open-loop rate at which the backlog
//!   does not grow. A rate is sustained when every POST got a 201; when no
//!   consumer group falls behind: over the second half of the window (the
//!   first fills the pipeline), the backlog of every group of every stream
//!   (entries it has not read plus entries it read and not acknowledged,
//!   sampled every [`SAMPLE_EVERY`], a least-squares slope) grows by at
//!   most [`GROWTH_SHARE`] of what its stream receives per second (at
//!   least [`GROWTH_FLOOR`] entries/s, the noise of small batches);
//!   when at the end of the window fewer than one second's worth of orders
//!   were undelivered; and when the rest were delivered and read within
//!   [`DRAIN_GRACE`]. notify-svc's timeline counts too, though no order
//!   waits for it. Searched by growing the rate ×1.5 until it fails, then
//!   bisecting.
//!
//!   Before, the backlog was looked at only at the end of the window: fewer
//!   than one second's worth of entries, summed over every stream, still
//!   unread. Every order adds about twenty entries, so that tolerated a
//!   group falling behind by a few per cent of its input: 347.6 orders/s
//!   passed, and 30 s at that rate left delivery-svc 1.4 s behind and
//!   still falling (docs/performance.md, 27).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all, stream};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use super::{Percentiles, Streams, pipeline_ms, post_order, top, wait_delivered};

/// How long the rest of an open-loop window may take to be delivered.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How fast a group's backlog may grow, as a share of what its stream
/// receives per second, for the rate to count as sustained.
pub const GROWTH_SHARE: f64 = 0.02;

/// ... and in entries per second, at least (at a low rate a batch more or
/// less in flight at one sample is more than 2 % of the input).
pub const GROWTH_FLOOR: f64 = 5.0;

/// How often the backlog is sampled in the second half of a window.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What the clients post: two distinct dishes of the first seven, 1–2 each.
#[derive(Debug, Clone)]
pub struct Load {
    /// The order-svc replicas' base URLs (round robin).
    pub urls: Vec<String>,
    /// Menu item ids.
    pub items: Vec<String>,
    /// The run's tag, in every Idempotency-Key.
    pub tag: String,
}

impl Load {
    fn lines(&self, rng: &mut StdRng) -> Vec<(&str, u32)> {
        pick(self.items.len(), rng)
            .iter()
            .map(|(i, q)| (self.items[*i].as_str(), *q))
            .collect()
    }

    /// Posts order `n` of `phase`: (status, id, token, latency ms).
    async fn post(&self, http: &reqwest::Client, phase: &str, n: usize) -> Posted {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let lines = self.lines(&mut rng);
        let url = &self.urls[n % self.urls.len()];
        let key = format!("bench-{}-{phase}-{n}", self.tag);
        let started = Instant::now();
        let answer = post_order(http, url, &key, &lines).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match answer {
            Ok((201, order)) => Posted {
                status: 201,
                order: order["id"]
                    .as_str()
                    .zip(order["tracking_token"].as_str())
                    .map(|(i, t)| (i.to_owned(), t.to_owned())),
                ms,
            },
            Ok((status, _)) => Posted {
                status,
                order: None,
                ms,
            },
            Err(_) => Posted {
                status: 0,
                order: None,
                ms,
            },
        }
    }
}

/// Two distinct dishes out of (at most) the first seven of `items`
/// dishes, 1 or 2 of each: `(index, quantity)`.
pub fn pick(items: usize, rng: &mut StdRng) -> [(usize, u32); 2] {
    let dishes = items.min(7);
    let a = rng.random_range(0..dishes);
    let b = (a + rng.random_range(1..dishes.max(2))) % dishes.max(1);
    [(a, rng.random_range(1..=2)), (b, rng.random_range(1..=2))]
}

/// One POST's answer.
#[derive(Debug, Clone)]
struct Posted {
    /// HTTP status; 0 when no answer came (connection error, timeout).
    status: u16,
    order: Option<(String, String)>,
    ms: f64,
}

/// One concurrency of the ladder.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Orders accepted (201) per second.
    pub per_sec: f64,
    /// Latency of the 201s.
    pub latency: Percentiles,
    /// 5xx answers.
    pub server_errors: usize,
    /// Other answers that were not 201 (4xx, no answer).
    pub other_errors: usize,
    /// What the database spent per accepted order, from the step's start
    /// until its orders were delivered (set by [`ladder`] and the paused
    /// step; the drain's own polling, one count every 20 ms, is in it).
    pub database: Option<top::Spent>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  c={:<4} {:>6.0} orders/s  p50 {:>6.1} ms  p99 {:>7.1} ms  5xx {:<4} other non-201 {}",
            self.concurrency,
            self.per_sec,
            self.latency.p50,
            self.latency.p99,
            self.server_errors,
            self.other_errors
        )?;
        match &self.database {
            Some(d) => write!(f, "  {d}"),
            None => Ok(()),
        }
    }
}

fn summarise(concurrency: usize, secs: f64, posted: &[Posted]) -> Step {
    let ok: Vec<f64> = posted
        .iter()
        .filter(|p| p.status == 201)
        .map(|p| p.ms)
        .collect();
    Step {
        concurrency,
        per_sec: ok.len() as f64 / secs,
        latency: Percentiles::of(ok),
        server_errors: posted.iter().filter(|p| p.status >= 500).count(),
        other_errors: posted
            .iter()
            .filter(|p| p.status != 201 && p.status < 500)
            .count(),
        database: None,
    }
}

/// Closed-loop creation at each concurrency for `duration`, draining the
/// backlog between steps.
pub async fn ladder(
    http: &reqwest::Client,
    load: &Load,
    orders: &mongodb::Collection<bson::Document>,
    concurrencies: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for &c in concurrencies {
        let step = counted(orders, || async {
            let step = closed_loop(http, load, &format!("c{c}"), c, duration).await;
            println!("{step}");
            Ok(step)
        })
        .await?;
        steps.push(step);
    }
    Ok(steps)
}

/// Runs `step`, waits until its orders are delivered, and sets what the
/// database spent on them per order.
pub async fn counted<F, Fut>(
    orders: &mongodb::Collection<bson::Document>,
    step: F,
) -> anyhow::Result<Step>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Step>>,
{
    let (client, db) = (orders.client(), orders.namespace().db);
    let before = top::Tally::now(client, &db).await;
    let mut step = step().await?;
    wait_delivered(orders, Duration::from_secs(600)).await?;
    let accepted = step.latency.n;
    step.database = Some(before.until(&top::Tally::now(client, &db).await, accepted));
    if let Some(d) = &step.database {
        println!("         {d}");
    }
    Ok(step)
}

/// `c` closed-loop clients posting orders for `duration` (Idempotency-Keys
/// tagged with `phase`); returns without waiting for their delivery.
pub async fn closed_loop(
    http: &reqwest::Client,
    load: &Load,
    phase: &str,
    c: usize,
    duration: Duration,
) -> Step {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let workers = (0..c.max(1)).map(|_| {
        let next = &next;
        async move {
            let mut out = Vec::new();
            while started.elapsed() < duration {
                let n = next.fetch_add(1, Ordering::Relaxed);
                out.push(load.post(http, phase, n).await);
            }
            out
        }
    });
    let posted: Vec<Posted> = join_all(workers).await.into_iter().flatten().collect();
    summarise(c, started.elapsed().as_secs_f64(), &posted)
}

/// One open-loop window.
#[derive(Debug, Clone, Serialize)]
pub struct RateRun {
    /// Offered orders per second.
    pub rate: f64,
    /// Orders posted.
    pub posted: usize,
    /// Answers other than 201.
    pub errors: usize,
    /// POST latency of the 201s.
    pub create_latency: Percentiles,
    /// Orders not yet delivered when the window ended.
    pub undelivered_at_end: u64,
    /// Stream entries added during the window that some consumer group had
    /// not read when it ended (summed over the groups).
    pub unread_at_end: u64,
    /// Stream entries added per second during the window.
    pub entries_per_sec: f64,
    /// The group whose backlog grew fastest over the second half of the
    /// window, relative to what it may (none: no group was sampled twice).
    pub growth: Option<Growth>,
    /// Seconds from the end of the window until all were delivered (or the
    /// grace ran out).
    pub drain_secs: f64,
    /// Whether the rate is sustained (see the module docs).
    pub sustained: bool,
    /// `created_at` → delivered, when measured.
    pub pipeline: Option<Percentiles>,
    /// Median of every hop between two consecutive statuses, when measured.
    pub hop_p50_ms: Option<f64>,
    /// Median of each hop of the tracking flow, in its order, when measured.
    pub each_hop_p50_ms: Vec<f64>,
    /// What the database spent per accepted order, from the window's start
    /// until its orders were delivered (when timelines are measured).
    pub database: Option<top::Spent>,
}

/// How fast one consumer group's backlog grew.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// `stream/group`.
    pub group: String,
    /// Entries per second its backlog (unread + pending) grew by.
    pub per_sec: f64,
    /// Entries per second its stream received meanwhile.
    pub input_per_sec: f64,
}

impl Growth {
    /// How fast it may grow (see the module docs).
    fn allowed(&self) -> f64 {
        (GROWTH_SHARE * self.input_per_sec).max(GROWTH_FLOOR)
    }

    /// Whether the group fell behind.
    pub fn falling_behind(&self) -> bool {
        self.per_sec > self.allowed()
    }
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:+.0}/s of {:.0}/s in",
            self.group, self.per_sec, self.input_per_sec
        )
    }
}

/// Samples every group's backlog from `from` until `until`; the group whose
/// backlog grew fastest relative to what it may.
async fn backlog_growth(
    streams: &Streams,
    from: tokio::time::Instant,
    until: tokio::time::Instant,
) -> anyhow::Result<Option<Growth>> {
    tokio::time::sleep_until(from).await;
    // Per (stream, group): (seconds, backlog); per stream: (seconds, entries added).
    let mut backlogs: HashMap<(String, String), Vec<(f64, f64)>> = HashMap::new();
    let mut added: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    let mut next = from;
    while next < until {
        let survey = streams.survey().await?;
        let t = from.elapsed().as_secs_f64();
        for s in survey {
            for g in s.groups {
                backlogs
                    .entry((s.stream.clone(), g.name))
                    .or_default()
                    .push((t, (g.unread + g.pending) as f64));
            }
            added.entry(s.stream).or_default().push((t, s.added as f64));
        }
        next += SAMPLE_EVERY;
        tokio::time::sleep_until(next.min(until)).await;
    }
    let growth = backlogs
        .into_iter()
        .filter_map(|((stream, group), points)| {
            Some(Growth {
                per_sec: slope(&points)?,
                input_per_sec: slope(added.get(&stream)?)?,
                group: format!("{stream}/{group}"),
            })
        });
    Ok(growth.max_by(|a, b| (a.per_sec / a.allowed()).total_cmp(&(b.per_sec / b.allowed()))))
}

/// The least-squares slope of `points` (none with fewer than two times).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(t, y), p| (t + p.0 / n, y + p.1 / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, v), (t, y)| {
        (c + (t - mt) * (y - my), v + (t - mt) * (t - mt))
    });
    (var > 0.0).then(|| cov / var)
}

impl std::fmt::Display for RateRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  {:>6.1} orders/s offered: {} posted, {} non-201, POST p99 {:.1} ms, backlog growth {}, {} undelivered and {} stream entries unread ({:.0}/s added) at the end, drained in {:.1} s: {}",
            self.rate,
            self.posted,
            self.errors,
            self.create_latency.p99,
            self.growth
                .as_ref()
                .map_or_else(|| "not sampled".to_owned(), ToString::to_string),
            self.undelivered_at_end,
            self.unread_at_end,
            self.entries_per_sec,
            self.drain_secs,
            if self.sustained {
                "sustained"
            } else {
                "NOT sustained"
            }
        )?;
        if let (Some(p), Some(h)) = (&self.pipeline, self.hop_p50_ms) {
            write!(f, "\n    created→delivered {p}; hop p50 {h:.1} ms")?;
            let each: Vec<String> = self
                .each_hop_p50_ms
                .iter()
                .map(|ms| format!("{ms:.1}"))
                .collect();
            write!(f, " (each: {} ms)", each.join(" / "))?;
        }
        if let Some(d) = &self.database {
            write!(
                f,
                "\n    MongoDB per order: {:.1} commands, {:.2} commits, {:.2} aborts:",
                d.commands, d.commits, d.aborts
            )?;
            for c in d.by_kind.iter().filter(|c| c.per_order >= 0.05) {
                write!(f, " {} {:.2};", c.what, c.per_order)?;
            }
        }
        Ok(())
    }
}

/// Posts at `rate` for `duration`; with `timelines`, measures created →
/// delivered of every accepted order (through notify-svc at `notify_url`).
pub async fn open_loop(
    http: &reqwest::Client,
    load: &Load,
    orders: &mongodb::Collection<bson::Document>,
    streams: &Streams,
    rate: f64,
    duration: Duration,
    timelines: Option<&str>,
) -> anyhow::Result<RateRun> {
    let phase = format!("r{rate:.1}-{}", rand::rng().random::<u32>());
    let (client, db) = (orders.client(), orders.namespace().db);
    let tally = match timelines {
        Some(_) => Some(top::Tally::now(client, &db).await),
        None => None,
    };
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let counts_before = streams.counts().await?;
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..total)
        .map(|n| {
            let (http, load, phase) = (http.clone(), load.clone(), phase.clone());
            let at = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                load.post(&http, &phase, n).await
            })
        })
        .collect();
    let growth = backlog_growth(streams, started + duration / 2, started + duration).await?;
    tokio::time::sleep_until(started + duration).await;
    let undelivered_at_end = orders
        .count_documents(bson::doc! { "status": { "$ne": "delivered" } })
        .await?;
    let counts_at_end = streams.counts().await?;
    let unread_at_end = counts_at_end.unread.saturating_sub(counts_before.unread);
    let entries_per_sec =
        counts_at_end.added.saturating_sub(counts_before.added) as f64 / duration.as_secs_f64();
    let posted: Vec<Posted> = join_all(tasks)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let window_end = Instant::now();
    let drained = wait_drained(orders, streams, counts_before.unread, DRAIN_GRACE)
        .await
        .is_ok();
    let drain_secs = window_end.elapsed().as_secs_f64();
    if !drained {
        // Leave a quiet system for whatever runs next.
        wait_drained(
            orders,
            streams,
            counts_before.unread,
            Duration::from_secs(600),
        )
        .await?;
    }
    let errors = posted.iter().filter(|p| p.status != 201).count();
    let accepted = posted.iter().filter(|p| p.status == 201).count();
    let database = match (tally, drained) {
        (Some(before), true) => Some(before.until(&top::Tally::now(client, &db).await, accepted)),
        _ => None,
    };
    let sustained = errors == 0
        && drained
        && (undelivered_at_end as f64) <= rate.max(1.0)
        && growth.as_ref().is_some_and(|g| !g.falling_behind());
    let (pipeline, hop_p50_ms, each_hop_p50_ms) = match timelines {
        Some(notify_url) => {
            let measured: Vec<(f64, Vec<f64>)> =
                stream::iter(posted.iter().filter_map(|p| p.order.clone()))
                    .map(|(id, token)| async move {
                        pipeline_ms(http, &load.urls[0], notify_url, &id, &token).await
                    })
                    .buffer_unordered(16)
                    .filter_map(|r| async move { r.ok() })
                    .collect()
                    .await;
            let hops: Vec<f64> = measured
                .iter()
                .flat_map(|(_, h)| h.iter().copied())
                .collect();
            let hop_count = measured.first().map_or(0, |(_, h)| h.len());
            let each = (0..hop_count)
                .map(|i| {
                    Percentiles::of(
                        measured
                            .iter()
                            .filter_map(|(_, h)| h.get(i).copied())
                            .collect(),
                    )
                    .p50
                })
                .collect();
            (
                Some(Percentiles::of(measured.iter().map(|(t, _)| *t).collect())),
                Some(Percentiles::of(hops).p50),
                each,
            )
        }
        None => (None, None, Vec::new()),
    };
    Ok(RateRun {
        rate,
        posted: posted.len(),
        errors,
        create_latency: Percentiles::of(
            posted
                .iter()
                .filter(|p| p.status == 201)
                .map(|p| p.ms)
                .collect(),
        ),
        undelivered_at_end,
        unread_at_end,
        entries_per_sec,
        growth,
        drain_secs,
        sustained,
        pipeline,
        hop_p50_ms,
        each_hop_p50_ms,
        database,
    })
}

/// Waits until every order is delivered and the consumer groups have read
/// the streams back down to `unread` entries (what they had not read before
/// the window: a group nobody runs any more keeps its lag).
async fn wait_drained(
    orders: &mongodb::Collection<bson::Document>,
    streams: &Streams,
    unread: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    wait_delivered(orders, timeout).await?;
    loop {
        let now = streams.counts().await?.unread;
        if now <= unread {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} stream entries unread after {timeout:?}", now - unread);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The highest sustained rate, starting from `start` orders/s: ×1.5 while
/// sustained, then `bisections` halvings of the interval.
pub async fn sustained_rate(
    http: &reqwest::Client,
    load: &Load,
    orders: &mongodb::Collection<bson::Document>,
    streams: &Streams,
    start: f64,
    duration: Duration,
    bisections: usize,
) -> anyhow::Result<(f64, Vec<RateRun>)> {
    let mut runs = Vec::new();
    let (mut good, mut bad) = (0.0_f64, None::<f64>);
    let mut rate = start.max(1.0);
    for _ in 0..12 {
        let run = open_loop(http, load, orders, streams, rate, duration, None).await?;
        println!("{run}");
        let ok = run.sustained;
        runs.push(run);
        if ok {
            good = rate;
            rate *= 1.5;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let Some(mut hi) = bad {
        for _ in 0..bisections {
            let mid = (good + hi) / 2.0;
            let run = open_loop(http, load, orders, streams, mid, duration, None).await?;
            println!("{run}");
            if run.sustained {
                good = mid;
            } else {
                hi = mid;
            }
            runs.push(run);
        }
    }
    Ok((good, runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_the_least_squares_fit() {
        assert_eq!(slope(&[(0.0, 1.0)]), None);
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 7.0))
            .collect();
        assert!((slope(&line).unwrap_or(0.0) - 3.0).abs() < 1e-9);
        // Noise around a flat backlog: no growth.
        let flat = [
            (0.0, 100.0),
            (1.0, 300.0),
            (2.0, 100.0),
            (3.0, 300.0),
            (4.0, 200.0),
        ];
        assert!(slope(&flat).unwrap_or(f64::MAX).abs() < 30.0);
    }

    #[test]
    fn a_group_falls_behind_past_its_share_of_the_input() {
        let growth = |per_sec, input_per_sec| Growth {
            group: "orders-stream/delivery-svc".into(),
            per_sec,
            input_per_sec,
        };
        // delivery-svc at 347.6 orders/s: 1,735 entries/s in, +81/s.
        assert!(growth(81.0, 1735.0).falling_behind());
        assert!(!growth(30.0, 1735.0).falling_behind());
        // A few entries either way at a low rate is noise.
        assert!(!growth(4.0, 50.0).falling_behind());
    }
}
