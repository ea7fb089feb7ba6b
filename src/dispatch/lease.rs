//! Which of several dispatchers sends. Dispatchers started with the same
//! `--instance` share one alerts consumer and one lease: a key in a
//! JetStream key-value bucket naming the process that holds it. The holder
//! renews it three times a term by compare-and-set (`update` at the
//! revision it last wrote); a standby that sees the same revision for a
//! whole term takes it over the same way, so of two contenders one wins.
//! The holder stops sending once its last renewal started more than four
//! fifths of a term ago: it gives up before any standby can take over.
//!
//! The lease decides who works, not what is sent once: a holder cut off
//! mid-send may still finish a message; the ledger's claims keep that
//! message from going twice.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::METRICS;

/// The lease of one group of dispatchers.
pub struct Lease {
    store: kv::Store,
    key: String,
    /// This process, unique among every process that ever holds the lease.
    holder: String,
    term: Duration,
}

/// What the lease's value says.
#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    holder: String,
    pid: u32,
}

/// A lease this process holds: renewed in the background until it is lost
/// or released.
pub struct Held {
    /// Turns true once the lease is lost (or released): stop sending.
    pub lost: watch::Receiver<bool>,
    release: oneshot::Sender<()>,
    renewing: JoinHandle<()>,
}

impl Lease {
    /// The lease of the dispatchers named `instance`, lapsing after `term`.
    pub fn new(store: kv::Store, instance: &str, term: Duration) -> Lease {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let nonce = RandomState::new().hash_one(Instant::now());
        let holder = format!("{instance}@{}:{}#{nonce:016x}", host.trim(), std::process::id());
        Lease { store, key: crate::dispatch::ledger::token(instance), holder, term }
    }

    /// Who this process is in the lease's value and the ledger's claims.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Waits until this process holds the lease; `None` when `stop` comes first.
    pub async fn acquire(&self, stop: &watch::Receiver<bool>) -> Option<Held> {
        let mut stop = stop.clone();
        let mut seen = None;
        // Told once an outage, not ten times a term.
        let mut failing = false;
        loop {
            if *stop.borrow_and_update() {
                return None;
            }
            let asked = Instant::now();
            match self.try_take(&mut seen).await {
                Ok(Some(revision)) => return Some(self.hold(revision, asked)),
                Ok(None) => failing = false,
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    tracing::warn!(error = %e, "dispatch lease not readable; retrying until it is");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(self.term / 10) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Takes the lease if it is free, ours already, or lapsed: the same
    /// revision `seen` for a whole term. The revision written, or `None`.
    async fn try_take(&self, seen: &mut Option<(u64, Instant)>) -> Result<Option<u64>, String> {
        let entry = self.store.entry(&self.key).await.map_err(|e| e.to_string())?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return match self.store.create(&self.key, self.value()).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        };
        let before = serde_json::from_slice::<Value>(&entry.value).map(|v| v.holder).unwrap_or_default();
        let ours = before == self.holder;
        let lapsed = match seen {
            Some((revision, since)) if *revision == entry.revision => since.elapsed() >= self.term,
            _ => {
                *seen = Some((entry.revision, Instant::now()));
                false
            }
        };
        if !(ours || lapsed) {
            return Ok(None);
        }
        match self.store.update(&self.key, self.value(), entry.revision).await {
            Ok(revision) => {
                if !ours {
                    METRICS.dispatch_takeovers.inc();
                    tracing::warn!(from = %before, "dispatch lease taken over: its holder stopped renewing it");
                }
                Ok(Some(revision))
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn value(&self) -> Bytes {
        let value = Value { holder: self.holder.clone(), pid: std::process::id() };
        serde_json::to_vec(&value).unwrap_or_default().into()
    }

    /// Renews the lease written at `revision` (asked for at `asked`) until
    /// it is lost or released.
    fn hold(&self, revision: u64, asked: Instant) -> Held {
        METRICS.dispatch_active.set(1);
        tracing::info!(holder = %self.holder, "dispatch lease held: this instance sends");
        let (lost_tx, lost) = watch::channel(false);
        let (release, mut released) = oneshot::channel();
        let (store, key, value) = (self.store.clone(), self.key.clone(), self.value());
        let (every, give_up) = (self.term / 3, self.term * 4 / 5);
        let renewing = tokio::spawn(async move {
            let (mut revision, mut renewed) = (revision, asked);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = &mut released => {
                        if let Err(e) = store.delete_expect_revision(&key, Some(revision)).await {
                            tracing::warn!(error = %e, "dispatch lease not released; a standby takes it when it lapses");
                        }
                        break;
                    }
                }
                let asked = Instant::now();
                let left = give_up.saturating_sub(renewed.elapsed());
                match tokio::time::timeout(left, store.update(&key, value.clone(), revision)).await {
                    Ok(Ok(written)) => (revision, renewed) = (written, asked),
                    Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        tracing::warn!("dispatch lease taken by another instance; standing by");
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "dispatch lease not renewed; retrying"),
                    Err(_) => {}
                }
                if renewed.elapsed() >= give_up {
                    tracing::warn!("dispatch lease not renewed in time; standing by");
                    break;
                }
            }
            METRICS.dispatch_active.set(0);
            let _ = lost_tx.send(true);
        });
        Held { lost, release, renewing }
    }
}

impl Held {
    /// Hands the lease back at once (a clean stop), so that a standby
    /// need not wait for it to lapse.
    pub async fn release(self) {
        let _ = self.release.send(());
        let _ = self.renewing.await;
    }
}

/// True once either `a` or `b` is.
pub fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*a.borrow() || *b.borrow());
    tokio::spawn(async move {
        loop {
            if *a.borrow_and_update() || *b.borrow_and_update() {
                let _ = tx.send(true);
                return;
            }
            let ended = tokio::select! {
                r = a.changed() => r.is_err(),
                r = b.changed() => r.is_err(),
                _ = tx.closed() => return,
            };
            if ended {
                let _ = tx.send(true);
                return;
            }
        }
    });
    rx
}
