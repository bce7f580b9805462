//! Tracking tokens: only the token of an order reads it; everyone else gets
//! the 404 of an order that does not exist, with no personal data.

use axum::{
    body::Body,
    http::{Request, header},
};
use serde_json::Value;

use crate::{Api, order_body};

/// GET an order with an optional bearer token.
async fn get_order(api: &Api, id: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = Request::get(format!("/api/v1/orders/{id}"));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let a = api.app.request(req.body(Body::empty()).unwrap()).await;
    (a.status, a.json)
}

fn no_personal_data(body: &Value) {
    let text = body.to_string();
    for pii in ["Ada Lovelace", "12 Analytical Row", "7946"] {
        assert!(!text.contains(pii), "personal data in {text}");
    }
}

#[tokio::test]
async fn only_the_orders_token_reads_it_and_everyone_else_gets_the_unknown_orders_404() {
    let api = Api::new().await;
    let item = api.add_item("Gyoza", 700, 10).await;
    let (status, placed) = api.post_order(&order_body(&[(&item, 1)])).await;
    assert_eq!(status, 201, "{placed}");
    let id = placed["id"].as_str().unwrap();
    let token = placed["tracking_token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(
        placed["tracking_url"],
        format!("/track/{id}#token={token}"),
        "relative by default (one host behind an ingress)"
    );

    let (status, order) = get_order(&api, id, Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        order["customer"]["name"], "Ada Lovelace",
        "the owner sees it all"
    );
    assert!(
        order.get("tracking_token").is_none(),
        "the token is sent once"
    );

    let (s_none, none) = get_order(&api, id, None).await;
    let other = contract::auth::TrackingToken::generate();
    let (s_wrong, wrong) = get_order(&api, id, Some(other.expose())).await;
    let (s_bad, bad) = get_order(&api, id, Some("not-a-token")).await;
    let unknown_id = "65f1a2b3c4d5e6f708192a3b";
    let (s_unknown, unknown) = get_order(&api, unknown_id, Some(token)).await;
    for (status, body) in [
        (s_none, &none),
        (s_wrong, &wrong),
        (s_bad, &bad),
        (s_unknown, &unknown),
    ] {
        assert_eq!(status, 404);
        assert_eq!(
            body, &unknown,
            "the same answer as for an order that does not exist"
        );
        no_personal_data(body);
    }

    // Only a hash is stored: neither the order nor anything else holds the token.
    for coll in ["orders", "idempotency_keys", "outbox_order_svc"] {
        let docs: Vec<bson::Document> = {
            use futures::TryStreamExt;
            api.db
                .collection::<bson::Document>(coll)
                .find(bson::doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        for d in docs {
            assert!(
                !d.to_string().contains(token),
                "{coll} holds the token: {d}"
            );
        }
    }
}

#[tokio::test]
async fn an_idempotent_replay_returns_the_same_token_which_is_stored_only_sealed() {
    let api = Api::new().await;
    let item = api.add_item("Ramen", 1200, 10).await;
    let body = order_body(&[(&item, 1)]);
    let post = |key: &'static str| {
        let body = body.to_string();
        let app = api.app.clone();
        async move {
            let req = Request::post("/api/v1/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", key)
                .body(Body::from(body))
                .unwrap();
            app.request(req).await
        }
    };
    let first = post("a-key-of-the-client").await;
    let again = post("a-key-of-the-client").await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(first.json["tracking_token"], again.json["tracking_token"]);
    assert_eq!(first.json["tracking_url"], again.json["tracking_url"]);
    let token = first.json["tracking_token"].as_str().unwrap();
    let records: Vec<bson::Document> = {
        use futures::TryStreamExt;
        api.db
            .collection::<bson::Document>("idempotency_keys")
            .find(bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(records.len(), 1);
    let text = records[0].to_string();
    assert!(!text.contains(token), "token in clear: {text}");
    assert!(
        !text.contains("a-key-of-the-client"),
        "key in clear: {text}"
    );
    assert!(records[0].get_str("sealed_token").is_ok());
    // The token reads the order.
    let (status, _) = get_order(&api, first.json["id"].as_str().unwrap(), Some(token)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_thousand_neighbouring_ids_read_nothing() {
    let api = Api::new().await;
    let item = api.add_item("Udon", 900, 10).await;
    let (_, a) = api.post_order(&order_body(&[(&item, 1)])).await;
    let (_, b) = api.post_order(&order_body(&[(&item, 1)])).await;
    let wrong = contract::auth::TrackingToken::generate();
    let mut tried = 0;
    for placed in [&a, &b] {
        let id = contract::OrderId::parse(placed["id"].as_str().unwrap()).unwrap();
        let bytes = id.bytes();
        for delta in 0..250u32 {
            // Neighbours in the counter (the last bytes) and in the timestamp.
            let mut counter = bytes;
            let n = u32::from_be_bytes([0, counter[9], counter[10], counter[11]]) ^ delta;
            counter[9..12].copy_from_slice(&n.to_be_bytes()[1..]);
            let mut time = bytes;
            let t = u32::from_be_bytes([time[0], time[1], time[2], time[3]]).wrapping_add(delta);
            time[..4].copy_from_slice(&t.to_be_bytes());
            for candidate in [counter, time] {
                let cid = contract::OrderId::from_bytes(candidate).to_string();
                for token in [None, Some(wrong.expose())] {
                    let (status, body) = get_order(&api, &cid, token).await;
                    assert_eq!(status, 404, "{cid}");
                    no_personal_data(&body);
                    tried += 1;
                }
            }
        }
    }
    assert_eq!(
        tried, 2000,
        "1000 neighbouring ids, without a token and with a wrong one"
    );
}
