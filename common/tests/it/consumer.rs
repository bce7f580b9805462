use std::{collections::HashMap, time::Duration};

use common::consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Message, Outcome};
use contract::{
    Envelope,
    dead_letter::DeadLetter,
    envelope,
    events::{Event, OrderCreated, OrdersEvent},
    streams::{Stream, groups},
};

const ORDER_CREATED_V1: &str = OrderCreated::TYPE;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Act, Ctx, TestHandler, eventually};

const S: Stream = Stream::Orders;
const G: &str = groups::DELIVERY_SVC;
const WAIT: Duration = Duration::from_secs(10);

/// Runs a consumer in the background; cancelled (and awaited) by `stop`.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(ctx: &Ctx, name: &str, handler: TestHandler) -> Self {
        let token = CancellationToken::new();
        let consumer = ctx.consumer(S, G, name, handler);
        let task = tokio::spawn(consumer.run(token.clone()));
        Self { token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("consumer stops")
            .unwrap();
    }
}

#[tokio::test]
async fn acks_every_handled_message() {
    let ctx = Ctx::new().await;
    let handler = TestHandler::ok();
    let run = Running::start(&ctx, "c1", handler.clone());
    for k in ["a", "b", "c"] {
        ctx.publish(S, k, ORDER_CREATED_V1).await;
    }
    eventually("3 handled", WAIT, || async {
        (handler.finished().len() == 3).then_some(())
    })
    .await;
    // The ack follows the handler; wait for it rather than sleeping.
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    assert_eq!(handler.calls().len(), 3, "each message handled once");
    assert!(handler.calls().iter().all(|c| c.attempt == 1));
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_failed_message_is_retried_until_it_succeeds() {
    let ctx = Ctx::new().await;
    // Fails twice, then succeeds (MAX_ATTEMPTS is 3).
    let handler = TestHandler::new(|_, seen| {
        if seen < 2 {
            Act::Fail("db down")
        } else {
            Act::Ok
        }
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    eventually("success", WAIT, || async {
        (handler.finished().len() == 1).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    let attempts: Vec<u32> = handler.calls().iter().map(|c| c.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "attempt numbers come from the delivery count"
    );
    assert!(ctx.dead_letters().await.is_empty());
    let errors: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{}:last-errors:{G}", ctx.ns.stream_at(S, 0)))
        .query_async(&mut ctx.conn.clone())
        .await
        .unwrap();
    assert!(
        errors.is_empty(),
        "the error record is removed on success: {errors:?}"
    );
}

#[tokio::test]
async fn a_message_left_by_a_dead_consumer_is_taken_over_with_xautoclaim() {
    let ctx = Ctx::new().await;
    let dying = TestHandler::new(|_, _| Act::Hang);
    let run = Running::start(&ctx, "dies", dying.clone());
    let called = dying.called.notified();
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    tokio::time::timeout(WAIT, called)
        .await
        .expect("first consumer got the message");
    // The process "dies" mid-message: no ack, no error, no retry scheduled.
    run.task.abort();
    let _ = run.task.await;
    assert_eq!(ctx.pending(S, G).await, 1);

    let survivor = TestHandler::ok();
    let run = Running::start(&ctx, "survives", survivor.clone());
    eventually("taken over", WAIT, || async {
        (survivor.finished().len() == 1).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    assert_eq!(
        survivor.calls()[0].attempt,
        2,
        "the takeover is the second delivery"
    );
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_exactly_max_attempts_with_its_context() {
    let ctx = Ctx::new().await;
    let handler = TestHandler::new(|m, _| {
        if m.envelope.key == "poison" {
            Act::Fail("cannot parse the menu")
        } else {
            Act::Ok
        }
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    let poison = ctx.publish(S, "poison", ORDER_CREATED_V1).await;
    ctx.publish(S, "fine", ORDER_CREATED_V1).await;
    let dl = eventually("dead letter", WAIT, || async {
        let d = ctx.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;

    assert_eq!(dl.len(), 1);
    let d = DeadLetter::from_entry(&dl[0]).unwrap();
    let poison_calls: Vec<u32> = handler
        .calls()
        .iter()
        .filter(|c| c.key == "poison")
        .map(|c| c.attempt)
        .collect();
    assert_eq!(poison_calls, [1, 2, 3], "exactly MAX_ATTEMPTS handler runs");
    assert_eq!(d.origin_stream, ctx.ns.stream_at(S, 0));
    assert_eq!(d.group, G);
    assert_eq!(d.consumer, "c1");
    assert_eq!(d.reason, "max_attempts");
    assert_eq!(d.error, "cannot parse the menu");
    assert_eq!(d.attempts, 3);
    assert!(d.first_seen_ms > 0 && d.dead_lettered_ms >= d.first_seen_ms);
    assert_eq!(
        d.first_seen_ms,
        d.origin_id
            .split('-')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
    let origin = ctx
        .range(S)
        .await
        .into_iter()
        .find(|e| e.id == d.origin_id)
        .unwrap();
    assert_eq!(
        d.original, origin.fields,
        "original fields kept byte for byte"
    );
    assert_eq!(d.envelope().unwrap().event_id, poison.event_id);
    let original: Vec<&str> = d.original.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(original, envelope::FIELDS, "all original fields, in order");
    // The good message next to it was handled normally.
    assert!(handler.finished().iter().any(|c| c.key == "fine"));
}

#[tokio::test]
async fn a_malformed_message_goes_straight_to_the_dead_letters() {
    let ctx = Ctx::new().await;
    let handler = TestHandler::ok();
    let run = Running::start(&ctx, "c1", handler.clone());
    let id = ctx
        .publisher
        .publish_fields(
            &ctx.ns.stream_at(S, 0),
            &[("garbage", &b"\xff\x00not an envelope"[..])],
        )
        .await
        .unwrap();
    let dl = eventually("dead letter", WAIT, || async {
        let d = ctx.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    let d = DeadLetter::from_entry(&dl[0]).unwrap();
    assert_eq!(
        (d.reason.as_str(), d.attempts, d.origin_id.as_str()),
        ("malformed", 1, id.as_str())
    );
    assert!(d.error.contains("event_id"), "{}", d.error);
    assert_eq!(
        d.original,
        vec![("garbage".to_owned(), b"\xff\x00not an envelope".to_vec())],
        "bytes kept verbatim"
    );
    assert!(handler.calls().is_empty(), "the handler never saw it");
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_at_once_and_a_panic_is_a_failure() {
    let ctx = Ctx::new().await;
    let handler = TestHandler::new(|m, _| match m.envelope.key.as_str() {
        "invalid" => Act::Reject("quantity must be positive"),
        "panics" => Act::Panic,
        _ => Act::Ok,
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "invalid", ORDER_CREATED_V1).await;
    ctx.publish(S, "panics", ORDER_CREATED_V1).await;
    let dl = eventually("two dead letters", WAIT, || async {
        let d = ctx.dead_letters().await;
        (d.len() == 2).then_some(d)
    })
    .await;
    run.stop().await;
    let by_key: HashMap<String, DeadLetter> = dl
        .iter()
        .map(|e| {
            let d = DeadLetter::from_entry(e).unwrap();
            (d.envelope().unwrap().key, d)
        })
        .collect();
    let rejected = &by_key["invalid"];
    assert_eq!(
        (rejected.reason.as_str(), rejected.attempts),
        ("rejected", 1)
    );
    assert_eq!(rejected.error, "quantity must be positive");
    let panicked = &by_key["panics"];
    assert_eq!(
        (panicked.reason.as_str(), panicked.attempts),
        ("max_attempts", 3)
    );
    assert!(
        panicked.error.contains("panicked") && panicked.error.contains("boom"),
        "{}",
        panicked.error
    );
    assert_eq!(ctx.pending(S, G).await, 0);
}

#[tokio::test]
async fn attempts_survive_crashes_because_they_are_counted_by_redis() {
    let ctx = Ctx::new().await;
    // A message that took down three consumers in a row: delivered three
    // times (the delivery count says so), never acknowledged.
    ctx.publish(S, "crashy", ORDER_CREATED_V1).await;
    let key = ctx.ns.stream_at(S, 0);
    let mut conn = ctx.conn.clone();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(G)
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(G)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry_id = contract::redis::xread(read).unwrap()[0].1[0].id.clone();
    redis::cmd("XCLAIM")
        .arg(&key)
        .arg(G)
        .arg("ghost")
        .arg(0)
        .arg(&entry_id)
        .arg("RETRYCOUNT")
        .arg(3)
        .arg("JUSTID")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let handler = TestHandler::ok();
    let run = Running::start(&ctx, "c1", handler.clone());
    let dl = eventually("dead letter", WAIT, || async {
        let d = ctx.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    run.stop().await;
    let d = DeadLetter::from_entry(&dl[0]).unwrap();
    assert_eq!((d.reason.as_str(), d.attempts), ("max_attempts", 3));
    assert!(
        d.error.contains("stopped during the attempt"),
        "{}",
        d.error
    );
    assert!(handler.calls().is_empty(), "a fourth attempt never runs");
    assert_eq!(ctx.pending(S, G).await, 0);
}

#[tokio::test]
async fn shutdown_finishes_and_acks_the_batch_in_hand() {
    let ctx = Ctx::new().await;
    for i in 0..6 {
        ctx.publish(S, &format!("k{}", i % 3), ORDER_CREATED_V1)
            .await;
    }
    let handler = TestHandler::new(|_, _| Act::Sleep(Duration::from_millis(120)));
    let called = handler.called.notified();
    let run = Running::start(&ctx, "c1", handler.clone());
    tokio::time::timeout(WAIT, called).await.unwrap();
    run.stop().await; // cancels while the batch is being handled
    assert_eq!(
        handler.finished().len(),
        6,
        "every message in hand was finished"
    );
    assert_eq!(ctx.pending(S, G).await, 0, "and acknowledged");
}

#[tokio::test]
async fn messages_of_one_key_stay_in_order_while_keys_run_concurrently() {
    let ctx = Ctx::new().await;
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..30 {
        let key = format!("order-{}", i % 3);
        ctx.publish(S, &key, ORDER_CREATED_V1).await;
        published.entry(key).or_default();
    }
    let in_stream = ctx.range(S).await;
    for e in &in_stream {
        published
            .get_mut(e.get_str("key").unwrap())
            .unwrap()
            .push(e.id.clone());
    }
    let handler = TestHandler::new(|m, _| {
        Act::Sleep(Duration::from_millis(u64::from(m.id.len() as u8 % 4) + 2))
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    eventually("all handled", WAIT, || async {
        (handler.finished().len() == 30).then_some(())
    })
    .await;
    run.stop().await;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for c in handler.calls() {
        seen.entry(c.key).or_default().push(c.entry_id);
    }
    assert_eq!(seen, published, "per key, handled in stream order");
    assert!(
        handler.max_concurrency() > 1,
        "different keys ran concurrently"
    );
}

/// Records the order ids of the `orders-stream` events it was handed.
#[derive(Clone, Default)]
struct OrdersRecorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Handler<OrdersEvent> for OrdersRecorder {
    async fn handle(&self, msg: &Message<OrdersEvent>) -> Result<Outcome, HandlerError> {
        let OrdersEvent::Created(p) = &msg.event else {
            return Ok(Outcome::Skipped);
        };
        self.0.lock().unwrap().push(p.order_id.to_string());
        Ok(Outcome::Done)
    }
}

#[tokio::test]
async fn events_are_decoded_once_and_undecodable_ones_dead_lettered_with_the_reason() {
    let ctx = Ctx::new().await;
    let recorder = OrdersRecorder::default();
    let mut cfg = ConsumerConfig::new(&ctx.settings, S, G, 0);
    cfg.consumer = "typed".into();
    let consumer: Consumer<OrdersEvent, _> =
        Consumer::new(&ctx.client, cfg, recorder.clone()).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));

    let good = Envelope::of(&OrderCreated::example(), "c", "test");
    let mut unknown = good.clone();
    unknown.event_id = uuid::Uuid::now_v7();
    unknown.event_type = "menu.renamed.v9".into();
    let mut invalid = good.clone();
    invalid.event_id = uuid::Uuid::now_v7();
    invalid.payload["items"] = serde_json::json!("pizza");
    for e in [&good, &unknown, &invalid] {
        ctx.publisher.publish(S, e).await.unwrap();
    }
    let dl = eventually("two dead letters", WAIT, || async {
        let d = ctx.dead_letters().await;
        (d.len() == 2 && ctx.pending(S, G).await == 0).then_some(d)
    })
    .await;
    token.cancel();
    task.await.unwrap();

    assert_eq!(*recorder.0.lock().unwrap(), std::slice::from_ref(&good.key));
    let reasons: HashMap<String, (String, String)> = dl
        .iter()
        .map(|e| {
            let d = DeadLetter::from_entry(e).unwrap();
            (
                d.envelope().unwrap().event_id.to_string(),
                (d.reason, d.error),
            )
        })
        .collect();
    let (reason, error) = &reasons[&unknown.event_id.to_string()];
    assert_eq!(reason, "unknown_event");
    assert!(
        error.contains("menu.renamed.v9") && error.contains("order.created.v1"),
        "{error}"
    );
    let (reason, error) = &reasons[&invalid.event_id.to_string()];
    assert_eq!(reason, "invalid_payload");
    assert!(
        error.contains("invalid order.created.v1 payload"),
        "{error}"
    );
}

#[tokio::test]
async fn two_consumers_of_one_group_share_the_work_without_duplicates() {
    let ctx = Ctx::new().await;
    let (h1, h2) = (TestHandler::ok(), TestHandler::ok());
    let r1 = Running::start(&ctx, "c1", h1.clone());
    let r2 = Running::start(&ctx, "c2", h2.clone());
    for i in 0..200 {
        ctx.publish(S, &format!("k{i}"), ORDER_CREATED_V1).await;
    }
    eventually("all handled", WAIT, || async {
        (h1.finished().len() + h2.finished().len() == 200).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    r1.stop().await;
    r2.stop().await;
    let mut ids: Vec<String> = h1
        .calls()
        .into_iter()
        .chain(h2.calls())
        .map(|c| c.entry_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no message handled twice");
}

#[tokio::test]
async fn a_deferred_message_waits_without_using_up_attempts() {
    let ctx = Ctx::with(&[("CONSUMER_MAX_DEFER_MS", "60000")]).await;
    // Deferred far more often than MAX_ATTEMPTS (3) allows failures.
    let handler = TestHandler::new(|_, seen| {
        if seen < 8 {
            Act::Defer("waiting for its predecessor")
        } else {
            Act::Ok
        }
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    eventually("handled in the end", WAIT, || async {
        (handler.finished().len() == 1).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    let calls = handler.calls();
    assert_eq!(calls.len(), 9);
    assert!(
        calls.iter().all(|c| c.attempt == 1),
        "waiting is not an attempt: {calls:?}"
    );
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_message_deferred_for_too_long_is_dead_lettered() {
    let ctx = Ctx::with(&[("CONSUMER_MAX_DEFER_MS", "300")]).await;
    let handler = TestHandler::new(|_, _| Act::Defer("waiting for confirmed"));
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    let dl = eventually("dead letter", WAIT, || async {
        let d = ctx.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    run.stop().await;
    let d = DeadLetter::from_entry(&dl[0]).unwrap();
    assert_eq!(
        (d.reason.as_str(), d.attempts, d.error.as_str()),
        ("deferred_too_long", 1, "waiting for confirmed")
    );
    assert!(
        handler.calls().len() > 1,
        "it was looked at again before giving up"
    );
    assert_eq!(ctx.pending(S, G).await, 0);
}

#[tokio::test]
async fn a_handler_that_times_out_is_looked_at_again_without_using_up_attempts() {
    // An overloaded machine: the handler outlives its timeout (300 ms) more
    // often than MAX_ATTEMPTS (3), then succeeds. Nothing is dead-lettered.
    let ctx = Ctx::with(&[("CONSUMER_MAX_DEFER_MS", "60000")]).await;
    let handler = TestHandler::new(|_, seen| {
        if seen < 4 {
            Act::Sleep(Duration::from_millis(600))
        } else {
            Act::Ok
        }
    });
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    eventually("handled in the end", WAIT, || async {
        (handler.finished().len() == 1).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || async {
        (ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    run.stop().await;
    let calls = handler.calls();
    assert!(calls.len() >= 5, "four timeouts, then success: {calls:?}");
    assert!(
        calls.iter().all(|c| c.attempt == 1),
        "a timeout is not an attempt: {calls:?}"
    );
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_handler_that_always_hangs_is_dead_lettered_once_too_old() {
    let ctx = Ctx::with(&[("CONSUMER_MAX_DEFER_MS", "1000")]).await;
    let handler = TestHandler::new(|_, _| Act::Hang);
    let run = Running::start(&ctx, "c1", handler.clone());
    ctx.publish(S, "a", ORDER_CREATED_V1).await;
    let dl = eventually("dead letter", WAIT, || async {
        let d = ctx.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    run.stop().await;
    let d = DeadLetter::from_entry(&dl[0]).unwrap();
    assert_eq!(d.reason.as_str(), "deferred_too_long");
    assert!(d.error.contains("timed out"), "{}", d.error);
    assert_eq!(ctx.pending(S, G).await, 0);
}

/// Hands runs to `handle_run` and records each call's entry ids; fails the
/// second message of a run on its first attempt.
#[derive(Clone, Default)]
struct RunRecorder(std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>);

impl Handler<testkit::AnyEvent> for RunRecorder {
    async fn handle(&self, msg: &Message<testkit::AnyEvent>) -> Result<Outcome, HandlerError> {
        self.0.lock().unwrap().push(vec![msg.id.clone()]);
        Ok(Outcome::Done)
    }

    async fn handle_run(
        &self,
        msgs: &[Message<testkit::AnyEvent>],
    ) -> Vec<Result<Outcome, HandlerError>> {
        self.0
            .lock()
            .unwrap()
            .push(msgs.iter().map(|m| m.id.clone()).collect());
        (0..msgs.len())
            .map(|i| match i {
                1 => Err(HandlerError::retry("the second of a run fails once")),
                _ => Ok(Outcome::Done),
            })
            .collect()
    }
}

#[tokio::test]
async fn messages_of_one_key_read_together_are_one_run_each_settled_by_its_own_result() {
    let ctx = Ctx::new().await;
    // Three of key "a" and one of "b", all there before the consumer reads.
    for _ in 0..3 {
        ctx.publish(S, "a", ORDER_CREATED_V1).await;
    }
    ctx.publish(S, "b", ORDER_CREATED_V1).await;
    let recorder = RunRecorder::default();
    let token = CancellationToken::new();
    let task = tokio::spawn(
        ctx.consumer(S, G, "runs", recorder.clone())
            .run(token.clone()),
    );
    eventually("all acknowledged", WAIT, || async {
        (recorder.0.lock().unwrap().len() >= 3 && ctx.pending(S, G).await == 0).then_some(())
    })
    .await;
    token.cancel();
    task.await.unwrap();

    let calls = recorder.0.lock().unwrap().clone();
    let run: Vec<&Vec<String>> = calls.iter().filter(|c| c.len() > 1).collect();
    assert_eq!(run.len(), 1, "{calls:?}");
    assert_eq!(
        run[0].len(),
        3,
        "key a's three messages in one run: {calls:?}"
    );
    // The one that failed came back alone and was acknowledged then; the
    // other two were acknowledged after the run, and not handled again.
    let again: Vec<&Vec<String>> = calls
        .iter()
        .filter(|c| c.len() == 1 && c[0] == run[0][1])
        .collect();
    assert_eq!(again.len(), 1, "{calls:?}");
    for id in [&run[0][0], &run[0][2]] {
        assert_eq!(
            calls.iter().flatten().filter(|x| *x == id).count(),
            1,
            "{calls:?}"
        );
    }
    assert_eq!(calls.len(), 3, "the run, b alone, the retry: {calls:?}");
    assert!(ctx.dead_letters().await.is_empty());
}
