//! A parcel's strings (its id and recipient) behind one pointer: the
//! length is kept in the allocation's first two bytes, not beside the
//! pointer. A `Box<str>` costs every parcel 16 bytes of its three cache
//! lines; this costs 8, and the 8 saved keep the first telling of the
//! customer in the parcel instead of a 64-byte allocation.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// The longest string kept; a longer one is cut at a character boundary
/// (the parcel caps each part it stores far below).
pub const MAX_LEN: usize = u16::MAX as usize;

/// What the empty string points at: its length, 0. Never freed.
static EMPTY: [u8; 2] = [0, 0];

/// An owned string of at most [`MAX_LEN`] bytes, one pointer wide.
pub struct ThinStr(NonNull<u8>);

// SAFETY: a `ThinStr` owns its allocation alone and never changes it
// through a shared reference, as a `Box<str>` does.
unsafe impl Send for ThinStr {}
// SAFETY: as above: `&ThinStr` gives only `&str`.
unsafe impl Sync for ThinStr {}

fn layout(len: usize) -> Layout {
    // Alignment 1 and a size of at most 2 + u16::MAX cannot overflow.
    Layout::from_size_align(2 + len, 1).unwrap_or_else(|_| unreachable!("a small layout"))
}

impl ThinStr {
    /// The parts, back to back, cut to [`MAX_LEN`] bytes at a character boundary.
    pub fn concat<const N: usize>(parts: [&str; N]) -> ThinStr {
        // How much of each part fits, in whole characters.
        let mut room = MAX_LEN;
        let takes = parts.map(|part| {
            let mut take = part.len().min(room);
            while !part.is_char_boundary(take) {
                take -= 1;
            }
            room -= take;
            take
        });
        let len: usize = takes.iter().sum();
        if len == 0 {
            return ThinStr::default();
        }
        // SAFETY: the layout's size is at least 3.
        let raw = unsafe { alloc::alloc(layout(len)) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout(len)) };
        // SAFETY: the first two bytes are inside the allocation.
        unsafe { std::ptr::copy_nonoverlapping((len as u16).to_le_bytes().as_ptr(), raw, 2) };
        let mut at = 2;
        for (part, take) in parts.iter().zip(takes) {
            // SAFETY: the takes sum to `len`, so `at + take <= 2 + len`,
            // inside the allocation; the source is a distinct, live string.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), raw.add(at), take) };
            at += take;
        }
        ThinStr(ptr)
    }

    /// Where the allocation is, without reading it (to prefetch it).
    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn len_and_text(&self) -> (usize, *const u8) {
        let raw = self.0.as_ptr();
        // SAFETY: every `ThinStr` points at two length bytes (`EMPTY` or its allocation).
        let len = u16::from_le_bytes(unsafe { [*raw, *raw.add(1)] });
        // SAFETY: the text follows the length, inside the same allocation.
        (usize::from(len), unsafe { raw.add(2) })
    }

    /// The text's length when it has an allocation of its own (the layout it was made with).
    fn allocated(&self) -> Option<usize> {
        (!std::ptr::eq(self.0.as_ptr().cast_const(), EMPTY.as_ptr())).then(|| self.len_and_text().0)
    }
}

impl Default for ThinStr {
    fn default() -> ThinStr {
        ThinStr(NonNull::from(&EMPTY).cast())
    }
}

impl std::ops::Deref for ThinStr {
    type Target = str;

    fn deref(&self) -> &str {
        let (len, text) = self.len_and_text();
        // SAFETY: `concat` copied `len` bytes of valid UTF-8, cut at a
        // character boundary, and nothing changes them after.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(text, len)) }
    }
}

impl Drop for ThinStr {
    fn drop(&mut self) {
        if let Some(len) = self.allocated() {
            // SAFETY: allocated by `concat` with this layout, freed once.
            unsafe { alloc::dealloc(self.0.as_ptr(), layout(len)) };
        }
    }
}

impl std::fmt::Debug for ThinStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_come_back_whole_and_empty_costs_nothing() {
        assert_eq!(&*ThinStr::concat(["1Z99", "Zoé", "", "z@example.org"]), "1Z99Zoéz@example.org");
        let empty = ThinStr::concat(["", ""]);
        assert_eq!((&*empty, empty.allocated()), ("", None));
        assert_eq!(std::mem::size_of::<ThinStr>(), 8);
    }

    #[test]
    fn a_string_past_the_bound_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_LEN);
        let thin = ThinStr::concat(["xy", &long, "z"]);
        assert_eq!(thin.len(), MAX_LEN, "2 bytes, whole 2-byte characters, and the last part in the byte left");
        assert!(thin.starts_with("xyé") && thin.ends_with("éz"));
    }
}
