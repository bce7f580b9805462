//! The end-to-end harness: the whole system in one process.
//!
//! [`System::start`] runs the real `run()` of all four services, each on its
//! own `127.0.0.1:0` listener, against the Redis and MongoDB servers this
//! test process started (see `testkit`), with a stream prefix and a database
//! of its own, so systems of different tests never see each other. Services
//! can be stopped and started again individually (a graceful restart), which
//! is how tests simulate a restart of one service mid-flow.
//!
//! The simulator runs with `SIMULATOR_DELAY_SCALE=0.01` and the consumer loops
//! with millisecond retries, so a whole order flow takes well under a second.
//!
//! For the browser tests, [`System::start_web`] puts a [`Frontdoor`] (a
//! proxy on a fixed port) in front of order-svc and notify-svc, so that the
//! page's origin and the order API's URL survive restarts, and drives a
//! real Chromium ([`browser`]).

// Test code fails by panicking.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod frontdoor;

pub use frontdoor::Frontdoor;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use common::settings::Env;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tokio_util::sync::CancellationToken;

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// order-svc
    Order,
    /// delivery-svc
    Delivery,
    /// notify-svc
    Notify,
    /// simulator
    Simulator,
}

impl Service {
    /// All of them.
    pub const ALL: [Service; 4] = [
        Service::Order,
        Service::Delivery,
        Service::Notify,
        Service::Simulator,
    ];
}

#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    token: CancellationToken,
    task: JoinHandle<()>,
}

/// A whole system on the test process' servers.
#[derive(Debug)]
pub struct System {
    /// Stream prefix of this system.
    pub prefix: String,
    /// Database of this system.
    pub db: String,
    vars: HashMap<String, String>,
    running: HashMap<(Service, usize), Running>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Redis connection for inspection.
    pub redis: contract::redis::Conn,
    /// MongoDB client for inspection.
    pub mongo: mongodb::Client,
    /// Each service's OpenAPI document: every answer the helpers get is checked.
    specs: HashMap<Service, testkit::schemas::Spec>,
    /// The tracking token of every order placed through the helpers, so
    /// that reading an order or its timeline, and tracking it, carry it.
    tokens: std::sync::Mutex<HashMap<String, String>>,
    /// Fixed addresses in front of replica 0 of some services
    /// ([`System::start_web`]).
    doors: HashMap<Service, Frontdoor>,
}

