//! The clock an idle partition's watermark follows: the wall clock, a fixed
//! instant (backtests), or an instant read from a file that a driver moves
//! (tests, demos). The engine never reads a clock; only this does.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::time::Ts;

/// What the idle watermark follows.
pub enum Clock {
    Wall,
    /// A fixed instant (backtests).
    Fixed(Ts),
    /// The instant written in a file, read at each look: a driver moves it.
    File(PathBuf),
}

impl Clock {
    pub fn parse(text: &str) -> Result<Clock, String> {
        let text = text.trim();
        Ok(match text.strip_prefix('@') {
            _ if text.is_empty() => Clock::Wall,
            Some(path) => Clock::File(PathBuf::from(path)),
            None => Clock::Fixed(
                Ts::parse_rfc3339(text)
                    .ok_or_else(|| format!("watermark.clock: {text:?} is not an RFC 3339 timestamp"))?,
            ),
        })
    }

    pub fn now(&self) -> Option<Ts> {
        match self {
            Clock::Wall => Some(Ts::from(SystemTime::now())),
            Clock::Fixed(t) => Some(*t),
            Clock::File(path) => {
                let text = std::fs::read_to_string(path).ok()?;
                let t = Ts::parse_rfc3339(text.trim());
                if t.is_none() {
                    tracing::warn!(path = %path.display(), "the clock file holds no RFC 3339 timestamp");
                }
                t
            }
        }
    }
}
