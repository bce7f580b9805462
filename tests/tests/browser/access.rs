//! A phone-sized screen, with the keyboard only.

use foodchain_tests::browser::{Browser, Options, keys};
use serde_json::json;

use crate::{T, finish, item, setup, wait_step, wait_tracker};

/// Fails if the page is wider than its viewport (sideways scrolling).
async fn fits(b: &Browser, what: &str) {
    let v = b
        .exec(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            &[],
        )
        .await;
    assert_eq!(v[1], json!(375), "a phone viewport");
    assert!(
        v[0].as_u64() <= v[1].as_u64(),
        "{what}: {} px wide in a {} px viewport",
        v[0],
        v[1]
    );
}

/// Every control has a name a screen reader can say: inputs a label,
/// buttons and links text or `aria-label`.
async fn named(b: &Browser, what: &str) {
    let unnamed = b
        .exec(
            "return [...document.querySelectorAll('input, textarea, button, a[href]')].filter(e => e.getClientRects().length).filter(e => (e.matches('input, textarea') ? e.labels.length === 0 : !(e.getAttribute('aria-label') || e.textContent.trim()))).map(e => e.outerHTML.slice(0, 120));",
            &[],
        )
        .await;
    assert_eq!(unnamed, json!([]), "{what}: controls without a name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_and_a_keyboard_are_enough() {
    let (sys, b) = setup(
        "a_phone_and_a_keyboard_are_enough",
        &[],
        Options { phone: true },
    )
    .await;
    let menu = sys.seed_menu().await;
    let pizza = item(&menu, "Margherita");
    b.goto(&format!("{}/", sys.web_url())).await;
    b.wait_for(".dish button.add", T).await;
    fits(&b, "the menu").await;
    named(&b, "the menu").await;
    b.screenshot("menu").await;

    // The first Tab reaches the skip link; Enter jumps to the content.
    b.press(keys::TAB).await;
    assert!(b.focused(".skip").await, "the skip link comes first");
    b.press(keys::ENTER).await;
    assert!(
        b.focused("#main").await,
        "the skip link moves focus to the content"
    );
    let add = format!(".dish[data-item=\"{pizza}\"] button.add");
    b.tab_to(&add, 40).await;
    b.press(keys::ENTER).await;
    b.press(keys::SPACE).await;
    b.wait_js("two in the cart", T,
        "const q = document.querySelector(`#cart-lines li[data-item=\"${arguments[0]}\"] .qty`); return q && q.textContent === '2';",
        &[json!(pizza)]).await;
    assert!(b.focused(&add).await, "focus stays on the button pressed");
    b.wait_for("#cart-bar", T).await;
    b.screenshot("cart-bar").await;

    // One fewer, from the cart, by keyboard.
    let dec = format!("#cart-lines li[data-item=\"{pizza}\"] .dec");
    b.tab_to(&dec, 40).await;
    b.press(keys::ENTER).await;
    b.wait_js("one in the cart", T,
        "return document.querySelector(`#cart-lines li[data-item=\"${arguments[0]}\"] .qty`).textContent === '1';",
        &[json!(pizza)]).await;
    b.tab_to("#name", 20).await;
    b.press("Ada Lovelace").await;
    b.tab_to("#address", 5).await;
    b.press("1 Stream Street").await;
    b.tab_to("#phone", 5).await;
    b.press("+1 555 0100").await;
    fits(&b, "the cart and checkout").await;
    named(&b, "the cart and checkout").await;
    b.screenshot("checkout").await;
    b.tab_to("#place-order", 5).await;
    b.press(keys::ENTER).await;

    wait_tracker(&b).await;
    assert!(
        b.focused("#track-title").await,
        "focus moves to the tracker's heading"
    );
    wait_step(&b, "order:delivered").await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    assert_eq!(
        b.exec("return [document.getElementById('conn').getAttribute('role'), document.getElementById('track-headline').getAttribute('aria-live')]", &[]).await,
        json!(["status", "polite"]),
        "the connection and the progress are announced"
    );
    fits(&b, "the tracker").await;
    named(&b, "the tracker").await;
    b.screenshot("tracker").await;
    finish(b).await;
    sys.shutdown().await;
}
