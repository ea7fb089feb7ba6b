//! The shape of a simulated network: its countries, how many branches and
//! hubs, how parcels move between them and in what rhythm, with presets for
//! a regional carrier and for national networks of the sizes real carriers
//! run. [`World`] is a shape laid out: every place named, the branches each
//! hub serves, and where the half day of trouble strikes.

use std::fmt;

use super::{Country, COUNTRIES};

/// What the network looks like. `regional` draws exactly the network the
/// simulator always drew; the others add what real networks have.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Countries the parcels are delivered in, by code.
    pub countries: Vec<&'static str>,
    /// Delivery branches (depots, outlets) over all countries; `None`: eight
    /// named ones per country.
    pub branches: Option<u32>,
    /// Sorting hubs over all countries; `None`: three named ones per country.
    pub hubs: Option<u32>,
    /// Share of parcels sent from another country (through customs).
    pub international: f64,
    /// Share of parcels addressed to a pickup point rather than a door.
    pub pickup_points: f64,
    /// Scans bunch at the hubs' sort waves and the branches' delivery
    /// rounds, in local time, as a real day goes.
    pub rhythm: bool,
    /// Labels are created hours to days before pick-up; some parcels are
    /// never handed over.
    pub pre_shipment: bool,
    /// Share of parcels whose promise is revised on the way (a day later).
    pub revisions: f64,
}

/// The named presets, for `--shape`.
pub const PRESETS: [&str; 3] = ["regional", "national-cn", "national-eu"];

/// The most branches and hubs a shape may have.
const MAX_BRANCHES: u32 = 50_000;
const MAX_HUBS: u32 = 500;

impl Default for Shape {
    fn default() -> Shape {
        Shape::regional()
    }
}

impl Shape {
    /// A few dozen branches in four countries, 15 % international.
    pub fn regional() -> Shape {
        Shape {
            countries: vec!["FR", "CN", "US", "DE"],
            branches: None,
            hubs: None,
            international: 0.15,
            pickup_points: 0.0,
            rhythm: false,
            pre_shipment: false,
            revisions: 0.0,
        }
    }

    /// A Chinese express network: 30,000 outlets, 150 sorting hubs.
    pub fn national_cn() -> Shape {
        Shape {
            countries: vec!["CN"],
            branches: Some(30_000),
            hubs: Some(150),
            international: 0.03,
            pickup_points: 0.35,
            rhythm: true,
            pre_shipment: true,
            revisions: 0.05,
        }
    }

    /// A European parcel network: 5,000 depots in three countries.
    pub fn national_eu() -> Shape {
        Shape {
            countries: vec!["FR", "DE", "ES"],
            branches: Some(5_000),
            hubs: Some(60),
            international: 0.10,
            pickup_points: 0.30,
            rhythm: true,
            pre_shipment: true,
            revisions: 0.05,
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Shape, String> {
        match name {
            "regional" => Ok(Shape::regional()),
            "national-cn" => Ok(Shape::national_cn()),
            "national-eu" => Ok(Shape::national_eu()),
            other => Err(format!("unknown shape {other:?}; the presets are {}", PRESETS.join(", "))),
        }
    }

    /// Checks the bounds, naming the option at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.countries.is_empty() {
            return Err("--countries: name at least one country".into());
        }
        for (i, code) in self.countries.iter().enumerate() {
            if self.countries[..i].contains(code) {
                return Err(format!("--countries: {code} named twice"));
            }
            if country(code).is_none() {
                let known: Vec<_> = COUNTRIES.iter().map(|c| c.code).collect();
                return Err(format!("--countries: unknown country {code:?}; known are {}", known.join(", ")));
            }
        }
        let n = self.countries.len() as u32;
        if let Some(b) = self.branches.filter(|&b| b < n || b > MAX_BRANCHES) {
            return Err(format!("--branches {b}: from one per country ({n}) to {MAX_BRANCHES}"));
        }
        if let Some(h) = self.hubs.filter(|&h| h < n || h > MAX_HUBS) {
            return Err(format!("--hubs {h}: from one per country ({n}) to {MAX_HUBS}"));
        }
        for (name, share) in [
            ("--international", self.international),
            ("--pickup-points", self.pickup_points),
            ("--revisions", self.revisions),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} {share}: a share, from 0 to 1"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: Option<u32>, per: usize| n.map_or(per * self.countries.len(), |n| n as usize);
        write!(
            f,
            "{} branches, {} hubs in {}; {:.0} % international, {:.0} % to pickup points{}{}",
            count(self.branches, 8),
            count(self.hubs, 3),
            self.countries.join("+"),
            self.international * 100.0,
            self.pickup_points * 100.0,
            if self.rhythm { ", daily rhythm" } else { "" },
            if self.pre_shipment { ", pre-shipment delays" } else { "" },
        )
    }
}

