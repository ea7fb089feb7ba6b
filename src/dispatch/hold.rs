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
    next: u64,
}

impl Hold {
    pub fn new(quiet: Quiet, window: Duration) -> Hold {
        Hold { quiet, window, timers: BTreeSet::new(), batches: HashMap::new(), groups: HashMap::new(), next: 0 }
    }

    /// Takes a draft: returns it as a batch when it may go now, or holds it.
    pub fn offer(&mut self, draft: Draft, now: DateTime<Utc>) -> Option<Batch> {
        let mut due = if draft.quiet { self.quiet.release(now, draft.tz) } else { now };
        if let Some(group) = draft.group.clone().filter(|_| self.window > Duration::zero()) {
            if let Some(batch) = self.groups.get(&group).and_then(|id| self.batches.get_mut(id)) {
                // The most severe alert speaks for the group; on a tie, the latest.
                if draft.notice.severity >= batch.primary.notice.severity {
                    let old = std::mem::replace(&mut batch.primary, draft);
                    batch.absorbed.push(old);
                } else {
                    batch.absorbed.push(draft);
                }
                return None;
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

    fn draft(rule: &str, severity: &str, group: bool) -> Draft {
        let line = format!(
            r#"{{"alert_id":"0123456789abcdef0123456789abcdef","rule":"{rule}","state":"firing","at":"2026-11-20T01:00:00Z","severity":"{severity}","audience":["customer"],"parcel_id":"P1"}}"#
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
