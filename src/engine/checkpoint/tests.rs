use std::path::Path;

use super::*;
use crate::event::decode;
use crate::simulate::{self, Network, Shape};

fn pack() -> RuleSet {
    RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("the default pack loads")
}

fn network(parcels: u64) -> Vec<u8> {
    let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").expect("a start time");
    let mut data = Vec::new();
    simulate::write(
        &Network { parcels, seed: 5, start, days: 1.0, shape: Shape::default(), reaction: Default::default() },
        &mut data,
        |_| {},
    )
    .expect("simulates");
    data
}

/// A table of names for one engine alone.
fn own_table() -> Symbols {
    Symbols::new(Config::default().max_symbols)
}

/// Ingests `lines`, returning the alerts as JSON lines.
fn feed(engine: &mut Engine, lines: &[&[u8]]) -> Vec<u8> {
    let (mut out, mut text) = (Vec::new(), Vec::new());
    for line in lines {
        engine.ingest(&decode(line).expect("simulated events decode"), &mut out);
    }
    engine.advance(engine.input_watermark(), &mut out);
    out.drain(..).for_each(|a| a.write_json_line(&mut text));
    text
}

#[test]
fn resuming_from_a_checkpoint_gives_the_alerts_of_an_uninterrupted_run() {
    let data = network(3000);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let half = lines.len() / 2;
    let mut whole = Engine::new(pack(), Config::default());
    let expected = feed(&mut whole, &lines);

    let mut first = Engine::new(pack(), Config::default());
    let mut got = feed(&mut first, &lines[..half]);
    let saved = first.checkpoint();
    let mut judged = Vec::new();
    first.take_judged(&mut judged, &mut Vec::new());
    drop(first);
    let mut resumed = Engine::restore(&saved, pack(), Config::default()).expect("restores");
    got.extend(feed(&mut resumed, &lines[half..]));
    resumed.take_judged(&mut judged, &mut Vec::new());
    let mut judged_whole = Vec::new();
    whole.take_judged(&mut judged_whole, &mut Vec::new());
    assert!(judged_whole.len() > 20, "contacts judged: {}", judged_whole.len());
    assert_eq!(judged, judged_whole, "who spoke first survives a checkpoint");

    assert!(expected.len() > 10_000);
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
    assert_eq!(resumed.stats(), whole.stats());
    assert_eq!(resumed.parcels(), whole.parcels());
}

/// A whole snapshot and the chain of changes after it restore the engine a
/// whole snapshot taken with the last changes would: the same bytes again,
/// and the same alerts after. Between them the engine takes scans,
/// wake-ups, evictions and a reload of its rules (which rewrites every
/// parcel).
#[test]
fn a_chain_of_changes_on_a_whole_snapshot_restores_what_a_whole_one_would() {
    let data = network(3000);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let (a, b, c) = (lines.len() / 3, lines.len() / 3 + lines.len() / 50, lines.len() * 2 / 3);
    let mut expected = Engine::new(pack(), Config::default());
    let expected = feed(&mut expected, &lines);
    let mut engine = Engine::new(pack(), Config::default());
    let mut got = feed(&mut engine, &lines[..a]);
    let whole = engine.snapshot_into(Vec::new(), Form::Whole);
    let whole_bytes = whole.len();
    let whole = whole.compress();
    assert_eq!(engine.changes().0, 0);
    got.extend(feed(&mut engine, &lines[a..b]));
    let (changed, slots) = engine.changes();
    assert!(changed > 0 && changed * 4 < slots, "{changed} of {slots} slots changed");
    let few = engine.snapshot_into(Vec::new(), Form::Changes);
    assert!(few.len() * 2 < whole_bytes, "changes {} bytes, whole {whole_bytes}", few.len());
    let as_whole = |e: &Engine| e.snapshot().into_buffer();
    let few = few.compress();
    let restored = Engine::restore_sharing(&[&whole, &few], pack(), Config::default(), own_table()).expect("restores");
    assert!(as_whole(&restored) == as_whole(&engine), "whole + changes is the engine at the changes");
    assert_eq!(engine.changes().0, 0, "the next changes count from these");

    got.extend(feed(&mut engine, &lines[b..c]));
    let more = engine.snapshot_into(Vec::new(), Form::Changes).compress();
    let skipped = Engine::restore_sharing(&[&whole, &more], pack(), Config::default(), own_table()).expect("restores");
    assert!(as_whole(&skipped) != as_whole(&engine), "changes count from the last changes, not the whole snapshot");
    let mut reordered = pack();
    reordered.rules.reverse();
    engine.replace_rules(reordered.clone());
    let last = engine.snapshot_into(Vec::new(), Form::Changes).compress();
    let mut restored =
        Engine::restore_sharing(&[&whole, &few, &more, &last], reordered, Config::default(), own_table())
            .expect("restores");
    assert!(as_whole(&restored) == as_whole(&engine), "whole + the chain is the engine at its last link");
    got.extend(feed(&mut restored, &lines[c..]));
    let ids = |json: &[u8]| -> Vec<String> {
        let mut ids: Vec<String> = String::from_utf8_lossy(json).lines().map(|l| l[..60].to_string()).collect();
        ids.sort();
        ids
    };
    assert!(expected.len() > 10_000);
    assert_eq!(ids(&got), ids(&expected));
}