pub(super) fn country(code: &str) -> Option<usize> {
    COUNTRIES.iter().position(|c| c.code == code)
}

/// A shape laid out: every place's name, by number.
pub(super) struct World {
    /// The shape's countries, as indexes into [`COUNTRIES`].
    pub countries: Vec<usize>,
    /// Every place's name: branches, hubs, pickup points.
    pub names: Vec<String>,
    /// Per [`COUNTRIES`] entry, the numbers of its branches and its hubs
    /// (abroad: the named ones, for parcels sent from there).
    pub branches: Vec<Vec<u32>>,
    pub hubs: Vec<Vec<u32>>,
    /// The first of each branch's pickup points (two each), by place number.
    pub pickup: Vec<u32>,
    /// Named places: eight branches and three hubs per country, drawn
    /// uniformly. Otherwise the busiest branches come first.
    pub named: bool,
    /// Where the trouble strikes: a branch's bad first day, failing and
    /// damaging branches, a customs backlog and a hub that stops.
    pub disrupted: u32,
    pub failing: u32,
    pub damaging: u32,
    pub backlog_hub: u32,
    pub stalled_hub: u32,
}

impl World {
    pub fn new(shape: &Shape) -> World {
        let countries: Vec<usize> = shape.countries.iter().filter_map(|c| country(c)).collect();
        let mut w = World {
            countries: countries.clone(),
            names: Vec::new(),
            branches: vec![Vec::new(); COUNTRIES.len()],
            hubs: vec![Vec::new(); COUNTRIES.len()],
            pickup: Vec::new(),
            named: shape.branches.is_none() && shape.hubs.is_none(),
            disrupted: 0,
            failing: 0,
            damaging: 0,
            backlog_hub: 0,
            stalled_hub: 0,
        };
        let share = |total: Option<u32>, i: usize| {
            total.map(|t| t as usize / countries.len() + usize::from(i < t as usize % countries.len()))
        };
        for (c, country) in COUNTRIES.iter().enumerate() {
            let at = countries.iter().position(|&x| x == c);
            let branches = at.and_then(|i| share(shape.branches, i));
            let hubs = at.and_then(|i| share(shape.hubs, i));
            w.branches[c] = w.places(country, branches, country.branches, "");
            w.hubs[c] = w.places(country, hubs, country.hubs, "HUB");
        }
        for b in w.branches.iter().flatten().copied().collect::<Vec<_>>() {
            w.pickup.resize(b as usize + 1, 0);
            w.pickup[b as usize] = w.names.len() as u32;
            let name = w.names[b as usize].clone();
            w.names.extend([format!("{name}-PP1"), format!("{name}-PP2")]);
        }
        let (first, last) = (countries[0], countries[countries.len() - 1]);
        let third = countries[2 % countries.len()];
        let nth = |list: &Vec<u32>, i: usize| list[i.min(list.len() - 1)];
        w.disrupted = nth(&w.branches[first], 0);
        w.failing = nth(&w.branches[last], 2);
        w.damaging = nth(&w.branches[third], 2);
        w.backlog_hub = nth(&w.hubs[last], 0);
        w.stalled_hub = nth(&w.hubs[first], 0);
        w
    }

    /// Numbers `count` places of a country (the named ones when `None`):
    /// hubs (`kind` "HUB") or branches, named after its cities in turn.
    fn places(&mut self, country: &Country, count: Option<usize>, named: &[&str], kind: &str) -> Vec<u32> {
        let first = self.names.len() as u32;
        match count {
            None => self.names.extend(named.iter().map(|n| n.to_string())),
            Some(n) => {
                // The cities are the middle part of the named places: FR-PAR-12.
                let cities: Vec<&str> = country.branches.iter().filter_map(|b| b.split('-').nth(1)).collect();
                for i in 0..n {
                    let city = cities[i % cities.len()];
                    let k = i / cities.len() + 1;
                    self.names.push(format!("{}-{city}-{kind}{k:0>4}", country.code));
                }
            }
        }
        (first..self.names.len() as u32).collect()
    }

    pub fn name(&self, place: u32) -> &str {
        &self.names[place as usize]
    }

    /// The hub that serves a branch of country `c`.
    pub fn hub_of(&self, c: usize, branch: u32) -> u32 {
        let hubs = &self.hubs[c];
        let first = self.branches[c][0];
        hubs[(branch - first) as usize % hubs.len()]
    }
}
