//! [`Output`]: the bytes a connection owes its web server, in order, with large response
//! data held as the app's own [`Bytes`] rather than copied.
//!
//! Protocol framing (record headers, padding, end markers) and small data are appended to
//! one growable buffer, the tail. Data of [`SHARE_MIN`] bytes or more is queued as it came:
//! the tail written so far is frozen into a segment, the data follows as another, and new
//! framing goes into what remains of the tail. A writer takes the segments as one vectored
//! write ([`Buf::chunks_vectored`]), so a 10 MiB download is copied once, by the kernel,
//! from the app's buffer into the socket, not first into the connection's.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Response data at least this long is queued uncopied; shorter data is copied into the
/// tail: 4 KiB. Each uncopied piece costs a segment, an entry in the writer's vector and a
/// split of the tail (a reference count), which for a few hundred bytes is more than the
/// copy; a page's body (and a hello's 13 bytes) joins its head and end marker in one
/// buffer, while the chunks of a download (64 KiB from a file, 8 KiB from a WSGI app's
/// file wrapper) are not copied.
pub const SHARE_MIN: usize = 4 * 1024;

/// Bytes queued to write, oldest first: `segments` from `first` on, then `tail`.
#[derive(Debug, Default)]
pub struct Output {
    /// Frozen framing and uncopied data, in order, before `tail`; the ones before `first`
    /// were written (and emptied). A vector with a start index rather than a ring: this is
    /// empty for every page that is not a download, and an empty vector allocates nothing
    /// and is cheap to move and drop.
    segments: Vec<Bytes>,
    /// The first segment not yet written.
    first: usize,
    /// Bytes in `segments[first..]`.
    segments_len: usize,
    /// What was appended since the last uncopied piece.
    tail: BytesMut,
}

impl Output {
    /// Nothing queued, nothing allocated.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.segments_len + self.tail.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer framing is appended to: whatever is written to it goes out after
    /// everything queued before.
    #[inline]
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Queues `data` after everything queued: copied when shorter than [`SHARE_MIN`], else
    /// held as it is.
    pub fn put(&mut self, data: Bytes) {
        if data.len() < SHARE_MIN {
            self.tail.extend_from_slice(&data);
            return;
        }
        self.freeze_tail();
        self.push_segment(data);
    }

    /// Makes room once, before a message is appended, for `framing` bytes and for `data`
    /// bytes of content if [`put`](Self::put) will copy them (shorter than [`SHARE_MIN`]).
    pub fn reserve_for(&mut self, data: usize, framing: usize) {
        let copied = if data < SHARE_MIN { data } else { 0 };
        self.tail.reserve(copied + framing);
    }

    /// Moves everything queued in `other` behind what is queued here, leaving `other` empty.
    /// When nothing is queued here the two are swapped: no copy, and `other` keeps this
    /// tail's capacity for its next output.
    #[inline]
    pub fn append(&mut self, other: &mut Output) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else if !other.is_empty() {
            self.append_behind(other);
        }
    }

    /// [`append`](Self::append) behind bytes already queued.
    fn append_behind(&mut self, other: &mut Output) {
        if other.segments_len > 0 {
            self.freeze_tail();
            self.segments_len += other.segments_len;
            self.segments.extend(other.segments.drain(other.first..));
            other.segments.clear();
            other.first = 0;
            other.segments_len = 0;
        }
        self.tail.extend_from_slice(&other.tail);
        other.tail.clear();
    }

    /// Capacity of the tail, which an idle connection may want to give back.
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Copies everything queued into one vector (tests and tools; the drivers write the
    /// segments as they are).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for s in &self.segments[self.first..] {
            v.extend_from_slice(s);
        }
        v.extend_from_slice(&self.tail);
        v
    }

    /// Ends the tail's bytes so far as a segment; later framing starts a new tail in the
    /// same allocation's spare room.
    fn freeze_tail(&mut self) {
        if !self.tail.is_empty() {
            let done = self.tail.split().freeze();
            self.push_segment(done);
        }
    }

    fn push_segment(&mut self, data: Bytes) {
        // Written segments are dropped from the front once they are half the vector: a
        // writer that keeps up with a long download (some of it always queued) leaves the
        // vector as long as what is queued, not as long as the download.
        if self.first > 0 && self.first * 2 >= self.segments.len() {
            self.segments.drain(..self.first);
            self.first = 0;
        }
        self.segments_len += data.len();
        self.segments.push(data);
    }
}

