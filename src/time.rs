//! Event time: instants as milliseconds since the Unix epoch, durations, and
//! their text forms.
//!
//! Every event carries an RFC 3339 timestamp and the engine compares millions
//! of them a second, so instants are a plain `i64` newtype with a hand-written
//! parser (the fixed RFC 3339 grammar needs no general date library) and a
//! formatter that always writes UTC, so the same instant always prints as the
//! same bytes.

use std::fmt;

/// An instant in event time: milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

/// A span of event time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Ts {
    /// Earlier than any real event: the watermark before the first event.
    pub const MIN: Ts = Ts(i64::MIN / 4);
    /// Later than any real event: "no deadline".
    pub const MAX: Ts = Ts(i64::MAX / 4);

    /// Parses an RFC 3339 timestamp with an offset (`2026-11-20T08:15:00+01:00`,
    /// `…Z`, optional fractional seconds, `t`/`z`/space accepted as RFC 3339
    /// allows). Fractions below a millisecond are truncated.
    pub fn parse_rfc3339(s: &str) -> Option<Ts> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return None;
        }
        let num = |from: usize, len: usize| -> Option<i64> {
            let mut v = 0i64;
            for &c in b.get(from..from + len)? {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + i64::from(c - b'0');
            }
            Some(v)
        };
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        // 60 is a leap second; it is read as the last millisecond of the minute's 59th second.
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return None;
            }
            for _ in digits..3 {
                millis *= 10;
            }
        }
        let offset_minutes = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            &sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let m = oh * 60 + om;
                if sign == b'-' {
                    -m
                } else {
                    m
                }
            }
            _ => return None,
        };
        let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        Some(Ts(secs * 1000 + millis))
    }

    pub fn plus(self, span: Span) -> Ts {
        Ts(self.0.saturating_add(span.0))
    }

    pub fn minus(self, span: Span) -> Ts {
        Ts(self.0.saturating_sub(span.0))
    }

    /// Time elapsed from `earlier` to `self`.
    pub fn since(self, earlier: Ts) -> Span {
        Span(self.0.saturating_sub(earlier.0))
    }

    /// Whole seconds since the epoch (floor).
    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

/// A system time (an arrival at the server, say) as an instant; before the epoch is the epoch.
impl From<std::time::SystemTime> for Ts {
    fn from(t: std::time::SystemTime) -> Ts {
        Ts(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)))
    }
}

/// Formats as RFC 3339 in UTC (`2026-11-20T07:15:00Z`, with `.mmm` only when
/// the instant has milliseconds), so one instant always has one spelling.
impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// An instant's RFC 3339 text, on the stack: alerts write several per line.
#[derive(Clone, Copy)]
pub struct TsText {
    buf: [u8; 24],
    len: u8,
}

impl std::ops::Deref for TsText {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII digits and punctuation are written below.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl serde::Serialize for TsText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl Ts {
    /// The RFC 3339 text in UTC, without the formatting machinery.
    pub fn text(self) -> TsText {
        let secs = self.seconds();
        let millis = self.0.rem_euclid(1000);
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let mut buf = [0u8; 24];
        let mut put = |at: usize, value: i64, width: usize| {
            let mut v = value.rem_euclid(10i64.pow(width as u32));
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y, 4);
        put(5, m, 2);
        put(8, d, 2);
        put(11, sod / 3600, 2);
        put(14, sod / 60 % 60, 2);
        put(17, sod % 60, 2);
        let len = if millis != 0 {
            put(20, millis, 3);
            buf[19] = b'.';
            buf[23] = b'Z';
            24
        } else {
            buf[19] = b'Z';
            20
        };
        for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
            buf[i] = c;
        }
        TsText { buf, len }
    }
}

/// An instant in 6 bytes, for what is kept per parcel: milliseconds within
/// ±2^47 (±4,400 years around 1970; events are dated 1970 to 2099), with
/// [`Ts::MIN`] and [`Ts::MAX`] kept as themselves. An instant beyond the
/// range reads as the nearer of the two: earlier than any event, or never.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ts48([u16; 3]);

impl Ts48 {
    const LOW: i64 = -(1 << 47);
    const HIGH: i64 = (1 << 47) - 1;
    pub const MIN: Ts48 = Ts48::new(Ts::MIN);
    pub const MAX: Ts48 = Ts48::new(Ts::MAX);

    pub const fn new(t: Ts) -> Ts48 {
        let v = if t.0 < Ts48::LOW {
            Ts48::LOW
        } else if t.0 > Ts48::HIGH {
            Ts48::HIGH
        } else {
            t.0
        };
        Ts48([v as u16, (v >> 16) as u16, (v >> 32) as u16])
    }

    pub const fn get(self) -> Ts {
        let [a, b, c] = self.0;
        // Sign-extends the 48 bits.
        let v = ((a as i64) | (b as i64) << 16 | (c as i64) << 32) << 16 >> 16;
        match v {
            Ts48::LOW => Ts::MIN,
            Ts48::HIGH => Ts::MAX,
            v => Ts(v),
        }
    }
}

