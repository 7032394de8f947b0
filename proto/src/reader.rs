//! [`Reader`]: a bounded cursor over one message's bytes.
//!
//! Length-prefixed fields are read through [`Reader::sub`], so a field can never read past its
//! own end, and [`Reader::expect_end`] turns leftovers into [`ProtocolError::TrailingData`]
//! (style rule 11). The reader never allocates and never panics on short input.

use crate::ProtocolError;

/// A cursor over a byte slice that fails instead of reading past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes, or fails naming `what` was truncated.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::MissingData(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `n` bytes as a reader of their own.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, ProtocolError> {
        self.take(n, what).map(Reader::new)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    /// Reads a big-endian 16-bit integer.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian 32-bit integer.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Peeks at the next byte without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Fails with [`ProtocolError::TrailingData`] unless every byte has been read.
    pub fn expect_end(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingData {
                what,
                len: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_past_end_is_missing_data() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("x").unwrap(), 0x0102);
        assert_eq!(r.u16("field"), Err(ProtocolError::MissingData("field")));
        // A failed read consumes nothing.
        assert_eq!(r.u8("x").unwrap(), 3);
        assert!(r.is_empty());
    }

    #[test]
    fn sub_reader_is_bounded_and_trailing_data_is_reported() {
        let mut r = Reader::new(&[0, 0, 0, 9, 7, 7]);
        let mut s = r.sub(4, "int").unwrap();
        assert_eq!(s.u32("int").unwrap(), 9);
        assert_eq!(s.u8("more"), Err(ProtocolError::MissingData("more")));
        assert_eq!(
            r.expect_end("msg"),
            Err(ProtocolError::TrailingData {
                what: "msg",
                len: 2
            })
        );
    }
}
