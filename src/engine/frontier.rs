//! Event time that no single scanner can drag.
//!
//! The watermark follows the newest scan time. Taken literally, one scan
//! dated a day ahead (a scanner with a wrong clock, an everyday fault at a
//! carrier) would move it a day and fire every deadline of that day at once:
//! thousands of false "no scan for 24 h" messages. So each partition keeps
//! its last [`RING`] scan times, in arrival order, and its frontier follows
//! the newest of them *but the top eighth* (at least the top one): outliers
//! that are a minority of the recent flow never move it, the flow does. The
//! frontier never goes back. Live, a scan dated ahead of its own arrival is
//! refused first; a replay has no arrival, so it holds a scan far ahead of
//! the flow until the lines after it show whether the flow followed it
//! (`replay::ahead`).
//!
//! All of it is per partition, in each partition's arrival order: the same
//! in a replay (one engine, every partition) as live (an engine a
//! partition), whatever the split.

use crate::time::Ts;

/// Recent scan times kept per partition.
pub const RING: usize = 64;

/// A full ring's frontier is worked out again every this many scans.
const EVERY: u64 = 8;

/// One partition's recent flow of scan times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Flow {
    /// The last scan times, `seen % RING` the next slot to write.
    ring: [i64; RING],
    /// Scans observed, ever.
    pub seen: u64,
    /// The robust newest time: never back.
    pub frontier: Ts,
    /// The newest scan time, outliers included.
    pub newest: Ts,
}

impl Default for Flow {
    fn default() -> Self {
        Flow { ring: [0; RING], seen: 0, frontier: Ts::MIN, newest: Ts::MIN }
    }
}

impl Flow {
    /// The recent scan times, oldest first ([`Flow::len`] of them).
    pub fn recent(&self) -> impl Iterator<Item = Ts> + '_ {
        let start = if self.seen > RING as u64 { (self.seen % RING as u64) as usize } else { 0 };
        (0..self.len()).map(move |i| Ts(self.ring[(start + i) % RING]))
    }

    pub fn len(&self) -> usize {
        self.seen.min(RING as u64) as usize
    }

    fn observe(&mut self, at: Ts) {
        self.ring[(self.seen % RING as u64) as usize] = at.0;
        self.seen += 1;
        self.newest = self.newest.max(at);
        if self.seen <= RING as u64 || self.seen.is_multiple_of(EVERY) {
            let n = self.len();
            let dropped = n.div_ceil(8);
            if n > dropped {
                let mut times = self.ring;
                let high = *times[..n].select_nth_unstable(n - 1 - dropped).1;
                self.frontier = self.frontier.max(Ts(high));
            }
        }
    }

    /// A flow as a checkpoint saved it, its recent times oldest first.
    pub fn restored(recent: &[Ts], seen: u64, frontier: Ts, newest: Ts) -> Flow {
        let mut flow = Flow { seen, frontier, newest, ..Flow::default() };
        let first = seen.saturating_sub(recent.len() as u64);
        for (i, t) in recent.iter().enumerate() {
            flow.ring[((first + i as u64) % RING as u64) as usize] = t.0;
        }
        flow
    }
}

/// Every partition's flow.
#[derive(Debug, PartialEq, Eq)]
pub struct Frontier {
    pub(super) flows: Vec<Flow>,
    /// The latest flow's frontier, kept as they move (read for every event).
    vouched: Ts,
}

impl Frontier {
    pub fn new(partitions: u16) -> Frontier {
        Frontier { flows: vec![Flow::default(); usize::from(partitions.max(1))], vouched: Ts::MIN }
    }

    /// A scan of partition `p`.
    pub fn observe(&mut self, p: u16, at: Ts) {
        let flow = &mut self.flows[usize::from(p)];
        flow.observe(at);
        self.vouched = self.vouched.max(flow.frontier);
    }

    /// The newest time the flows vouch for (the watermark's source): the
    /// latest partition frontier.
    pub fn vouched(&self) -> Ts {
        self.vouched
    }

    /// The newest scan time in any partition, outliers included.
    pub fn newest(&self) -> Ts {
        self.flows.iter().map(|f| f.newest).max().unwrap_or(Ts::MIN)
    }

    /// Takes restored flows, one a partition.
    pub(super) fn restore(&mut self, flows: Vec<Flow>) -> Result<(), usize> {
        if flows.len() != self.flows.len() {
            return Err(flows.len());
        }
        self.vouched = flows.iter().map(|f| f.frontier).max().unwrap_or(Ts::MIN);
        self.flows = flows;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> Ts {
        Ts(1_790_000_000_000 + minutes * 60_000)
    }

    fn flow_of(times: impl IntoIterator<Item = i64>) -> Frontier {
        let mut f = Frontier::new(1);
        for m in times {
            f.observe(0, t(m));
        }
        f
    }

    #[test]
    fn one_scan_dated_days_ahead_moves_nothing() {
        let mut f = flow_of(0..200);
        f.observe(0, t(200 + 3 * 24 * 60));
        for m in 200..210 {
            f.observe(0, t(m));
        }
        assert!(f.vouched() >= t(190) && f.vouched() <= t(210), "{:?}", f.vouched());
        assert_eq!(f.newest(), t(200 + 3 * 24 * 60));
    }

    #[test]
    fn the_frontier_follows_the_flow_not_its_outliers_nor_its_late_uploads() {
        // A scanner an hour ahead for one scan in sixteen, another uploading six hours late.
        let mut f = Frontier::new(1);
        for m in 0..1000i64 {
            let at = match m % 16 {
                0 => m + 60,
                5 => m - 360,
                _ => m,
            };
            f.observe(0, t(at));
        }
        assert!(f.vouched() >= t(980) && f.vouched() <= t(1000), "{:?}", f.vouched());
        // The flow that moves on moves it: a morning after a quiet night.
        for m in 0..16 {
            f.observe(0, t(1000 + 8 * 60 + m));
        }
        assert!(f.vouched() >= t(1000 + 8 * 60), "{:?}", f.vouched());
    }

    #[test]
    fn one_scan_vouches_for_nothing_it_may_be_the_outlier() {
        assert_eq!(flow_of([0]).vouched(), Ts::MIN);
        assert_eq!(flow_of([0, 10]).vouched(), t(0));
        assert_eq!(flow_of([0, 10]).newest(), t(10));
        assert_eq!(flow_of([9_000_000, 10, 11, 12]).vouched(), t(12));
    }

    #[test]
    fn a_restored_flow_goes_on_as_the_original() {
        let mut a = flow_of((0..150).map(|m| m * 7 % 97));
        let saved = &a.flows[0];
        let recent: Vec<Ts> = saved.recent().collect();
        let mut b = Frontier::new(1);
        b.restore(vec![Flow::restored(&recent, saved.seen, saved.frontier, saved.newest)]).unwrap();
        assert_eq!(a, b);
        for m in 150..170 {
            a.observe(0, t(m));
            b.observe(0, t(m));
        }
        assert_eq!(a, b);
    }
}
