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
