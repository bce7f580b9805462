//! Health, readiness and metrics, as an orchestrator and Prometheus see them.

use std::{path::PathBuf, process::Command, time::Duration};

use foodchain_tests::{Service, System, eventually};
use serde_json::Value;
use testkit::{MongoServer, RedisOptions, RedisServer};

const T: Duration = Duration::from_secs(30);

fn promtool() -> PathBuf {
    let cached =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/foodchain/tools/promtool"));
    std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("promtool"))
                    .find(|f| f.is_file())
            })
        })
        .or(cached.filter(|p| p.is_file()))
        .expect("promtool not found: run `scripts/infra.sh deps` (make test does)")
}

async fn readiness(sys: &System, service: Service) -> (u16, Value) {
    match sys
        .http
        .get(format!("{}/readyz", sys.url(service)))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(e) => panic!("{service:?} /readyz unreachable: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_route_templates_and_pass_promtool() {
    let sys = System::start().await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap();
    sys.wait_order_status(id, "delivered", T).await;
    let _ = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    let _ = sys
        .http
        .get(format!("{}/no/such/route/{id}", sys.url(Service::Order)))
        .send()
        .await
        .unwrap();

    for service in Service::ALL {
        let r = sys
            .http
            .get(format!("{}/metrics", sys.url(service)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = r.text().await.unwrap();
        let mut check = Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool on {service:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(id),
            "no raw path (or id) in any label of {service:?}"
        );
    }

    let text = sys
        .http
        .get(format!("{}/metrics", sys.url(Service::Order)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"http_requests_total{method="GET",route="/api/v1/orders/{id}",status="200"}"#,
        r#"http_requests_total{method="POST",route="/api/v1/orders",status="201"}"#,
        r#"route="unmatched",status="404""#,
        "http_request_duration_seconds_bucket{",
        r#"events_handled_total{stream="order-status-stream",group="order-svc",outcome="done"}"#,
        "handler_duration_seconds_bucket{",
        r#"stream_wait_seconds_bucket{stream="order-status-stream",group="order-svc",le="0.1"}"#,
        r#"consumer_group_lag{stream="order-status-stream",group="order-svc"}"#,
        r#"consumer_group_pending{stream="deliveries-stream",group="order-svc"}"#,
        r#"outbox_backlog{service="order-svc"}"#,
        "dead_letters ",
        "# HELP events_dead_lettered_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    sys.shutdown().await;
}

/// The alert rules shipped for Prometheus parse, and name only metrics the
/// services export.
#[test]
fn alert_rules_pass_promtool() {
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rules).unwrap();
    for metric in ["stream_entries", "outbox_backlog", "dead_letters"] {
        assert!(text.contains(metric));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_down_and_back() {
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: Some("everysec"),
        acl_user: None,
        cluster: false,
    })
    .await;
    let sys = System::start_with(&[("REDIS_URL", &redis.url())]).await;
    for s in Service::ALL {
        assert_eq!(readiness(&sys, s).await.0, 200, "{s:?} ready");
        let live = sys
            .http
            .get(format!("{}/healthz", sys.url(s)))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), 200);
    }

    redis.stop().await;
    for s in Service::ALL {
        let body = eventually(&format!("{s:?} not ready"), T, || async {
            let (code, body) = readiness(&sys, s).await;
            (code == 503).then_some(body)
        })
        .await;
        assert_eq!(body["ready"], false);
        assert_ne!(
            body["checks"]["redis"], "ok",
            "the reason names Redis: {body}"
        );
        let live = sys
            .http
            .get(format!("{}/healthz", sys.url(s)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            live.status(),
            200,
            "still alive: do not restart it for this"
        );
    }

    redis.restart().await;
    for s in Service::ALL {
        eventually(&format!("{s:?} ready again"), T, || async {
            (readiness(&sys, s).await.0 == 200).then_some(())
        })
        .await;
    }
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    sys.wait_order_status(order["id"].as_str().unwrap(), "delivered", T)
        .await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_mongo_down_and_back() {
    let mongo = MongoServer::start().await;
    let sys = System::start_with(&[("MONGO_URL", &mongo.url())]).await;
    mongo.stop().await;
    for s in [Service::Order, Service::Delivery, Service::Notify] {
        let body = eventually(&format!("{s:?} not ready"), T, || async {
            let (code, body) = readiness(&sys, s).await;
            (code == 503).then_some(body)
        })
        .await;
        assert_ne!(
            body["checks"]["mongo"], "ok",
            "the reason names MongoDB: {body}"
        );
    }
    assert_eq!(
        readiness(&sys, Service::Simulator).await.0,
        200,
        "the simulator needs no MongoDB"
    );
    // A request meanwhile is a 503 with Retry-After, not a 500.
    let r = sys
        .http
        .get(format!("{}/api/v1/menu", sys.url(Service::Order)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");

    mongo.restart().await;
    for s in Service::ALL {
        eventually(&format!("{s:?} ready again"), T, || async {
            (readiness(&sys, s).await.0 == 200).then_some(())
        })
        .await;
    }
    sys.shutdown().await;
}

/// Credentials work everywhere: Redis with an ACL user (the default user
/// off) and MongoDB with SCRAM authentication and an application user that
/// may only read and write its own database; a whole flow goes through, and
/// readiness is green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_users_and_mongo_users_work_end_to_end() {
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: None,
        acl_user: Some(("foodchain", "r3dis-Secret-pw")),
        cluster: false,
    })
    .await;
    // Without the credentials Redis refuses.
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port())).unwrap();
    let mut c = anonymous.get_multiplexed_async_connection().await.unwrap();
    assert!(
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_err()
    );

    let mongo = MongoServer::start_with_auth("root", "r00t-Secret-pw").await;
    let db = testkit::unique_db("auth");
    let root_url = format!(
        "mongodb://root:r00t-Secret-pw@127.0.0.1:{}/?directConnection=true&authSource=admin",
        mongo.port()
    );
    let root = mongodb::Client::with_uri_str(&root_url).await.unwrap();
    root.database(&db)
        .run_command(bson::doc! {
            "createUser": "app", "pwd": "m0ngo-App-pw",
            "roles": [{ "role": "readWrite", "db": &db }],
        })
        .await
        .unwrap();
    let app_url = format!(
        "mongodb://app:m0ngo-App-pw@127.0.0.1:{}/{db}?directConnection=true&authSource={db}",
        mongo.port()
    );
    let sys = System::start_with(&[
        ("REDIS_URL", &redis.url()),
        ("MONGO_URL", &app_url),
        ("MONGO_DB", &db),
    ])
    .await;
    for s in Service::ALL {
        assert_eq!(
            readiness(&sys, s).await.0,
            200,
            "{s:?} ready with credentials"
        );
    }
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    sys.wait_order_status(order["id"].as_str().unwrap(), "delivered", T)
        .await;
    sys.shutdown().await;
}