impl From<Ts> for Ts48 {
    fn from(t: Ts) -> Ts48 {
        Ts48::new(t)
    }
}

impl fmt::Debug for Ts48 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl Span {
    pub const ZERO: Span = Span(0);

    pub const fn hours(h: i64) -> Span {
        Span(h * 3_600_000)
    }

    pub const fn minutes(m: i64) -> Span {
        Span(m * 60_000)
    }

    /// Whole minutes of it: what a reason quotes (no seconds to tell two apart).
    pub const fn in_minutes(self) -> Span {
        Span(self.0 / 60_000 * 60_000)
    }

    /// Parses a duration such as `24h`, `90m`, `2d`, `1h30m`, `45s` or `-24h`.
    pub fn parse(s: &str) -> Result<Span, String> {
        let text = s.trim();
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        if rest.is_empty() {
            return Err(format!("{s:?} is not a duration; write it like \"24h\", \"90m\" or \"2d\""));
        }
        let mut total = 0i64;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let unit_len = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
            if digits == 0 || unit_len == 0 {
                return Err(format!("{s:?} is not a duration; write it like \"24h\", \"90m\" or \"2d\""));
            }
            let n: i64 = rest[..digits].parse().map_err(|_| format!("{s:?}: number too large"))?;
            let unit = match &rest[digits..digits + unit_len] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 7 * 86_400_000,
                other => return Err(format!("{s:?}: unknown unit {other:?}; use ms, s, m, h, d or w")),
            };
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("{s:?}: duration too large"))?;
            rest = &rest[digits + unit_len..];
        }
        Ok(Span(if negative { -total } else { total }))
    }
}

/// Prints the shortest exact form: `24h`, `90m`, `1h30m`, `-24h`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        if self.0 < 0 {
            f.write_str("-")?;
        }
        let mut rest = self.0.unsigned_abs();
        for (unit, name) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")] {
            if rest >= unit {
                write!(f, "{}{name}", rest / unit)?;
                rest %= unit;
            }
        }
        Ok(())
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn an_instant_packed_in_6_bytes_reads_back() {
        assert_eq!(std::mem::size_of::<Ts48>(), 6);
        let edge = 1i64 << 47;
        for t in [0, 1, -1, 4_102_444_799_999, -86_400_000, edge - 2, -edge + 1, 1_763_625_600_123] {
            assert_eq!(Ts48::new(Ts(t)).get(), Ts(t), "{t}");
        }
        for (t, read) in [(Ts::MIN, Ts::MIN), (Ts::MAX, Ts::MAX), (Ts(-edge), Ts::MIN), (Ts(edge - 1), Ts::MAX)] {
            assert_eq!(Ts48::new(t).get(), read, "{t:?}");
        }
        assert_eq!((Ts48::MIN.get(), Ts48::MAX.get()), (Ts::MIN, Ts::MAX));
    }

    #[test]
    fn parses_like_chrono() {
        for s in [
            "2026-11-20T08:15:00+01:00",
            "2026-11-20T07:15:00Z",
            "2026-11-20t07:15:00z",
            "2024-02-29T23:59:59.999-05:30",
            "1999-12-31T23:59:59.5+14:00",
            "2000-03-01T00:00:00.123456789Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.001Z",
        ] {
            assert_eq!(Ts::parse_rfc3339(s), Some(Ts(chrono_ms(s))), "{s}");
        }
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for s in [
            "",
            "2026-11-20",
            "2026-11-20T08:15:00",
            "2026-11-20T08:15:00+0100",
            "2026-13-20T08:15:00Z",
            "2026-02-29T08:15:00Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T08:15:00.Z",
            "2026-11-20T08:15:00Zjunk",
            "yesterday at noon, roughly",
            "2026-11-20T08:15:00+01:60",
        ] {
            assert_eq!(Ts::parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn formats_in_utc_and_round_trips() {
        let t = Ts::parse_rfc3339("2026-11-20T08:15:00+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-20T07:15:00Z");
        let t = Ts::parse_rfc3339("1960-02-29T10:00:00.042Z").unwrap();
        assert_eq!(t.to_string(), "1960-02-29T10:00:00.042Z");
        for ms in [0i64, 1, -1, 951_782_400_000, 1_795_000_000_123, -86_400_001] {
            assert_eq!(Ts::parse_rfc3339(&Ts(ms).to_string()), Some(Ts(ms)));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(Span::parse("24h"), Ok(Span::hours(24)));
        assert_eq!(Span::parse("1h30m"), Ok(Span::minutes(90)));
        assert_eq!(Span::parse("-24h"), Ok(Span::hours(-24)));
        assert_eq!(Span::parse("2d"), Ok(Span::hours(48)));
        assert!(Span::parse("24").unwrap_err().contains("not a duration"));
        assert!(Span::parse("3y").unwrap_err().contains("unknown unit \"y\""));
        assert_eq!(Span::minutes(90).to_string(), "1h30m");
        assert_eq!(Span::hours(-24).to_string(), "-1d");
    }
}
