//! The v1 input contract (`shared/events.md`): decoding scan and contact
//! events from JSON and the reasons an event is rejected.
//!
//! This is the only place that knows the wire format. It turns bytes into a
//! validated [`Event`] that borrows from the input (no copy of strings that
//! need no unescaping), or into a [`Reject`] that names the offending field.
//! The fast path is one typed serde pass; only when it fails does a slower
//! pass (`event/reject.rs`) look at the document again to say precisely
//! which field is wrong.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use crate::time::{Span, Ts};

mod reject;

pub use reject::Reject;
use reject::{echo, explain, field_at, too_deep};

/// Largest event accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects accepted (the contract's is 3):
/// 30,000 brackets fit in an event's 64 KiB, and the parsers recurse on
/// them until a 2 MiB thread's stack overflows and the process aborts.
pub const MAX_DEPTH: usize = 64;
/// Longest `event_id` and `parcel_id`, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Timestamps are accepted from 1970-01-01 to the end of 2099: no scanner
/// saw a parcel before, and a date after is a broken clock, not a plan.
pub const EARLIEST: Ts = Ts(0);
pub const LATEST: Ts = Ts(4_102_444_800_000);
/// Longest text field (facility, branch, service, reason, the recipient's
/// name, phone, locale and time zone), in characters: a 3,000-character
/// branch made keys too long for NATS, a 50,000-character name made the
/// mail server refuse the customer's message.
pub const MAX_TEXT_CHARS: usize = 200;
/// Longest email address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Characters no text field may hold: controls (NUL, ESC, CR/LF…) and the
/// bidirectional overrides that make a text read otherwise than it is.
pub fn is_unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

macro_rules! closed_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum! {
    /// What an event says happened.
    Kind {
        LabelCreated = "label_created",
        PickedUp = "picked_up",
        Arrived = "arrived",
        Departed = "departed",
        OutForDelivery = "out_for_delivery",
        DeliveryFailed = "delivery_failed",
        Delivered = "delivered",
        ReadyForPickup = "ready_for_pickup",
        Collected = "collected",
        Returned = "returned",
        CustomsHold = "customs_hold",
        CustomsReleased = "customs_released",
        Damaged = "damaged",
        Lost = "lost",
        Exception = "exception",
        CustomerContact = "customer_contact",
    }
}

closed_enum! {
    /// The customer-service activity a contact was about.
    Topic {
        Track = "track",
        LostTrackingNumber = "lost_tracking_number",
        NotReceived = "not_received",
        Reschedule = "reschedule",
        DeliveryTime = "delivery_time",
        Damaged = "damaged",
        SecondDelivery = "second_delivery",
        LocateBranch = "locate_branch",
        International = "international",
        Customs = "customs",
        Collect = "collect",
        Complaint = "complaint",
        Other = "other",
    }
}

closed_enum! {
    /// How the customer reached the carrier.
    ContactChannel { Phone = "phone", Email = "email", Chat = "chat", Other = "other" }
}

closed_enum! {
    /// The fields of the contract, as named in rejection reasons and metric labels.
    Field {
        V = "v",
        EventId = "event_id",
        ParcelId = "parcel_id",
        Kind = "kind",
        At = "at",
        Facility = "facility",
        Branch = "branch",
        Country = "country",
        PromisedBy = "promised_by",
        Service = "service",
        Recipient = "recipient",
        Reason = "reason",
        ReturnBy = "return_by",
        Channel = "channel",
        Topic = "topic",
    }
}

impl Kind {
    /// Scans are everything but customer contacts; only scans show the parcel moving.
    pub fn is_scan(self) -> bool {
        self != Kind::CustomerContact
    }

    /// Whether this scan moves the parcel into a new state of its life. Damage
    /// and exceptions are incidents along the way, not states.
    pub fn sets_state(self) -> bool {
        !matches!(self, Kind::CustomerContact | Kind::Damaged | Kind::Exception)
    }

    /// States after which nothing more is expected of the parcel.
    pub fn is_done(self) -> bool {
        matches!(self, Kind::Delivered | Kind::Collected | Kind::Returned | Kind::Lost)
    }
}

/// Customer channels the recipient accepts, as a small bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Channels(pub u8);

impl Channels {
    pub const SMS: Channels = Channels(1);
    pub const EMAIL: Channels = Channels(2);

    pub fn contains(self, c: Channels) -> bool {
        self.0 & c.0 == c.0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [(Channels::SMS, "sms"), (Channels::EMAIL, "email")]
            .into_iter()
            .filter(move |(c, _)| self.contains(*c))
            .map(|(_, n)| n)
    }
}

/// Who to tell about a parcel. Every field may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipient<'a> {
    pub name: Option<Cow<'a, str>>,
    pub phone: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
    pub locale: Option<Cow<'a, str>>,
    pub tz: Option<Cow<'a, str>>,
    /// `None`: the customer said nothing; `Some(empty)`: do not contact.
    pub channels: Option<Channels>,
}

