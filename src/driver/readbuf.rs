//! A connection's read buffer, parked for the next connection on the same thread.
//!
//! Without keep-conn (nginx's default, and the seed's configurations) every request comes on
//! a new connection, and each connection allocated a fresh [`READ_BUF_SIZE`] buffer and freed
//! it: glibc serves a block that large from the slow path of its heap, and freeing one of 64
//! KiB or more consolidates its fast bins (docs/performance.md, "The hot path"). A buffer
//! whose bytes have all come back (no request or body chunk still holds a slice of it) is
//! parked instead, one per thread: what is kept is bounded by the runtime's threads, each
//! holding at most one default-sized buffer.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};

use bytes::BytesMut;

use super::READ_BUF_SIZE;

thread_local! {
    static PARKED: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// The read buffer of one connection: the thread's parked buffer or a new one, parked again
/// when dropped if nothing else holds it and it has its default size.
pub(crate) struct ReadBuf(BytesMut);

impl ReadBuf {
    /// The thread's parked buffer, empty, or a new one of [`READ_BUF_SIZE`].
    pub(crate) fn take() -> Self {
        let parked = PARKED.try_with(Cell::take).ok().flatten();
        Self(parked.unwrap_or_else(|| BytesMut::with_capacity(READ_BUF_SIZE)))
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // `try_reclaim` is true only when this is the allocation's last handle; a buffer
        // grown for a large SCGI head is freed rather than kept.
        if buf.try_reclaim(READ_BUF_SIZE) && buf.capacity() == READ_BUF_SIZE {
            // Fails only while the thread is exiting: the buffer is then freed.
            let _ = PARKED.try_with(|parked| parked.set(Some(buf)));
        }
    }
}

impl Deref for ReadBuf {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

/// Where the thread's parked buffer starts, if one is parked: for tests that check a
/// connection gave its buffer back.
#[cfg(test)]
pub(crate) fn parked_ptr() -> Option<*const u8> {
    PARKED.with(|p| {
        let buf = p.take();
        let ptr = buf.as_ref().map(|b| b.as_ptr());
        p.set(buf);
        ptr
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_nothing_else_holds_is_parked_and_taken_again_empty() {
        let mut buf = ReadBuf::take();
        let ptr = buf.as_ptr();
        buf.extend_from_slice(b"request head and some body");
        let head = buf.split_to(12).freeze();
        drop(head);
        drop(buf);
        assert_eq!(parked_ptr(), Some(ptr));
        let again = ReadBuf::take();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), READ_BUF_SIZE);
        assert_eq!(parked_ptr(), None);
    }

    #[test]
    fn a_buffer_a_request_still_holds_or_one_that_grew_is_not_parked() {
        drop(ReadBuf::take());
        let held = {
            let mut buf = ReadBuf::take();
            buf.extend_from_slice(b"a head the handler keeps");
            buf.split_to(6).freeze()
        };
        assert_eq!(parked_ptr(), None);
        assert_eq!(&held[..], b"a head");

        let mut grown = ReadBuf::take();
        grown.reserve(2 * READ_BUF_SIZE);
        drop(grown);
        assert_eq!(parked_ptr(), None);
    }
}
