//! A synthetic carrier network that writes the v1 contract: hubs and branches
//! in the [`Shape`]'s countries (a regional carrier's few dozen, or a national
//! network's tens of thousands), express/standard/economy parcels,
//! international parcels through customs, pickup points, the anomalies a real
//! network has (stalls, late deliveries, failed attempts, damage, loss, a
//! branch having a bad day, and half a day of failed attempts, damage and
//! customs holds at one place each, and a hub that stops for a day),
//! scanners that upload late and twice, and customers who contact the call
//! centre when their parcel goes wrong.
//!
//! Deterministic per seed: the same `(parcels, seed, start, days, shape)`
//! always gives the same bytes. Each parcel's life is drawn from its own
//! random stream, so changing the parcel count does not change the first
//! parcels.

use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::event::Kind;
use crate::time::Ts;

mod countries;
mod shape;

pub use countries::country_code;
use countries::{Country, COUNTRIES};
use shape::World;
pub use shape::{Shape, PRESETS};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Network {
    pub parcels: u64,
    pub seed: u64,
    /// When the first label is created.
    pub start: Ts,
    /// Labels are created uniformly over this many days.
    pub days: f64,
    pub shape: Shape,
    pub reaction: Reaction,
}

/// How the customers react to forewarn's messages: an assumption of the
/// simulator, for checking the hold-out measure end to end, not a finding.
/// By default they do not react: each calls about a problem as if told
/// nothing (the report then measures whether forewarn spoke first).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reaction {
    /// The hold-out group's share ([`crate::holdout`]): its customers are
    /// not told.
    pub holdout: f64,
    /// The share of customers told of their parcel's problem who then do
    /// not call about it. Every problem parcel outside the hold-out group
    /// counts as told, before its customer would notice: a carrier's real
    /// response is what the hold-out measures, not this.
    pub response: f64,
    /// The share of customers told a revised date who then do not call
    /// (at least `response`): those of the parcels arriving a day or more
    /// after their promise, whose expected date moved after the first
    /// message; a customer with a new date has less to ask.
    pub revised: f64,
}

impl Reaction {
    /// The responses of a customer of parcel `id` (its tracking number,
    /// written only when someone reacts): to a problem, and to a revised
    /// date; none for the hold-out group.
    fn of(&self, id: impl FnOnce() -> String) -> (f64, f64) {
        let told = (self.response > 0.0 || self.revised > 0.0) && !crate::holdout::held_out(&id(), self.holdout);
        if told {
            (self.response, self.revised.max(self.response))
        } else {
            (0.0, 0.0)
        }
    }
}

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
    /// A place of the [`World`].
    facility: Option<u32>,
    reason: Option<&'static str>,
    /// promised_by on label_created (and a revision on a later scan),
    /// return_by on ready_for_pickup.
    stamp: Option<i64>,
    topic: Option<&'static str>,
}

