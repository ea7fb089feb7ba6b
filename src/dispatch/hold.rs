//! The waiting stages: quiet hours (a message due in the recipient's local
//! night waits for the morning), grouping (alerts of one parcel to one
//! recipient within a few minutes become one message) and rate limits
//! (messages per parcel and per recipient in 24 h). Pure: the clock is an
//! argument, so tests move time. One ordered timer set, no task per message.

use std::collections::{BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::route::Draft;

/// Local quiet hours, `start` to `end`, across midnight when `start > end`.
#[derive(Clone, Copy, Debug)]
pub struct Quiet {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Quiet {
    pub fn parse(start: &str, end: &str) -> Result<Quiet, String> {
        let time = |field: &str, t: &str| {
            NaiveTime::parse_from_str(t, "%H:%M")
                .map_err(|_| format!("dispatch.quiet_hours.{field}: {t:?} is not a local time HH:MM"))
        };
        Ok(Quiet { start: time("start", start)?, end: time("end", end)? })
    }

    fn quiet_at(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a message due `now` may go in `tz`: `now`, or the end of the quiet hours.
    pub fn release(&self, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let local = now.with_timezone(&tz);
        if !self.quiet_at(local.time()) {
            return now;
        }
        let mut day = local.date_naive();
        if local.time() >= self.end {
            day = day.succ_opt().unwrap_or(day);
        }
        let end = day.and_time(self.end);
        // A daylight-saving gap at the end time: the first instant after it.
        match tz.from_local_datetime(&end).earliest() {
            Some(t) => t.with_timezone(&Utc),
            None => {
                tz.from_local_datetime(&(end + Duration::hours(1))).earliest().map_or(now, |t| t.with_timezone(&Utc))
            }
        }
    }
}

/// One message to send: the primary draft, and the drafts it stands for.
#[derive(Clone, Debug)]
pub struct Batch {
    pub primary: Draft,
    pub absorbed: Vec<Draft>,
    pub due: DateTime<Utc>,
}

impl Batch {
    pub fn drafts(&self) -> impl Iterator<Item = &Draft> {
        std::iter::once(&self.primary).chain(&self.absorbed)
    }
}

/// Messages waiting for their time.
pub struct Hold {
    quiet: Quiet,
    window: Duration,
    timers: BTreeSet<(DateTime<Utc>, u64)>,
    batches: HashMap<u64, Batch>,
    groups: HashMap<String, u64>,
    /// The batches holding drafts of each alert's firing, by alert id: its
    /// resolution withdraws them.
    firings: HashMap<String, Vec<u64>>,
    next: u64,
}

/// Whether `d` is a draft of alert `alert_id`'s firing.
fn firing_of(d: &Draft, alert_id: &str) -> bool {
    !d.notice.resolved && d.notice.alert_id == alert_id
}

impl Hold {
    pub fn new(quiet: Quiet, window: Duration) -> Hold {
        Hold {
            quiet,
            window,
            timers: BTreeSet::new(),
            batches: HashMap::new(),
            groups: HashMap::new(),
            firings: HashMap::new(),
            next: 0,
        }
    }

    /// Notes that batch `id` holds `draft`, if it is a firing's.
    fn index(&mut self, draft: &Draft, id: u64) {
        if !draft.notice.resolved {
            self.firings.entry(draft.notice.alert_id.clone()).or_default().push(id);
        }
    }

    /// Takes out the held drafts of alert `alert_id`'s firing, whose
    /// resolution came before they could go: a customer is not told of a
    /// delay that is over. A group they spoke for goes on, its most severe
    /// draft left speaking (the latest on a tie).
    pub fn withdraw(&mut self, alert_id: &str) -> Vec<Draft> {
        let mut out = Vec::new();
        for id in self.firings.remove(alert_id).unwrap_or_default() {
            let Some(batch) = self.batches.get_mut(&id) else { continue };
            let (gone, kept) = std::mem::take(&mut batch.absorbed).into_iter().partition(|d| firing_of(d, alert_id));
            batch.absorbed = kept;
            out.extend::<Vec<Draft>>(gone);
            if !firing_of(&batch.primary, alert_id) {
                continue;
            }
            let speaker =
                batch.absorbed.iter().enumerate().max_by_key(|(i, d)| (d.notice.severity, *i)).map(|(i, _)| i);
            match speaker {
                Some(i) => {
                    let next = batch.absorbed.remove(i);
                    out.push(std::mem::replace(&mut batch.primary, next));
                }
                None => {
                    if let Some(batch) = self.batches.remove(&id) {
                        self.timers.remove(&(batch.due, id));
                        if let Some(group) = &batch.primary.group {
                            self.groups.remove(group);
                        }
                        out.push(batch.primary);
                    }
                }
            }
        }
        out
    }

    /// Takes a draft: returns it as a batch when it may go now, or holds it.
    pub fn offer(&mut self, draft: Draft, now: DateTime<Utc>) -> Option<Batch> {
        let mut due = if draft.quiet { self.quiet.release(now, draft.tz) } else { now };
        if let Some(group) = draft.group.clone().filter(|_| self.window > Duration::zero()) {
            if let Some(&id) = self.groups.get(&group) {
                if let Some(batch) = self.batches.get_mut(&id) {
                    let firing = (!draft.notice.resolved).then(|| draft.notice.alert_id.clone());
                    let absorbed = if draft.notice.severity >= batch.primary.notice.severity {
                        // The most severe alert speaks for the group; on a tie, the latest.
                        std::mem::replace(&mut batch.primary, draft)
                    } else {
                        draft
                    };
                    batch.absorbed.push(absorbed);
                    if let Some(alert) = firing {
                        self.firings.entry(alert).or_default().push(id);
                    }
                    return None;
                }
            }
            due = due.max(now + self.window);
            let id = self.hold(Batch { primary: draft, absorbed: Vec::new(), due });
            self.groups.insert(group, id);
            return None;
        }
        if due <= now {
            return Some(Batch { primary: draft, absorbed: Vec::new(), due });
        }
        self.hold(Batch { primary: draft, absorbed: Vec::new(), due });
        None
    }

    fn hold(&mut self, batch: Batch) -> u64 {
        let id = self.next;
        self.next += 1;
        self.timers.insert((batch.due, id));
        self.index(&batch.primary, id);
        self.batches.insert(id, batch);
        id
    }

    /// The batches whose time has come, oldest first.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Batch> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(batch) = self.batches.remove(&id) {
                if let Some(group) = &batch.primary.group {
                    self.groups.remove(group);
                }
                for d in batch.drafts() {
                    if let Some(ids) = self.firings.get_mut(&d.notice.alert_id) {
                        ids.retain(|&i| i != id);
                        if ids.is_empty() {
                            self.firings.remove(&d.notice.alert_id);
                        }
                    }
                }
                out.push(batch);
            }
        }
        out
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Every held draft (to keep their alerts alive on the stream).
    pub fn drafts(&self) -> impl Iterator<Item = &Draft> {
        self.batches.values().flat_map(Batch::drafts)
    }
}

/// At most `max` messages per key in any 24 h.
pub struct Limiter {
    max: u32,
    sent: moka::sync::Cache<String, std::sync::Arc<std::sync::Mutex<VecDeque<DateTime<Utc>>>>>,
}

impl Limiter {
    /// `capacity` bounds the keys remembered; a key unused for 24 h is forgotten.
    pub fn new(max: u32, capacity: u64) -> Limiter {
        let sent = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(std::time::Duration::from_secs(24 * 3600))
            .build();
        Limiter { max, sent }
    }

    /// Counts a message for every key and says yes, or says no and counts nothing.
    pub fn allow(&self, keys: &[String], now: DateTime<Utc>) -> bool {
        let day = Duration::hours(24);
        let entries: Vec<_> = keys.iter().map(|k| self.sent.get_with(k.clone(), Default::default)).collect();
        let mut locked: Vec<_> = entries.iter().map(|e| e.lock().unwrap_or_else(|p| p.into_inner())).collect();
        for q in locked.iter_mut() {
            while q.front().is_some_and(|t| *t + day <= now) {
                q.pop_front();
            }
        }
        if locked.iter().any(|q| q.len() as u32 >= self.max) {
            return false;
        }
        for q in locked.iter_mut() {
            q.push_back(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::dispatch::notice::Notice;
    use crate::dispatch::route::Target;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One alert per rule.
    fn alert(rule: &str) -> String {
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(rule.as_bytes()))
    }

    fn draft(rule: &str, severity: &str, group: bool) -> Draft {
        let line = format!(
            r#"{{"alert_id":"{}","rule":"{rule}","state":"firing","at":"2026-11-20T01:00:00Z","severity":"{severity}","audience":["customer"],"parcel_id":"P1"}}"#,
            alert(rule)
        );
        Draft {
            key: format!("{rule}.firing.customer.sms"),
            notice: Arc::new(Notice::decode(line.as_bytes()).unwrap()),
            target: Target::CustomerSms { phone: "+33612345678".into() },
            told: None,
            quiet: true,
            group: group.then(|| "P1".to_string()),
            tz: "Europe/Paris".parse().unwrap(),
            locale: None,
            seq: 0,
            fallback: None,
            instead_of: None,
        }
    }

    #[test]
    fn a_message_due_at_night_goes_at_eight_local() {
        let quiet = Quiet::parse("21:00", "08:00").unwrap();
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 02:00 in Paris (UTC+1 in November) → 08:00 Paris = 07:00 UTC.
        assert_eq!(quiet.release(at("2026-11-20T01:00:00Z"), paris), at("2026-11-20T07:00:00Z"));
        // 22:30 in Paris → the next morning.
        assert_eq!(quiet.release(at("2026-11-20T21:30:00Z"), paris), at("2026-11-21T07:00:00Z"));
        // 10:00 → now.
        assert_eq!(quiet.release(at("2026-11-20T09:00:00Z"), paris), at("2026-11-20T09:00:00Z"));
        // Shanghai (UTC+8): 02:00 local is 18:00 UTC the day before.
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(quiet.release(at("2026-11-19T18:00:00Z"), shanghai), at("2026-11-20T00:00:00Z"));
    }

    #[test]
    fn held_messages_are_released_on_time_and_not_before() {
        let mut hold = Hold::new(Quiet::parse("21:00", "08:00").unwrap(), Duration::zero());
        assert!(hold.offer(draft("late", "warning", false), at("2026-11-20T01:00:00Z")).is_none());
        assert!(hold.due(at("2026-11-20T06:59:59Z")).is_empty());
        assert_eq!(hold.due(at("2026-11-20T07:00:00Z")).len(), 1);
        assert!(hold.is_empty());
    }

    #[test]
    fn alerts_within_the_window_become_one_message_led_by_the_most_severe() {
        let mut hold = Hold::new(Quiet::parse("23:00", "06:00").unwrap(), Duration::minutes(2));
        let noon = at("2026-11-20T11:00:00Z");
        assert!(hold.offer(draft("delivery_failed", "info", true), noon).is_none());
        assert!(hold.offer(draft("late", "warning", true), noon + Duration::seconds(30)).is_none());
        assert!(hold.offer(draft("pickup_reminder", "info", true), noon + Duration::seconds(60)).is_none());
        assert!(hold.due(noon + Duration::seconds(119)).is_empty());
        let batches = hold.due(noon + Duration::minutes(2));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].primary.notice.rule, "late");
        assert_eq!(batches[0].absorbed.len(), 2);
    }

    #[test]
    fn a_resolution_takes_back_its_firing_s_held_messages_and_the_group_goes_on() {
        let mut hold = Hold::new(Quiet::parse("21:00", "08:00").unwrap(), Duration::minutes(2));
        let night = at("2026-11-20T01:00:00Z");
        // Held for the morning: its resolution comes at 05:00, before 08:00 in Paris.
        assert!(hold.offer(draft("stalled", "warning", false), night).is_none());
        // A group led by `late`, with a failed attempt in it.
        assert!(hold.offer(draft("delivery_failed", "info", true), night).is_none());
        assert!(hold.offer(draft("late", "warning", true), night).is_none());
        let rules = |drafts: Vec<Draft>| drafts.iter().map(|d| d.notice.rule.clone()).collect::<Vec<_>>();
        assert_eq!(rules(hold.withdraw(&alert("stalled"))), ["stalled"]);
        assert_eq!(rules(hold.withdraw(&alert("late"))), ["late"]);
        assert!(hold.withdraw(&alert("late")).is_empty(), "once");
        let batches = hold.due(at("2026-11-20T07:00:00Z"));
        assert_eq!(batches.len(), 1, "the stalled message is gone");
        assert_eq!((batches[0].primary.notice.rule.as_str(), batches[0].absorbed.len()), ("delivery_failed", 0));
        // Released: nothing of it left to withdraw.
        assert!(hold.withdraw(&alert("delivery_failed")).is_empty() && hold.is_empty());
        // A lone grouped draft withdrawn: its group is free for the next alert.
        assert!(hold.offer(draft("late", "warning", true), night).is_none());
        assert_eq!(rules(hold.withdraw(&alert("late"))), ["late"]);
        assert!(hold.is_empty() && hold.due(at("2026-11-21T07:00:00Z")).is_empty());
        assert!(hold.offer(draft("late", "warning", true), night).is_none());
        assert_eq!(hold.due(at("2026-11-20T07:00:00Z")).len(), 1);
    }

    #[test]
    fn limits_count_per_key_over_a_day() {
        let limiter = Limiter::new(2, 100);
        let t = at("2026-11-20T11:00:00Z");
        let keys = ["parcel:P1".to_string()];
        assert!(limiter.allow(&keys, t));
        assert!(limiter.allow(&keys, t));
        assert!(!limiter.allow(&keys, t + Duration::hours(23)));
        assert!(limiter.allow(&keys, t + Duration::hours(24)));
    }
}
