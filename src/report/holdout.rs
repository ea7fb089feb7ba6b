//! The hold-out measure: what the messages changed. The parcels a
//! customer-facing alert spoke about, in the group the dispatcher messages
//! and in the hold-out group it keeps quiet ([`crate::holdout`]): their
//! contacts after that first alert, per 1,000 parcels, and the share of
//! contacts the messages spared, with its 95 % interval. The alert fires
//! alike in both groups, so the two are alike but for the messages.

use std::collections::HashMap;

use serde::Serialize;

use super::{percent, Parcel};
use crate::holdout::held_out;
use crate::time::Ts;

/// One group of the hold-out measure: parcels told (a customer-facing
/// alert fired, whether or not a message went) and their contacts after it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Group {
    pub parcels: u64,
    pub contacts: u64,
    pub contacts_per_1000: Option<f64>,
}

/// What the messages changed: the hold-out group against the messaged one.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Holdout {
    pub share: f64,
    pub messaged: Group,
    pub held_out: Group,
    /// The share of the held-out group's contacts rate that the messaged
    /// group did not have (negative: the messages brought contacts)…
    pub reduction: Option<f64>,
    /// …and its 95 % interval (normal approximation of the difference of
    /// the two means, over the held-out rate).
    pub reduction_ci95: Option<(f64, f64)>,
}

/// Per-parcel contact counts of one group: count, sum, sum of squares.
#[derive(Clone, Copy, Default)]
struct Counts {
    n: u64,
    sum: u64,
    squares: u64,
}

impl Counts {
    fn mean(self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }

    /// The variance of the mean: the sample variance over the count.
    fn mean_variance(self) -> Option<f64> {
        let (n, mean) = (self.n as f64, self.mean()?);
        (self.n > 1).then(|| (self.squares as f64 - n * mean * mean) / (n - 1.0) / n)
    }

    fn group(self) -> Group {
        Group {
            parcels: self.n,
            contacts: self.sum,
            contacts_per_1000: self.mean().map(|m| (m * 10_000.0).round() / 10.0),
        }
    }
}

/// The hold-out measure over the report's parcels, for a group of `share`
/// of them (0: none).
pub(super) fn measure(share: f64, parcels: &HashMap<Box<str>, Parcel>) -> Option<Holdout> {
    if share <= 0.0 {
        return None;
    }
    let mut groups = [Counts::default(); 2];
    for (id, p) in parcels.iter().filter(|(_, p)| p.told_at != Ts::MAX) {
        let c = p.contacts_once().iter().filter(|(at, _)| *at >= p.told_at).count() as u64;
        let g = &mut groups[usize::from(held_out(id, share))];
        g.n += 1;
        g.sum += c;
        g.squares += c * c;
    }
    let [messaged, held] = groups;
    let (reduction, reduction_ci95) = match (messaged.mean(), held.mean()) {
        (Some(m), Some(h)) if h > 0.0 => {
            let spread = messaged.mean_variance().zip(held.mean_variance()).map(|(a, b)| 1.96 * (a + b).sqrt() / h);
            let r = (h - m) / h;
            (Some(round4(r)), spread.map(|s| (round4(r - s), round4(r + s))))
        }
        _ => (None, None),
    };
    Some(Holdout { share, messaged: messaged.group(), held_out: held.group(), reduction, reduction_ci95 })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

impl Holdout {
    /// The measure as one line of the text report.
    pub fn text(&self) -> String {
        let per = |g: &Group| g.contacts_per_1000.map_or("-".to_string(), |x| format!("{x:.1}"));
        let effect = match (self.reduction, self.reduction_ci95) {
            (Some(r), ci) => {
                let interval = ci.map_or(String::new(), |(lo, hi)| {
                    format!(" (95 % interval {} to {})", percent(Some(lo)), percent(Some(hi)))
                });
                format!("the messages spared {} of the contacts{interval}", percent(Some(r)))
            }
            _ => "no effect measurable: the held-out group has no contacts".to_string(),
        };
        format!(
            "hold-out ({} of parcels): messaged {} parcels told, {} contacts per 1,000 after the first alert; \
             held out {}, {} per 1,000: {effect}\n",
            percent(Some(self.share)),
            self.messaged.parcels,
            per(&self.messaged),
            self.held_out.parcels,
            per(&self.held_out),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::engine::Split;
    use crate::report::run;
    use crate::rules::RuleSet;

    /// The hold-out measure on a simulated network whose told customers
    /// react by `response` (to a revised date by `revised`), a fifth of the
    /// parcels held out.
    fn measured(response: f64, revised: f64) -> Holdout {
        use crate::simulate::{write, Network, Reaction, Shape};
        let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap();
        let reaction = Reaction { holdout: 0.2, response, revised };
        let net = Network { parcels: 20_000, seed: 5, start, days: 1.0, shape: Shape::default(), reaction };
        let mut bytes = Vec::new();
        write(&net, &mut bytes, |_| {}).unwrap();
        let set = RuleSet::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
        let mut engine = Split::new(set.clone(), crate::engine::Config::default());
        let r = run(&mut engine, &set, 0.2, || Ok(Box::new(io::Cursor::new(bytes.clone())))).unwrap();
        r.holdout.unwrap()
    }

    #[test]
    fn the_hold_out_measures_the_customers_reaction_and_no_effect_where_there_is_none() {
        let none = measured(0.0, 0.0);
        let (lo, hi) = none.reduction_ci95.unwrap();
        assert!(lo < 0.0 && 0.0 < hi, "customers who do not react: no effect measured, {none:?}");
        let share = none.held_out.parcels as f64 / (none.held_out.parcels + none.messaged.parcels) as f64;
        assert!((0.17..0.23).contains(&share), "a fifth of the parcels told is held out: {none:?}");
        // Half the customers told do not call about their problem; contacts
        // before the first alert and about parcels without a problem are
        // not spared, so the measure is below a half, and well above none.
        let half = measured(0.5, 0.0);
        let (lo, hi) = half.reduction_ci95.unwrap();
        assert!(lo > 0.1 && hi < 0.7, "{half:?}");
        assert!(half.messaged.contacts_per_1000 < none.messaged.contacts_per_1000);
        assert_eq!(half.held_out, none.held_out, "the held-out customers are told nothing: they call as before");
        // Customers told a new date for a parcel a day late or more call
        // less still: the told group's rate falls, the held-out's does not move.
        let revised = measured(0.5, 0.9);
        assert!(revised.messaged.contacts_per_1000 < half.messaged.contacts_per_1000, "{revised:?} vs {half:?}");
        assert_eq!(revised.held_out, none.held_out);
    }
}
