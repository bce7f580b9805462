//! The logs of a whole flow never contain a customer's name, address or
//! phone number, a tracking token or an Idempotency-Key: every service runs
//! in this process with every log line (down to debug) captured as JSON, a
//! flow goes through with distinctive personal data (placing, replaying,
//! reading, tracking, refusals), and the capture is scanned.
//!
//! A test binary of its own: it installs the process-wide log subscriber.

#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use foodchain_tests::{Service, System};
use serde_json::json;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const NAME: &str = "Philippa Quillfeather";
const ADDRESS: &str = "77 Zanzibar Crescent";
const PHONE: &str = "+44 20 8123 4567";
const KEY: &str = "idem-6f1c2d77-secret-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_token_or_key_is_ever_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("debug,hyper=info,h2=info,tower=info,mongodb=info,rustls=info,reqwest=info,tungstenite=info,tokio_tungstenite=info")
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();

    let sys = System::start().await;
    let menu = sys.seed_menu().await;
    let item = menu[0]["id"].as_str().unwrap();
    let body = json!({
        "customer": {"name": NAME, "address": ADDRESS, "phone": PHONE},
        "items": [{"item_id": item, "quantity": 1}],
    });
    let post = |key: Option<&'static str>, body: serde_json::Value| {
        let mut req = sys
            .http
            .post(format!("{}/api/v1/orders", sys.url(Service::Order)))
            .json(&body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, placed) = post(Some(KEY), body.clone()).await;
    assert_eq!(status, 201, "{placed}");
    let (status, replayed) = post(Some(KEY), body.clone()).await;
    assert_eq!(
        (status, &replayed["tracking_token"]),
        (201, &placed["tracking_token"])
    );
    sys.remember_token(&placed);
    let id = placed["id"].as_str().unwrap();
    let token = placed["tracking_token"].as_str().unwrap().to_owned();

    // Refusals that echo input: a bad phone, an unknown item, a reused key.
    let mut bad = body.clone();
    bad["customer"]["phone"] = json!(format!("call {PHONE} after six"));
    assert_eq!(post(None, bad).await.0, 422);
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(2);
    assert_eq!(post(Some(KEY), other).await.0, 422);

    let mut tracker = sys.track(id).await;
    // A client that can only put the token in the URL: never logged either.
    let url = format!(
        "{}/ws/orders/{id}?token={token}",
        sys.url(Service::Notify).replace("http://", "ws://")
    );
    let (mut by_query, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _ = futures::StreamExt::next(&mut by_query).await;
    sys.wait_order_status(id, "delivered", Duration::from_secs(30))
        .await;
    let _ = tracker.next(Duration::from_secs(5)).await;
    let timeline = sys
        .get_json(Service::Notify, &format!("/api/v1/orders/{id}/timeline"))
        .await;
    assert_eq!(timeline["status"], "delivered");
    for path in [
        format!("/api/v1/orders/{id}"),
        format!("/api/v1/orders/{id}/timeline"),
    ] {
        let service = if path.ends_with("timeline") {
            Service::Notify
        } else {
            Service::Order
        };
        let r = sys
            .http
            .get(format!("{}{path}", sys.url(service)))
            .bearer_auth("Fk2x-wrong-token-wrong-token-wrong-token-xx")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    drop(tracker);
    drop(by_query);
    sys.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 100, "the flow was logged");
    assert!(
        logs.contains(id),
        "order ids are logged (they are not personal data)"
    );
    for (what, secret) in [
        ("a name", NAME),
        ("an address", ADDRESS),
        ("a phone number", PHONE),
        ("a phone number's digits", "8123 4567"),
        ("a tracking token", token.as_str()),
        ("an Idempotency-Key", KEY),
    ] {
        let hits: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(hits.is_empty(), "the logs contain {what}: {hits:#?}");
    }
}
