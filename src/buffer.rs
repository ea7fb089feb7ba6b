//! Buffers that a burst grew give the memory back once drained. A watermark
//! crossing a night fires the day's deadlines in one step: tens of thousands
//! of alerts, their facts and their text, in vectors that are emptied and
//! refilled all day. Kept at their largest, they held ~26 bytes per parcel
//! in flight at the peak of a national replay, for a few seconds' use a day.

/// What an empty buffer keeps, in bytes: a step's usual load, so that only
/// a burst reallocates.
pub const KEPT: usize = 64 * 1024;

/// Gives back what an empty `buffer` holds beyond [`KEPT`] bytes.
pub fn release<T>(buffer: &mut Vec<T>) {
    let kept = KEPT / std::mem::size_of::<T>().max(1);
    if buffer.is_empty() && buffer.capacity() > kept {
        buffer.shrink_to(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_keeps_a_step_s_room_and_a_full_one_everything() {
        let mut burst: Vec<u64> = Vec::with_capacity(1 << 20);
        burst.push(1);
        release(&mut burst);
        assert_eq!(burst.capacity(), 1 << 20, "a buffer in use keeps its room");
        burst.clear();
        release(&mut burst);
        assert_eq!(burst.capacity(), KEPT / 8);
        let mut small: Vec<u8> = Vec::with_capacity(100);
        release(&mut small);
        assert_eq!(small.capacity(), 100, "a small buffer is left alone");
    }
}
