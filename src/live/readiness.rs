//! Whether the processor is ready, and if not why: what it says itself
//! (starting, catching up, stopped) and the faults that last too long (no
//! checkpoint stored, NATS lost). `/readyz` serves it ([`crate::api`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::METRICS;
use crate::nats::wire;

/// Why the processor is not ready, or `None` when it is. Besides what the
/// processor says (starting, catching up, stopped), two faults make it
/// unready by themselves once they last longer than `stale_after`, whether
/// or not the processing loop still turns (it waits inside a publish that
/// the server does not store): changes that no stored checkpoint covers
/// (disk full, writes refused, checkpoints failing), and a lost server.
#[derive(Clone, Default)]
pub struct Readiness {
    state: Arc<Mutex<Faults>>,
    stale_after: Duration,
}

#[derive(Default)]
struct Faults {
    reason: Option<String>,
    /// Since when changes wait for a stored checkpoint.
    unsaved_since: Option<Instant>,
    /// Since when the connection to NATS is down.
    disconnected_since: Option<Instant>,
    /// What the last failed checkpoint or publish said.
    last_error: Option<String>,
    /// Whether each fault was counted as a stall already.
    stalled: [bool; 2],
    /// The connection watched, once there is one.
    client: Option<async_nats::Client>,
}

/// The faults `forewarn_stalls_total{what}` counts.
pub const STALLS: [&str; 2] = ["checkpoint", "connection"];

impl Readiness {
    pub fn new(reason: &str, stale_after: Duration) -> Readiness {
        let readiness = Readiness { stale_after, ..Readiness::default() };
        readiness.set(Some(reason));
        for what in STALLS {
            METRICS.stalls.with_label_values(&[what]);
        }
        readiness
    }

    /// Watches this connection: down longer than the bound is not ready.
    pub fn watch(&self, client: async_nats::Client) {
        self.with(|s| s.client = Some(client));
    }

    pub fn set(&self, reason: Option<&str>) {
        self.with(|s| s.reason = reason.map(str::to_string));
    }

    /// Something changed that the next checkpoint must cover.
    pub fn unsaved(&self) {
        self.with(|s| {
            s.unsaved_since.get_or_insert_with(Instant::now);
        });
    }

    /// A checkpoint is stored: everything before it is safe.
    pub fn saved(&self) {
        self.with(|s| {
            s.unsaved_since = None;
            s.last_error = None;
            s.stalled[0] = false;
        });
    }

    /// A checkpoint or publish did not go through (retried): the reason /readyz gives.
    pub fn failing(&self, error: &str) {
        self.with(|s| s.last_error = Some(wire::bounded(error, wire::MAX_REASON_CHARS)));
    }

    fn with<T>(&self, f: impl FnOnce(&mut Faults) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Why not ready now, if not; keeps `forewarn_checkpoint_waiting_seconds`
    /// and `forewarn_stalls_total` up to date.
    pub fn get(&self) -> Option<String> {
        self.at(Instant::now())
    }

    /// [`Readiness::get`] as of `now` (the tests move time).
    fn at(&self, now: Instant) -> Option<String> {
        let bound = self.stale_after;
        self.with(|s| {
            let connected =
                s.client.as_ref().is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected);
            match (connected, s.disconnected_since) {
                (true, _) => s.disconnected_since = None,
                (false, None) => s.disconnected_since = Some(now),
                (false, Some(_)) => {}
            }
            let waited = s.unsaved_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            METRICS.checkpoint_waiting.set(waited.as_secs() as i64);
            let down = s.disconnected_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let error = s.last_error.as_deref().unwrap_or("checkpoints or publishes are not going through");
            let faults = [
                (waited > bound).then(|| format!("no checkpoint stored for {} s: {error}", waited.as_secs())),
                (down > bound).then(|| format!("disconnected from NATS for {} s", down.as_secs())),
            ];
            for (i, fault) in faults.iter().enumerate() {
                if fault.is_some() && !s.stalled[i] {
                    METRICS.stalls.with_label_values(&[STALLS[i]]).inc();
                    tracing::error!(reason = fault.as_deref().unwrap_or_default(), "not ready");
                }
                s.stalled[i] = fault.is_some();
            }
            let [checkpoint, connection] = faults;
            connection.or(checkpoint).or_else(|| s.reason.clone())
        })
        .unwrap_or_else(|| Some("state unavailable".into()))
    }
}

/// Why an instance with `waiting` input messages on the server is not ready, if it is not.
pub fn lagging(waiting: u64, max: u64) -> Option<String> {
    (waiting > max).then(|| format!("catching up: {waiting} messages waiting on the server (ready_max_pending {max})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_no_checkpoint_covers_for_too_long_make_it_unready_until_one_does() {
        let readiness = Readiness::new("starting", Duration::from_secs(60));
        readiness.set(None);
        assert_eq!(readiness.get(), None, "nothing waits");
        readiness.unsaved();
        readiness.failing("insufficient resources\r\n(disk full)");
        let later = |s| Instant::now() + Duration::from_secs(s);
        assert_eq!(readiness.at(later(59)), None, "within the bound");
        let reason = readiness.at(later(61)).expect("not ready");
        assert!(reason.starts_with("no checkpoint stored for 61 s: insufficient resources  (disk full)"), "{reason}");
        readiness.saved();
        assert_eq!(readiness.at(later(61)), None);
    }

    #[test]
    fn an_instance_far_behind_is_not_ready_and_says_why() {
        assert_eq!(lagging(1_000, 1_000), None);
        let reason = lagging(1_001, 1_000).expect("not ready");
        assert!(reason.contains("1001 messages waiting") && reason.contains("ready_max_pending 1000"), "{reason}");
    }
}
