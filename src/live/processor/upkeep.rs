//! What the processing loop does on its timer rather than per message: idle
//! partitions' watermarks follow the clock, the window's and consumers'
//! gauges (and readiness by backlog) are refreshed, the rules are reloaded.

use std::time::{Duration, SystemTime};

use super::Processor;
use crate::clock::Clock;
use crate::config::std_duration;
use crate::dispatch::template::Templates;
use crate::live::input::Which;
use crate::live::lagging;
use crate::metrics::METRICS;
use crate::nats::LiveError;
use crate::time::Ts;

/// How often the gauges are refreshed.
pub(super) const GAUGES_EVERY: Duration = Duration::from_secs(5);

impl Processor {
    /// Idle partitions' watermarks follow the clock, so absence rules fire on
    /// a quiet night. Idle means caught up: no input for `idle_after` and
    /// nothing left on the server, so a restart's backlog is never skipped.
    pub(super) async fn follow_clock(&mut self) -> Result<(), LiveError> {
        let idle = std_duration(self.config.watermark.idle_after);
        for input in self.inputs.iter_mut().filter(|i| i.which != Which::Facts) {
            if !input.caught_up && input.last_message.elapsed() >= idle {
                if let Some(consumer) = input.consumer.as_mut() {
                    let info = tokio::time::timeout(Duration::from_secs(2), consumer.info()).await;
                    // Nothing left on the server, and nothing delivered that we have not handled.
                    input.caught_up = matches!(info, Ok(Ok(info))
                        if info.num_pending == 0 && info.delivered.stream_sequence <= input.last_seq);
                }
            }
        }
        if !self.inputs.iter().filter(|i| i.which != Which::Facts).all(|i| i.caught_up) {
            return Ok(());
        }
        let Some(now) = self.clock.now() else { return Ok(()) };
        let target = now.minus(self.config.watermark.max_skew);
        let quiet: Vec<u16> = self
            .parts
            .iter()
            .filter(|(_, part)| part.last_input.elapsed() >= idle && part.engine.watermark() < target)
            .map(|(&p, _)| p)
            .collect();
        for p in quiet {
            if let Some(part) = self.parts.get_mut(&p) {
                tracing::debug!(from = ?part.engine.watermark(), to = ?target, "idle: the watermark follows the clock");
                part.dirty = true;
            }
            let moved = SystemTime::now();
            if !self.step(p, Some(target), moved) {
                self.finish_step(p, Some(target), moved).await?;
            }
        }
        self.publish().await
    }

    /// The window's and the consumers' gauges (a server round trip per input).
    pub(super) async fn gauges(&mut self) {
        let m = &*METRICS;
        m.parcels.set(self.parts.values().map(|p| p.engine.parcels() as i64).sum());
        m.timers.set(self.parts.values().map(|p| p.engine.timers() as i64).sum());
        let (mut lanes, mut fine, mut legs, mut overflow) = (0, 0, 0, 0);
        for part in self.parts.values() {
            let (stats, (count, f)) = part.engine.lane_stats();
            (lanes, fine, legs, overflow) =
                (lanes + count as i64, fine + f as i64, legs + stats.legs as i64, overflow + stats.overflow as i64);
        }
        m.lanes.with_label_values(&["all"]).set(lanes);
        m.lanes.with_label_values(&["fine"]).set(fine);
        m.lane_legs.set(legs);
        m.lane_overflow.set(overflow);
        if let Some(rss) = crate::replay::resident_bytes() {
            m.resident_bytes.set(rss as i64);
        }
        let now = Clock::Wall.now().unwrap_or(Ts::MIN);
        for (p, part) in &self.parts {
            let watermark = part.engine.watermark();
            if watermark > Ts::MIN {
                let behind = (now.0 - watermark.0).max(0) / 1000;
                m.watermark_delay.with_label_values(&[&p.to_string()]).set(behind);
            }
        }
        let mut waiting = 0;
        for input in self.inputs.iter_mut() {
            let Some(consumer) = input.consumer.as_mut() else { continue };
            if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), consumer.info()).await {
                m.consumer_pending.with_label_values(&[&input.stream]).set(info.num_pending as i64);
                waiting += info.num_pending;
            }
        }
        self.readiness.set(lagging(waiting, self.config.ready_max_pending).as_deref());
    }

    pub(super) fn reload(&mut self) {
        let dispatch = &self.config.dispatch;
        let checked = self.rules.load().and_then(|set| {
            // The dispatcher of this process reads its templates at its start; a
            // pack whose templates are broken is refused whole, as `check` would.
            if !self.config.role.dispatches() {
                return Ok(set);
            }
            let dir = dispatch.templates_dir(self.rules.path());
            Templates::check_pack(&dir, &dispatch.default_locale, &set).map(|_| set).map_err(|p| p.join("\n"))
        });
        match checked {
            Ok(set) => {
                for part in self.parts.values_mut() {
                    part.engine.replace_rules(set.clone());
                    part.dirty = true;
                }
                for stage in self.stages.values_mut() {
                    stage.stage.replace_rules(&set);
                    stage.dirty = true;
                }
                self.summary.reloads += 1;
                METRICS.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(rules = set.len(), dir = %self.rules.path().display(), "rules reloaded");
            }
            Err(errors) => {
                self.summary.reload_failures += 1;
                METRICS.reloads.with_label_values(&["failed"]).inc();
                tracing::error!(dir = %self.rules.path().display(), %errors, "rules not reloaded; the previous pack keeps running");
            }
        }
    }
}
