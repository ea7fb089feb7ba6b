//! What the processor says out: the alerts, dead letters, branch facts and
//! watermark marks of each run of messages, handed to the outbox
//! ([`crate::live::publisher`]) in one batch, and the barrier a checkpoint
//! waits behind.

use std::time::SystemTime;

use super::{Processor, FACTS_HELD};
use crate::buffer;
use crate::live::publisher::PublishStats;
use crate::metrics::METRICS;
use crate::nats::{wire, LiveError};

impl Processor {
    /// Hands what the engines and stages said to the outbox, in one batch.
    pub(super) async fn publish(&mut self) -> Result<(), LiveError> {
        self.arrived.resize(self.alerts.len(), SystemTime::now());
        self.summary.alerts += self.alerts.len() as u64;
        let (alerts, arrived) = (std::mem::take(&mut self.alerts), std::mem::take(&mut self.arrived));
        self.publisher.send_alerts(alerts, arrived).await?;
        if self.facts.len() >= FACTS_HELD {
            self.facts_out();
        }
        METRICS.judged(&self.judged, &self.told, self.config.dispatch.holdout);
        self.judged.clear();
        self.told.clear();
        buffer::release(&mut self.judged);
        buffer::release(&mut self.told);
        self.flush().await
    }

    /// What waits in `outgoing`, to the outbox.
    pub(super) async fn flush(&mut self) -> Result<(), LiveError> {
        self.publisher.send_all(std::mem::take(&mut self.outgoing)).await
    }

    /// Everything said so far handed over, and what resolves once the
    /// outbox stored it all: what a checkpoint taken now may cover.
    pub(super) async fn barrier(
        &mut self,
    ) -> Result<impl std::future::Future<Output = Result<PublishStats, LiveError>> + Send + 'static, LiveError> {
        self.facts_out();
        self.flush().await?;
        self.publisher.barrier().await
    }

    /// The branch facts made so far, in batches, to go out with the next
    /// flush. Stages count facts only up to the watermarks announced after
    /// a checkpoint, so facts wait for the checkpoint (or [`FACTS_HELD`] of
    /// them) and go out in few messages.
    fn facts_out(&mut self) {
        self.outgoing.extend(wire::facts(&self.facts, self.owned.count));
        self.facts.clear();
        buffer::release(&mut self.facts);
    }
}
