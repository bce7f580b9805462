//! No personal data to strangers, end to end: a tracker needs the order's
//! tracking token (notify-svc learns its hash from `order.created.v1`),
//! neighbouring ids read nothing, payloads carry statuses only, and one
//! client cannot hold unlimited sockets or send large frames.

use std::time::Duration;

use foodchain_tests::{FULL_FLOW, Service, System, labels};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

const T: Duration = Duration::from_secs(30);

fn no_personal_data(what: &str, v: &Value) {
    let text = v.to_string();
    for pii in ["Ada Lovelace", "12 Analytical Row", "7946 0958"] {
        assert!(!text.contains(pii), "{what} carries personal data: {text}");
    }
}

/// Opens a tracker with `protocols` (the subprotocol header) and an optional
/// query token; the handshake's HTTP status if it was refused.
async fn connect(
    sys: &System,
    order_id: &str,
    protocols: Option<String>,
    query_token: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let base = sys.url(Service::Notify).replace("http://", "ws://");
    let url = match query_token {
        Some(t) => format!("{base}/ws/orders/{order_id}?token={t}"),
        None => format!("{base}/ws/orders/{order_id}"),
    };
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, response)) => {
            if response.headers().contains_key("sec-websocket-protocol") {
                assert_eq!(response.headers()["sec-websocket-protocol"], "foodchain.v1");
            }
            Ok(socket)
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn timeline(sys: &System, order_id: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = sys.http.get(format!(
        "{}/api/v1/orders/{order_id}/timeline",
        sys.url(Service::Notify)
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let path = format!("/api/v1/orders/{order_id}/timeline");
    sys.check_answer(Service::Notify, "GET", &path, status, &body);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_need_the_token_and_neighbours_read_nothing() {
    let sys = System::start().await;
    let menu = sys.seed_menu().await;
    let item = menu[0]["id"].as_str().unwrap();
    let a = sys.place_order(&[(item, 1)]).await;
    let b = sys.place_order(&[(item, 2)]).await;
    let (a_id, a_token) = (
        a["id"].as_str().unwrap(),
        a["tracking_token"].as_str().unwrap(),
    );
    sys.wait_order_status(a_id, "delivered", T).await;
    sys.wait_order_status(b["id"].as_str().unwrap(), "delivered", T)
        .await;

    // The owner: REST and every way a browser or a client sends the token.
    let (status, body) = timeline(&sys, a_id, Some(a_token)).await;
    assert_eq!(status, 200);
    assert_eq!(labels(&body["timeline"]), FULL_FLOW);
    no_personal_data("the timeline", &body);
    for (protocols, query) in [
        (Some(format!("foodchain.v1, bearer.{a_token}")), None),
        (None, Some(a_token)),
    ] {
        let mut socket = connect(&sys, a_id, protocols, query)
            .await
            .expect("the owner connects");
        let Some(Ok(Message::Text(t))) = socket.next().await else {
            panic!("a snapshot first")
        };
        let snapshot: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(labels(&snapshot["timeline"]), FULL_FLOW);
        no_personal_data("the WebSocket snapshot", &snapshot);
    }

    // Everyone else: 404, as for an order that does not exist.
    let wrong = contract::auth::TrackingToken::generate();
    let (status, unknown) = timeline(&sys, "65f1a2b3c4d5e6f708192a3b", Some(a_token)).await;
    assert_eq!(status, 404);
    for token in [None, Some(wrong.expose()), Some("garbage")] {
        let (status, body) = timeline(&sys, a_id, token).await;
        assert_eq!((status, &body), (404, &unknown));
        assert_eq!(
            connect(
                &sys,
                a_id,
                token.map(|t| format!("foodchain.v1, bearer.{t}")),
                None
            )
            .await
            .err(),
            Some(404)
        );
    }
    assert_eq!(
        connect(&sys, a_id, None, None).await.err(),
        Some(404),
        "no token at all"
    );
    let b_token = b["tracking_token"].as_str().unwrap();
    let (status, _) = timeline(&sys, a_id, Some(b_token)).await;
    assert_eq!(status, 404, "another order's token reads nothing");

    // 1,000 neighbouring ids of both orders, without a token and with a wrong one.
    let mut tried = 0;
    for placed in [&a, &b] {
        let bytes = contract::OrderId::parse(placed["id"].as_str().unwrap())
            .unwrap()
            .bytes();
        for delta in 1..=125u8 {
            let mut counter = bytes;
            counter[11] = counter[11].wrapping_add(delta);
            let mut time = bytes;
            time[3] = time[3].wrapping_add(delta);
            for candidate in [counter, time] {
                let id = contract::OrderId::from_bytes(candidate).to_string();
                for token in [None, Some(wrong.expose())] {
                    let (status, body) = timeline(&sys, &id, token).await;
                    assert_eq!(status, 404);
                    no_personal_data("a neighbour's timeline", &body);
                    tried += 1;
                }
            }
        }
    }
    assert_eq!(tried, 1000);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_unlimited_sockets_or_send_large_frames() {
    let sys = System::start_with(&[
        ("WS_MAX_SESSIONS_PER_CLIENT", "2"),
        ("WS_MAX_FRAME_BYTES", "1024"),
    ])
    .await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap();
    let first = sys.track(id).await;
    let second = sys.track(id).await;
    let token = sys.token(id).unwrap();
    let third = connect(
        &sys,
        id,
        Some(format!("foodchain.v1, bearer.{token}")),
        None,
    )
    .await;
    assert_eq!(third.err(), Some(429), "a third socket from one client");
    drop(first);
    // Once one closes, a slot is free again.
    let mut again = foodchain_tests::eventually("a slot frees", T, || async {
        connect(
            &sys,
            id,
            Some(format!("foodchain.v1, bearer.{token}")),
            None,
        )
        .await
        .ok()
    })
    .await;
    let _ = again.next().await;
    again
        .send(Message::Text("x".repeat(4096).into()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(T, async {
        loop {
            match again.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server ends a socket that sends an oversized frame");
    if let Some(code) = closed {
        assert_eq!(code, 1009, "message too big");
    }
    drop(second);
    sys.shutdown().await;
}
