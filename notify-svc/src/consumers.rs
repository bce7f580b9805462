//! The persisting consumer: one group (`notify-svc`) on `orders-stream` and
//! `deliveries-stream` appends each timeline event to its order's stored
//! timeline, once per event id.

use common::consumer::{Handler, HandlerError, Message, Outcome};

use crate::timeline::{TimelineStore, entry_of};

/// Appends timeline events to MongoDB.
#[derive(Debug, Clone)]
pub struct TimelineHandler {
    /// The timelines.
    pub store: TimelineStore,
}

impl Handler for TimelineHandler {
    async fn handle(&self, msg: &Message) -> Result<Outcome, HandlerError> {
        let Some((order_id, entry)) = entry_of(&msg.envelope).map_err(HandlerError::reject)? else {
            return Ok(Outcome::Skipped);
        };
        let appended = self
            .store
            .append(&order_id, &entry)
            .await
            .map_err(HandlerError::retry)?;
        Ok(if appended {
            Outcome::Done
        } else {
            Outcome::Skipped
        })
    }
}