/// A merged snapshot holds the slots written since the snapshot before
/// the last one: it takes the last link's place in its chain, again and
/// again, and the chain restores the engine. The last link alone, left in
/// place, would not.
#[test]
fn a_merged_link_takes_the_last_link_s_place_in_its_chain() {
    let data = network(3000);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let at = |k: usize| lines.len() * k / 10;
    let as_whole = |e: &Engine| e.snapshot().into_buffer();
    let restores = |chain: &[&[u8]], engine: &Engine| {
        let restored = Engine::restore_sharing(chain, pack(), Config::default(), own_table()).expect("restores");
        as_whole(&restored) == as_whole(engine)
    };
    let mut engine = Engine::new(pack(), Config::default());
    feed(&mut engine, &lines[..at(3)]);
    let whole = engine.snapshot_into(Vec::new(), Form::Whole).compress();
    feed(&mut engine, &lines[at(3)..at(4)]);
    let first = engine.snapshot_into(Vec::new(), Form::Changes).compress();
    feed(&mut engine, &lines[at(4)..at(5)]);
    let last_changed = engine.changes().0;
    engine.snapshot_into(Vec::new(), Form::Changes);
    assert_eq!(engine.merged_changes(), last_changed, "nothing written since: the last link's slots");
    feed(&mut engine, &lines[at(5)..at(6)]);
    let (changed, merged) = (engine.changes().0, engine.merged_changes());
    assert!(merged > changed && merged > last_changed && merged <= changed + last_changed, "{merged}");
    let once = engine.snapshot_into(Vec::new(), Form::Merged).compress();
    assert!(restores(&[&whole, &first, &once], &engine), "the merged link in the last one's place");
    assert_eq!(engine.merged_changes(), merged, "the next merge counts from the same snapshot");
    feed(&mut engine, &lines[at(6)..at(7)]);
    let twice = engine.snapshot_into(Vec::new(), Form::Merged).compress();
    assert!(restores(&[&whole, &first, &twice], &engine), "merged again, in the same place");
    assert!(!restores(&[&whole, &first, &once], &engine), "the link it replaced is the engine of before");
    feed(&mut engine, &lines[at(7)..at(8)]);
    let next = engine.snapshot_into(Vec::new(), Form::Changes).compress();
    assert!(restores(&[&whole, &first, &twice, &next], &engine), "a link after a merged one counts from it");
}

