use super::*;
use crate::engine::window::{parcel_hash, Window};

#[test]
fn contact_strings_share_the_id_allocation() {
    let mut w = Window::default();
    let s = w.insert("1Z9", parcel_hash("1Z9"), Ts(0));
    let p = w.get_mut(s);
    assert_eq!((p.name(), p.phone(), p.email()), (None, None, None));
    p.set_contact(Some("Léa Martin"), None, Some("lea@example.fr"));
    assert_eq!((p.id(), p.name(), p.phone(), p.email()), ("1Z9", Some("Léa Martin"), None, Some("lea@example.fr")));
}

#[test]
fn seen_spills_and_forgets_the_oldest() {
    let mut seen = Seen::default();
    for fp in 1..=MAX_SEEN as u32 + 5 {
        assert!(seen.insert(fp));
    }
    assert!(!seen.insert(3), "inline fingerprints are kept");
    assert!(!seen.insert(MAX_SEEN as u32), "recent spilled fingerprints are kept");
    assert!(seen.insert(INLINE_SEEN as u32 + 1), "the oldest spilled fingerprint was forgotten");
}

#[test]
fn a_parcel_is_three_cache_lines() {
    // Every byte here is paid a million times and every line on every event.
    assert_eq!(std::mem::size_of::<Parcel>(), 192);
    // Only parcels contacted or given an estimate have one: the estimate
    // told (its days and the alert that told it) costs them 24 bytes, and
    // the instants are 6 bytes each.
    assert_eq!(std::mem::size_of::<Talk>(), 56, "a talk is one small allocation");
}

#[test]
fn the_recipient_flags_keep_the_channel_choice() {
    let mut w = Window::default();
    let s = w.insert("P", parcel_hash("P"), Ts(0));
    let p = w.get_mut(s);
    assert!(!p.has_recipient());
    p.set_channels(None);
    assert_eq!((p.has_recipient(), p.channels()), (true, None));
    p.set_channels(Some(Channels::default()));
    assert_eq!(p.channels(), Some(Channels::default()));
    p.set_channels(Some(Channels(Channels::SMS.0 | Channels::EMAIL.0)));
    assert!(p.channels().unwrap().contains(Channels::EMAIL));
}

#[test]
fn contacts_keep_the_newest_four() {
    let mut w = Window::default();
    let s = w.insert("P", parcel_hash("P"), Ts(0));
    let p = w.get_mut(s);
    for h in [5, 1, 9, 3, 7] {
        p.add_contact(Ts(h * 3_600_000), crate::event::Topic::Track);
    }
    assert_eq!(p.contacts_within(crate::time::Span::hours(5)), 3);
    assert_eq!(p.contacts().map(|(t, _)| t.0 / 3_600_000).collect::<Vec<_>>(), [3, 5, 7, 9]);
    assert_eq!(p.told_at(), Ts::MAX);
    assert!(p.tell(Ts(4), 1) && !p.tell(Ts(5), 2), "the first telling is the one noted");
    assert_eq!((p.told_at(), p.told_by()), (Ts(4), 1));
}

#[test]
fn a_parcel_told_and_never_contacted_keeps_its_telling_in_itself_through_a_checkpoint() {
    use crate::engine::codec::{Body, Remap, W};
    let mut w = Window::default();
    let s = w.insert("P", parcel_hash("P"), Ts(0));
    let p = w.get_mut(s);
    p.set_contact(Some("Zoé"), Some("+33612345678"), None);
    assert!(p.tell(Ts(7), 2));
    assert!(p.talk.is_none(), "a telling alone allocates nothing");
    let mut out = W::default();
    p.save(&mut out);
    let body = Body::open(&out.snapshot().compress()).expect("opens");
    let remap = Remap { rules: (0..4).map(Some).collect(), counts: Vec::new(), syms: Default::default() };
    let back = Parcel::load(&mut body.reader(), &remap).expect("loads");
    assert_eq!((back.id(), back.name(), back.phone()), ("P", Some("Zoé"), Some("+33612345678")));
    assert_eq!((back.told_at(), back.told_by(), back.talk.is_none()), (Ts(7), 2, true));
    let mut contacted = back;
    contacted.add_contact(Ts(9), crate::event::Topic::Track);
    let mut out = W::default();
    contacted.save(&mut out);
    let body = Body::open(&out.snapshot().compress()).expect("opens");
    let back = Parcel::load(&mut body.reader(), &remap).expect("loads");
    assert_eq!((back.told_at(), back.contacts().count()), (Ts(7), 1), "a contact keeps its talk");
}

#[test]
fn the_first_two_open_episodes_need_no_aside() {
    let mut w = Window::default();
    let s = w.insert("P", parcel_hash("P"), Ts(0));
    let p = w.get_mut(s);
    p.open(Open { rule: 3, at: Ts(10) });
    p.open(Open { rule: 5, at: Ts(20) });
    assert!(p.aside.is_none(), "two episodes open stay in the parcel");
    p.open(Open { rule: 6, at: Ts(25) });
    assert!(p.aside.is_some(), "a third is set aside");
    assert_eq!(p.open_rules(), 1 << 3 | 1 << 5 | 1 << 6);
    assert_eq!(p.take_open(3), Some(Open { rule: 3, at: Ts(10) }));
    assert_eq!(p.take_open(3), None);
    p.open(Open { rule: 7, at: Ts(30) });
    let opens: Vec<Open> = p.opens().collect();
    assert_eq!(opens, [Open { rule: 7, at: Ts(30) }, Open { rule: 5, at: Ts(20) }, Open { rule: 6, at: Ts(25) }]);
    // A new pack without rules 5 and 6, and rule 7 moved to place 0.
    let mut remap = vec![None; 8];
    remap[7] = Some(0);
    p.remap_rules(&remap);
    assert_eq!(p.opens().collect::<Vec<_>>(), [Open { rule: 0, at: Ts(30) }]);
    assert!(p.aside.is_none(), "an aside left empty is dropped");
    assert_eq!(p.take_open(0), Some(Open { rule: 0, at: Ts(30) }));
    assert_eq!(p.open_rules(), 0);
}
