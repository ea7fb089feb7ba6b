//! The Prometheus metrics, by one naming spec: `forewarn_<what>_<unit>`,
//! counters ending in `_total`, units in the name (`_seconds`, `_bytes`),
//! and small closed label sets only — rule ids, event kinds, reason codes,
//! channels, outcomes, partitions; never a parcel id, a phone or an email.
//! One registry for the process, served as text on `/metrics`.

use std::sync::{LazyLock, OnceLock};

use crate::event::Kind;
use crate::holdout::Draw;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 10 ms to 6 h: a message may wait out quiet hours.
const LATENCY: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0];

/// Lead-time buckets from 15 min to 4 days.
const LEAD: &[f64] = &[900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0, 172800.0, 345600.0];

/// Every metric forewarn exports.
pub struct Metrics {
    pub registry: Registry,
    /// Every metric family's name, whether or not it has samples yet.
    pub names: Vec<String>,
    // Input.
    pub events: IntCounterVec,
    /// `events` for each kind, looked up once (it is counted per event).
    events_by_kind: Vec<OnceLock<IntCounter>>,
    pub rejected: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub redeliveries: IntCounter,
    pub input_gaps: IntCounterVec,
    pub publishes_refused: IntCounter,
    pub facts_late: IntCounter,
    pub consumer_pending: IntGaugeVec,
    pub watermark_delay: IntGaugeVec,
    // The window.
    pub parcels: IntGauge,
    pub resident_bytes: IntGauge,
    pub timers: IntGauge,
    /// The lane model behind `predicted_late`: lanes of every level and the
    /// fine ones, legs learnt, and of those the legs learnt by their class
    /// alone because a partition's fine lanes were all taken.
    pub lanes: IntGaugeVec,
    pub lane_legs: IntGauge,
    pub lane_overflow: IntGauge,
    // Checkpoints.
    pub checkpoint_seconds: Histogram,
    pub checkpoint_pause: Histogram,
    pub checkpoint_bytes: IntGauge,
    pub checkpoint_failures: IntCounter,
    pub checkpoint_last: IntGauge,
    pub checkpoint_waiting: IntGauge,
    pub checkpoint_position: IntGaugeVec,
    pub checkpoint_objects: IntCounterVec,
    pub stalls: IntCounterVec,
    pub publish_retries: IntCounter,
    pub outbox_alerts: IntGauge,
    // Rules and alerts.
    pub alerts: IntCounterVec,
    pub reloads: IntCounterVec,
    // Notifications.
    pub notifications: IntCounterVec,
    pub send_seconds: HistogramVec,
    pub event_to_accepted: HistogramVec,
    pub first_messages: IntCounterVec,
    pub service_level: prometheus::Gauge,
    pub held: IntGauge,
    pub dispatch_active: IntGauge,
    pub dispatch_takeovers: IntCounter,
    pub claimed_elsewhere: IntCounter,
    pub at_risk_ended: IntCounter,
    pub inhibition: IntGaugeVec,
    pub inhibited: IntCounter,
    // Proactivity.
    pub contacts_judged: IntCounterVec,
    pub contact_lead: Histogram,
    pub parcels_told: IntCounterVec,
    pub contacts_after_telling: IntCounterVec,
}