/// A customer contact: how and about what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    pub channel: Option<ContactChannel>,
    pub topic: Topic,
}

/// A validated event. Strings borrow from the input where they can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub parcel_id: Cow<'a, str>,
    pub kind: Kind,
    pub at: Ts,
    pub facility: Option<Cow<'a, str>>,
    pub branch: Option<Cow<'a, str>>,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<[u8; 2]>,
    pub promised_by: Option<Ts>,
    pub service: Option<Cow<'a, str>>,
    /// Boxed: one event in eight has one, and every event is moved a few times.
    pub recipient: Option<Box<Recipient<'a>>>,
    pub reason: Option<Cow<'a, str>>,
    pub return_by: Option<Ts>,
    /// Present on `customer_contact` events only.
    pub contact: Option<Contact>,
}

fn owned(s: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    s.map(|s| Cow::Owned(s.into_owned()))
}

impl Recipient<'_> {
    pub fn into_owned(self) -> Recipient<'static> {
        Recipient {
            name: owned(self.name),
            phone: owned(self.phone),
            email: owned(self.email),
            locale: owned(self.locale),
            tz: owned(self.tz),
            channels: self.channels,
        }
    }
}

impl Event<'_> {
    /// A copy that no longer borrows from the input, for events held aside.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            parcel_id: Cow::Owned(self.parcel_id.into_owned()),
            kind: self.kind,
            at: self.at,
            facility: owned(self.facility),
            branch: owned(self.branch),
            country: self.country,
            promised_by: self.promised_by,
            service: owned(self.service),
            recipient: self.recipient.map(|r| Box::new(r.into_owned())),
            reason: owned(self.reason),
            return_by: self.return_by,
            contact: self.contact,
        }
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    v: Option<i64>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    parcel_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    at: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    facility: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    branch: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    country: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    promised_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    recipient: Option<Box<RawRecipient<'a>>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    return_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    topic: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawRecipient<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    phone: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    locale: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    tz: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channels: Option<Vec<Borrowed<'a>>>,
}

/// A string that borrows from the input unless it had escapes to undo. serde
/// borrows a bare `Cow<str>` field, but not one inside an `Option` or `Vec`.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Decodes one event (a JSON Lines line or a NATS message body).
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, Reject> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Reject::TooLarge { bytes: bytes.len() });
    }
    if let Some(at) = too_deep(bytes) {
        let problem = format!("nested deeper than {MAX_DEPTH} levels");
        return Err(field_at(bytes, at).map_or(Reject::BadJson(problem.clone()), |f| Reject::invalid(f, problem)));
    }
    // sonic-rs is the fast path; whatever it refuses, serde_json decides and explains.
    if let Ok(raw) = sonic_rs::from_slice::<RawEvent>(bytes) {
        return validate(raw);
    }
    match serde_json::from_slice::<RawEvent>(bytes) {
        Ok(raw) => validate(raw),
        Err(err) => Err(explain(bytes, err)),
    }
}

