//! SMS length: which alphabet a text needs and how many segments it takes
//! (GSM-7: 160 characters in one, 153 per part when split; UCS-2, needed by
//! Chinese and by any character outside GSM-7: 70 and 67). Gateways bill
//! per segment, so texts are cut to a configured number of segments.

/// GSM 03.38 basic set.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table: each takes two septets.
const EXTENDED: &str = "^{}\\[~]|€\x0c";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }
}

/// Septets of each ASCII character (0: not in GSM-7), built once from the tables.
const ASCII: [u8; 128] = {
    let mut table = [0u8; 128];
    let (basic, extended) = (BASIC.as_bytes(), EXTENDED.as_bytes());
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            table[basic[i] as usize] = 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < extended.len() {
        if extended[i] < 128 {
            table[extended[i] as usize] = 2;
        }
        i += 1;
    }
    table
};

fn septets(c: char) -> Option<usize> {
    if c.is_ascii() {
        return Some(ASCII[c as usize] as usize).filter(|&n| n > 0);
    }
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding and the length in that encoding's units.
fn measure(text: &str) -> (Encoding, usize) {
    let gsm: Option<usize> = text.chars().map(septets).sum();
    match gsm {
        Some(n) => (Encoding::Gsm7, n),
        None => (Encoding::Ucs2, text.encode_utf16().count()),
    }
}

fn parts(encoding: Encoding, units: usize) -> u32 {
    let (single, multi) = match encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    };
    if units <= single {
        1
    } else {
        units.div_ceil(multi) as u32
    }
}

/// The encoding and segment count of `text`.
pub fn count(text: &str) -> (Encoding, u32) {
    let (encoding, units) = measure(text);
    (encoding, parts(encoding, units))
}

/// `text` cut (with an ellipsis) to at most `max` segments.
pub fn cap(text: &str, max: u32) -> String {
    let (encoding, segments) = count(text);
    if segments <= max.max(1) {
        return text.to_string();
    }
    let ellipsis = if encoding == Encoding::Gsm7 { "..." } else { "…" };
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>().trim_end().to_string() + ellipsis;
        if count(&candidate).1 <= max.max(1) {
            return candidate;
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_the_alphabet() {
        assert_eq!(count(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(count("Votre colis est arrivé à Paris"), (Encoding::Gsm7, 1));
        assert_eq!(count("Prêt"), (Encoding::Ucs2, 1));
        assert_eq!(count(&"包".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(count(&"包".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(count(&"包".repeat(135)), (Encoding::Ucs2, 3));
    }

    #[test]
    fn the_ascii_table_agrees_with_the_gsm_tables() {
        for c in (0u8..128).map(char::from) {
            let slow = if BASIC.contains(c) {
                Some(1)
            } else if EXTENDED.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(septets(c), slow, "{c:?}");
        }
        assert_eq!(septets('`'), None);
        assert_eq!(septets('{'), Some(2));
    }

    #[test]
    fn long_texts_are_capped() {
        let capped = cap(&"包".repeat(300), 2);
        assert_eq!(count(&capped), (Encoding::Ucs2, 2));
        assert!(capped.ends_with('…'));
        assert_eq!(cap("short", 1), "short");
    }
}
