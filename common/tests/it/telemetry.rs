use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, http::StatusCode, routing::post};
use common::{
    settings::LogFormat,
    telemetry::{self, TelemetrySettings},
};
use contract::{
    events::{Event, OrderCreated},
    streams::{Stream, groups},
};

const ORDER_CREATED_V1: &str = OrderCreated::TYPE;
use loki_api::logproto::PushRequest;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Ctx, TestHandler, eventually};

/// Captures what the JSON layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A stand-in Loki: decodes each push (raw snappy + protobuf) onto a channel.
async fn fake_loki() -> (url::Url, mpsc::UnboundedReceiver<PushRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/loki/api/v1/push",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let raw = snap::raw::Decoder::new()
                    .decompress_vec(&body)
                    .expect("snappy");
                tx.send(PushRequest::decode(raw.as_slice()).expect("protobuf"))
                    .unwrap();
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/").parse().unwrap(), rx)
}

// current_thread: the thread-local default subscriber then sees every task.
#[tokio::test(flavor = "current_thread")]
async fn handler_logs_carry_the_event_fields_on_stdout_and_reach_loki() {
    let (loki_url, mut pushes) = fake_loki().await;
    let settings = TelemetrySettings {
        service: "order-svc".into(),
        env: "ci".into(),
        loki_url: Some(loki_url),
        format: LogFormat::Json,
        filter: "info".into(),
    };
    let stdout = Captured::default();
    let (subscriber, shipper) = telemetry::subscriber(&settings, stdout.clone()).unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ctx = Ctx::new().await;
    let handler = TestHandler::ok();
    let token = CancellationToken::new();
    let task = tokio::spawn(
        ctx.consumer(Stream::Orders, groups::NOTIFY_SVC, "c1", handler.clone())
            .run(token.clone()),
    );
    let event = ctx
        .publish(Stream::Orders, "order-77", ORDER_CREATED_V1)
        .await;
    eventually("handled", Duration::from_secs(10), || async {
        (handler.finished().len() == 1).then_some(())
    })
    .await;
    token.cancel();
    task.await.unwrap();
    shipper.shutdown().await;

    // stdout: the handler's own line, as JSON, with the span's fields.
    let text = String::from_utf8(stdout.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .find(|v| v["message"] == "test handler called")
        .expect("the handler's log line");
    let span = &line["span"];
    assert_eq!(span["correlation_id"], "corr-order-77");
    assert_eq!(span["event_id"], event.event_id.to_string());
    assert_eq!(span["event_type"], ORDER_CREATED_V1);
    assert_eq!(span["stream"], "orders-stream");

    // Loki: the same line, in a stream labelled with service and env.
    let mut found = None;
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_secs(5), pushes.recv()).await {
        for stream in push.streams {
            if let Some(entry) = stream
                .entries
                .iter()
                .find(|e| e.line.contains("test handler called"))
            {
                found = Some((stream.labels.clone(), entry.line.clone()));
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (labels, line) = found.expect("the handler's line was pushed to Loki");
    assert!(
        labels.contains(r#"service="order-svc""#) && labels.contains(r#"env="ci""#),
        "{labels}"
    );
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["correlation_id"], "corr-order-77", "{line}");
    assert_eq!(line["event_id"], event.event_id.to_string());
}
