//! Replayed events dated far ahead of the flow: held, then let in or refused.
//!
//! A replay has no arrival time to judge a scanner's clock by (live refuses
//! a scan dated ahead of its arrival), so it judges an event by the flow and
//! by the lines after it. The flow's lead is the newest time applied (never
//! behind what the partitions' flows vouch for, [`crate::engine::frontier`]).
//! An event dated more than the horizon past the lead is held aside, out of
//! the engine's sight, until either
//!
//! - the lead catches up with it: it is let in;
//! - the [`AFTER`] lines after it are in: if most are dated after it (less
//!   the horizon), the flow has moved on with it (a morning after a quiet
//!   night, the sparse tail of a file) and it is let in; if most are dated
//!   before, the flow did not follow: it is refused as `future_event`, with
//!   its line, and has moved no one's time nor changed anyone's alerts;
//! - the input ends: the lines after it that there are decide. Nothing can
//!   tell whether the input's last line is the end of a sparse tail (the
//!   last parcels of a network, often a day apart) or an outlier: it is let
//!   in, and the end of the input is its time, as live, where the clock
//!   reaches it. (An outlier that is exactly the last line still moves the
//!   final judgment: the one case left.)
//!
//! An event let in is applied before the watermark moves on, in input order
//! among those let in. A run of consecutive lines all dated ahead together
//! (a scanner uploading its batch) looks like the flow moving on, and is let
//! in, but moves neither the lead nor, being a minority of each partition's
//! flow, the watermark: it reaches only its own parcels.

use std::collections::{BTreeMap, VecDeque};

use crate::engine::Split;
use crate::event::Event;
use crate::time::{Span, Ts};

/// The most events held at once; beyond it, an event far ahead is refused
/// on arrival.
pub const MAX_HELD: usize = 1 << 16;

/// How many lines after a held event decide whether the flow followed it.
const AFTER: usize = 15;

/// An event held aside, with its line for the rejects should it be refused.
pub struct Held {
    pub number: u64,
    pub line: Vec<u8>,
    pub event: Event<'static>,
    pub partition: u16,
    pub hash: u64,
    /// The times of the lines after it (up to [`AFTER`]).
    after: Vec<Ts>,
}

impl Held {
    /// Whether the lines after it (as many as there are, some) followed it: most are dated after it, less the horizon.
    fn followed(&self, horizon: Span) -> bool {
        let at = self.event.at;
        2 * self.after.iter().filter(|&&t| t >= at.minus(horizon)).count() > self.after.len()
    }
}

/// What became of held events: let in (in input order) or refused with how
/// far ahead of the lead they stayed.
#[derive(Default)]
pub struct Settled {
    pub let_in: Vec<Held>,
    pub refused: Vec<(Held, Span)>,
}

/// What the end of the input leaves of the events held.
pub struct Finished {
    pub refused: Vec<(Held, Span)>,
    /// Where the input ends: the lead, what the flows vouch for, or the end
    /// of a sparse tail.
    pub end: Ts,
}

/// The flow's lead and the events held, in time order.
pub struct Ahead {
    /// The newest time applied within the horizon of the lead, once the
    /// flows vouched for a time; `Ts::MIN` before (an early outlier does not
    /// set it). Events let in because the lines after them followed do not
    /// move it: a scanner's batch of consecutive lines dated ahead looks
    /// followed, and reaches only its own parcels; a flow that really moved
    /// on moves the partitions' flows, and they the lead.
    lead: Ts,
    /// The newest time let in because the lines after it followed, until a
    /// line applied after it is dated more than the horizon before it (the
    /// flow went on behind it: it was a batch dated ahead). At the end of the
    /// input, what is left of it is the end of a sparse tail.
    followed: Ts,
    horizon: Span,
    held: BTreeMap<(Ts, u64), Held>,
    /// In input order, so the first is the first to have all its lines after.
    listening: VecDeque<(Ts, u64)>,
}

