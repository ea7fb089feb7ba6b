//! The simulator: valid phone numbers, the regional network as it always
//! was, the same bytes per seed, and what a national network has.

use std::collections::BTreeSet;

use super::*;

fn simulate(parcels: u64, shape: Shape) -> Vec<u8> {
    let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap();
    let mut out = Vec::new();
    write(&Network { parcels, seed: 3, start, days: 2.0, shape, reaction: Default::default() }, &mut out, |_| {})
        .unwrap();
    out
}

#[test]
fn the_regional_shape_draws_the_network_it_always_drew() {
    // The digest of the file the simulator wrote before it had shapes:
    // figures measured on it stay comparable.
    let bytes = simulate(3_000, Shape::regional());
    assert_eq!(xxhash_rust::xxh3::xxh3_64(&bytes), REGIONAL_DIGEST);
}

const REGIONAL_DIGEST: u64 = 2_406_016_159_449_763_239;

#[test]
fn each_shape_gives_the_same_bytes_for_the_same_seed() {
    for name in PRESETS {
        let shape = Shape::preset(name).unwrap();
        assert_eq!(simulate(1_000, shape.clone()), simulate(1_000, shape), "{name}");
    }
}

#[test]
fn a_national_network_has_its_size_pickup_points_rhythm_and_forgotten_parcels() {
    let bytes = simulate(20_000, Shape::national_cn());
    let events: Vec<serde_json::Value> =
        bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    let field = |e: &serde_json::Value, f: &str| e[f].as_str().unwrap_or_default().to_string();
    let branches: BTreeSet<String> = events.iter().map(|e| field(e, "branch")).collect();
    let hubs: BTreeSet<String> = events.iter().map(|e| field(e, "facility")).filter(|f| f.contains("-HUB")).collect();
    assert!(branches.len() > 4_000 && branches.iter().all(|b| b.starts_with("CN-")), "{} branches", branches.len());
    assert!(hubs.len() > 140, "{} hubs", hubs.len());
    let kind = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
    let pickup_points =
        events.iter().filter(|e| e["kind"] == "ready_for_pickup" && field(e, "facility").contains("-PP")).count();
    assert!(pickup_points > 20_000 / 4, "{pickup_points} parcels to pickup points");
    let labels = kind("label_created");
    assert!(labels - kind("picked_up") > 20_000 / 50, "parcels never handed over");
    let revised = events.iter().filter(|e| e["kind"] != "label_created" && e.get("promised_by").is_some()).count();
    assert!(revised > 20_000 / 40, "{revised} revised promises");
    // Hub departures leave in the sort waves: 22:00, 02:00, 05:00 Beijing time, within 20 minutes.
    let departures: Vec<i64> = events
        .iter()
        .filter(|e| e["kind"] == "departed" && field(e, "facility").starts_with("CN-"))
        .map(|e| Ts::parse_rfc3339(&field(e, "at")).unwrap().0 + 8 * HOUR)
        .collect();
    let in_wave = departures.iter().filter(|&&t| {
        let minute = t.rem_euclid(24 * HOUR) / 60_000;
        [22 * 60, 2 * 60, 5 * 60].iter().any(|w| (minute - w).rem_euclid(24 * 60) < 20)
    });
    assert_eq!(in_wave.count(), departures.len());
}

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
