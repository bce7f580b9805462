//! Ordering through the page: menu, cart, checkout, its errors, and exactly
//! one order per checkout attempt.

use foodchain_tests::{FULL_FLOW, Service, browser::Options};
use serde_json::json;

use crate::{
    T, add, cart_quantity, fill_details, finish, item, open_shop, orders_named, setup, steps_done,
    wait_step, wait_tracker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_two_dishes_and_watch_them_arrive() {
    let (sys, b) = setup(
        "order_two_dishes_and_watch_them_arrive",
        &[],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    open_shop(&sys, &b).await;

    // The menu by category, prices from integer cents in the browser's
    // locale (en-US here), stock shown.
    let categories = b
        .exec(
            "return [...document.querySelectorAll('.category > h2')].map(h => h.textContent);",
            &[],
        )
        .await;
    let mut expected: Vec<&str> = menu
        .iter()
        .map(|i| i["category"].as_str().unwrap())
        .collect();
    expected.dedup();
    assert_eq!(categories, json!(expected));
    let margherita = item(&menu, "Margherita");
    let lemonade = item(&menu, "Lemonade");
    let dish = format!(".dish[data-item=\"{margherita}\"]");
    assert_eq!(b.text(&format!("{dish} .price")).await, "€9.50");
    assert_eq!(b.text(&format!("{dish} .stock")).await, "200 left");
    b.screenshot("menu").await;

    add(&b, &margherita, 2).await;
    add(&b, &lemonade, 1).await;
    assert_eq!(b.text("#cart-total").await, "€22.50");
    // The cart survives a reload.
    b.reload().await;
    b.wait_for(".dish button.add", T).await;
    assert_eq!(cart_quantity(&b, &margherita).await, 2);
    assert_eq!(cart_quantity(&b, &lemonade).await, 1);
    assert_eq!(
        b.text(&format!("#cart-lines li[data-item=\"{margherita}\"] .sum"))
            .await,
        "€19.00"
    );
    assert_eq!(b.text("#cart-total").await, "€22.50");
    // +, − and remove.
    b.click(&format!("#cart-lines li[data-item=\"{lemonade}\"] .inc"))
        .await;
    b.wait_text("#cart-total", "€26.00", T).await;
    b.click(&format!("#cart-lines li[data-item=\"{lemonade}\"] .dec"))
        .await;
    b.wait_text("#cart-total", "€22.50", T).await;

    fill_details(&b, "Ada Lovelace").await;
    b.screenshot("checkout").await;
    b.click("#place-order").await;

    let id = wait_tracker(&b).await;
    wait_step(&b, "order:delivered").await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    let done = steps_done(&b).await;
    assert_eq!(
        done.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        FULL_FLOW,
        "every step, in order"
    );
    assert!(
        done.iter().all(|(_, at)| !at.is_empty()),
        "each step has its time"
    );
    assert!(
        done.windows(2).all(|w| w[0].1 <= w[1].1),
        "times in order: {done:?}"
    );
    b.wait_text("#summary-total", "€22.50", T).await;
    assert_eq!(
        b.text("#track-headline").await,
        "Delivered. Enjoy your meal!"
    );
    b.screenshot("delivered").await;

    // Exactly this order in MongoDB, with these lines; the cart is empty.
    let oid = bson::oid::ObjectId::parse_str(&id).unwrap();
    assert_eq!(sys.count("orders", bson::doc! {"_id": oid}).await, 1);
    assert_eq!(orders_named(&sys, "Ada Lovelace").await, 1);
    let stored = sys
        .mongo
        .database(&sys.db)
        .collection::<bson::Document>("orders")
        .find_one(bson::doc! {"_id": oid})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_i64("total_cents").unwrap(), 2250);
    assert_eq!(
        stored
            .get_document("customer")
            .unwrap()
            .get_str("address")
            .unwrap(),
        "12 Analytical Row, London",
        "a multi-line address becomes one line"
    );

    // "My orders" has it, and reopens it.
    b.click("a[data-nav=\"orders\"]").await;
    b.wait_for(&format!("#orders-list li[data-order=\"{id}\"]"), T)
        .await;
    assert_eq!(
        b.text(&format!("#orders-list li[data-order=\"{id}\"] .what"))
            .await,
        "2 × Margherita, 1 × Lemonade"
    );
    b.wait_text(
        &format!("#orders-list li[data-order=\"{id}\"] .status"),
        "delivered",
        T,
    )
    .await;
    b.screenshot("my-orders").await;
    b.click(&format!("#orders-list li[data-order=\"{id}\"] a"))
        .await;
    wait_step(&b, "order:delivered").await;
    b.wait_for("#conn[data-state=\"done\"]", T).await;
    b.click("a[data-nav=\"shop\"]").await;
    b.wait_for("#cart-empty", T).await;
    finish(b).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_messages_sit_next_to_their_fields() {
    // A deployment stricter than the page knows: at most 3 of one item.
    let (sys, b) = setup(
        "validation_messages_sit_next_to_their_fields",
        &[("MAX_ITEM_QUANTITY", "3")],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    let pizza = item(&menu, "Diavola");
    open_shop(&sys, &b).await;
    add(&b, &pizza, 4).await;

    // Checked in the page first: nothing is sent.
    b.type_into("#address", "1 Stream Street").await;
    b.type_into("#phone", "12").await;
    b.click("#place-order").await;
    b.wait_text("#name-error", "Enter your name.", T).await;
    assert!(b.text("#phone-error").await.contains("5 to 20 digits"));
    assert!(
        b.focused("#name").await,
        "focus goes to the first field to fix"
    );
    assert_eq!(
        b.exec(
            "return document.getElementById('name').getAttribute('aria-invalid')",
            &[]
        )
        .await,
        json!("true")
    );
    assert_eq!(
        sys.door(Service::Order).order_posts(),
        0,
        "nothing was sent"
    );
    b.screenshot("checked-in-the-page").await;

    // A page whose rules are older than the server's (no phone rule): the
    // server's 422 lands next to the phone field and the cart line.
    b.exec(
        "document.getElementById('phone').removeAttribute('pattern')",
        &[],
    )
    .await;
    b.type_into("#name", "Grace Hopper").await;
    b.click("#place-order").await;
    b.wait_text("#phone-error", "Must be a phone number", T)
        .await;
    let line = format!("#cart-lines li[data-item=\"{pizza}\"]");
    b.wait_text(&format!("{line} .error"), "from 1 to 3", T)
        .await;
    assert_eq!(b.text("#name-error").await, "");
    assert!(b.focused("#phone").await);
    assert_eq!(sys.door(Service::Order).order_posts(), 1);
    assert_eq!(orders_named(&sys, "Grace Hopper").await, 0);
    b.screenshot("server-422").await;

    // Fixed: a new attempt (new key, new body) is placed.
    b.type_into("#phone", "+1 555 0100").await;
    assert_eq!(
        b.text("#phone-error").await,
        "",
        "typing clears the message"
    );
    b.click(&format!("{line} .dec")).await;
    b.wait_js(
        "the line message to clear",
        T,
        "return document.querySelector(arguments[0] + ' .error').textContent === ''",
        &[json!(line)],
    )
    .await;
    b.click("#place-order").await;
    wait_tracker(&b).await;
    assert_eq!(orders_named(&sys, "Grace Hopper").await, 1);
    finish(b).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_names_the_dish_and_keeps_the_cart() {
    let (sys, b) = setup(
        "out_of_stock_names_the_dish_and_keeps_the_cart",
        &[],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    let last = sys.add_item("Last slice", 480, 1).await;
    let tiramisu = item(&menu, "Tiramisu");
    open_shop(&sys, &b).await;
    let slice = format!(".dish[data-item=\"{last}\"]");
    assert_eq!(b.text(&format!("{slice} .stock")).await, "Only 1 left");
    add(&b, &last, 1).await;
    assert_eq!(
        b.exec(
            "return document.querySelector(arguments[0] + ' button.add').disabled",
            &[json!(slice)]
        )
        .await,
        json!(true),
        "no more than the stock in the cart"
    );
    add(&b, &tiramisu, 1).await;
    fill_details(&b, "Alan Turing").await;

    // Someone else takes the last one meanwhile.
    sys.place_order(&[(last.as_str(), 1)]).await;
    b.click("#place-order").await;
    b.wait_text("#checkout-error", "Last slice", T).await;
    assert!(
        b.text("#checkout-error")
            .await
            .starts_with("Not enough stock for: Last slice.")
    );
    // The menu was read again: sold out, disabled; the cart is kept.
    b.wait_text(&format!("{slice} .stock"), "Sold out", T).await;
    assert_eq!(
        b.exec(
            "return document.querySelector(arguments[0] + ' button.add').disabled",
            &[json!(slice)]
        )
        .await,
        json!(true)
    );
    assert!(
        b.exec(
            "return document.querySelector(arguments[0]).classList.contains('sold-out')",
            &[json!(slice)]
        )
        .await
            == json!(true)
    );
    assert_eq!(cart_quantity(&b, &last).await, 1);
    assert_eq!(cart_quantity(&b, &tiramisu).await, 1);
    assert!(
        !b.text(&format!("#cart-lines li[data-item=\"{last}\"] .error"))
            .await
            .is_empty()
    );
    assert_eq!(orders_named(&sys, "Alan Turing").await, 0);
    b.screenshot("out-of-stock").await;

    // Without it, the order goes through.
    b.click(&format!("#cart-lines li[data-item=\"{last}\"] .remove"))
        .await;
    b.click("#place-order").await;
    wait_tracker(&b).await;
    assert_eq!(orders_named(&sys, "Alan Turing").await, 1);
    assert_eq!(sys.stock(&last).await, 0, "stock never below zero");
    finish(b).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_attempt_makes_one_order() {
    let (sys, b) = setup(
        "one_checkout_attempt_makes_one_order",
        &[],
        Options::default(),
    )
    .await;
    let menu = sys.seed_menu().await;
    let burger = item(&menu, "Cheeseburger");
    let door = sys.door(Service::Order);
    open_shop(&sys, &b).await;

    // A double click on "Place order": one request, one order.
    add(&b, &burger, 1).await;
    fill_details(&b, "Double Click").await;
    b.double_click("#place-order").await;
    wait_tracker(&b).await;
    assert_eq!(orders_named(&sys, "Double Click").await, 1);
    assert_eq!(door.order_posts(), 1);
    // The form submitted twice in a row by script: still one request.
    open_shop(&sys, &b).await;
    add(&b, &burger, 1).await;
    fill_details(&b, "Double Submit").await;
    b.exec(
        "const f = document.getElementById('checkout'); f.requestSubmit(); f.requestSubmit();",
        &[],
    )
    .await;
    wait_tracker(&b).await;
    assert_eq!(orders_named(&sys, "Double Submit").await, 1);
    assert_eq!(door.order_posts(), 2);

    // The answer is lost on the way back (the order was placed), twice: the
    // page retries with the same key and gets that order. (Twice, because
    // Chromium itself resends a request once when a reused connection
    // drops before any answer; the second loss reaches the page.)
    open_shop(&sys, &b).await;
    add(&b, &burger, 1).await;
    fill_details(&b, "Lost Answer").await;
    door.lose_next_order_response();
    door.lose_next_order_response();
    b.click("#place-order").await;
    b.wait_text("#checkout-status", "Trying again", T).await;
    b.screenshot("retrying-after-a-network-error").await;
    let id = wait_tracker(&b).await;
    assert_eq!(door.faults_left(), 0);
    assert_eq!(door.order_posts(), 5, "two lost, then the answer");
    assert_eq!(orders_named(&sys, "Lost Answer").await, 1);
    let oid = bson::oid::ObjectId::parse_str(&id).unwrap();
    assert_eq!(
        sys.count(
            "orders",
            bson::doc! {"_id": oid, "customer.name": "Lost Answer"}
        )
        .await,
        1
    );

    // A reload while the POST is in flight: the reloaded page sends the
    // stored attempt again (same key, same body) and gets that order.
    open_shop(&sys, &b).await;
    add(&b, &burger, 2).await;
    fill_details(&b, "Reload Midway").await;
    door.hold_next_order_response();
    b.click("#place-order").await;
    foodchain_tests::eventually("the POST to be in flight", T, || async {
        (door.order_posts() == 6).then_some(())
    })
    .await;
    let stored = b
        .exec(
            "return JSON.parse(localStorage.getItem('foodchain.checkout.v1'))",
            &[],
        )
        .await;
    assert!(
        stored["key"].as_str().is_some_and(|k| k.len() == 36),
        "{stored}"
    );
    assert_eq!(stored["body"]["customer"]["name"], "Reload Midway");
    b.screenshot("in-flight").await;
    b.reload().await;
    wait_tracker(&b).await;
    assert_eq!(door.order_posts(), 7);
    assert_eq!(orders_named(&sys, "Reload Midway").await, 1);
    assert_eq!(
        b.exec("return localStorage.getItem('foodchain.checkout.v1')", &[])
            .await,
        serde_json::Value::Null,
        "the attempt is done"
    );
    b.screenshot("resumed-after-reload").await;
    finish(b).await;
    sys.shutdown().await;
}
