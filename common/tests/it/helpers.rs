use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Message, Outcome},
    publisher::Publisher,
    settings::{CommonSettings, Env},
};
use contract::redis::Conn;
use contract::{
    Envelope, StreamEntry,
    redis::{self as redis_conn, self as stream_entry},
    streams::{Namespace, Stream},
};
use testkit::AnyEvent;
use tokio::sync::Notify;

/// One test's isolated world: a unique key prefix on the shared Redis.
pub(crate) struct Ctx {
    pub(crate) settings: CommonSettings,
    pub(crate) client: contract::redis::Client,
    pub(crate) conn: Conn,
    pub(crate) ns: Namespace,
    pub(crate) publisher: Publisher,
}

/// Fast consumer tuning, so retries and takeovers happen in milliseconds.
pub(crate) const FAST: [(&str, &str); 6] = [
    ("CONSUMER_BLOCK_MS", "100"),
    ("RECLAIM_MIN_IDLE_MS", "400"),
    ("RECLAIM_INTERVAL_MS", "50"),
    ("RETRY_BACKOFF_MS", "10"),
    ("HANDLER_TIMEOUT_MS", "300"),
    ("MAX_ATTEMPTS", "3"),
];

impl Ctx {
    pub(crate) async fn new() -> Self {
        Self::with(&[]).await
    }

    pub(crate) async fn with(extra: &[(&str, &str)]) -> Self {
        Self::on_url(testkit::redis_url().await, extra).await
    }

    /// On a Redis of the test's own.
    pub(crate) async fn on(redis: &testkit::RedisServer, extra: &[(&str, &str)]) -> Self {
        Self::on_url(redis.url(), extra).await
    }

    /// On the Redis (or the cluster's node list) at `url`.
    pub(crate) async fn on_url(url: String, extra: &[(&str, &str)]) -> Self {
        let prefix = format!("{}:", testkit::unique("t"));
        let mut vars: HashMap<String, String> = FAST
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        vars.insert("REDIS_URL".into(), url);
        vars.insert("STREAM_PREFIX".into(), prefix);
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut env = Env::from_map(vars);
        let settings = CommonSettings::from_env(&mut env, "test-svc");
        env.finish().unwrap();
        let client = redis_conn::client(settings.redis_url.expose()).unwrap();
        let conn = redis_conn::commands(&client).unwrap();
        let ns = settings.namespace();
        let publisher = Publisher::new(conn.clone(), ns.clone());
        Self {
            settings,
            client,
            conn,
            ns,
            publisher,
        }
    }

    pub(crate) fn consumer<H: Handler<AnyEvent>>(
        &self,
        stream: Stream,
        group: &str,
        name: &str,
        handler: H,
    ) -> Consumer<AnyEvent, H> {
        let mut cfg = ConsumerConfig::new(&self.settings, stream, group, 0);
        cfg.consumer = name.to_owned();
        Consumer::new(&self.client, cfg, handler).unwrap()
    }

    pub(crate) async fn publish(&self, stream: Stream, key: &str, event_type: &str) -> Envelope {
        testkit::publish(&self.publisher, stream, key, event_type).await
    }

    /// Entries pending in `group` on `stream` (XPENDING summary).
    /// Publishes `n` events to `stream` (keys `o-0`, `o-1`, ...), 200 per round trip.
    pub(crate) async fn publish_many(&self, stream: Stream, n: usize) {
        let events: Vec<Envelope> = (0..n)
            .map(|i| {
                Envelope::new(
                    <contract::events::OrderCreated as contract::events::Event>::TYPE,
                    format!("o-{i}"),
                    "c",
                    "test",
                    &serde_json::json!({}),
                )
                .unwrap()
            })
            .collect();
        for chunk in events.chunks(200) {
            let batch: Vec<_> = chunk.iter().map(|e| (stream, e)).collect();
            assert_eq!(
                self.publisher.publish_all(&batch).await.unwrap().len(),
                chunk.len()
            );
        }
    }

    pub(crate) async fn pending(&self, stream: Stream, group: &str) -> i64 {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(self.ns.stream_at(stream, 0))
            .arg(group)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        stream_entry::int(&stream_entry::array(v).unwrap()[0]).unwrap()
    }

    pub(crate) async fn range(&self, stream: Stream) -> Vec<StreamEntry> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(self.ns.stream_at(stream, 0))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        stream_entry::entries(v).unwrap()
    }

    pub(crate) async fn dead_letters(&self) -> Vec<StreamEntry> {
        self.range(Stream::DeadLetters).await
    }
}

/// What the test handler does on one call.
#[derive(Debug, Clone)]
pub(crate) enum Act {
    Ok,
    Fail(&'static str),
    Reject(&'static str),
    Defer(&'static str),
    Panic,
    Hang,
    Sleep(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) entry_id: String,
    pub(crate) key: String,
    pub(crate) attempt: u32,
    pub(crate) finished: bool,
}

type Script = dyn Fn(&Message<AnyEvent>, usize) -> Act + Send + Sync;

/// A handler that records every call and acts as its script says; the script
/// gets the message and how many times this entry was seen before.
#[derive(Clone)]
pub(crate) struct TestHandler {
    pub(crate) calls: Arc<Mutex<Vec<Call>>>,
    pub(crate) called: Arc<Notify>,
    in_flight: Arc<Mutex<(usize, usize)>>,
    script: Arc<Script>,
}

impl TestHandler {
    pub(crate) fn new(
        script: impl Fn(&Message<AnyEvent>, usize) -> Act + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            called: Arc::default(),
            in_flight: Arc::default(),
            script: Arc::new(script),
        }
    }

    pub(crate) fn ok() -> Self {
        Self::new(|_, _| Act::Ok)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn finished(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.finished).collect()
    }

    /// Most handlers that ever ran at the same time.
    pub(crate) fn max_concurrency(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }
}

impl Handler<AnyEvent> for TestHandler {
    fn handle(
        &self,
        msg: &Message<AnyEvent>,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send {
        let (index, seen) = {
            let mut calls = self.calls.lock().unwrap();
            let seen = calls.iter().filter(|c| c.entry_id == msg.id).count();
            calls.push(Call {
                entry_id: msg.id.clone(),
                key: msg.envelope.key.clone(),
                attempt: msg.attempt,
                finished: false,
            });
            (calls.len() - 1, seen)
        };
        {
            let mut f = self.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        self.called.notify_waiters();
        tracing::info!(seen, "test handler called");
        let act = (self.script)(msg, seen);
        async move {
            let result = match act {
                Act::Ok => Ok(Outcome::Done),
                Act::Fail(e) => Err(HandlerError::retry(e)),
                Act::Reject(e) => Err(HandlerError::reject(e)),
                Act::Defer(e) => Err(HandlerError::defer(e)),
                Act::Panic => panic!("boom from the test handler"),
                Act::Hang => std::future::pending().await,
                Act::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(Outcome::Done)
                }
            };
            self.in_flight.lock().unwrap().0 -= 1;
            if result.is_ok() {
                self.calls.lock().unwrap()[index].finished = true;
            }
            result
        }
    }
}

pub(crate) use testkit::eventually;
