use super::*;

#[test]
fn table_finds_inserts_and_removes_under_collisions() {
    let mut w = Window::default();
    let ids: Vec<String> = (0..5000).map(|i| format!("P{i}")).collect();
    let slots: Vec<u32> = ids.iter().map(|id| w.insert(id, parcel_hash(id), Ts(0))).collect();
    for (id, slot) in ids.iter().zip(&slots) {
        assert_eq!(w.find(id, parcel_hash(id)), Some(*slot));
    }
    for (id, slot) in ids.iter().zip(&slots).step_by(2) {
        w.remove(*slot, parcel_hash(id));
    }
    for (i, id) in ids.iter().enumerate() {
        let found = w.find(id, parcel_hash(id));
        assert_eq!(found.is_some(), i % 2 == 1, "{id}");
    }
    assert_eq!(w.len(), 2500);
    // Freed slots are reused.
    let again = w.insert("P0", parcel_hash("P0"), Ts(0));
    assert!(slots.contains(&again));
}

/// A tombstone keeps its parcel's end through a checkpoint; one from a v10
/// checkpoint, which did not save it, is read as ended at the dawn of time
/// (a label then starts a new parcel, as v10 did), not refused.
#[test]
fn tombstones_keep_their_end_through_a_checkpoint_and_read_v10_without_it() {
    use crate::engine::codec::{Body, W};
    let (a, b) = (parcel_hash("A"), parcel_hash("B"));
    let mut graves = Tombstones::new(64);
    graves.add(a, Ts(1_795_000_000_000));
    let mut w = W::default();
    graves.save(&mut w);
    let body = Body::open(&w.snapshot().compress()).expect("opens");
    let back = Tombstones::load(&mut body.reader(), 64).expect("loads");
    assert_eq!((back.ended(a), back.ended(b)), (Some(Ts(1_795_000_000_000)), None));

    let mut v10 = W::default();
    [64, 1, a & 63, a].into_iter().for_each(|v| v10.u(v));
    let bytes = v10.snapshot().into_buffer();
    let mut r = crate::engine::codec::R::new(&bytes, 10);
    let back = Tombstones::load(&mut r, 64).expect("loads");
    assert_eq!((back.ended(a), r.end().is_ok()), (Some(Ts::MIN), true));
}