/// Environment of every service of a test system.
async fn base_vars(prefix: &str, db: &str) -> HashMap<String, String> {
    let redis = testkit::redis_url().await;
    let mongo = testkit::shared_mongo().await;
    [
        ("REDIS_URL", redis),
        ("MONGO_URL", mongo.url()),
        ("MONGO_DB", db.to_owned()),
        ("STREAM_PREFIX", prefix.to_owned()),
        // `FOODCHAIN_TEST_PARTITIONS` runs the suite on partitioned streams.
        ("STREAM_PARTITIONS", testkit::partitions().to_string()),
        ("PARTITION_LEASE_MS", "1000".into()),
        ("LOG_FORMAT", "pretty".into()),
        ("CONSUMER_BLOCK_MS", "100".into()),
        ("RECLAIM_MIN_IDLE_MS", "1500".into()),
        ("RECLAIM_INTERVAL_MS", "100".into()),
        ("RETRY_BACKOFF_MS", "20".into()),
        ("HANDLER_TIMEOUT_MS", "1400".into()),
        ("SIMULATOR_DELAY_SCALE", "0.01".into()),
        ("SIM_POLL_MS", "10".into()),
        ("WS_PING_INTERVAL_MS", "20000".into()),
        ("OUTBOX_LEASE_MS", "1000".into()),
        // Above the test servers' 5 s transaction lifetime: a message may wait
        // for a predecessor held up by a transaction a killed service left open.
        ("CONSUMER_MAX_DEFER_MS", "20000".into()),
        ("OUTBOX_POLL_MS", "50".into()),
        // No rate limit on order creation in tests that place many orders
        // from one address; the limit has its own test.
        ("ORDER_RATE_PER_SEC", "0".into()),
        // Tests read the streams after the flow (the schema check at
        // shutdown, events_of): no trimming under them. Trimming has its
        // own tests (tests/it/trim.rs, common's trim tests), and the chaos
        // runs trim every half second.
        ("STREAM_TRIM_INTERVAL_MS", "3600000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl System {
    /// Starts all four services.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts all four services with extra environment variables.
    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let mut sys = Self::new(extra).await;
        for s in Service::ALL {
            sys.start_service(s).await;
        }
        sys
    }

    /// A system with no service running yet.
    pub async fn new(extra: &[(&str, &str)]) -> Self {
        init_test_logging();
        let prefix = format!("{}:", testkit::unique("sys"));
        let db = testkit::unique_db("sys");
        let mut vars = base_vars(&prefix, &db).await;
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let redis_client = contract::redis::client(&vars["REDIS_URL"]).unwrap();
        let redis = contract::redis::commands(&redis_client).unwrap();
        let mongo = common::mongo::connect(&vars["MONGO_URL"], "e2e-harness")
            .await
            .unwrap();
        Self {
            prefix,
            db,
            vars,
            running: HashMap::new(),
            http: reqwest::Client::new(),
            redis,
            mongo,
            specs: [
                (Service::Order, order_svc::api::openapi()),
                (Service::Delivery, delivery_svc::api::openapi()),
                (Service::Notify, notify_svc::api::openapi()),
                (Service::Simulator, simulator::openapi()),
            ]
            .into_iter()
            .map(|(s, doc)| {
                let doc = serde_json::to_value(doc).unwrap();
                (s, testkit::schemas::Spec::new(doc))
            })
            .collect(),
            tokens: std::sync::Mutex::default(),
            doors: HashMap::new(),
        }
    }

    /// Starts all four services for a browser: order-svc and notify-svc
    /// behind front doors (fixed ports that survive restarts), the page's
    /// origin allowed by order-svc's CORS, the page given the order API's
    /// URL, and tracking links pointing at the page. `extra` wins over
    /// those settings.
    pub async fn start_web(extra: &[(&str, &str)]) -> Self {
        let mut sys = Self::new(&[]).await;
        let order = Frontdoor::bind().await;
        let notify = Frontdoor::bind().await;
        for (k, v) in [
            ("ORDER_API_URL", order.url()),
            ("CORS_ALLOWED_ORIGINS", notify.url()),
            ("TRACKER_BASE_URL", notify.url()),
        ] {
            sys.vars.insert(k.to_owned(), v);
        }
        for (k, v) in extra {
            sys.vars.insert((*k).to_owned(), (*v).to_owned());
        }
        sys.doors.insert(Service::Order, order);
        sys.doors.insert(Service::Notify, notify);
        for s in Service::ALL {
            sys.start_service(s).await;
        }
        sys
    }

    /// The page's base URL (notify-svc's front door) of a
    /// [`System::start_web`] system.
    pub fn web_url(&self) -> String {
        self.door(Service::Notify).url()
    }

    /// The front door of a service (panics unless [`System::start_web`]
    /// made one).
    pub fn door(&self, service: Service) -> &Frontdoor {
        self.doors.get(&service).unwrap_or_else(|| {
            panic!("{service:?} has no front door: start with System::start_web")
        })
    }

    /// Remembers the tracking token of a placed order (a 201 body).
    pub fn remember_token(&self, placed: &Value) {
        if let (Some(id), Some(token)) = (placed["id"].as_str(), placed["tracking_token"].as_str())
        {
            self.tokens
                .lock()
                .unwrap()
                .insert(id.to_owned(), token.to_owned());
        }
    }

    /// The tracking token of an order placed through the helpers.
    pub fn token(&self, order_id: &str) -> Option<String> {
        self.tokens.lock().unwrap().get(order_id).cloned()
    }

    /// The order id a path of one order concerns
    /// (`/api/v1/orders/<id>[/...]`), if any.
    fn order_of_path(path: &str) -> Option<&str> {
        let rest = path.strip_prefix("/api/v1/orders/")?;
        Some(rest.split(['/', '?']).next().unwrap_or(rest))
    }

    /// The environment a service of this system gets.
    pub fn env(&self) -> Env {
        Env::from_map(self.vars.clone())
    }

    /// Starts one service (replica 0, on a fresh port).
    pub async fn start_service(&mut self, service: Service) {
        self.start_replica(service, 0).await;
    }

    /// Starts another replica of a service; returns its index.
    pub async fn add_replica(&mut self, service: Service) -> usize {
        let replica = (0..)
            .find(|i| !self.running.contains_key(&(service, *i)))
            .unwrap_or_default();
        self.start_replica(service, replica).await;
        replica
    }

    /// Starts replica `replica` of a service (on a fresh port) and waits
    /// until it is ready.
    pub async fn start_replica(&mut self, service: Service, replica: usize) {
        self.launch_replica(service, replica, &[]);
        self.wait_ready(service, replica).await;
        if replica == 0
            && let Some(door) = self.doors.get(&service)
        {
            door.point_to(Some(self.running[&(service, replica)].addr));
        }
    }

    /// Starts replica `replica` of a service with `extra` environment over
    /// the system's, without waiting for it to be ready.
    pub fn launch_replica(&mut self, service: Service, replica: usize, extra: &[(&str, &str)]) {
        assert!(
            !self.running.contains_key(&(service, replica)),
            "{service:?}/{replica} already runs"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let mut vars = self.vars.clone();
        vars.insert("CONSUMER_NAME".into(), self.consumer_name(service, replica));
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let env = Env::from_map(vars);
        let t = token.clone();
        let task = match service {
            Service::Order => {
                let s = order_svc::Settings::from_env(env).unwrap();
                tokio::spawn(async move { order_svc::run(s, listener, t).await.unwrap() })
            }
            Service::Delivery => {
                let s = delivery_svc::Settings::from_env(env).unwrap();
                tokio::spawn(async move { delivery_svc::run(s, listener, t).await.unwrap() })
            }
            Service::Notify => {
                let s = notify_svc::Settings::from_env(env).unwrap();
                tokio::spawn(async move { notify_svc::run(s, listener, t).await.unwrap() })
            }
            Service::Simulator => {
                let s = simulator::Settings::from_env(env).unwrap();
                tokio::spawn(async move { simulator::run(s, listener, t).await.unwrap() })
            }
        };
        self.running
            .insert((service, replica), Running { addr, token, task });
    }

    /// The consumer name (and outbox relay holder name) of a replica.
    pub fn consumer_name(&self, service: Service, replica: usize) -> String {
        format!("{service:?}-{replica}").to_lowercase()
    }

    /// Kills a replica as `kill -9` would: its tasks are dropped where they
    /// stand; nothing is acknowledged, marked or released.
    pub async fn kill_replica(&mut self, service: Service, replica: usize) {
        let r = self
            .running
            .remove(&(service, replica))
            .expect("service runs");
        r.task.abort();
        // Its sockets die with it: what the browser sees of a killed process.
        if replica == 0
            && let Some(door) = self.doors.get(&service)
        {
            door.sever();
        }
        let _ = r.task.await;
    }

    /// Which replica of `service` holds its outbox relay lease, if any.
    pub async fn lease_holder(&self, service: Service) -> Option<usize> {
        let name = match service {
            Service::Order => "order-svc",
            Service::Delivery => "delivery-svc",
            _ => return None,
        };
        let holder: Option<String> = redis::cmd("GET")
            .arg(self.key(&format!("outbox-lease:{name}")))
            .query_async(&mut self.redis.clone())
            .await
            .unwrap();
        let holder = holder?;
        (0..8).find(|r| self.consumer_name(service, *r) == holder)
    }

    /// The deployment namespace (for failpoints).
    pub fn namespace(&self) -> contract::streams::Namespace {
        contract::streams::Namespace::for_redis(
            &self.prefix,
            &self.vars["REDIS_URL"],
            self.vars["STREAM_PARTITIONS"].parse().unwrap(),
        )
    }

    /// Stops replica 0 of a service gracefully and waits until it has drained.
    pub async fn stop_service(&mut self, service: Service) {
        self.stop_replica(service, 0).await;
    }

    /// Stops one replica gracefully and waits until it has drained.
    pub async fn stop_replica(&mut self, service: Service, replica: usize) {
        let r = self
            .running
            .remove(&(service, replica))
            .expect("service runs");
        r.token.cancel();
        tokio::time::timeout(Duration::from_secs(15), r.task)
            .await
            .expect("service stops")
            .unwrap();
        if replica == 0
            && let Some(door) = self.doors.get(&service)
        {
            door.point_to(None);
        }
    }

    /// Base URL of a running replica of a service (the lowest-numbered one).
    pub fn url(&self, service: Service) -> String {
        let replica = (0..16)
            .find(|r| self.running.contains_key(&(service, *r)))
            .expect("a running replica");
        self.replica_url(service, replica)
    }

    /// Base URL of one replica.
    pub fn replica_url(&self, service: Service, replica: usize) -> String {
        format!("http://{}", self.running[&(service, replica)].addr)
    }

    async fn wait_ready(&self, service: Service, replica: usize) {
        let url = format!("{}/readyz", self.replica_url(service, replica));
        eventually(
            &format!("{service:?} ready"),
            Duration::from_secs(20),
            || async {
                let r = self.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    /// Seeds the shipped menu and returns it as the API shows it.
    pub async fn seed_menu(&self) -> Vec<Value> {
        let settings = order_svc::Settings::from_env(self.env()).unwrap();
        order_svc::seed_menu(&settings).await.unwrap();
        self.get_json(Service::Order, "/api/v1/menu")
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Adds a menu item with the given stock; returns its id.
    pub async fn add_item(&self, name: &str, price_cents: i64, stock: i64) -> String {
        let id = bson::oid::ObjectId::new();
        self.mongo
            .database(&self.db)
            .collection::<bson::Document>("menu")
            .insert_one(bson::doc! {
                "_id": id, "slug": name.to_lowercase().replace(' ', "-"), "name": name, "description": "test item",
                "category": "test", "price_cents": price_cents, "stock": stock,
            })
            .await
            .unwrap();
        id.to_hex()
    }

    /// Checks an answer against the service's OpenAPI document (panics if
    /// the document does not describe it).
    pub fn check_answer(
        &self,
        service: Service,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) {
        if let Err(e) = self.specs[&service].check(method, path, status, body) {
            panic!("{service:?}: the answer does not match its OpenAPI document: {e}");
        }
    }

    /// GET returning JSON (panics unless 2xx, or if the answer is not one the
    /// OpenAPI document describes).
    pub async fn get_json(&self, service: Service, path: &str) -> Value {
        let mut req = self.http.get(format!("{}{path}", self.url(service)));
        if let Some(token) = Self::order_of_path(path).and_then(|id| self.token(id)) {
            req = req.bearer_auth(token);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        self.check_answer(service, "GET", path, status, &body);
        assert!((200..300).contains(&status), "GET {path}: {status}");
        body
    }

    /// POSTs an order body; returns status and JSON body (checked against
    /// the OpenAPI document).
    pub async fn post_order(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/orders", self.url(Service::Order)))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        self.check_answer(Service::Order, "POST", "/api/v1/orders", status, &body);
        self.remember_token(&body);
        (status, body)
    }

    /// Places a valid order for `items` (`(item id, quantity)`); returns the created order.
    pub async fn place_order(&self, items: &[(&str, u32)]) -> Value {
        let (status, body) = self.post_order(&order_body(items)).await;
        assert_eq!(status, 201, "order rejected: {body}");
        body
    }

    /// Every entry of a stream of this system (of all its partitions, in
    /// the order of their ids).
    pub async fn stream(&self, stream: contract::streams::Stream) -> Vec<contract::StreamEntry> {
        testkit::stream_entries(&self.redis, &self.namespace(), stream).await
    }

    /// The envelopes of a stream that concern `order_id`.
    pub async fn events_of(
        &self,
        stream: contract::streams::Stream,
        order_id: &str,
    ) -> Vec<contract::Envelope> {
        self.stream(stream)
            .await
            .iter()
            .filter_map(|e| contract::Envelope::from_entry(e).ok())
            .filter(|e| e.key == order_id)
            .collect()
    }

    /// Waits until the order has `status` (via the REST API).
    pub async fn wait_order_status(
        &self,
        order_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let path = format!("/api/v1/orders/{order_id}");
        eventually(&format!("order {order_id} {status}"), timeout, || async {
            let order = self.get_json(Service::Order, &path).await;
            (order["status"] == status).then_some(order)
        })
        .await
    }

    /// Connects a tracker WebSocket to notify-svc (replica 0).
    pub async fn track(&self, order_id: &str) -> Tracker {
        self.track_on(0, order_id).await
    }

    /// Connects a tracker WebSocket to a notify-svc replica.
    pub async fn track_on(&self, replica: usize, order_id: &str) -> Tracker {
        let addr = self.running[&(Service::Notify, replica)].addr;
        let token = self
            .token(order_id)
            .expect("an order placed through the helpers");
        // What a browser does: the token as a second offered subprotocol.
        // notify-svc may not have seen the order's creation yet (404): retry
        // briefly, as the web app does.
        eventually("the tracker connects", Duration::from_secs(10), || async {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    format!("ws://{addr}/ws/orders/{order_id}"),
                )
                .unwrap();
            req.headers_mut().insert(
                "sec-websocket-protocol",
                format!("foodchain.v1, bearer.{token}").parse().unwrap(),
            );
            tokio_tungstenite::connect_async(req)
                .await
                .ok()
                .map(|(socket, _)| Tracker { socket })
        })
        .await
    }

    /// Appends an event to (its partition of) a stream of this system, as
    /// a producer would.
    pub async fn xadd(&self, stream: contract::streams::Stream, event: &contract::Envelope) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.namespace().stream_for(stream, &event.key))
            .arg("*");
        for (k, v) in event.to_fields() {
            cmd.arg(k).arg(v);
        }
        cmd.query_async::<String>(&mut self.redis.clone())
            .await
            .unwrap();
    }

    /// `POST /api/v1/orders/{id}/cancel` with the order's token (if known)
    /// and an optional Idempotency-Key; status and body, checked against
    /// the OpenAPI document.
    pub async fn cancel(&self, order_id: &str, key: Option<&str>) -> (u16, Value) {
        let path = format!("/api/v1/orders/{order_id}/cancel");
        let mut req = self
            .http
            .post(format!("{}{path}", self.url(Service::Order)))
            .json(&json!({"reason": "changed my mind"}));
        if let Some(token) = self.token(order_id) {
            req = req.bearer_auth(token);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        self.check_answer(Service::Order, "POST", &path, status, &body);
        (status, body)
    }

    /// Entries of `stream` delivered to `group` and not yet acknowledged
    /// (in all its partitions).
    pub async fn pending(&self, stream: contract::streams::Stream, group: &str) -> i64 {
        let mut total = 0;
        for key in self.namespace().stream_keys(stream) {
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(group)
                .query_async(&mut self.redis.clone())
                .await
                .unwrap();
            total += contract::redis::int(&contract::redis::array(v).unwrap()[0]).unwrap();
        }
        total
    }

    /// The stock of a menu item, read in MongoDB.
    pub async fn stock(&self, item_id: &str) -> i64 {
        let id = bson::oid::ObjectId::parse_str(item_id).unwrap();
        self.mongo
            .database(&self.db)
            .collection::<bson::Document>("menu")
            .find_one(bson::doc! { "_id": id })
            .await
            .unwrap()
            .unwrap()
            .get_i64("stock")
            .unwrap()
    }

    /// A Redis key of this system.
    pub fn key(&self, name: &str) -> String {
        self.namespace().key(name)
    }

    /// Number of documents in a collection matching `filter`.
    pub async fn count(&self, collection: &str, filter: bson::Document) -> u64 {
        self.mongo
            .database(&self.db)
            .collection::<bson::Document>(collection)
            .count_documents(filter)
            .await
            .unwrap()
    }

    /// Stops every service, then checks every entry that crossed an event
    /// stream against the contract's schemas (panics naming the first ones
    /// that do not fit).
    pub async fn shutdown(mut self) {
        let running: Vec<(Service, usize)> = self.running.keys().copied().collect();
        for (s, r) in running {
            self.stop_replica(s, r).await;
        }
        self.check_streams().await;
    }

    /// Every entry of every event stream, checked against the contract's
    /// schemas; returns how many were checked.
    pub async fn check_streams(&self) -> usize {
        use contract::streams::Stream;
        let events = testkit::schemas::Events::default();
        let (mut checked, mut problems) = (0, Vec::new());
        for stream in Stream::ALL
            .into_iter()
            .filter(|s| *s != Stream::DeadLetters)
        {
            for entry in self.stream(stream).await {
                checked += 1;
                if let Err(e) = events.check(&entry) {
                    problems.push(format!("{stream}: {e}"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "entries that do not fit the contract: {problems:#?}"
        );
        checked
    }
}

/// With `TEST_LOG=<filter>` (e.g. `TEST_LOG=info`), the services' logs go to
/// stderr (shown for failing tests).
fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let settings = common::telemetry::TelemetrySettings {
                service: "tests".into(),
                env: "test".into(),
                loki_url: None,
                format: common::settings::LogFormat::Pretty,
                filter,
            };
            if let Ok((subscriber, _)) = common::telemetry::subscriber(&settings, std::io::stderr) {
                let _ = tracing::subscriber::set_global_default(subscriber);
            }
        }
    });
}

/// A valid order request body.
pub fn order_body(items: &[(&str, u32)]) -> Value {
    json!({
        "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row", "phone": "+44 20 7946 0958"},
        "items": items.iter().map(|(id, q)| json!({"item_id": id, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// A kitchen status change for an order, as the simulator would publish it.
pub fn kitchen(order_id: &str, status: contract::status::OrderStatus) -> contract::Envelope {
    kitchen_because(order_id, status, None)
}

/// A kitchen status change with a reason (a rejection's).
pub fn kitchen_because(
    order_id: &str,
    status: contract::status::OrderStatus,
    reason: Option<&str>,
) -> contract::Envelope {
    let p = contract::events::OrderStatusChanged {
        order_id: contract::OrderId::parse(order_id).unwrap(),
        status,
        reason: reason.map(str::to_owned),
    };
    contract::Envelope::of(&p, "test", "test")
}

/// A tracker's socket.
#[derive(Debug)]
pub struct Tracker {
    /// The raw socket.
    pub socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Tracker {
    /// The next JSON message (pings are answered by the library).
    pub async fn next(&mut self, timeout: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(timeout, self.socket.next())
                .await
                .expect("a tracker message in time")
                .expect("socket open")
                .unwrap();
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code and
    /// reason (panics on any other message but pings).
    pub async fn closed(&mut self, timeout: Duration) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(timeout, self.socket.next())
                .await
                .expect("the tracker closes in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.as_str().to_owned());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Collects update statuses (`kind:status`) until `until` arrives.
    pub async fn updates_until(&mut self, until: &str, timeout: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next(timeout).await;
            assert_eq!(m["type"], "update", "{m}");
            let label = format!(
                "{}:{}",
                m["entry"]["kind"].as_str().unwrap(),
                m["entry"]["status"].as_str().unwrap()
            );
            seen.push(label.clone());
            if label == until {
                return seen;
            }
        }
    }
}

pub use testkit::{FULL_FLOW, eventually};

/// A timeline (the `timeline` array notify-svc serves) as `kind:status` labels.
pub fn labels(timeline: &Value) -> Vec<String> {
    timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["status"].as_str().unwrap()
            )
        })
        .collect()
}
