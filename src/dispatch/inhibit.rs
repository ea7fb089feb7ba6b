//! Hub inhibition: while a place's episode is open (a branch rule that
//! `inhibits`, such as `facility_stall`), a customer whose parcel is there
//! hears one calm `regional_delay` message for the whole episode instead of
//! a stalled, a predicted-late and a late message one after the other.
//!
//! The episode is decided by the branch stage from many parcels, so it comes
//! after the first of their alerts: the alerts an episode may speak for wait
//! `wait` here, and those whose place has an episode open by then are
//! replaced. The replacement's id is made of the episode's and the parcel's,
//! so the ledger sends it once per parcel and episode whichever of its alerts
//! comes first. Pure: the clock is an argument; both drivers (NATS and the
//! backtest) pass what they carry along with each alert.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use xxhash_rust::xxh3::xxh3_128;

use super::notice::Notice;
use crate::rules::{Audience, By, RuleSet};

/// What replaces the inhibited alerts, and names their template.
pub const REGIONAL_DELAY: &str = "regional_delay";

/// A branch rule whose episodes speak for some customer rules.
#[derive(Clone, Debug)]
struct Inhibiting {
    by: By,
    rules: Vec<String>,
}

/// An open episode: the place it is about and the alert that opened it.
#[derive(Clone, Debug)]
struct Episode {
    alert_id: String,
    rule: String,
}

/// The inhibition stage, holding items of type `T` (what the driver must
/// keep with an alert: its message to acknowledge, its sequence).
pub struct Inhibitor<T> {
    inhibiting: BTreeMap<String, Inhibiting>,
    wait: Duration,
    /// Open episodes by place (facility or branch name) and scope.
    open: HashMap<(By, String), Episode>,
    /// Alerts waiting for an episode to open, in arrival order, with when they go on.
    waiting: VecDeque<(DateTime<Utc>, Arc<Notice>, T)>,
    /// How many of `waiting` each alert id has: a resolution looks there
    /// first, and goes through the queue only when its firing waits.
    waiting_ids: HashMap<String, u32>,
    /// Alerts replaced so far.
    pub replaced: u64,
}

impl<T> Inhibitor<T> {
    /// From the rule pack's branch rules that inhibit; nothing waits when there are none.
    pub fn new(set: &RuleSet, wait: Duration) -> Inhibitor<T> {
        let inhibiting = set
            .branch_rules
            .iter()
            .filter(|b| !b.inhibits.is_empty())
            .map(|b| {
                let rules = b.inhibits.iter().map(|&i| set.rules[i].voice.id.clone()).collect();
                (b.voice.id.clone(), Inhibiting { by: b.by, rules })
            })
            .collect();
        Inhibitor {
            inhibiting,
            wait,
            open: HashMap::new(),
            waiting: VecDeque::new(),
            waiting_ids: HashMap::new(),
            replaced: 0,
        }
    }

    /// Open episodes.
    pub fn episodes(&self) -> usize {
        self.open.len()
    }

