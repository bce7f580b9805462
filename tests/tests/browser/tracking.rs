//! The live tracker: resuming after a reload, surviving a notify-svc crash,
//! cancelling, and a kitchen's refusal.

use foodchain_tests::{FULL_FLOW, Service, browser::Options};
use serde_json::{Value, json};

use crate::{
    T, add, fill_details, finish, item, my_orders, open_shop, setup, steps_done, wait_step,
    wait_tracker,
};

/// Records every step the stepper turns done from now on, in order.
const RECORD_STEPS: &str = "window.__seen = []; new MutationObserver((ms) => { for (const m of ms) { if (m.target.dataset.state === 'done') window.__seen.push(m.target.dataset.step); } }).observe(document.getElementById('steps'), {subtree: true, attributes: true, attributeFilter: ['data-state']});";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_mid_flow_resumes_and_reaches_delivered() {
    let (mut sys, b) = setup(
        "a_reload_mid_flow_resumes_and_reaches_delivered",
        &[("SIMULATOR_DELAY_SCALE", "0.1")],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    open_shop(&sys, &b).await;
    add(&b, &item(&menu, "Pad thai"), 1).await;
    fill_details(&b, "Mid Flow").await;
    b.click("#place-order").await;
    let id = wait_tracker(&b).await;
    wait_step(&b, "order:preparing").await;
    // Hold the kitchen where it is, then reload.
    sys.stop_service(Service::Simulator).await;
    b.screenshot("before-reload").await;
    let before = steps_done(&b).await;
    b.reload().await;
    b.wait_for("#conn[data-state=\"live\"]", T).await;
    wait_step(&b, "order:preparing").await;
    let resumed = steps_done(&b).await;
    assert!(
        resumed.len() >= before.len() && resumed[..before.len()] == before[..],
        "{before:?} then {resumed:?}"
    );
    assert_eq!(b.text("#track-id").await, id);
    b.screenshot("resumed-after-reload").await;
    sys.start_service(Service::Simulator).await;
    wait_step(&b, "order:delivered").await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    let done = steps_done(&b).await;
    assert_eq!(
        done.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        FULL_FLOW
    );
    assert!(done.windows(2).all(|w| w[0].1 <= w[1].1), "{done:?}");
    b.screenshot("delivered").await;
    finish(b).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_svc_killed_mid_flow_the_page_reconnects_and_completes() {
    let (mut sys, b) = setup(
        "notify_svc_killed_mid_flow_the_page_reconnects_and_completes",
        &[],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    sys.stop_service(Service::Simulator).await;
    open_shop(&sys, &b).await;
    add(&b, &item(&menu, "Falafel wrap"), 1).await;
    fill_details(&b, "Crash Test").await;
    b.click("#place-order").await;
    let id = wait_tracker(&b).await;
    wait_step(&b, "order:created").await;
    b.wait_for("#conn[data-state=\"live\"]", T).await;
    b.exec(RECORD_STEPS, &[]).await;
    let (_, token) = my_orders(&b)
        .await
        .into_iter()
        .find(|(o, _)| *o == id)
        .unwrap();
    sys.remember_token(&json!({"id": id, "tracking_token": token}));

    // notify-svc dies with the socket open: the page sees the connection
    // drop (no close frame) and says so.
    sys.kill_replica(Service::Notify, 0).await;
    b.wait_for("#conn[data-state=\"reconnecting\"]", T).await;
    assert!(b.text("#conn").await.contains("reconnecting"));
    b.screenshot("reconnecting").await;
    // The order moves on meanwhile, all the way.
    sys.start_service(Service::Simulator).await;
    sys.wait_order_status(&id, "delivered", T).await;
    assert_eq!(
        b.exec("return document.getElementById('conn').dataset.state", &[])
            .await,
        json!("reconnecting")
    );
    // Back up: the page reconnects and completes, every step once, in order.
    sys.start_service(Service::Notify).await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    let seen: Vec<String> =
        serde_json::from_value(b.exec("return window.__seen", &[]).await).unwrap();
    let mut all = vec!["order:created".to_owned()];
    all.extend(seen);
    assert_eq!(all, FULL_FLOW, "each step turned done once, in order");
    assert_eq!(
        steps_done(&b)
            .await
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        FULL_FLOW
    );
    b.screenshot("completed").await;
    finish(b).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_tracker_and_a_rejection_say_why() {
    let (mut sys, b) = setup(
        "cancel_from_the_tracker_and_a_rejection_say_why",
        &[("SIMULATOR_REJECT_RATE", "1")],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    let wrap = item(&menu, "Falafel wrap");
    let stock = sys.stock(&wrap).await;
    // The kitchen does not answer yet: the order can be cancelled.
    sys.stop_service(Service::Simulator).await;
    open_shop(&sys, &b).await;
    add(&b, &wrap, 2).await;
    fill_details(&b, "Changed Mind").await;
    b.click("#place-order").await;
    let id = wait_tracker(&b).await;
    b.wait_for("#cancel-open", T).await;
    b.click("#cancel-open").await;
    assert!(
        b.focused("#cancel-reason").await,
        "focus goes to the reason"
    );
    b.type_into("#cancel-reason", "ordered twice").await;
    b.screenshot("cancelling").await;
    b.click("#cancel-confirm").await;
    b.wait_for(
        "#steps li[data-step=\"order:cancelled\"][data-state=\"exit\"]",
        T,
    )
    .await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    b.wait_text("#track-reason", "ordered twice", T).await;
    assert_eq!(b.text("#track-headline").await, "This order was cancelled.");
    assert_eq!(
        b.exec(
            "return getComputedStyle(document.getElementById('cancel-open')).display",
            &[]
        )
        .await,
        json!("none"),
        "no cancel button once cancelled"
    );
    assert_eq!(sys.stock(&wrap).await, stock, "the stock came back");
    let (_, token) = my_orders(&b)
        .await
        .into_iter()
        .find(|(o, _)| *o == id)
        .unwrap();
    sys.remember_token(&json!({"id": id, "tracking_token": token}));
    let order = sys
        .get_json(Service::Order, &format!("/api/v1/orders/{id}"))
        .await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("cancelled"), Some("ordered twice"))
    );
    b.screenshot("cancelled").await;

    // The kitchen refuses the next one, and the page says what it said.
    sys.start_service(Service::Simulator).await;
    open_shop(&sys, &b).await;
    add(&b, &wrap, 1).await;
    b.click("#place-order").await; // the details are kept for this tab
    wait_tracker(&b).await;
    b.wait_for(
        "#steps li[data-step=\"order:rejected\"][data-state=\"exit\"]",
        T,
    )
    .await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    let reason = b.wait_js("a reason", T,
        "const r = document.getElementById('track-reason'); return !r.hidden && r.textContent.startsWith('The kitchen said: ') ? r.textContent : null;", &[]).await;
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.len() > "The kitchen said: ".len()),
        "{reason}"
    );
    let steps: Vec<Value> = serde_json::from_value(
        b.exec(
            "return [...document.querySelectorAll('#steps li')].map(li => li.dataset.step)",
            &[],
        )
        .await,
    )
    .unwrap();
    assert_eq!(steps, vec![json!("order:created"), json!("order:rejected")]);
    b.screenshot("rejected").await;
    finish(b).await;
    sys.shutdown().await;
}
