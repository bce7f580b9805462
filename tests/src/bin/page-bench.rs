//! `page-bench`: how heavy and how fast the web app is, in a real headless
//! Chromium on the real services (all four in this process, on Redis and
//! MongoDB started for the run, the simulator's delays at zero).
//!
//! ```sh
//! scripts/page-bench.sh                      # = cargo run --release -p foodchain-tests --bin page-bench
//! scripts/page-bench.sh --orders 50 --loads 10
//! ```
//!
//! It prints, and writes to `target/bench/page/bench.json`:
//!
//! * **page weight**: the bytes of HTML, JavaScript and CSS the app's page
//!   loads, as served (uncompressed: notify-svc does not compress);
//! * **page load → menu shown**: the page's `menu-shown` User Timing mark
//!   (milliseconds after navigation start), with a cold cache (a fresh
//!   browser profile per load) and a warm one (the same browser again);
//! * **event reaches notify-svc → DOM update**: for every step that reached
//!   an open tracker live (an `update` message, not the snapshot), the
//!   moment the page updated the stepper (its `foodchain:step` mark,
//!   `performance.timeOrigin + startTime`) minus the moment the event
//!   became readable in the stream notify-svc tails, as a second reader of
//!   that stream in this process saw it (the "probe": a blocking `XREAD`
//!   like notify-svc's own tail, stamped in microseconds); and, as a cross
//!   check, minus the entry's `XADD` time (Redis' clock, whole
//!   milliseconds). One machine, one clock.
//!
//! Each order is placed over REST, then opened in the page the way the app
//! opens it after a checkout (in-page navigation to its tracker) as soon as
//! notify-svc knows it; with no kitchen delay some steps happen before the
//! socket is open and arrive in the snapshot, so they are not counted. It
//! asserts nothing.

// A tool: it fails by panicking.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use contract::{Envelope, streams::Stream};
use foodchain_tests::{
    Service, System,
    browser::{Browser, Options},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// When the probe saw each `(order id, kind:status)`: (probe ms, XADD ms).
type Seen = Arc<Mutex<HashMap<(String, String), (f64, f64)>>>;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

/// Percentile `p` (0 to 1) of sorted values (nearest rank).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "min": v.first(),
        "p50": pct(&v, 0.5),
        "p90": pct(&v, 0.9),
        "p99": pct(&v, 0.99),
        "max": v.last(),
    })
}

fn show(what: &str, s: &Value, unit: &str) {
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  {what:<44} n={:<5} p50 {:>7.2} {unit}  p90 {:>7.2} {unit}  p99 {:>7.2} {unit}  (min {:.2}, max {:.2})",
        s["n"],
        f("p50"),
        f("p90"),
        f("p99"),
        f("min"),
        f("max")
    );
}

