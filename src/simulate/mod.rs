//! A synthetic carrier network that writes the v1 contract: hubs and branches
//! in FR, CN, US and DE, express/standard/economy parcels, international
//! parcels through customs, the anomalies a real network has (stalls, late
//! deliveries, failed attempts, damage, loss, a branch having a bad day, and
//! half a day of failed attempts, damage and customs holds at one place each,
//! and a hub that stops for a day),
//! scanners that upload late and twice, and customers who contact the call
//! centre when their parcel goes wrong.
//!
//! Deterministic per seed: the same `(parcels, seed, start, days)` always
//! gives the same bytes. Each parcel's life is drawn from its own random
//! stream, so changing the parcel count does not change the first parcels.

use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::event::Kind;
use crate::time::Ts;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Network {
    pub parcels: u64,
    pub seed: u64,
    /// When the first label is created.
    pub start: Ts,
    /// Labels are created uniformly over this many days.
    pub days: f64,
}

struct Country {
    code: &'static str,
    locale: &'static str,
    tz: &'static str,
    phone: &'static str,
    /// Digits after `phone` that make a valid E.164 number.
    digits: usize,
    names: &'static [&'static str],
    mail: &'static str,
    hubs: &'static [&'static str],
    branches: &'static [&'static str],
}

impl Country {
    /// A phone number from 8 random digits.
    fn number(&self, digits: u32) -> String {
        format!("{}{}", self.phone, &digits.to_string()[..self.digits])
    }
}

const COUNTRIES: [Country; 4] = [
    Country {
        code: "FR",
        locale: "fr-FR",
        tz: "Europe/Paris",
        phone: "+3361",
        digits: 7,
        names: &["Léa Martin", "Hugo Bernard", "Chloé Dubois", "Théo Laurent", "Zoé Lefèvre", "Raphaël Moreau"],
        mail: "exemple.fr",
        hubs: &["FR-LYS-HUB", "FR-PAR-HUB", "FR-MRS-HUB"],
        branches: &[
            "FR-PAR-12",
            "FR-PAR-15",
            "FR-LYS-03",
            "FR-MRS-01",
            "FR-TLS-02",
            "FR-NTE-04",
            "FR-LIL-05",
            "FR-BDX-06",
        ],
    },
    Country {
        code: "CN",
        locale: "zh-CN",
        tz: "Asia/Shanghai",
        phone: "+86138",
        digits: 8,
        names: &["王芳", "李伟", "张敏", "刘洋", "陈静", "杨磊"],
        mail: "example.cn",
        hubs: &["CN-SHA-HUB", "CN-SZX-HUB", "CN-PEK-HUB"],
        branches: &[
            "CN-SHA-07",
            "CN-SHA-11",
            "CN-SZX-02",
            "CN-PEK-05",
            "CN-CAN-03",
            "CN-HGH-08",
            "CN-CTU-01",
            "CN-WUH-04",
        ],
    },
    Country {
        code: "US",
        locale: "en-US",
        tz: "America/New_York",
        phone: "+1212555",
        digits: 4,
        names: &["Emma Johnson", "Liam Smith", "Olivia Brown", "Noah Davis", "Ava Wilson", "Mason Clark"],
        mail: "example.com",
        hubs: &["US-EWR-HUB", "US-ORD-HUB", "US-LAX-HUB"],
        branches: &[
            "US-NYC-14",
            "US-NYC-22",
            "US-CHI-03",
            "US-LAX-09",
            "US-BOS-02",
            "US-SEA-05",
            "US-ATL-07",
            "US-DAL-01",
        ],
    },
    Country {
        code: "DE",
        locale: "de-DE",
        tz: "Europe/Berlin",
        phone: "+49151",
        digits: 8,
        names: &["Lena Müller", "Jonas Schmidt", "Mia Schneider", "Felix Weber", "Hannah Becker", "Lukas Fischer"],
        mail: "beispiel.de",
        hubs: &["DE-FRA-HUB", "DE-LEJ-HUB", "DE-HAM-HUB"],
        branches: &[
            "DE-BER-03",
            "DE-BER-08",
            "DE-MUC-02",
            "DE-HAM-05",
            "DE-CGN-01",
            "DE-FRA-04",
            "DE-STR-06",
            "DE-DUS-07",
        ],
    },
];

const HOUR: i64 = 3_600_000;

/// One scan or contact, before it is written.
#[derive(Clone)]
struct Ev {
    /// When the carrier's system uploads it (the file is in this order).
    arrival: i64,
    at: i64,
    parcel: u32,
    seq: u16,
    kind: Kind,
    facility: Option<&'static str>,
    reason: Option<&'static str>,
    /// promised_by on label_created, return_by on ready_for_pickup.
    stamp: Option<i64>,
    topic: Option<&'static str>,
}

