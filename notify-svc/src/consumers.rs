//! The persisting consumer: one group (`notify-svc`) on `orders-stream` and
//! `deliveries-stream` appends each timeline event to its order's stored
//! timeline, once per event id.
//!
//! This handler needs no separate inbox: its only effect is one update of one
//! document that both records the event id and appends the entry, guarded by
//! "this event id is not there yet". The record and the effect are a single
//! atomic write, which is what an inbox transaction provides elsewhere.

use common::consumer::{Handler, HandlerError, Message, Outcome};
use contract::events::{DeliveriesEvent, OrdersEvent};

use crate::timeline::{Fact, TimelineStore, delivery_fact, order_fact};

/// Appends timeline events to MongoDB.
#[derive(Debug, Clone)]
pub struct TimelineHandler {
    /// The timelines.
    pub store: TimelineStore,
}

impl TimelineHandler {
    async fn append(&self, fact: Fact) -> Result<Outcome, HandlerError> {
        let appended = self
            .store
            .append(&fact)
            .await
            .map_err(HandlerError::from_mongo)?;
        Ok(if appended {
            Outcome::Done
        } else {
            Outcome::Skipped
        })
    }

    /// A run of one order's events read together: their appends in one
    /// write command (the entries are ordered by stage, not by arrival).
    async fn append_run(&self, facts: Vec<Fact>) -> Vec<Result<Outcome, HandlerError>> {
        self.store
            .append_all(&facts)
            .await
            .into_iter()
            .map(|appended| match appended {
                Ok(true) => Ok(Outcome::Done),
                Ok(false) => Ok(Outcome::Skipped),
                Err(e) => Err(HandlerError::from_mongo(e)),
            })
            .collect()
    }
}

impl Handler<OrdersEvent> for TimelineHandler {
    async fn handle(&self, msg: &Message<OrdersEvent>) -> Result<Outcome, HandlerError> {
        self.append(order_fact(&msg.envelope, &msg.event)).await
    }

    async fn handle_run(
        &self,
        msgs: &[Message<OrdersEvent>],
    ) -> Vec<Result<Outcome, HandlerError>> {
        let facts = msgs.iter().map(|m| order_fact(&m.envelope, &m.event));
        self.append_run(facts.collect()).await
    }
}

impl Handler<DeliveriesEvent> for TimelineHandler {
    async fn handle(&self, msg: &Message<DeliveriesEvent>) -> Result<Outcome, HandlerError> {
        self.append(delivery_fact(&msg.envelope, &msg.event)).await
    }

    async fn handle_run(
        &self,
        msgs: &[Message<DeliveriesEvent>],
    ) -> Vec<Result<Outcome, HandlerError>> {
        let facts = msgs.iter().map(|m| delivery_fact(&m.envelope, &m.event));
        self.append_run(facts.collect()).await
    }
}