impl Buf for Output {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        // Segments from `first` on are never empty: only non-empty bytes are pushed, and a
        // written one is stepped over.
        match self.segments.get(self.first) {
            Some(s) => s,
            None => &self.tail,
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        if self.segments_len == 0 {
            // A page: one buffer.
            return match dst.first_mut() {
                Some(slot) if !self.tail.is_empty() => {
                    *slot = IoSlice::new(&self.tail);
                    1
                }
                _ => 0,
            };
        }
        let mut n = 0;
        let pieces = self.segments[self.first..]
            .iter()
            .map(|s| &s[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|s| !s.is_empty());
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while let Some(front) = self.segments.get_mut(self.first) {
            if cnt < front.len() {
                front.advance(cnt);
                self.segments_len -= cnt;
                return;
            }
            cnt -= front.len();
            self.segments_len -= front.len();
            // Written: its bytes go back to their owner now, not when the rest is written.
            *front = Bytes::new();
            self.first += 1;
            if self.first == self.segments.len() {
                self.segments.clear();
                self.first = 0;
            }
        }
        self.tail.advance(cnt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(byte: u8) -> Bytes {
        Bytes::from(vec![byte; SHARE_MIN])
    }

    #[test]
    fn small_data_is_copied_into_one_buffer() {
        let mut out = Output::new();
        out.buf().extend_from_slice(b"head ");
        out.put(Bytes::from_static(b"body"));
        out.buf().extend_from_slice(b" end");
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(out.chunks_vectored(&mut slices), 1);
        assert_eq!(&*slices[0], b"head body end");
    }

    #[test]
    fn data_at_the_boundary_is_held_uncopied_and_in_order() {
        let data = big(b'x');
        let mut out = Output::new();
        out.buf().extend_from_slice(b"head");
        out.put(data.clone());
        out.buf().extend_from_slice(b"end");
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(out.chunks_vectored(&mut slices), 3);
        assert_eq!(&*slices[0], b"head");
        // The very bytes the app gave, not a copy.
        assert_eq!(slices[1].as_ptr(), data.as_ptr());
        assert_eq!(&*slices[2], b"end");
        assert_eq!(out.len(), 4 + SHARE_MIN + 3);

        // One byte short of the boundary is copied.
        let mut out = Output::new();
        out.put(Bytes::from(vec![b'y'; SHARE_MIN - 1]));
        assert_eq!(out.chunks_vectored(&mut slices), 1);
        assert!(out.segments.is_empty());
    }

    #[test]
    fn room_is_made_for_copied_content_only() {
        // Content that will be copied: room for it and its framing.
        let mut out = Output::new();
        out.reserve_for(SHARE_MIN - 1, 8);
        assert!(out.capacity() >= SHARE_MIN - 1 + 8);
        // Content that will be held as it is: room for the framing alone.
        let mut out = Output::new();
        out.reserve_for(SHARE_MIN, 8);
        assert!(out.capacity() >= 8 && out.capacity() < SHARE_MIN);
    }

    #[test]
    fn advance_crosses_segments_and_the_tail() {
        let mut out = Output::new();
        out.buf().extend_from_slice(b"ab");
        out.put(big(b'x'));
        out.buf().extend_from_slice(b"cd");
        let mut want = b"ab".to_vec();
        want.extend_from_slice(&[b'x'; SHARE_MIN]);
        want.extend_from_slice(b"cd");

        // Written in odd steps, the bytes come out in order and the count stays true.
        let mut got = Vec::new();
        while out.has_remaining() {
            let step = out.chunk().len().min(3);
            got.extend_from_slice(&out.chunk()[..step]);
            out.advance(step);
            assert_eq!(out.len(), want.len() - got.len());
        }
        assert_eq!(got, want);
        assert!(out.is_empty());
    }

    #[test]
    fn a_long_download_written_as_it_is_queued_keeps_the_vector_short() {
        let mut out = Output::new();
        out.put(big(b'a'));
        for _ in 0..1000 {
            // One more chunk queued, then all but part of the newest written.
            out.put(big(b'b'));
            out.advance(out.len() - 10);
            assert!(out.segments.len() <= 4, "{} segments", out.segments.len());
        }
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn append_keeps_order_and_empties_the_source() {
        let mut dst = Output::new();
        dst.buf().extend_from_slice(b"1");
        let mut src = Output::new();
        src.buf().extend_from_slice(b"2");
        src.put(big(b'3'));
        src.buf().extend_from_slice(b"4");
        dst.append(&mut src);
        assert!(src.is_empty());
        let mut want = b"12".to_vec();
        want.extend_from_slice(&[b'3'; SHARE_MIN]);
        want.extend_from_slice(b"4");
        assert_eq!(dst.to_vec(), want);
    }

    #[test]
    fn append_to_an_empty_output_swaps_without_copying() {
        let mut src = Output::new();
        src.buf().extend_from_slice(b"page");
        let at = src.tail.as_ptr();
        let mut dst = Output::new();
        dst.append(&mut src);
        assert_eq!(dst.tail.as_ptr(), at);
        assert!(src.is_empty());
    }
}