/// Engines sharing a process's table of names resume, in a process whose
/// table names the places in another order, with the alerts of engines that
/// never stopped: each object's symbols are mapped onto the new table
/// (whole objects and changes, with a name the new process met first).
#[test]
fn engines_resume_in_a_process_naming_places_in_another_order() {
    let data = network(3000);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let of = |i: u16| -> Vec<&[u8]> {
        let parcel = |l: &&[u8]| decode(l).expect("decodes").parcel_id.to_string();
        lines.iter().filter(|l| crate::partition::of(&parcel(l), 2) == i).copied().collect()
    };
    let parts = [of(0), of(1)];
    let expected: Vec<Vec<u8>> =
        parts.iter().map(|lines| feed(&mut Engine::new(pack(), Config::default()), lines)).collect();

    // Saved by two processes, each naming places as its own parcels met them.
    let mut got = [Vec::new(), Vec::new()];
    let mut saved = Vec::new();
    for (i, lines) in parts.iter().enumerate() {
        let (third, half) = (lines.len() / 3, lines.len() / 2);
        let mut engine = Engine::sharing(pack(), Config::default(), own_table());
        got[i] = feed(&mut engine, &lines[..third]);
        let whole = engine.snapshot_into(Vec::new(), Form::Whole).compress();
        got[i].extend(feed(&mut engine, &lines[third..half]));
        saved.push((whole, engine.snapshot_into(Vec::new(), Form::Changes).compress()));
    }
    // Restored side by side into a table that already names a place.
    let syms = own_table();
    syms.lock().intern("a place the new process met first").expect("room");
    for (i, (whole, changes)) in saved.iter().enumerate() {
        let mut engine =
            Engine::restore_sharing(&[whole, changes], pack(), Config::default(), syms.clone()).expect("restores");
        got[i].extend(feed(&mut engine, &parts[i][parts[i].len() / 2..]));
    }
    for (got, expected) in got.iter().zip(&expected) {
        assert!(expected.len() > 5_000);
        assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(expected));
    }
}

#[test]
fn a_checkpoint_restores_under_a_reordered_pack() {
    let data = network(1500);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let half = lines.len() / 2;
    let ids = |json: &[u8]| -> Vec<String> {
        let mut ids: Vec<String> = String::from_utf8_lossy(json).lines().map(|l| l[..60].to_string()).collect();
        ids.sort();
        ids
    };
    let mut whole = Engine::new(pack(), Config::default());
    let expected = feed(&mut whole, &lines);
    let mut first = Engine::new(pack(), Config::default());
    let mut got = feed(&mut first, &lines[..half]);
    let mut reordered = pack();
    reordered.rules.reverse();
    let saved = first.checkpoint();
    let mut resumed = Engine::restore(&saved, reordered, Config::default()).expect("restores");
    got.extend(feed(&mut resumed, &lines[half..]));
    assert_eq!(ids(&got), ids(&expected), "same alert ids and rules, whatever the rule order");
    let rules = |e: &mut Engine| {
        let mut judged = Vec::new();
        e.take_judged(&mut judged, &mut Vec::new());
        let mut rules: Vec<String> = judged.iter().map(|j| format!("{} {}", j.at, j.rule)).collect();
        rules.sort();
        rules
    };
    let mut both = rules(&mut first);
    both.extend(rules(&mut resumed));
    both.sort();
    assert_eq!(both, rules(&mut whole), "the rule that spoke first, whatever the rule order");
}