/// The hold-out measure's groups: the parcels messaged, and those held out.
pub const GROUPS: [&str; 2] = ["messaged", "held_out"];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("a valid metric definition")
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::new(),
            names: Vec::new(),
            events_by_kind: Vec::new(),
            events: counter("forewarn_events_total", "Events applied to the window, by kind.", &["kind"]),
            rejected: counter(
                "forewarn_events_rejected_total",
                "Messages refused (and dead-lettered), by reason code.",
                &["reason"],
            ),
            dead_letters: counter(
                "forewarn_dead_letters_total",
                "Messages sent to the dead letters, by input stream.",
                &["stream"],
            ),
            input_gaps: counter(
                "forewarn_input_gaps_total",
                "Times a consumer, opened after the stored checkpoints' positions, found the messages right after \
                 them gone from its stream (its max_age or size limits): lost events. 0 unless a stream keeps \
                 less than the longest outage.",
                &["stream"],
            ),
            redeliveries: IntCounter::new(
                "forewarn_redeliveries_skipped_total",
                "Redelivered messages already applied (skipped).",
            )
            .expect("a valid metric definition"),
            facts_late: IntCounter::new(
                "forewarn_branch_facts_late_total",
                "Branch facts that reached their stage after it had counted past their instant (counted just after \
                 it; 0 unless a partition's facts and watermark announcements were reordered).",
            )
            .expect("a valid metric definition"),
            publishes_refused: IntCounter::new(
                "forewarn_publishes_refused_total",
                "Messages the server refused for good (larger than it takes): each became a dead letter.",
            )
            .expect("a valid metric definition"),
            consumer_pending: gauge(
                "forewarn_consumer_pending_messages",
                "Messages on the server not yet delivered to this instance, by input stream.",
                &["stream"],
            ),
            watermark_delay: gauge(
                "forewarn_watermark_delay_seconds",
                "How far each owned partition's watermark is behind the wall clock.",
                &["partition"],
            ),
            parcels: IntGauge::new("forewarn_parcels_in_flight", "Parcels in the window.").expect("valid"),
            resident_bytes: IntGauge::new(
                "forewarn_resident_memory_bytes",
                "Resident memory of the process (the window is most of it).",
            )
            .expect("valid"),
            timers: IntGauge::new("forewarn_timers_pending", "Deadlines waiting in the window's timer wheels.")
                .expect("valid"),
            lanes: gauge(
                "forewarn_lanes",
                "Lanes the predictions learn from, over the owned partitions: of every level (all) and the fine \
                 ones, a place each (fine; bounded by engine.max_lanes per partition).",
                &["level"],
            ),
            lane_legs: IntGauge::new(
                "forewarn_lane_legs_learnt",
                "Legs the lanes learnt from, since the engines' state began (checkpoints keep it).",
            )
            .expect("valid"),
            lane_overflow: IntGauge::new(
                "forewarn_lane_overflow_legs",
                "Legs learnt by their class alone, their partition's fine lanes being all taken (engine.max_lanes).",
            )
            .expect("valid"),
            checkpoint_seconds: Histogram::with_opts(
                HistogramOpts::new("forewarn_checkpoint_duration_seconds", "Time to store a checkpoint.")
                    .buckets(LATENCY.to_vec()),
            )
            .expect("valid"),
            checkpoint_pause: Histogram::with_opts(
                HistogramOpts::new(
                    "forewarn_checkpoint_pause_seconds",
                    "Time the stream stops for a checkpoint: publishes settled and state snapshotted (compression \
                     and storage run beside the stream).",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )
            .expect("a valid metric definition"),
            checkpoint_bytes: IntGauge::new("forewarn_checkpoint_size_bytes", "Bytes written by the last checkpoint.")
                .expect("valid"),
            checkpoint_failures: IntCounter::new(
                "forewarn_checkpoint_failures_total",
                "Checkpoints not stored (retried at the next).",
            )
            .expect("valid"),
            checkpoint_last: IntGauge::new(
                "forewarn_checkpoint_last_success_timestamp_seconds",
                "When the last checkpoint was stored (Unix time).",
            )
            .expect("valid"),
            checkpoint_position: gauge(
                "forewarn_checkpoint_position",
                "The last message of each input stream the stored checkpoint covers (a stream sequence): a \
                 restart resumes after it; the stream must keep what comes after.",
                &["stream"],
            ),
            checkpoint_objects: counter(
                "forewarn_checkpoint_objects_total",
                "Checkpoint objects stored, by kind: an engine whole (engine), a link of an engine's chain of \
                 changes (changes: its parcels written since its last object, while they are at most half its \
                 slots; or its last link again, merged with what was written since), a branch stage (stage).",
                &["kind"],
            ),
            checkpoint_waiting: IntGauge::new(
                "forewarn_checkpoint_waiting_seconds",
                "How long changes have waited for a stored checkpoint (0: none wait).",
            )
            .expect("valid"),
            stalls: counter(
                "forewarn_stalls_total",
                "Times the processor became unready for a fault that lasted past checkpoint.stale_after: \
                 changes no stored checkpoint covers (checkpoint), or the NATS connection down (connection).",
                &["what"],
            ),
            publish_retries: IntCounter::new(
                "forewarn_publish_retries_total",
                "Publishes into JetStream sent again (not stored yet: an outage, a full disk, a timeout).",
            )
            .expect("valid"),
            outbox_alerts: IntGauge::new(
                "forewarn_outbox_alerts",
                "Alerts handed to the outbox and not sent yet; the processor waits past 65,536.",
            )
            .expect("valid"),
            alerts: counter(
                "forewarn_alerts_total",
                "Alerts published, by rule, state (firing, resolved) and audience.",
                &["rule", "state", "audience"],
            ),
            reloads: counter("forewarn_rules_reloads_total", "Rule pack reloads, by result (ok, failed).", &["result"]),
            notifications: counter(
                "forewarn_notifications_total",
                "Messages by channel, final outcome (sent, failed, skipped, unknown: a dispatcher stopped \
                 between the request and its answer) and reason (fallback: sent instead of the customer's \
                 first channel).",
                &["channel", "outcome", "reason"],
            ),
            send_seconds: histogram(
                "forewarn_send_duration_seconds",
                "From the first attempt to the final outcome of a message (retries included), by channel.",
                &["channel"],
                LATENCY,
            ),
            event_to_accepted: histogram(
                "forewarn_event_to_accepted_seconds",
                "End to end: from the arrival of the event that made the alert (or of the clock tick that \
                 moved the watermark for a deadline) to its message accepted by the gateway or server, \
                 quiet hours and grouping included, by channel.",
                &["channel"],
                LATENCY,
            ),
            first_messages: counter(
                "forewarn_first_messages_total",
                "Alerts whose first message was accepted, by whether it was within the service-level \
                 threshold of the alert becoming sendable (within: true, false).",
                &["within"],
            ),
            service_level: prometheus::Gauge::new(
                "forewarn_service_level_ratio",
                "Share of alerts whose first message was accepted within the threshold, over the last interval.",
            )
            .expect("valid"),
            held: IntGauge::new("forewarn_notifications_held", "Messages waiting for quiet hours or grouping.")
                .expect("valid"),
            dispatch_active: IntGauge::new(
                "forewarn_dispatch_active",
                "1 while this dispatcher holds its group's lease and sends; 0 while it stands by.",
            )
            .expect("valid"),
            dispatch_takeovers: IntCounter::new(
                "forewarn_dispatch_takeovers_total",
                "Times this dispatcher took its group's lease over from a holder that stopped renewing it.",
            )
            .expect("valid"),
            claimed_elsewhere: IntCounter::new(
                "forewarn_messages_claimed_elsewhere_total",
                "Messages not sent here because another dispatcher, or an earlier run, had claimed them first.",
            )
            .expect("valid"),
            at_risk_ended: IntCounter::new(
                "forewarn_at_risk_rows_ended_total",
                "At-risk rows a daily digest left out and removed: their parcel was delivered, collected or \
                 returned, or left the window, since the alert.",
            )
            .expect("valid"),
            inhibition: gauge(
                "forewarn_inhibition",
                "Hub inhibition: open episodes that speak for their parcels' customer alerts (episodes), \
                 and customer alerts waiting for one to open (waiting).",
                &["what"],
            ),
            inhibited: IntCounter::new(
                "forewarn_inhibited_alerts_total",
                "Customer alerts an open episode spoke for: one regional-delay message per parcel went instead.",
            )
            .expect("valid"),
            parcels_told: counter(
                "forewarn_parcels_told_total",
                "Parcels a customer-facing alert spoke about for the first time, by hold-out group \
                 (held_out: the dispatcher kept their customer messages back, dispatch.holdout).",
                &["group"],
            ),
            contacts_after_telling: counter(
                "forewarn_contacts_after_telling_total",
                "Customer contacts after the first customer-facing alert about their parcel, by hold-out \
                 group: per parcel told, the two groups' rates differ by what the messages changed.",
                &["group"],
            ),
            contacts_judged: counter(
                "forewarn_contacts_judged_total",
                "Customer contacts on parcels a customer-facing alert spoke about, before or after the \
                 contact, by topic and by whether forewarn spoke first (spoke_first: true, false).",
                &["topic", "spoke_first"],
            ),
            contact_lead: Histogram::with_opts(
                HistogramOpts::new(
                    "forewarn_contact_lead_seconds",
                    "For contacts forewarn spoke before: how long before (event time).",
                )
                .buckets(LEAD.to_vec()),
            )
            .expect("valid"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.events.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.redeliveries.clone()),
            Box::new(m.input_gaps.clone()),
            Box::new(m.publishes_refused.clone()),
            Box::new(m.facts_late.clone()),
            Box::new(m.consumer_pending.clone()),
            Box::new(m.watermark_delay.clone()),
            Box::new(m.parcels.clone()),
            Box::new(m.resident_bytes.clone()),
            Box::new(m.timers.clone()),
            Box::new(m.lanes.clone()),
            Box::new(m.lane_legs.clone()),
            Box::new(m.lane_overflow.clone()),
            Box::new(m.checkpoint_seconds.clone()),
            Box::new(m.checkpoint_pause.clone()),
            Box::new(m.checkpoint_bytes.clone()),
            Box::new(m.checkpoint_failures.clone()),
            Box::new(m.checkpoint_last.clone()),
            Box::new(m.checkpoint_waiting.clone()),
            Box::new(m.checkpoint_position.clone()),
            Box::new(m.checkpoint_objects.clone()),
            Box::new(m.stalls.clone()),
            Box::new(m.publish_retries.clone()),
            Box::new(m.outbox_alerts.clone()),
            Box::new(m.alerts.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.notifications.clone()),
            Box::new(m.send_seconds.clone()),
            Box::new(m.event_to_accepted.clone()),
            Box::new(m.first_messages.clone()),
            Box::new(m.service_level.clone()),
            Box::new(m.held.clone()),
            Box::new(m.dispatch_active.clone()),
            Box::new(m.dispatch_takeovers.clone()),
            Box::new(m.claimed_elsewhere.clone()),
            Box::new(m.at_risk_ended.clone()),
            Box::new(m.inhibition.clone()),
            Box::new(m.inhibited.clone()),
            Box::new(m.contacts_judged.clone()),
            Box::new(m.contact_lead.clone()),
            Box::new(m.parcels_told.clone()),
            Box::new(m.contacts_after_telling.clone()),
        ];
        m.events_by_kind = Kind::ALL.iter().map(|_| OnceLock::new()).collect();
        for c in collectors {
            m.names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(c).expect("each metric registered once");
        }
        m
    }

    /// The counter of events of `kind`.
    pub fn event(&self, kind: Kind) -> &IntCounter {
        self.events_by_kind[kind as usize].get_or_init(|| self.events.with_label_values(&[kind.as_str()]))
    }

    /// Counts contacts judged by the engine (did forewarn speak first?) and
    /// the parcels told for the first time, in their hold-out group of
    /// `holdout` of all parcels.
    pub fn judged(&self, judged: &[crate::engine::Judged], told: &[Draw], holdout: f64) {
        let group = |d: Draw| GROUPS[usize::from(d.held_out(holdout))];
        for j in judged {
            let first = if j.told_first { "true" } else { "false" };
            self.contacts_judged.with_label_values(&[j.topic.as_str(), first]).inc();
            if j.told_first {
                self.contact_lead.observe(j.gap.0 as f64 / 1000.0);
                self.contacts_after_telling.with_label_values(&[group(j.draw)]).inc();
            }
        }
        for &d in told {
            self.parcels_told.with_label_values(&[group(d)]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_follows_the_spec() {
        METRICS.events.with_label_values(&["delivered"]).inc();
        METRICS.notifications.with_label_values(&["sms", "sent", ""]).inc();
        METRICS.first_messages.with_label_values(&["true"]).inc();
        let text = METRICS.render();
        let mut names = 0;
        for family in METRICS.registry.gather() {
            let name = family.name();
            names += 1;
            assert!(name.starts_with("forewarn_"), "{name}");
            let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(counter, name.ends_with("_total"), "{name}: counters, and only they, end in _total");
            for m in family.get_metric() {
                for label in m.get_label() {
                    assert!(!["parcel", "parcel_id", "phone", "email", "to"].contains(&label.name()), "{name}");
                }
            }
        }
        assert!(names >= 3);
        assert!(text.contains("forewarn_events_total{kind=\"delivered\"} 1"), "{text}");
    }
}