/// Static facts of one parcel, redrawn from its seed when written.
struct Parcel {
    /// Indexes into [`COUNTRIES`].
    origin: usize,
    dest: usize,
    /// A place of the [`World`].
    branch: u32,
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

fn parcel_facts(world: &World, international: f64, rng: &mut ChaCha8Rng) -> Parcel {
    let countries = &world.countries;
    let at = rng.gen_range(0..countries.len());
    let dest = countries[at];
    // Sent from another of the shape's countries, or from abroad when it has one.
    let origin = if rng.gen_bool(international) {
        if countries.len() > 1 {
            countries[(at + rng.gen_range(1..countries.len())) % countries.len()]
        } else {
            (dest + rng.gen_range(1..COUNTRIES.len())) % COUNTRIES.len()
        }
    } else {
        dest
    };
    let branches = &world.branches[dest];
    // Named branches are alike; numbered ones range from city depots to
    // village outlets: the first ones are the busiest.
    let branch = if world.named {
        pick(rng, branches)
    } else {
        branches[(rng.gen::<f64>().powi(2) * branches.len() as f64) as usize]
    };
    let service = match rng.gen_range(0..100) {
        0..=24 => "express",
        25..=89 => "standard",
        _ => "economy",
    };
    Parcel { origin, dest, branch, service }
}

/// Half a day of trouble in the middle of the run (a day past its middle,
/// so that the branches have a normal to depart from): one branch's
/// couriers fail half their attempts, another's conveyor damages parcels,
/// the customs at one hub hold nearly every parcel for days. And a hub
/// stops for a whole day from the same instant: nothing leaves it. Before
/// that, one branch has a bad first day: everything through it stalls.
/// The [`World`] says which places.
const HUB_STALL_LASTS: i64 = 24 * HOUR;

/// The first instant at or after `t` that is one of `hours` (local, sorted)
/// in a place `utc` hours ahead of UTC.
fn next_local(t: i64, utc: i64, hours: &[f64]) -> i64 {
    let local = t + utc * HOUR;
    let day = local.div_euclid(24 * HOUR) * 24 * HOUR;
    let at = |d: i64, h: f64| day + d * 24 * HOUR + (h * HOUR as f64) as i64;
    let next = hours.iter().map(|&h| at(0, h)).find(|&c| c >= local).unwrap_or_else(|| at(1, hours[0]));
    next - utc * HOUR
}

/// When the half day of trouble starts.
fn trouble_starts(net: &Network) -> Ts {
    Ts(net.start.0 + ((net.days / 2.0 + 1.0) * 24.0 * HOUR as f64) as i64)
}

/// How long the trouble lasts.
const TROUBLE_LASTS: i64 = 12 * HOUR;

/// Draws one parcel's life into `out`. Every draw a shape's feature adds is
/// made only when the feature is on, so `regional` draws what it always drew.
fn life(net: &Network, world: &World, index: u64, out: &mut Vec<Ev>) {
    let shape = &net.shape;
    let mut rng = parcel_rng(net.seed, index);
    let p = parcel_facts(world, shape.international, &mut rng);
    let origin = &COUNTRIES[p.origin];
    let dest = &COUNTRIES[p.dest];
    // The customer is told of a problem unless the parcel is held out.
    let response = net.reaction.of(|| ParcelId(index, origin).to_string());
    let span = (net.days * 24.0 * HOUR as f64) as i64;
    let t0 = net.start.0 + rng.gen_range(0..span.max(1));
    let international = p.origin != p.dest;
    // A national network quotes a day more for what it sorts twice, but for express.
    let transit_days = match (p.service, international) {
        ("express", false) => 1,
        ("express", true) => 3,
        ("standard", false) => 2,
        ("standard", true) => 6,
        (_, false) => 4,
        (_, true) => 10,
    } + i64::from(!world.named && p.service != "express");
    // Promised for the evening of the last transit day, with a day of margin as carriers quote.
    let mut promised = (t0 / (24 * HOUR) + transit_days + 1) * 24 * HOUR + 18 * HOUR;
    let parcel = index as u32;
    let mut seq = 0u16;
    let mut t = t0;
    let mut push = |out: &mut Vec<Ev>,
                    t: i64,
                    kind: Kind,
                    facility: Option<u32>,
                    reason: Option<&'static str>,
                    stamp: Option<i64>| {
        seq += 1;
        out.push(Ev { arrival: t, at: t, parcel, seq, kind, facility, reason, stamp, topic: None });
    };
    // The day's rhythm: a scan waits for the next of these local hours.
    let rhythm = |rng: &mut ChaCha8Rng, t: i64, utc: i64, local: &[f64], spread: f64| {
        if shape.rhythm {
            next_local(t, utc, local) + hours(rng, 0.0, spread)
        } else {
            t
        }
    };
    let first = out.len();
    push(out, t, Kind::LabelCreated, None, None, Some(promised));
    // Some parcels stall once: a leg that takes a day or two longer.
    let stall_leg = if rng.gen_bool(0.04) { rng.gen_range(0..4) } else { 99 };
    let bad_day = p.branch == world.disrupted && (t0 - net.start.0) < 24 * HOUR && rng.gen_bool(0.5);
    let trouble = trouble_starts(net).0;
    let in_trouble = |t: i64| (trouble..trouble + TROUBLE_LASTS).contains(&t);
    let leg = |rng: &mut ChaCha8Rng, n: u32, lo: f64, hi: f64| -> i64 {
        let extra = if n == stall_leg { hours(rng, 26.0, 60.0) } else { 0 };
        hours(rng, lo, hi) + extra
    };
    let express = if p.service == "express" { 0.5 } else { 1.0 };
    if shape.pre_shipment {
        // The sender prints the label hours or days before the courier comes;
        // some never hand the parcel over.
        t += match rng.gen_range(0..100) {
            0..=3 => {
                finish(&mut rng, out, first, promised, response);
                return;
            }
            4..=13 => hours(&mut rng, 20.0, 48.0),
            _ => hours(&mut rng, 1.0, 12.0),
        };
        t = rhythm(&mut rng, t, origin.utc, &[14.0, 17.0], 2.0);
    } else {
        t += leg(&mut rng, 9, 1.0, 6.0);
    }
    push(out, t, Kind::PickedUp, None, None, None);
    let hub = pick(&mut rng, &world.hubs[p.origin]);
    t += leg(&mut rng, 0, 2.0, 8.0 * express);
    push(out, t, Kind::Arrived, Some(hub), None, None);
    let at_hub = t;
    t += leg(&mut rng, 9, 1.0, 4.0);
    // What is at the stopped hub, or arrives there, leaves when it is back.
    if hub == world.stalled_hub && at_hub < trouble + HUB_STALL_LASTS && t >= trouble {
        t = trouble + HUB_STALL_LASTS + hours(&mut rng, 0.5, 6.0);
    }
    t = rhythm(&mut rng, t, origin.utc, &[2.0, 5.0, 22.0], 0.3);
    // A promise revised as the parcel leaves its first hub: a day later.
    let revised = shape.revisions > 0.0 && rng.gen_bool(shape.revisions);
    if revised {
        promised += 24 * HOUR;
    }
    push(out, t, Kind::Departed, Some(hub), None, revised.then_some(promised));
    // The hub that serves the branch: named networks draw one per parcel.
    let serving = |rng: &mut ChaCha8Rng| {
        if world.named {
            pick(rng, &world.hubs[p.dest])
        } else {
            world.hub_of(p.dest, p.branch)
        }
    };
    if international {
        let dest_hub = serving(&mut rng);
        t += leg(&mut rng, 1, 10.0, 20.0);
        push(out, t, Kind::Arrived, Some(dest_hub), None, None);
        let backlog = dest_hub == world.backlog_hub && in_trouble(t);
        if rng.gen_bool(if backlog { 0.9 } else { 0.3 }) {
            let reason = pick(&mut rng, &["documents_missing", "duties_unpaid", "inspection"]);
            t += hours(&mut rng, 0.5, 3.0);
            push(out, t, Kind::CustomsHold, Some(dest_hub), Some(reason), None);
            t += if backlog { hours(&mut rng, 30.0, 60.0) } else { hours(&mut rng, 4.0, 60.0) };
            push(out, t, Kind::CustomsReleased, Some(dest_hub), None, None);
        }
        t += hours(&mut rng, 1.0, 4.0);
        t = rhythm(&mut rng, t, dest.utc, &[2.0, 5.0, 22.0], 0.3);
        push(out, t, Kind::Departed, Some(dest_hub), None, None);
    } else if !world.named {
        // A national network sorts twice: at the sender's hub and the one serving the branch.
        let dest_hub = serving(&mut rng);
        if dest_hub != hub {
            t += leg(&mut rng, 1, 4.0, 12.0 * express);
            push(out, t, Kind::Arrived, Some(dest_hub), None, None);
            t += hours(&mut rng, 0.5, 3.0);
            t = rhythm(&mut rng, t, dest.utc, &[2.0, 5.0, 22.0], 0.3);
            push(out, t, Kind::Departed, Some(dest_hub), None, None);
        }
    }
    if rng.gen_bool(0.002) {
        t += hours(&mut rng, 6.0, 40.0);
        push(out, t, Kind::Lost, None, None, None);
        finish(&mut rng, out, first, promised, response);
        return;
    }
    if rng.gen_bool(0.005) {
        t += hours(&mut rng, 1.0, 10.0);
        push(out, t, Kind::Damaged, None, Some(pick(&mut rng, &["minor", "major"])), None);
    }
    t += leg(&mut rng, 2, 4.0, 16.0 * express) + if bad_day { hours(&mut rng, 25.0, 30.0) } else { 0 };
    push(out, t, Kind::Arrived, Some(p.branch), None, None);
    if p.branch == world.damaging && in_trouble(t) && rng.gen_bool(0.15) {
        t += hours(&mut rng, 0.1, 1.0);
        push(out, t, Kind::Damaged, Some(p.branch), Some("major"), None);
    }
    if shape.pickup_points > 0.0 && rng.gen_bool(shape.pickup_points) {
        // Addressed to a pickup point: the branch's van drops it there.
        let point = world.pickup[p.branch as usize] + rng.gen_range(0..2);
        t += leg(&mut rng, 3, 2.0, 10.0 * express);
        collect(&mut rng, out, &mut push, t, point, 0.88);
        finish(&mut rng, out, first, promised, response);
        return;
    }
    // Out for delivery on the next round, a few hours to half a day after arrival.
    let mut attempts = 0;
    loop {
        t += leg(&mut rng, 3, 3.0, 14.0 * express);
        t = rhythm(&mut rng, t, dest.utc, &[8.0, 13.0], 1.0);
        push(out, t, Kind::OutForDelivery, Some(p.branch), None, None);
        t += hours(&mut rng, 1.0, 8.0);
        attempts += 1;
        let success = if p.branch == world.failing && in_trouble(t) { 0.5 } else { 0.92 };
        if rng.gen_bool(success) {
            push(out, t, Kind::Delivered, Some(p.branch), None, None);
            break;
        }
        let reason = pick(&mut rng, &["no_one_home", "no_one_home", "access_denied", "address_unknown", "refused"]);
        push(out, t, Kind::DeliveryFailed, Some(p.branch), Some(reason), None);
        if attempts >= 2 || rng.gen_bool(0.3) {
            t += hours(&mut rng, 1.0, 4.0);
            collect(&mut rng, out, &mut push, t, p.branch, 0.85);
            break;
        }
    }
    finish(&mut rng, out, first, promised, response);
}

/// A parcel waiting at `place` from `t` for a week: collected (with
/// probability `collected`, 4 to 110 hours later) or sent back.
fn collect(
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Ev>,
    push: &mut impl FnMut(&mut Vec<Ev>, i64, Kind, Option<u32>, Option<&'static str>, Option<i64>),
    t: i64,
    place: u32,
    collected: f64,
) {
    let return_by = t + 7 * 24 * HOUR;
    push(out, t, Kind::ReadyForPickup, Some(place), None, Some(return_by));
    if rng.gen_bool(collected) {
        let at = t + hours(rng, 4.0, 110.0);
        push(out, at, Kind::Collected, Some(place), None, None);
    } else {
        push(out, return_by, Kind::Returned, Some(place), None, None);
    }
}

/// Adds the uploads' disorder and the customers' calls to one parcel's events.
/// Ends a parcel's life with its customer's contacts: about its problem if
/// it had one, and less often when told of it (`response`: to a problem,
/// and to a revised date).
fn finish(rng: &mut ChaCha8Rng, out: &mut Vec<Ev>, first: usize, promised: i64, response: (f64, f64)) {
    let events_end = out.len();
    // Customers call when the parcel is late, stuck in customs, failed or broken,
    // some hours after they would have noticed.
    let mut problem: Option<(i64, &'static str)> = None;
    let last = out[events_end - 1].at;
    // Waiting at a pickup point (told so by the carrier) is delivered, for the customer.
    let done_on_time =
        out[first..events_end].iter().any(|e| (e.kind.is_done() || e.kind == Kind::ReadyForPickup) && e.at <= promised);
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
    // A parcel never handed over (only its label) is late too.
    let handed_over = events_end - first > 1;
    if problem.is_none() && !done_on_time && (last > promised || !handed_over) {
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
        // Arriving a day or more after the promise, the date moved: a told
        // customer heard the new one.
        let arrived = out[first..events_end].iter().find(|e| e.kind.is_done() || e.kind == Kind::ReadyForPickup);
        let moved = topic == "delivery_time" && arrived.map_or(last, |e| e.at) >= promised + 24 * HOUR;
        let response = if moved { response.1 } else { response.0 };
        // A customer told of the problem may not call at all (no second draw
        // when nobody reacts: the same seed, the same file as before).
        if rng.gen_bool(0.45) && (response == 0.0 || !rng.gen_bool(response)) {
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
    net.shape.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let world = World::new(&net.shape);
    let mut events = Vec::with_capacity((net.parcels * 11) as usize);
    for i in 0..net.parcels {
        life(net, &world, i, &mut events);
        if i % 65_536 == 0 {
            progress(i);
        }
    }
    events.sort_unstable_by_key(|e| (e.arrival, e.parcel, e.seq));
    let mut line = Vec::with_capacity(512);
    for e in &events {
        line.clear();
        format_event(net, &world, e, &mut line);
        out.write_all(&line)?;
    }
    progress(net.parcels);
    Ok(events.len() as u64)
}

/// The tracking number of parcel `index`, sent from `origin`: what
/// [`format_event`] writes, and what the hold-out group is drawn from.
struct ParcelId<'a>(u64, &'a Country);

impl std::fmt::Display for ParcelId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FW{:010}{}", self.0, self.1.code)
    }
}

fn format_event(net: &Network, world: &World, e: &Ev, line: &mut Vec<u8>) {
    let mut rng = parcel_rng(net.seed, u64::from(e.parcel));
    let p = parcel_facts(world, net.shape.international, &mut rng);
    let dest = &COUNTRIES[p.dest];
    let origin = &COUNTRIES[p.origin];
    let facility = e.facility.map(|f| world.name(f));
    let country = match e.kind {
        Kind::LabelCreated | Kind::PickedUp => origin.code,
        _ if facility.is_some_and(|f| f.starts_with(origin.code)) => origin.code,
        _ => dest.code,
    };
    let _ = write!(
        line,
        r#"{{"v":1,"event_id":"ev-{:08x}-{:03}","parcel_id":"{}","kind":"{}","at":"{}","branch":"{}","country":"{}","service":"{}""#,
        e.parcel,
        e.seq,
        ParcelId(u64::from(e.parcel), origin),
        e.kind,
        Ts(e.at),
        world.name(p.branch),
        country,
        p.service
    );
    if let Some(f) = facility {
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
        (_, Some(s)) => {
            let _ = write!(line, r#","promised_by":"{}""#, Ts(s));
        }
        _ => {}
    }
    if let Some(topic) = e.topic {
        let _ = write!(line, r#","channel":"phone","topic":"{topic}""#);
    }
    line.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests;
