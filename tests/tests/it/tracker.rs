use std::time::Duration;

use foodchain_tests::{FULL_FLOW, Service, System, labels};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_on_every_notify_replica_get_every_update() {
    let mut sys = System::start().await;
    let second = sys.add_replica(Service::Notify).await;
    let third = sys.add_replica(Service::Notify).await;
    let menu = sys.seed_menu().await;
    sys.stop_service(Service::Simulator).await;
    let order = sys
        .place_order(&[(menu[3]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap();

    let mut trackers = vec![
        sys.track_on(0, id).await,
        sys.track_on(second, id).await,
        sys.track_on(third, id).await,
    ];
    let mut seen = Vec::new();
    for t in &mut trackers {
        let snapshot = t.next(T).await;
        seen.push(labels(&snapshot["timeline"]));
    }
    sys.start_service(Service::Simulator).await;
    for (t, seen) in trackers.iter_mut().zip(&mut seen) {
        seen.extend(t.updates_until("order:delivered", T).await);
        assert_eq!(
            *seen, FULL_FLOW,
            "each replica pushes the whole flow, whichever replica persisted it"
        );
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_drops_a_peer_that_stops_answering() {
    let mut sys = System::start_with(&[
        ("WS_PING_INTERVAL_MS", "150"),
        ("WS_PONG_TIMEOUT_MS", "300"),
    ])
    .await;
    // A known order that never moves on: no simulator.
    sys.stop_service(Service::Simulator).await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(menu[0]["id"].as_str().unwrap(), 1)])
        .await;
    let id = order["id"].as_str().unwrap();

    // A live client answers pings (tungstenite does when it reads) and stays.
    let mut alive = sys.track(id).await;
    assert_eq!(alive.next(T).await["type"], "snapshot");
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, alive.socket.next()).await {
        match msg.unwrap() {
            Message::Ping(_) => pings += 1,
            Message::Close(f) => panic!("a responsive client was dropped: {f:?}"),
            _ => {}
        }
    }
    assert!(pings >= 3, "pinged every 150 ms, got {pings}");

    // A client that stops reading never answers: the server closes it. (When
    // it reads again, tungstenite first tries to answer the queued pings on
    // the closed connection, so the end may surface as an error rather than
    // as the close frame.)
    let mut silent = sys.track(id).await;
    assert_eq!(silent.next(T).await["type"], "snapshot");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.socket.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(
                        (f.code, f.reason.as_str()),
                        (CloseCode::Away, "ping timeout")
                    );
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent peer was dropped");
    sys.shutdown().await;
}
