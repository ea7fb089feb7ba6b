//! Publishing events live (`forewarn simulate --nats`): each event on its
//! partition's subject, at a target rate or at a multiple of real time, so
//! a simulated day can play in minutes against a running processor.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

use super::publisher::Publisher;
use crate::event::{decode, Kind};
use crate::nats::wire::Outgoing;
use crate::nats::LiveError;
use crate::partition;
use crate::time::Ts;

/// Events handed to the publisher together, and between looks at the pace.
const STEP: usize = 256;

/// How fast to publish.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    AsFastAsPossible,
    /// Events per second.
    Rate(f64),
    /// Event time runs this many times faster than wall time.
    Speed(f64),
}

/// The subject a contract event goes to: `scans.<p>` or `contacts.<p>`.
pub fn subject(parcel_id: &str, kind: Kind, partitions: u16) -> String {
    let stream = if kind == Kind::CustomerContact { "contacts" } else { "scans" };
    format!("{stream}.{}", partition::of(parcel_id, partitions))
}

/// Publishes every JSON line of `data`; returns how many were stored.
/// Lines that do not decode go to `scans.0`, as a broken scanner would send them.
pub async fn publish(
    js: jetstream::Context,
    data: &[u8],
    partitions: u16,
    pace: Pace,
    mut progress: impl FnMut(u64),
) -> Result<u64, LiveError> {
    let publisher = Publisher::start(js.client(), None);
    let mut batch = Vec::with_capacity(STEP);
    let started = Instant::now();
    let mut first: Option<Ts> = None;
    let mut newest = Ts::MIN;
    let mut sent = 0u64;
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let subject = match decode(line) {
            Ok(event) => {
                newest = newest.max(event.at);
                first.get_or_insert(event.at);
                subject(&event.parcel_id, event.kind, partitions)
            }
            Err(_) => "scans.0".to_string(),
        };
        batch.push(Outgoing { subject, id: None, headers: Vec::new(), body: Bytes::copy_from_slice(line) });
        sent += 1;
        if sent.is_multiple_of(STEP as u64) {
            publisher.send_all(std::mem::replace(&mut batch, Vec::with_capacity(STEP))).await?;
            progress(sent);
            let due = match (pace, first) {
                (Pace::Rate(rate), _) => Some(Duration::from_secs_f64(sent as f64 / rate)),
                (Pace::Speed(speed), Some(first)) => {
                    Some(Duration::from_secs_f64(newest.since(first).0 as f64 / 1000.0 / speed))
                }
                _ => None,
            };
            if let Some(wait) = due.and_then(|due| due.checked_sub(started.elapsed())) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    publisher.send_all(batch).await?;
    publisher.settle().await?;
    progress(sent);
    Ok(sent)
}