/// Tails the order and delivery streams like notify-svc does; records when
/// each step became readable.
async fn probe(sys: &System, seen: Seen, stop: CancellationToken) {
    let url = sys.env().raw("REDIS_URL").unwrap();
    let client = contract::redis::client(&url).unwrap();
    let mut conn = contract::redis::blocking(&client, Duration::from_secs(2)).unwrap();
    let streams = [Stream::Orders, Stream::Deliveries];
    // A page bench runs with one partition (FOODCHAIN_TEST_PARTITIONS unset).
    let keys = streams.map(|s| sys.namespace().stream_at(s, 0));
    let mut last = [String::new(), String::new()];
    for (i, key) in keys.iter().enumerate() {
        let v: redis::Value = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        last[i] = contract::redis::entries(v)
            .unwrap()
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    }
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let v: redis::Value = match redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&keys)
                .arg(&last)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                Err(_) => continue,
            };
            let at = now_ms();
            for (key, batch) in contract::redis::xread(v).unwrap_or_default() {
                let Some(i) = keys.iter().position(|k| *k == key) else {
                    continue;
                };
                for entry in batch {
                    last[i].clone_from(&entry.id);
                    let Ok(e) = Envelope::from_entry(&entry) else {
                        continue;
                    };
                    let Some(status) = e.payload["status"].as_str() else {
                        continue;
                    };
                    let kind = if streams[i] == Stream::Orders {
                        "order"
                    } else {
                        "delivery"
                    };
                    let xadd: f64 = entry
                        .id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or(f64::NAN);
                    seen.lock()
                        .unwrap()
                        .insert((e.key.clone(), format!("{kind}:{status}")), (at, xadd));
                }
            }
        }
    });
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let orders = arg(&args, "--orders", 200);
    let loads = arg(&args, "--loads", 30);
    let cold_loads = arg(&args, "--cold-loads", 5);

    let sys = System::start_web(&[("SIMULATOR_DELAY_SCALE", "0")]).await;
    let menu = sys.seed_menu().await;
    let web = sys.web_url();
    println!(
        "page-bench: {orders} orders, {loads} warm and {cold_loads} cold loads; the app at {web}/"
    );

    // Page weight: the HTML and everything it links, as served.
    let http = reqwest::Client::new();
    let html = http
        .get(format!("{web}/"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&html).into_owned();
    let mut files = vec![("index.html".to_owned(), html.len())];
    for part in text.split("\"/assets/").skip(1) {
        let path = &part[..part.find('"').unwrap()];
        let body = http
            .get(format!("{web}/assets/{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        files.push((path.rsplit('/').next().unwrap().to_owned(), body.len()));
    }
    let total: usize = files.iter().map(|(_, n)| n).sum();
    let by_kind = |ext: &str| {
        files
            .iter()
            .filter(|(f, _)| f.ends_with(ext))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    println!(
        "\npage weight (as served, uncompressed): {total} bytes = HTML {} + JS {} + CSS {}",
        by_kind(".html"),
        by_kind(".js"),
        by_kind(".css")
    );
    for (f, n) in &files {
        println!("  {f:<14} {n:>6} B");
    }

    // Page load → menu shown.
    const MENU_SHOWN: &str =
        "const m = performance.getEntriesByName('menu-shown')[0]; return m ? m.startTime : null;";
    // Where a load's time goes: the HTML received, the menu request sent and answered.
    const PHASES: &str = "const n = performance.getEntriesByType('navigation')[0]; const r = performance.getEntriesByType('resource').find(e => e.name.endsWith('/api/v1/menu')); return [n.responseEnd, r ? r.startTime : null, r ? r.responseEnd : null];";
    let mut cold = Vec::new();
    for _ in 0..cold_loads {
        let b = Browser::start("page-bench", Options::default()).await;
        b.goto(&format!("{web}/")).await;
        cold.push(
            b.wait_js("the menu", T, MENU_SHOWN, &[])
                .await
                .as_f64()
                .unwrap(),
        );
        b.close().await;
    }
    let b = Browser::start("page-bench", Options::default()).await;
    b.goto(&format!("{web}/")).await;
    b.wait_js("the menu", T, MENU_SHOWN, &[]).await;
    let mut warm = Vec::new();
    let (mut html_at, mut menu_asked, mut menu_answered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..loads {
        b.goto(&format!("{web}/")).await;
        warm.push(
            b.wait_js("the menu", T, MENU_SHOWN, &[])
                .await
                .as_f64()
                .unwrap(),
        );
        let p = b.exec(PHASES, &[]).await;
        html_at.push(p[0].as_f64().unwrap_or(f64::NAN));
        menu_asked.push(p[1].as_f64().unwrap_or(f64::NAN));
        menu_answered.push(p[2].as_f64().unwrap_or(f64::NAN));
    }
    b.screenshot("menu").await;
    let (cold, warm) = (summary(cold), summary(warm));
    println!("\npage load → menu shown (navigation start to the menu in the DOM):");
    show("cold cache (fresh profile each time)", &cold, "ms");
    show("warm cache (same browser)", &warm, "ms");
    let phases = json!({
        "html_received": summary(html_at),
        "menu_requested": summary(menu_asked),
        "menu_answered": summary(menu_answered),
    });
    show("  warm: HTML received", &phases["html_received"], "ms");
    show("  warm: menu requested", &phases["menu_requested"], "ms");
    show("  warm: menu answered", &phases["menu_answered"], "ms");

    // Event reaches notify-svc → DOM update.
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    probe(&sys, seen.clone(), stop.clone()).await;
    let notify = sys.url(Service::Notify);
    let (mut from_probe, mut from_xadd) = (Vec::new(), Vec::new());
    let mut steps_live = 0usize;
    let started = tokio::time::Instant::now();
    for n in 0..orders {
        let item = menu[n % menu.len()]["id"].as_str().unwrap();
        let order = sys.place_order(&[(item, 1)]).await;
        let id = order["id"].as_str().unwrap().to_owned();
        let token = order["tracking_token"].as_str().unwrap().to_owned();
        // As soon as notify-svc knows the order (its socket would refuse it before).
        foodchain_tests::eventually("notify-svc knows the order", T, || async {
            let r = http
                .get(format!("{notify}/api/v1/orders/{id}/timeline"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        b.exec(
            "performance.clearMarks(); history.pushState(null, '', arguments[0]); dispatchEvent(new PopStateEvent('popstate'));",
            &[json!(format!("/track/{id}#token={token}"))],
        )
        .await;
        b.wait_js(
            "the order to finish",
            T,
            "return document.getElementById('track-id').textContent === arguments[0] && document.getElementById('conn').dataset.state === 'done';",
            &[json!(id)],
        )
        .await;
        let marks = b
            .exec(
                "return [performance.timeOrigin, performance.getEntriesByType('mark').filter(m => m.name.startsWith('foodchain:step ')).map(m => [m.name.slice(15), m.startTime])];",
                &[],
            )
            .await;
        let origin = marks[0].as_f64().unwrap();
        for m in marks[1].as_array().unwrap() {
            let step = m[0].as_str().unwrap().to_owned();
            let dom = origin + m[1].as_f64().unwrap();
            let key = (id.clone(), step);
            let probe_at = foodchain_tests::eventually("the probe saw it", T, || async {
                seen.lock().unwrap().get(&key).copied()
            })
            .await;
            from_probe.push(dom - probe_at.0);
            from_xadd.push(dom - probe_at.1);
            steps_live += 1;
        }
    }
    stop.cancel();
    let elapsed = started.elapsed();
    b.screenshot("last-order").await;
    b.close().await;
    let (probe_s, xadd_s) = (summary(from_probe), summary(from_xadd));
    println!(
        "\nevent reaches notify-svc → DOM update ({orders} orders in {:.1} s, {steps_live} steps arrived live, SIMULATOR_DELAY_SCALE=0):",
        elapsed.as_secs_f64()
    );
    show(
        "from readable in the stream (probe, µs clock)",
        &probe_s,
        "ms",
    );
    show("from XADD (Redis clock, whole ms)", &xadd_s, "ms");

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/page");
    std::fs::create_dir_all(&out).unwrap();
    let report = json!({
        "orders": orders,
        "page_weight_bytes": {"total": total, "html": by_kind(".html"), "js": by_kind(".js"), "css": by_kind(".css"),
            "files": files.iter().map(|(f, n)| json!({"file": f, "bytes": n})).collect::<Vec<_>>()},
        "menu_shown_ms": {"cold": cold, "warm": warm, "warm_phases": phases},
        "event_to_dom_ms": {"steps_live": steps_live, "from_probe": probe_s, "from_xadd": xadd_s},
    });
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("\n(target/bench/page/bench.json)");
    sys.shutdown().await;
}
