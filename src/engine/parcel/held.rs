//! An event held aside for its parcel (newer than a deadline not judged
//! yet, or a contact waiting for the watermark), in one allocation: its
//! strings back to back in one box, the rest inline. As an owned [`Event`]
//! it took some 330 bytes in five allocations, and a national network holds
//! tens of thousands; held, it takes 72 bytes and one. It is let in as an
//! [`Event`] that borrows from it, so letting it in allocates nothing more.

use std::borrow::Cow;

use crate::event::{Channels, Contact, Event, Kind, Recipient};
use crate::time::Ts;

/// The strings, in the order they are kept: the event's own, then its recipient's.
#[derive(Clone, Copy)]
enum Text {
    EventId,
    ParcelId,
    Facility,
    Branch,
    Service,
    Reason,
    Name,
    Phone,
    Email,
    Locale,
    Tz,
}
const TEXTS: usize = Text::Tz as usize + 1;

/// Bits of `present` past one a string (a string given empty is not a string absent).
const PROMISED_BY: u16 = 1 << TEXTS;
const RETURN_BY: u16 = 1 << (TEXTS + 1);
const RECIPIENT: u16 = 1 << (TEXTS + 2);

/// Longest string kept, in bytes, so every end fits its `u16`. Decoded
/// events are far below it (200 characters a text field); only a
/// checkpoint written by hand could reach it.
const MAX_TEXT: usize = 4096;

pub struct Held {
    pub at: Ts,
    pub kind: Kind,
    /// Uppercase letters, or zeros when the event gave no country.
    country: [u8; 2],
    present: u16,
    /// End offsets in `text`, one a string, absent ones empty.
    ends: [u16; TEXTS],
    text: Box<str>,
    promised_by: Ts,
    return_by: Ts,
    channels: Option<Channels>,
    contact: Option<Contact>,
}

impl Held {
    pub fn new(ev: &Event<'_>) -> Held {
        let r = ev.recipient.as_deref();
        // In [`Text`] order.
        let texts: [Option<&str>; TEXTS] = [
            Some(&ev.event_id),
            Some(&ev.parcel_id),
            ev.facility.as_deref(),
            ev.branch.as_deref(),
            ev.service.as_deref(),
            ev.reason.as_deref(),
            r.and_then(|r| r.name.as_deref()),
            r.and_then(|r| r.phone.as_deref()),
            r.and_then(|r| r.email.as_deref()),
            r.and_then(|r| r.locale.as_deref()),
            r.and_then(|r| r.tz.as_deref()),
        ];
        let mut text = String::with_capacity(texts.iter().flatten().map(|s| s.len().min(MAX_TEXT)).sum());
        let mut ends = [0; TEXTS];
        let mut present = 0;
        for (i, t) in texts.into_iter().enumerate() {
            if let Some(t) = t {
                text.push_str(capped(t));
                present |= 1 << i;
            }
            ends[i] = text.len() as u16;
        }
        for (bit, given) in [(PROMISED_BY, ev.promised_by), (RETURN_BY, ev.return_by)] {
            present |= if given.is_some() { bit } else { 0 };
        }
        if r.is_some() {
            present |= RECIPIENT;
        }
        Held {
            at: ev.at,
            kind: ev.kind,
            country: ev.country.unwrap_or([0; 2]),
            present,
            ends,
            text: text.into_boxed_str(),
            promised_by: ev.promised_by.unwrap_or(Ts::MIN),
            return_by: ev.return_by.unwrap_or(Ts::MIN),
            channels: r.and_then(|r| r.channels),
            contact: ev.contact,
        }
    }

    /// The event as it came, its strings borrowed from here.
    pub fn event(&self) -> Event<'_> {
        let text = |t: Text| (self.present & 1 << t as usize != 0).then(|| Cow::Borrowed(self.part(t)));
        let given = |bit: u16, t: Ts| (self.present & bit != 0).then_some(t);
        let recipient = (self.present & RECIPIENT != 0).then(|| {
            Box::new(Recipient {
                name: text(Text::Name),
                phone: text(Text::Phone),
                email: text(Text::Email),
                locale: text(Text::Locale),
                tz: text(Text::Tz),
                channels: self.channels,
            })
        });
        Event {
            event_id: Cow::Borrowed(self.part(Text::EventId)),
            parcel_id: Cow::Borrowed(self.part(Text::ParcelId)),
            kind: self.kind,
            at: self.at,
            facility: text(Text::Facility),
            branch: text(Text::Branch),
            country: (self.country != [0; 2]).then_some(self.country),
            promised_by: given(PROMISED_BY, self.promised_by),
            service: text(Text::Service),
            recipient,
            reason: text(Text::Reason),
            return_by: given(RETURN_BY, self.return_by),
            contact: self.contact,
        }
    }

    fn part(&self, t: Text) -> &str {
        let i = t as usize;
        let start = if i == 0 { 0 } else { usize::from(self.ends[i - 1]) };
        self.text.get(start..usize::from(self.ends[i])).unwrap_or_default()
    }
}

fn capped(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, ContactChannel, Topic};

    #[test]
    fn a_held_event_gives_back_the_event_it_held_in_72_bytes() {
        assert_eq!(std::mem::size_of::<Held>(), 72);
        let full = r#"{"v":1,"event_id":"e-1","parcel_id":"P1","kind":"label_created","at":"2026-03-02T08:00:00Z",
            "facility":"HUB-ÉVRY","branch":"","service":"express","country":"FR","reason":"x",
            "promised_by":"2026-03-04T18:00:00Z",
            "recipient":{"name":"Zoë","phone":"+33612345678","email":"z@example.org","locale":"fr-FR",
            "tz":"Europe/Paris","channels":["sms"]}}"#
            .replace('\n', "");
        let bare = r#"{"v":1,"event_id":"e-2","parcel_id":"P1","kind":"ready_for_pickup","at":"2026-03-02T09:00:00Z",
            "return_by":"2026-03-12T09:00:00Z","recipient":{}}"#
            .replace('\n', "");
        for json in [full.as_str(), bare.as_str()] {
            let ev = decode(json.as_bytes()).expect("a valid test event");
            assert_eq!(Held::new(&ev).event(), ev, "{json}");
        }
        let contact =
            r#"{"v":1,"event_id":"c-1","parcel_id":"P1","kind":"customer_contact","at":"2026-03-02T10:00:00Z",
            "channel":"phone","topic":"not_received"}"#
                .replace('\n', "");
        let ev = decode(contact.as_bytes()).expect("a valid contact");
        let held = Held::new(&ev);
        assert_eq!(held.event(), ev);
        let c = held.event().contact.expect("the contact kept");
        assert_eq!((c.channel, c.topic), (Some(ContactChannel::Phone), Topic::NotReceived));
    }

    #[test]
    fn an_overlong_string_is_cut_at_a_character_boundary_and_the_others_stay_whole() {
        let mut ev =
            decode(br#"{"v":1,"event_id":"e-1","parcel_id":"P1","kind":"departed","at":"2026-03-02T08:00:00Z"}"#)
                .expect("a valid test event");
        let long = "é".repeat(MAX_TEXT);
        ev.facility = Some(Cow::Owned(long.clone()));
        ev.reason = Some(Cow::Borrowed("after"));
        let back = Held::new(&ev);
        let back = back.event();
        let facility = back.facility.as_deref().expect("kept");
        assert!(facility.len() <= MAX_TEXT && long.starts_with(facility), "{} bytes", facility.len());
        assert_eq!(back.reason.as_deref(), Some("after"));
        assert_eq!(back.parcel_id, "P1");
    }
}
