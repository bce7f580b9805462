use contract::{
    events::{Event, OrderCreated},
    streams::Stream,
};

const ORDER_CREATED_V1: &str = OrderCreated::TYPE;

use crate::helpers::Ctx;

#[tokio::test]
async fn publish_appends_the_envelope_fields_and_never_trims() {
    let ctx = Ctx::with(&[]).await;
    let first = ctx.publish(Stream::Orders, "o-1", ORDER_CREATED_V1).await;
    let stored = ctx.range(Stream::Orders).await;
    assert_eq!(stored.len(), 1);
    let back = contract::Envelope::from_entry(&stored[0]).unwrap();
    assert_eq!(back.event_id, first.event_id);
    assert_eq!(back.correlation_id, "corr-o-1");

    ctx.publish_many(Stream::Orders, 1000).await;
    let len: usize = redis::cmd("XLEN")
        .arg(ctx.ns.stream_at(Stream::Orders, 0))
        .query_async(&mut ctx.conn.clone())
        .await
        .unwrap();
    assert_eq!(len, 1001, "publishing must never drop an entry");
}