    /// Alerts waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The items waiting (to keep their messages alive).
    pub fn items_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.waiting.iter_mut().map(|(_, _, t)| t)
    }

    /// The firings waiting here that `resolution` ends before they were
    /// decided: their delay is over, so nothing is to be said of it.
    pub fn withdraw(&mut self, resolution: &Notice) -> Vec<(Arc<Notice>, T)> {
        if !resolution.resolved || self.waiting_ids.remove(&resolution.alert_id).is_none() {
            return Vec::new();
        }
        let (gone, kept) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, n, _)| !n.resolved && n.alert_id == resolution.alert_id);
        self.waiting = kept;
        gone.into_iter().map(|(_, n, item): (_, Arc<Notice>, T)| (n, item)).collect()
    }

    /// Forgets one waiting alert of `alert_id`.
    fn gone(&mut self, alert_id: &str) {
        if let Some(n) = self.waiting_ids.get_mut(alert_id) {
            *n -= 1;
            if *n == 0 {
                self.waiting_ids.remove(alert_id);
            }
        }
    }

    /// Takes an alert at `now`; returns it (replaced or not) when it need
    /// not wait. Episodes open and close as their alerts pass.
    pub fn offer(&mut self, notice: Arc<Notice>, item: T, now: DateTime<Utc>) -> Option<(Arc<Notice>, T)> {
        self.observe(&notice);
        if self.wait > Duration::zero() && self.may_inhibit(&notice) {
            *self.waiting_ids.entry(notice.alert_id.clone()).or_default() += 1;
            self.waiting.push_back((now + self.wait, notice, item));
            return None;
        }
        Some((self.apply(notice), item))
    }

    /// The alerts whose wait is over at `now`, in arrival order.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<(Arc<Notice>, T)> {
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, notice, item)) = self.waiting.pop_front() {
                self.gone(&notice.alert_id);
                out.push((self.apply(notice), item));
            }
        }
        out
    }

    /// Every alert still waiting, decided now (the end of a backtest).
    pub fn drain(&mut self) -> Vec<(Arc<Notice>, T)> {
        self.due(DateTime::<Utc>::MAX_UTC)
    }

    /// The alert subjects of the inhibiting rules: a restart reads them
    /// back to know which episodes are open.
    pub fn subjects(&self) -> Vec<String> {
        self.inhibiting.keys().map(|rule| format!("alerts.*.{rule}")).collect()
    }

    /// Opens or closes the episode of an inhibiting rule's alert.
    pub fn observe(&mut self, n: &Notice) {
        let Some(i) = self.inhibiting.get(&n.rule) else { return };
        let place = match i.by {
            By::Facility => n.facility.clone(),
            By::Branch => n.branch.clone(),
        };
        let Some(place) = place.filter(|_| n.parcel_id.is_none()) else { return };
        let key = (i.by, place);
        if n.resolved {
            if self.open.get(&key).is_some_and(|e| e.alert_id == n.alert_id) {
                self.open.remove(&key);
            }
        } else {
            self.open.insert(key, Episode { alert_id: n.alert_id.clone(), rule: n.rule.clone() });
        }
    }

    /// A customer's firing alert of a rule some episode speaks for.
    fn may_inhibit(&self, n: &Notice) -> bool {
        !n.resolved
            && n.parcel_id.is_some()
            && n.audience.includes(Audience::CUSTOMER)
            && self.inhibiting.values().any(|i| i.rules.contains(&n.rule))
    }

    /// The episode speaking for this alert now, if any.
    fn episode(&self, n: &Notice) -> Option<&Episode> {
        if !self.may_inhibit(n) {
            return None;
        }
        // A parcel that departed a facility is on the road, not at it.
        let at_facility = n.facility.clone().filter(|_| n.parcel_state.as_deref() != Some("departed"));
        [(By::Facility, at_facility), (By::Branch, n.branch.clone())]
            .into_iter()
            .filter_map(|(by, place)| self.open.get(&(by, place?)))
            .find(|e| self.inhibiting.get(&e.rule).is_some_and(|i| i.rules.contains(&n.rule)))
    }

    /// The alert, or the regional delay message that speaks for it.
    fn apply(&mut self, notice: Arc<Notice>) -> Arc<Notice> {
        let Some(e) = self.episode(&notice) else { return notice };
        let parcel = notice.parcel_id.as_deref().unwrap_or_default();
        let id = xxh3_128(format!("{}\u{0}{parcel}", e.alert_id).as_bytes());
        self.replaced += 1;
        crate::metrics::METRICS.inhibited.inc();
        Arc::new(Notice { alert_id: format!("{id:032x}"), rule: REGIONAL_DELAY.into(), ..(*notice).clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::file::load_sources;

    const PACK: &str = r#"
[[rule]]
id = "stalled"
summary = "s"
audience = ["customer"]
severity = "warning"
absence = { after = "12h", while_in = ["arrived"] }

[[rule]]
id = "damaged"
summary = "d"
audience = ["customer"]
severity = "urgent"
on = { kind = ["damaged"] }

[[rule]]
id = "facility_stall"
summary = "f"
audience = ["ops"]
severity = "warning"
branch = { rules = ["stalled"], by = "facility", window = "2h", min_count = 2, inhibits = ["stalled"] }
"#;

    fn inhibitor(wait_minutes: i64) -> Inhibitor<u32> {
        let set = load_sources(&[("t.toml".into(), PACK.into())]).unwrap();
        Inhibitor::new(&set, Duration::minutes(wait_minutes))
    }

    fn at(minute: u32) -> DateTime<Utc> {
        format!("2026-11-24T10:{minute:02}:00Z").parse().unwrap()
    }

    fn alert(rule: &str, state: &str, parcel: Option<&str>, facility: &str, minute: u32) -> Arc<Notice> {
        let mut line = serde_json::json!({
            "alert_id": format!("{:032x}", xxh3_128(format!("{rule}{parcel:?}{state}").as_bytes())),
            "rule": rule, "state": state, "at": at(minute).to_rfc3339(), "severity": "warning",
            "audience": if parcel.is_some() { ["customer"] } else { ["ops"] },
            "facility": facility, "parcel_state": "arrived",
        });
        if let Some(p) = parcel {
            line["parcel_id"] = p.into();
        }
        Arc::new(Notice::decode(line.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn alerts_at_a_stalled_facility_become_one_regional_delay_per_parcel() {
        let mut i = inhibitor(10);
        // The first stall waits; the facility's episode opens meanwhile.
        assert!(i.offer(alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 0), 1, at(0)).is_none());
        let opened = i.offer(alert("facility_stall", "firing", None, "FR-LYS-HUB", 5), 2, at(5)).unwrap();
        assert_eq!(opened.0.rule, "facility_stall");
        assert!(i.due(at(9)).is_empty(), "nothing goes before its wait is over");
        let released = i.due(at(10));
        assert_eq!(released.len(), 1);
        let (regional, item) = &released[0];
        assert_eq!((regional.rule.as_str(), *item), (REGIONAL_DELAY, 1));
        assert_eq!(regional.parcel_id.as_deref(), Some("P1"));
        // The same parcel again in the same episode: the same id, so the ledger sends it once.
        i.offer(alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 20), 3, at(20));
        let again = i.due(at(30));
        assert_eq!(again[0].0.alert_id, regional.alert_id);
        // Another facility and another rule are not spoken for.
        i.offer(alert("stalled", "firing", Some("P2"), "FR-PAR-HUB", 20), 4, at(20));
        assert_eq!(i.due(at(30))[0].0.rule, "stalled");
        let damaged = i.offer(alert("damaged", "firing", Some("P3"), "FR-LYS-HUB", 21), 5, at(21)).unwrap();
        assert_eq!(damaged.0.rule, "damaged", "what no episode speaks for does not wait");
        assert_eq!(i.replaced, 2);
    }

    #[test]
    fn a_closed_episode_inhibits_nothing_and_a_new_one_speaks_again() {
        let mut i = inhibitor(0);
        let firing = alert("facility_stall", "firing", None, "FR-LYS-HUB", 0);
        i.offer(firing.clone(), 0, at(0));
        let first = i.offer(alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 1), 1, at(1)).unwrap();
        assert_eq!(first.0.rule, REGIONAL_DELAY);
        let resolved = Notice { resolved: true, ..(*firing).clone() };
        i.offer(Arc::new(resolved), 2, at(2));
        assert_eq!(i.episodes(), 0);
        let after = i.offer(alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 3), 3, at(3)).unwrap();
        assert_eq!(after.0.rule, "stalled");
        let reopened = Notice { alert_id: "f".repeat(32), ..(*firing).clone() };
        i.offer(Arc::new(reopened), 4, at(4));
        let second = i.offer(alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 5), 5, at(5)).unwrap();
        assert_eq!(second.0.rule, REGIONAL_DELAY);
        assert_ne!(second.0.alert_id, first.0.alert_id, "a new episode may speak again");
    }

    #[test]
    fn a_parcel_that_left_the_facility_is_not_held_there() {
        let mut i = inhibitor(0);
        i.offer(alert("facility_stall", "firing", None, "FR-LYS-HUB", 0), 0, at(0));
        let left = Notice {
            parcel_state: Some("departed".into()),
            ..(*alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 1)).clone()
        };
        assert_eq!(i.offer(Arc::new(left), 1, at(1)).unwrap().0.rule, "stalled");
    }

    #[test]
    fn a_firing_resolved_while_it_waits_is_taken_back_and_only_that_one() {
        let mut i = inhibitor(10);
        let stalled = alert("stalled", "firing", Some("P1"), "FR-LYS-HUB", 0);
        assert!(i.offer(stalled.clone(), 0, at(0)).is_none(), "it waits for an episode");
        assert!(i.offer(alert("stalled", "firing", Some("P2"), "FR-LYS-HUB", 1), 1, at(1)).is_none());
        let moved = Notice { resolved: true, ..(*stalled).clone() };
        let taken: Vec<u32> = i.withdraw(&moved).into_iter().map(|(_, item)| item).collect();
        assert_eq!(taken, [0]);
        assert!(i.withdraw(&moved).is_empty(), "once");
        assert!(i.withdraw(&stalled).is_empty(), "a firing takes nothing back");
        assert_eq!(i.offer(Arc::new(moved), 2, at(2)).map(|(_, item)| item), Some(2), "the resolution goes on");
        let due: Vec<u32> = i.due(at(11)).into_iter().map(|(_, item)| item).collect();
        assert_eq!(due, [1], "the other parcel's alert still waits its turn");
    }
}
