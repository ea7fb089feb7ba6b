//! The processor's consumers of its input streams: each (re)opened right
//! after the positions the processor holds, never at the server's, and all
//! reopened when the connection to NATS is replaced.

use std::time::Duration;

use tokio::sync::watch;

use super::Processor;
use crate::live::input::{open_consumer, Which};
use crate::metrics::METRICS;
use crate::nats::{connect, LiveError};

impl Processor {
    /// Whether the connection was replaced since the consumers were opened.
    /// A server that restarts may bring our consumers back at positions
    /// other than ours (their state is written lazily), so after a new
    /// connection nothing they deliver is taken until they are reopened.
    pub(super) fn reconnected(&self) -> bool {
        connect::connection(&self.client) != self.connection
    }

    /// Every input reopened right after what we hold, on the current connection.
    pub(super) async fn reopen_all(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), LiveError> {
        self.connection = connect::connection(&self.client);
        tracing::info!("connection to NATS replaced: consumers reopened at our positions");
        for i in 0..self.inputs.len() {
            self.open(i, stop).await?;
        }
        Ok(())
    }

    /// (Re)creates input `i`'s durable consumer right after what we hold.
    pub(super) async fn open(&mut self, i: usize, stop: &mut watch::Receiver<bool>) -> Result<(), LiveError> {
        let positions: Vec<u64> = match self.inputs[i].which {
            Which::Scans => self.parts.values().map(|p| p.pos[0]).collect(),
            Which::Contacts => self.parts.values().map(|p| p.pos[1]).collect(),
            Which::Facts => self.stages.values().map(|s| s.pos).collect(),
        };
        let input = &mut self.inputs[i];
        let start = positions.iter().copied().min().unwrap_or(0).max(input.last_seq) + 1;
        // Every message up to the newest position was handled before a stored checkpoint.
        let covered = positions.iter().copied().max().unwrap_or(0).max(input.last_seq);
        input.messages = None;
        let mut delay = Duration::from_millis(100);
        loop {
            match open_consumer(&self.js, input, start, &self.config).await {
                Ok(opened) => {
                    if covered > 0 && opened.first > covered + 1 {
                        METRICS.input_gaps.with_label_values(&[&input.stream]).inc();
                        tracing::error!(
                            stream = %input.stream,
                            from = covered + 1,
                            to = opened.first - 1,
                            "messages after the stored checkpoints' positions are gone from the stream (its max_age \
                             or size limits): their events are lost; keep the streams longer than the longest outage"
                        );
                    }
                    input.consumer = Some(opened.consumer);
                    input.messages = Some(opened.messages);
                    input.caught_up = false;
                    tracing::debug!(stream = %input.stream, start, "consuming");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(stream = %input.stream, error = %e, "cannot open the consumer yet; retrying");
                    if *stop.borrow() {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Err(e),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