#[test]
fn a_damaged_checkpoint_is_refused_with_the_way_out() {
    let mut engine = Engine::new(pack(), Config::default());
    let data = network(200);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    feed(&mut engine, &lines);
    let saved = engine.checkpoint();
    let refusal = |bytes: &[u8]| match Engine::restore(bytes, pack(), Config::default()) {
        Ok(_) => panic!("a damaged checkpoint was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(refusal(b"{\"v\":1}").starts_with("not a forewarn checkpoint"));
    let mut future = saved.clone();
    future[4] = 13;
    assert!(refusal(&future).starts_with("checkpoint format v13, this forewarn reads v10 to v12"));
    assert!(refusal(&saved[..saved.len() / 2]).starts_with("corrupt checkpoint"));
    for message in [refusal(b"{\"v\":1}"), refusal(&future), refusal(&saved[..saved.len() / 2])] {
        assert!(message.ends_with("start without it to rebuild the state from the stream"), "{message}");
    }
}

/// A checkpoint of the format before (v11: instants as their zigzag
/// values, fingerprints and hashes as varints), written by the last build
/// of that format (a432ddf) from the first half of `network(100)` under
/// the default pack, restores into the engine the same events make today:
/// its state, written again, is byte for byte that engine's. (Should the
/// simulator or the pack change what those events make, this fails; it
/// goes with its file once v11 is no longer read, `OLDEST`.)
#[test]
fn a_checkpoint_of_the_format_before_restores_the_engine_it_saved() {
    let data = network(100);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut engine = Engine::new(pack(), Config::default());
    feed(&mut engine, &lines[..lines.len() / 2]);
    let v11 = include_bytes!("v11.fwck");
    assert_eq!(u32::from_le_bytes([v11[4], v11[5], v11[6], v11[7]]), 11);
    let restored = Engine::restore(v11, pack(), Config::default()).expect("a v11 checkpoint restores");
    assert!(restored.parcels() > 50, "parcels: {}", restored.parcels());
    assert!(restored.checkpoint() == engine.checkpoint(), "the v11 checkpoint restored another state");
}

/// The estimate last told to a customer is what a `revised` rule compares
/// with: a restart must not forget it (a revision would be missed) or
/// garble it (one would be sent for nothing).
#[test]
fn the_estimate_told_survives_a_checkpoint() {
    let data = network(50);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut engine = Engine::new(pack(), Config::default());
    feed(&mut engine, &lines);
    let told = crate::engine::expected::Told { first: 20_775, last: 20_777, on: 20_774, by: [u64::MAX - 7, 42] };
    let slot = engine.window.live_slots()[7];
    engine.window.get_mut(slot).tell_estimate(told);
    let id = engine.window.get(slot).id().to_string();
    let restored = Engine::restore(&engine.checkpoint(), pack(), Config::default()).expect("restores");
    let slot = restored.window.find(&id, crate::engine::window::parcel_hash(&id)).expect("the parcel is restored");
    assert_eq!(restored.window.get(slot).told_estimate(), told);
}

/// Any sequence of the forms the processor chooses among (whole; the next
/// link while the chain is short; the last link again, merged), with
/// parcels arriving, waking, evicted from a full window and rewritten by a
/// reload of the rules in between, some steps writing nothing: after each
/// snapshot, the chain as the store then holds it (the whole object and its
/// links, a merged link in the last one's place) restores the engine, byte
/// for byte its own whole snapshot.
#[test]
fn every_chain_of_whole_changes_and_merged_links_restores_the_engine_at_each_step() {
    use rand::{Rng, SeedableRng};
    let data = network(1500);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let config = Config { max_parcels: 500, ..Config::default() };
    let mut used = [0usize; 3];
    for seed in 1..=4 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut engine, mut set) = (Engine::new(pack(), config.clone()), pack());
        let mut chain: Vec<Vec<u8>> = Vec::new();
        let mut at = 0;
        while at < lines.len() {
            let take = [0, 1, 40, 300, 900][rng.gen_range(0..5)].min(lines.len() - at);
            feed(&mut engine, &lines[at..at + take]);
            at += take;
            if rng.gen_bool(0.05) {
                set.rules.reverse();
                engine.replace_rules(set.clone());
            }
            let links = chain.len().saturating_sub(1);
            let form = match rng.gen_range(0..5) {
                _ if chain.is_empty() => Form::Whole,
                0 => Form::Whole,
                1 | 2 if links < 8 => Form::Changes,
                _ if links > 0 => Form::Merged,
                _ => Form::Whole,
            };
            let snapshot = engine.snapshot_into(Vec::new(), form).compress();
            match form {
                Form::Whole => chain = vec![snapshot],
                Form::Changes => chain.push(snapshot),
                Form::Merged => *chain.last_mut().expect("a link to merge into") = snapshot,
            }
            used[form as usize] += 1;
            let stored: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            let restored =
                Engine::restore_sharing(&stored, set.clone(), config.clone(), own_table()).expect("the chain restores");
            assert!(
                restored.snapshot().into_buffer() == engine.snapshot().into_buffer(),
                "seed {seed}, {at} of {} events, a chain of {} after a {form:?} snapshot",
                lines.len(),
                chain.len()
            );
        }
        assert!(engine.stats().evicted_capacity > 100, "slots freed and taken again: {:?}", engine.stats());
    }
    assert!(used.iter().all(|&n| n >= 10), "whole, changes and merged each taken often: {used:?}");
}