/// Static facts of one parcel, redrawn from its seed when written.
struct Parcel {
    origin: usize,
    dest: usize,
    branch: &'static str,
    service: &'static str,
}

fn parcel_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn hours(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> i64 {
    (rng.gen_range(lo..hi) * HOUR as f64) as i64
}

fn parcel_facts(rng: &mut ChaCha8Rng) -> Parcel {
    let dest = rng.gen_range(0..COUNTRIES.len());
    let origin = if rng.gen_bool(0.15) { (dest + rng.gen_range(1..COUNTRIES.len())) % COUNTRIES.len() } else { dest };
    let branch = pick(rng, COUNTRIES[dest].branches);
    let service = match rng.gen_range(0..100) {
        0..=24 => "express",
        25..=89 => "standard",
        _ => "economy",
    };
    Parcel { origin, dest, branch, service }
}

/// The branch that has a bad day: everything through it stalls on day 1.
fn disrupted(branch: &str) -> bool {
    branch == "FR-PAR-12"
}

/// Half a day of trouble in the middle of the run (a day past its middle,
/// so that the branches have a normal to depart from): one branch's
/// couriers fail half their attempts, another's conveyor damages parcels,
/// the customs at one hub hold nearly every parcel for days. And a hub
/// stops for a whole day from the same instant: nothing leaves it.
const FAILING_BRANCH: &str = "DE-MUC-02";
const DAMAGING_BRANCH: &str = "US-CHI-03";
const CUSTOMS_BACKLOG_HUB: &str = "DE-FRA-HUB";
const STALLED_HUB: &str = "FR-LYS-HUB";
const HUB_STALL_LASTS: i64 = 24 * HOUR;

/// When the half day of trouble starts.
fn trouble_starts(net: &Network) -> Ts {
    Ts(net.start.0 + ((net.days / 2.0 + 1.0) * 24.0 * HOUR as f64) as i64)
}

/// How long the trouble lasts.
const TROUBLE_LASTS: i64 = 12 * HOUR;

/// Draws one parcel's life into `out`.
fn life(net: &Network, index: u64, out: &mut Vec<Ev>) {
    let mut rng = parcel_rng(net.seed, index);
    let p = parcel_facts(&mut rng);
    let origin = &COUNTRIES[p.origin];
    let dest = &COUNTRIES[p.dest];
    let span = (net.days * 24.0 * HOUR as f64) as i64;
    let t0 = net.start.0 + rng.gen_range(0..span.max(1));
    let international = p.origin != p.dest;
    let transit_days = match (p.service, international) {
        ("express", false) => 1,
        ("express", true) => 3,
        ("standard", false) => 2,
        ("standard", true) => 6,
        (_, false) => 4,
        (_, true) => 10,
    };
    // Promised for the evening of the last transit day, with a day of margin as carriers quote.
    let promised = (t0 / (24 * HOUR) + transit_days + 1) * 24 * HOUR + 18 * HOUR;
    let parcel = index as u32;
    let mut seq = 0u16;
    let mut t = t0;
    let mut push = |out: &mut Vec<Ev>,
                    t: i64,
                    kind: Kind,
                    facility: Option<&'static str>,
                    reason: Option<&'static str>,
                    stamp: Option<i64>| {
        seq += 1;
        out.push(Ev { arrival: t, at: t, parcel, seq, kind, facility, reason, stamp, topic: None });
    };
    let first = out.len();
    push(out, t, Kind::LabelCreated, None, None, Some(promised));
    // Some parcels stall once: a leg that takes a day or two longer.
    let stall_leg = if rng.gen_bool(0.04) { rng.gen_range(0..4) } else { 99 };
    let bad_day = disrupted(p.branch) && (t0 - net.start.0) < 24 * HOUR && rng.gen_bool(0.5);
    let trouble = trouble_starts(net).0;
    let in_trouble = |t: i64| (trouble..trouble + TROUBLE_LASTS).contains(&t);
    let leg = |rng: &mut ChaCha8Rng, n: u32, lo: f64, hi: f64| -> i64 {
        let extra = if n == stall_leg { hours(rng, 26.0, 60.0) } else { 0 };
        hours(rng, lo, hi) + extra
    };
    let express = if p.service == "express" { 0.5 } else { 1.0 };
    t += leg(&mut rng, 9, 1.0, 6.0);
    push(out, t, Kind::PickedUp, None, None, None);
    let hub = pick(&mut rng, origin.hubs);
    t += leg(&mut rng, 0, 2.0, 8.0 * express);
    push(out, t, Kind::Arrived, Some(hub), None, None);
    let at_hub = t;
    t += leg(&mut rng, 9, 1.0, 4.0);
    // What is at the stopped hub, or arrives there, leaves when it is back.
    if hub == STALLED_HUB && at_hub < trouble + HUB_STALL_LASTS && t >= trouble {
        t = trouble + HUB_STALL_LASTS + hours(&mut rng, 0.5, 6.0);
    }
    push(out, t, Kind::Departed, Some(hub), None, None);
    if international {
        let dest_hub = pick(&mut rng, dest.hubs);
        t += leg(&mut rng, 1, 10.0, 20.0);
        push(out, t, Kind::Arrived, Some(dest_hub), None, None);
        let backlog = dest_hub == CUSTOMS_BACKLOG_HUB && in_trouble(t);
        if rng.gen_bool(if backlog { 0.9 } else { 0.3 }) {
            let reason = pick(&mut rng, &["documents_missing", "duties_unpaid", "inspection"]);
            t += hours(&mut rng, 0.5, 3.0);
            push(out, t, Kind::CustomsHold, Some(dest_hub), Some(reason), None);
            t += if backlog { hours(&mut rng, 30.0, 60.0) } else { hours(&mut rng, 4.0, 60.0) };
            push(out, t, Kind::CustomsReleased, Some(dest_hub), None, None);
        }
        t += hours(&mut rng, 1.0, 4.0);
        push(out, t, Kind::Departed, Some(dest_hub), None, None);
    }
    if rng.gen_bool(0.002) {
        t += hours(&mut rng, 6.0, 40.0);
        push(out, t, Kind::Lost, None, None, None);
        finish(&mut rng, out, first, promised);
        return;
    }
    if rng.gen_bool(0.005) {
        t += hours(&mut rng, 1.0, 10.0);
        push(out, t, Kind::Damaged, None, Some(pick(&mut rng, &["minor", "major"])), None);
    }
    t += leg(&mut rng, 2, 4.0, 16.0 * express) + if bad_day { hours(&mut rng, 25.0, 30.0) } else { 0 };
    push(out, t, Kind::Arrived, Some(p.branch), None, None);
    if p.branch == DAMAGING_BRANCH && in_trouble(t) && rng.gen_bool(0.15) {
        t += hours(&mut rng, 0.1, 1.0);
        push(out, t, Kind::Damaged, Some(p.branch), Some("major"), None);
    }
    // Out for delivery on the next round, a few hours to half a day after arrival.
    let mut attempts = 0;
    loop {
        t += leg(&mut rng, 3, 3.0, 14.0 * express);
        push(out, t, Kind::OutForDelivery, Some(p.branch), None, None);
        t += hours(&mut rng, 1.0, 8.0);
        attempts += 1;
        let success = if p.branch == FAILING_BRANCH && in_trouble(t) { 0.5 } else { 0.92 };
        if rng.gen_bool(success) {
            push(out, t, Kind::Delivered, Some(p.branch), None, None);
            break;
        }
        let reason = pick(&mut rng, &["no_one_home", "no_one_home", "access_denied", "address_unknown", "refused"]);
        push(out, t, Kind::DeliveryFailed, Some(p.branch), Some(reason), None);
        if attempts >= 2 || rng.gen_bool(0.3) {
            t += hours(&mut rng, 1.0, 4.0);
            let return_by = t + 7 * 24 * HOUR;
            push(out, t, Kind::ReadyForPickup, Some(p.branch), None, Some(return_by));
            if rng.gen_bool(0.85) {
                t += hours(&mut rng, 4.0, 110.0);
                push(out, t, Kind::Collected, Some(p.branch), None, None);
            } else {
                push(out, return_by, Kind::Returned, Some(p.branch), None, None);
            }
            break;
        }
    }
    finish(&mut rng, out, first, promised);
}

/// Adds the uploads' disorder and the customers' calls to one parcel's events.
fn finish(rng: &mut ChaCha8Rng, out: &mut Vec<Ev>, first: usize, promised: i64) {
    let events_end = out.len();
    // Customers call when the parcel is late, stuck in customs, failed or broken,
    // some hours after they would have noticed.
    let mut problem: Option<(i64, &'static str)> = None;
    let last = out[events_end - 1].at;
    let done_on_time = out[first..events_end].iter().any(|e| e.kind.is_done() && e.at <= promised);
    for e in &out[first..events_end] {
        let candidate = match e.kind {
            Kind::Damaged | Kind::Lost => {
                Some((e.at, if e.kind == Kind::Damaged { "damaged" } else { "not_received" }))
            }
            Kind::DeliveryFailed => Some((e.at, "reschedule")),
            Kind::CustomsHold => Some((e.at + 24 * HOUR, "customs")),
            _ => None,
        };
        if problem.is_none() {
            problem = candidate;
        }
    }
    if problem.is_none() && !done_on_time && last > promised {
        problem = Some((promised + 2 * HOUR, "delivery_time"));
    }
    let parcel = out[first].parcel;
    let mut seq = out[events_end - 1].seq;
    let mut contact = |out: &mut Vec<Ev>, at: i64, topic: &'static str| {
        seq += 1;
        out.push(Ev {
            arrival: at,
            at,
            parcel,
            seq,
            kind: Kind::CustomerContact,
            facility: None,
            reason: None,
            stamp: None,
            topic: Some(topic),
        });
    };
    if let Some((noticed, topic)) = problem {
        if rng.gen_bool(0.45) {
            let at = noticed + hours(rng, 3.0, 30.0);
            contact(out, at, topic);
            if rng.gen_bool(0.3) {
                contact(out, at + hours(rng, 4.0, 40.0), "complaint");
            }
        }
    } else if rng.gen_bool(0.02) {
        contact(out, out[first].at + hours(rng, 10.0, 48.0), "track");
    }
    // Scanners upload in batches, hours late, and sometimes twice.
    let n = out.len();
    for i in first..n {
        if rng.gen_bool(0.05) {
            out[i].arrival += hours(rng, 0.1, 3.0);
        }
        if rng.gen_bool(0.02) {
            let mut dup = out[i].clone();
            dup.arrival += hours(rng, 0.0, 2.0);
            out.push(dup);
        }
    }
}

/// Simulates the network and writes it as JSON Lines, in upload order.
/// `progress` is called with the number of parcels drawn so far.
pub fn write(net: &Network, out: &mut impl Write, mut progress: impl FnMut(u64)) -> io::Result<u64> {
    let mut events = Vec::with_capacity((net.parcels * 11) as usize);
    for i in 0..net.parcels {
        life(net, i, &mut events);
        if i % 65_536 == 0 {
            progress(i);
        }
    }
    events.sort_unstable_by_key(|e| (e.arrival, e.parcel, e.seq));
    let mut line = Vec::with_capacity(512);
    for e in &events {
        line.clear();
        format_event(net, e, &mut line);
        out.write_all(&line)?;
    }
    progress(net.parcels);
    Ok(events.len() as u64)
}

fn format_event(net: &Network, e: &Ev, line: &mut Vec<u8>) {
    let mut rng = parcel_rng(net.seed, u64::from(e.parcel));
    let p = parcel_facts(&mut rng);
    let dest = &COUNTRIES[p.dest];
    let origin = &COUNTRIES[p.origin];
    let country = match e.kind {
        Kind::LabelCreated | Kind::PickedUp => origin.code,
        _ if e.facility.is_some_and(|f| f.starts_with(origin.code)) => origin.code,
        _ => dest.code,
    };
    let _ = write!(
        line,
        r#"{{"v":1,"event_id":"ev-{:08x}-{:03}","parcel_id":"FW{:010}{}","kind":"{}","at":"{}","branch":"{}","country":"{}","service":"{}""#,
        e.parcel,
        e.seq,
        e.parcel,
        origin.code,
        e.kind,
        Ts(e.at),
        p.branch,
        country,
        p.service
    );
    if let Some(f) = e.facility {
        let _ = write!(line, r#","facility":"{f}""#);
    }
    if let Some(r) = e.reason {
        let _ = write!(line, r#","reason":"{r}""#);
    }
    match (e.kind, e.stamp) {
        (Kind::LabelCreated, Some(s)) => {
            let name = pick(&mut rng, dest.names);
            let number = dest.number(rng.gen_range(10_000_000..99_999_999));
            let channels = match rng.gen_range(0..20) {
                0 => "",
                1..=4 => r#""email""#,
                5..=7 => r#""sms""#,
                _ => r#""sms","email""#,
            };
            let _ = write!(
                line,
                r#","promised_by":"{}","recipient":{{"name":{},"phone":"{}","email":"client{}@{}","locale":"{}","tz":"{}","channels":[{}]}}"#,
                Ts(s),
                serde_json::Value::from(name),
                number,
                e.parcel,
                dest.mail,
                dest.locale,
                dest.tz,
                channels
            );
        }
        (Kind::ReadyForPickup, Some(s)) => {
            let _ = write!(line, r#","return_by":"{}""#, Ts(s));
        }
        _ => {}
    }
    if let Some(topic) = e.topic {
        let _ = write!(line, r#","channel":"phone","topic":"{topic}""#);
    }
    line.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_country_gets_valid_phone_numbers() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for c in &COUNTRIES {
            for _ in 0..2000 {
                let phone = c.number(rng.gen_range(10_000_000..99_999_999));
                assert!(crate::dispatch::address::e164(&phone).is_ok(), "{} {phone}", c.code);
            }
        }
    }
}