fn validate(raw: RawEvent<'_>) -> Result<Event<'_>, Reject> {
    match raw.v {
        None => return Err(Reject::Missing(Field::V)),
        Some(1) => {}
        Some(v) => return Err(Reject::UnsupportedVersion(v.to_string())),
    }
    let event_id = id(raw.event_id, Field::EventId)?;
    let parcel_id = id(raw.parcel_id, Field::ParcelId)?;
    let kind_text = raw.kind.ok_or(Reject::Missing(Field::Kind))?;
    let kind = Kind::parse(&kind_text).ok_or_else(|| Reject::UnknownKind(echo(&kind_text)))?;
    let at = timestamp(raw.at.as_deref(), Field::At)?.ok_or(Reject::Missing(Field::At))?;
    let promised_by = timestamp(raw.promised_by.as_deref(), Field::PromisedBy)?;
    let return_by = timestamp(raw.return_by.as_deref(), Field::ReturnBy)?;
    let country = raw.country.as_deref().map(country).transpose()?;
    let recipient = raw.recipient.map(|r| recipient(*r).map(Box::new)).transpose()?;
    let required_for = |present: bool, field| {
        if present {
            Ok(())
        } else {
            Err(Reject::MissingFor { field, kind })
        }
    };
    // A date already past when it was given is no date: the promise would
    // tell the customer at once that the parcel is late, the return date that
    // it goes back. Other kinds may echo the label's promise after it passed.
    let not_before = |date: Option<Ts>, field, what: &str| match date {
        Some(date) if date < at => Err(Reject::invalid(
            field,
            format!("{date} is before the {what} itself (at {at}): a date already past when given"),
        )),
        _ => Ok(()),
    };
    match kind {
        Kind::LabelCreated => {
            required_for(promised_by.is_some(), Field::PromisedBy)?;
            required_for(recipient.is_some(), Field::Recipient)?;
            not_before(promised_by, Field::PromisedBy, "label")?;
        }
        Kind::ReadyForPickup => {
            required_for(return_by.is_some(), Field::ReturnBy)?;
            not_before(return_by, Field::ReturnBy, "pickup notice")?;
        }
        _ => {}
    }
    let contact = (kind == Kind::CustomerContact).then(|| Contact {
        channel: raw.channel.as_deref().map(|c| ContactChannel::parse(c).unwrap_or(ContactChannel::Other)),
        topic: raw.topic.as_deref().and_then(Topic::parse).unwrap_or(Topic::Other),
    });
    Ok(Event {
        event_id,
        parcel_id,
        kind,
        at,
        facility: text(raw.facility, Field::Facility, "", MAX_TEXT_CHARS)?,
        branch: text(raw.branch, Field::Branch, "", MAX_TEXT_CHARS)?,
        country,
        promised_by,
        service: text(raw.service, Field::Service, "", MAX_TEXT_CHARS)?,
        recipient,
        reason: text(raw.reason, Field::Reason, "", MAX_TEXT_CHARS)?,
        return_by,
        contact,
    })
}

fn id<'a>(value: Option<Cow<'a, str>>, field: Field) -> Result<Cow<'a, str>, Reject> {
    let value = value.ok_or(Reject::Missing(field))?;
    // A character is at least a byte, so only a long id needs its characters counted.
    let too_long = value.len() > MAX_ID_CHARS && value.chars().count() > MAX_ID_CHARS;
    if value.is_empty() || too_long {
        let chars = value.chars().count();
        return Err(Reject::invalid(field, format!("must be 1 to {MAX_ID_CHARS} characters, got {chars}")));
    }
    if has_unprintable(&value) {
        return Err(Reject::invalid(field, "holds a control or bidirectional-override character"));
    }
    Ok(value)
}

/// A text field, empty as absent, checked for length and unprintable characters.
fn text<'a>(value: Option<Cow<'a, str>>, field: Field, part: &str, max: usize) -> Result<Option<Cow<'a, str>>, Reject> {
    let Some(value) = non_empty(value) else { return Ok(None) };
    // A character is at least a byte: only a long text has its characters counted.
    if value.len() > max && value.chars().count() > max {
        let chars = value.chars().count();
        return Err(Reject::invalid(field, format!("{part}longer than {max} characters ({chars})")));
    }
    if has_unprintable(&value) {
        return Err(Reject::invalid(field, format!("{part}holds a control or bidirectional-override character")));
    }
    Ok(Some(value))
}

/// Whether `s` holds an [`is_unprintable`] character; the bytes that can
/// begin one are looked for first (C0, DEL, and the lead bytes of C1 and
/// of the overrides), so plain text costs one pass over its bytes.
fn has_unprintable(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2 || b == 0xe2) && s.chars().any(is_unprintable)
}

fn timestamp(value: Option<&str>, field: Field) -> Result<Option<Ts>, Reject> {
    let Some(text) = value else { return Ok(None) };
    let at = Ts::parse_rfc3339(text).ok_or_else(|| Reject::invalid(field, "not an RFC 3339 timestamp"))?;
    if !(EARLIEST..LATEST).contains(&at) {
        return Err(Reject::invalid(field, "outside 1970-01-01 to 2099-12-31"));
    }
    Ok(Some(at))
}

fn country(value: &str) -> Result<[u8; 2], Reject> {
    match value.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Ok([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => Err(Reject::invalid(Field::Country, format!("{} is not an ISO 3166-1 alpha-2 code", echo(value)))),
    }
}

fn non_empty(value: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    value.filter(|v| !v.is_empty())
}

fn recipient(raw: RawRecipient<'_>) -> Result<Recipient<'_>, Reject> {
    let field = Field::Recipient;
    Ok(Recipient {
        name: text(raw.name, field, "name: ", MAX_TEXT_CHARS)?,
        phone: text(raw.phone, field, "phone: ", MAX_TEXT_CHARS)?,
        email: text(raw.email, field, "email: ", MAX_EMAIL_CHARS)?,
        locale: text(raw.locale, field, "locale: ", MAX_TEXT_CHARS)?,
        tz: text(raw.tz, field, "tz: ", MAX_TEXT_CHARS)?,
        channels: raw.channels.map(|list| {
            list.iter().fold(Channels::default(), |acc, c| match c.0.as_ref() {
                "sms" => Channels(acc.0 | Channels::SMS.0),
                "email" => Channels(acc.0 | Channels::EMAIL.0),
                _ => acc,
            })
        }),
    })
}

#[cfg(test)]
mod tests;
