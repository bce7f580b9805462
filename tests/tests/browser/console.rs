//! The operator console at /ops.

use contract::{dead_letter::DeadLetter, status::OrderStatus, streams::Stream};
use foodchain_tests::{browser::Options, eventually};
use serde_json::json;

use crate::{T, finish, item, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_dead_letter_the_test_injected() {
    let admin = "console-test-admin-token-0123456789";
    let (sys, b) = setup(
        "the_console_shows_a_dead_letter_the_test_injected",
        &[("ADMIN_TOKEN", admin)],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    let order = sys
        .place_order(&[(item(&menu, "Margherita").as_str(), 3)])
        .await;
    sys.wait_order_status(order["id"].as_str().unwrap(), "delivered", T)
        .await;

    b.goto(&format!("{}/ops", sys.web_url())).await;
    b.wait_for("#login", T).await;
    assert!(b.focused("#admin-token").await);
    b.type_into("#admin-token", "not-the-token").await;
    b.click("#login button[type=submit]").await;
    b.wait_text("#login-error", "refused", T).await;
    b.screenshot("wrong-token").await;
    b.type_into("#admin-token", admin).await;
    b.click("#login button[type=submit]").await;
    b.wait_for("#console", T).await;
    b.wait_for("#refresh[data-state=\"live\"]", T).await;

    // Streams with their groups, stock, recent orders.
    b.wait_for(
        "#streams tr[data-stream=\"orders-stream\"][data-group=\"notify-svc\"]",
        T,
    )
    .await;
    b.wait_text("#stock tbody", "Margherita", T).await;
    b.wait_for("#recent tr[data-status=\"delivered\"]", T).await;
    assert_eq!(
        b.text("#recent tr[data-status=\"delivered\"] td.num").await,
        "1"
    );
    assert_eq!(b.text("#dead-latest tbody").await, "No dead letters.");

    // A kitchen update for an order that does not exist: dead-lettered by
    // order-svc after its attempts; the console shows it, live.
    let ghost = "65f1a2b3c4d5e6f708192a3b";
    sys.xadd(
        Stream::OrderStatus,
        &foodchain_tests::kitchen(ghost, OrderStatus::Confirmed),
    )
    .await;
    let dead = eventually("the dead letter", T, || async {
        sys.stream(Stream::DeadLetters)
            .await
            .first()
            .map(|e| DeadLetter::from_entry(e).unwrap())
    })
    .await;
    let row = format!("#dead-latest tr[data-id=\"{}\"]", dead.id);
    b.wait_for(&row, T).await;
    let text = b.text(&row).await;
    assert!(
        text.contains("order-status-stream")
            && text.contains("order-svc")
            && text.contains(&dead.reason),
        "{text}"
    );
    assert!(text.contains("does not exist"), "{text}");
    b.wait_text("#dead-by tbody", "order-status-stream", T)
        .await;
    assert_eq!(b.text("#dead-total").await, "1");
    b.screenshot("dead-letter").await;

    // The token is in this tab's sessionStorage, never in a URL or in
    // localStorage; a reload keeps the console open.
    let where_ = b
        .exec("return [location.href, sessionStorage.getItem('foodchain.admin-token'), JSON.stringify(localStorage)]", &[])
        .await;
    assert!(!where_[0].as_str().unwrap().contains(admin));
    assert_eq!(where_[1], json!(admin));
    assert!(!where_[2].as_str().unwrap().contains(admin));
    b.reload().await;
    b.wait_for(&row, T).await;
    b.click("#signout").await;
    b.wait_for("#login", T).await;
    assert_eq!(
        b.exec(
            "return sessionStorage.getItem('foodchain.admin-token')",
            &[]
        )
        .await,
        json!(null)
    );
    finish(b).await;
    sys.shutdown().await;
}