impl Ahead {
    pub fn new(horizon: Span) -> Ahead {
        Ahead { lead: Ts::MIN, followed: Ts::MIN, horizon, held: BTreeMap::new(), listening: VecDeque::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How far past the lead an event dated `at` is, if by more than the horizon.
    pub fn past_horizon(&self, engine: &Split, at: Ts) -> Option<Span> {
        let lead = self.lead.max(engine.vouched());
        (lead != Ts::MIN && at > lead.plus(self.horizon)).then(|| at.since(lead))
    }

    /// An event's line came: each held event takes its time, up to [`AFTER`].
    pub fn saw(&mut self, at: Ts) {
        for key in &self.listening {
            if let Some(held) = self.held.get_mut(key) {
                held.after.push(at);
            }
        }
    }

    /// An event dated `at` was applied (or is let in as the lead reached it).
    pub fn applied(&mut self, engine: &Split, at: Ts) {
        if engine.vouched() != Ts::MIN {
            self.lead = self.lead.max(at);
        }
        if at < self.followed.minus(self.horizon) {
            self.followed = Ts::MIN;
        }
    }

    /// Holds an event dated past the horizon (seen last); gives back its line
    /// when no more can be held.
    pub fn hold<'l>(
        &mut self,
        (number, line): (u64, &'l [u8]),
        event: &Event<'_>,
        (partition, hash): (u16, u64),
    ) -> Result<(), &'l [u8]> {
        if self.held.len() >= MAX_HELD {
            return Err(line);
        }
        let held =
            Held { number, line: line.to_vec(), event: event.clone().into_owned(), partition, hash, after: Vec::new() };
        let key = (held.event.at, held.number);
        self.held.insert(key, held);
        self.listening.push_back(key);
        Ok(())
    }

    /// Settles the events the lead caught up with and those whose lines
    /// after are all in.
    pub fn settle(&mut self, engine: &Split, into: &mut Settled) {
        while let Some((&(at, _), _)) = self.held.first_key_value() {
            if self.past_horizon(engine, at).is_some() {
                break;
            }
            let (_, held) = self.held.pop_first().expect("just seen");
            self.applied(engine, at);
            into.let_in.push(held);
        }
        while let Some(&key) = self.listening.front() {
            match self.held.get(&key) {
                None => {}
                Some(held) if held.after.len() < AFTER => break,
                Some(held) => match self.past_horizon(engine, held.event.at) {
                    Some(ahead) if !held.followed(self.horizon) => {
                        into.refused.push((self.held.remove(&key).expect("just found"), ahead));
                    }
                    _ => {
                        let held = self.held.remove(&key).expect("just found");
                        self.followed = self.followed.max(held.event.at);
                        into.let_in.push(held);
                    }
                },
            }
            self.listening.pop_front();
        }
        into.let_in.sort_unstable_by_key(|h| h.number);
    }

    /// The input is over: every event still held is settled by the lines
    /// after it that there are, in input order (`let_in` applies one); the
    /// input's last line, which no line follows, is let in.
    pub fn finish(mut self, engine: &mut Split, mut let_in: impl FnMut(&mut Split, &Held)) -> Finished {
        let mut rest: Vec<Held> = std::mem::take(&mut self.held).into_values().collect();
        rest.sort_unstable_by_key(|h| h.number);
        let mut refused = Vec::new();
        for held in rest {
            match self.past_horizon(engine, held.event.at) {
                Some(ahead) if !held.after.is_empty() && !held.followed(self.horizon) => refused.push((held, ahead)),
                _ => {
                    self.followed = self.followed.max(held.event.at);
                    let_in(engine, &held);
                }
            }
        }
        let end = match self.lead.max(engine.vouched()).max(self.followed) {
            Ts::MIN => engine.newest(),
            lead => lead,
        };
        Finished { refused, end }
    }
}
