//! The web app and the operator console in a real headless Chromium, on the
//! real services (all four, in process, on real Redis and MongoDB), driven
//! over WebDriver (see `foodchain_tests::browser`). Each test has its own
//! system and its own browser; screenshots of every state a test reaches go
//! to `target/browser/<test>/`.
//!
//! Waits are for conditions in the page (an element shown, a text, a
//! state), never fixed sleeps.

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

mod access;
mod checkout;
mod console;
mod tracking;

use std::time::Duration;

use foodchain_tests::{
    System,
    browser::{Browser, Options},
};
use serde_json::{Value, json};

/// Longest wait for anything the page should do.
const T: Duration = Duration::from_secs(30);

/// A system behind front doors and a browser for `test`.
async fn setup(test: &str, extra: &[(&str, &str)], options: Options) -> (System, Browser) {
    let sys = System::start_web(extra).await;
    let browser = Browser::start(test, options).await;
    (sys, browser)
}

/// The id of the menu item called `name`.
fn item(menu: &[Value], name: &str) -> String {
    menu.iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} on the menu"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Opens the app and waits for the menu.
async fn open_shop(sys: &System, b: &Browser) {
    b.goto(&format!("{}/", sys.web_url())).await;
    b.wait_for(".dish button.add", T).await;
}

/// Presses "Add to cart" of an item `times` times (waiting for each to count).
async fn add(b: &Browser, id: &str, times: u32) {
    for _ in 0..times {
        let before = cart_quantity(b, id).await;
        b.click(&format!(".dish[data-item=\"{id}\"] button.add"))
            .await;
        b.wait_js(
            "the cart to count the item",
            T,
            "const q = document.querySelector(`#cart-lines li[data-item=\"${arguments[0]}\"] .qty`); return q && Number(q.textContent) === arguments[1];",
            &[json!(id), json!(before + 1)],
        )
        .await;
    }
}

/// How many of an item the cart shows.
async fn cart_quantity(b: &Browser, id: &str) -> u64 {
    b.exec(
        "const q = document.querySelector(`#cart-lines li[data-item=\"${arguments[0]}\"] .qty`); return q ? Number(q.textContent) : 0;",
        &[json!(id)],
    )
    .await
    .as_u64()
    .unwrap_or(0)
}

/// Types the delivery details.
async fn fill_details(b: &Browser, name: &str) {
    b.type_into("#name", name).await;
    b.type_into("#address", "12 Analytical Row\nLondon").await;
    b.type_into("#phone", "+44 20 7946 0958").await;
}

/// Waits until the page shows a tracker; returns the order id.
async fn wait_tracker(b: &Browser) -> String {
    b.wait_js(
        "the tracker to open",
        T,
        "const m = location.pathname.match(/^\\/track\\/([0-9a-f]{24})$/); return m && !document.getElementById('view-track').hidden ? m[1] : null;",
        &[],
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

/// Waits until the stepper shows `step` done.
async fn wait_step(b: &Browser, step: &str) {
    b.wait_for(
        &format!("#steps li[data-step=\"{step}\"][data-state=\"done\"]"),
        T,
    )
    .await;
}

/// The steps the stepper shows done (or as the exit), in order, with their times.
async fn steps_done(b: &Browser) -> Vec<(String, String)> {
    let v = b
        .exec(
            "return [...document.querySelectorAll('#steps li')].filter(li => li.dataset.state === 'done' || li.dataset.state === 'exit').map(li => [li.dataset.step, li.querySelector('time').dateTime]);",
            &[],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// The orders the page keeps in "my orders" (id, token), newest first.
async fn my_orders(b: &Browser) -> Vec<(String, String)> {
    let v = b
        .exec(
            "return JSON.parse(localStorage.getItem('foodchain.orders.v1') || '[]').map(o => [o.id, o.token]);",
            &[],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Orders in MongoDB placed by a customer called `name`.
async fn orders_named(sys: &System, name: &str) -> u64 {
    sys.count("orders", bson::doc! { "customer.name": name })
        .await
}

/// Fails on any script error the page logged; closes the browser.
async fn finish(b: Browser) {
    let errors = b.script_errors().await;
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    b.close().await;
}
