//! SCGI encoding, client side only: the request netstring a web server sends, for
//! `appserver probe` and for tests that play the web server.
//!
//! The server side has nothing to encode: an SCGI response is plain CGI output (`Status:`
//! header, headers, blank line, body) written by the server crate, and the end of the
//! response is the end of the connection. Encoders append to `dst` (style rule 2).

use bytes::{BufMut, BytesMut};

use crate::{Decimal, Params};

/// Appends a complete SCGI request head: the netstring whose block starts with
/// `CONTENT_LENGTH` = `body_len`, then `SCGI` = `1`, then every pair of `params` in order
/// (any `CONTENT_LENGTH` or `SCGI` in `params` is left out, so names stay unique). The body
/// itself follows the head on the wire; append it separately.
///
/// ```
/// use appserver_proto::scgi::encode_request;
/// use appserver_proto::Params;
/// use bytes::BytesMut;
///
/// let mut params = Params::new();
/// params.set(b"REQUEST_METHOD", b"GET");
/// let mut dst = BytesMut::new();
/// encode_request(&params, 0, &mut dst);
/// assert_eq!(&dst[..], b"43:CONTENT_LENGTH\x000\x00SCGI\x001\x00REQUEST_METHOD\x00GET\x00,");
/// ```
///
/// # Panics
///
/// When a name in `params` is empty or a name or value contains NUL: neither can be framed.
pub fn encode_request(params: &Params, body_len: u64, dst: &mut BytesMut) {
    let digits = Decimal::new(body_len);
    let content_length = digits.as_bytes();
    let kept = || {
        params
            .iter()
            .filter(|(name, _)| *name != b"CONTENT_LENGTH" && *name != b"SCGI")
    };
    let mut block_len = pair_len(b"CONTENT_LENGTH", content_length) + pair_len(b"SCGI", b"1");
    for (name, value) in kept() {
        assert!(
            !name.is_empty() && !name.contains(&0) && !value.contains(&0),
            "SCGI header names must be non-empty and names and values free of NUL"
        );
        block_len += pair_len(name, value);
    }
    let prefix = Decimal::new(block_len as u64);
    dst.reserve(prefix.as_bytes().len() + 2 + block_len);
    dst.put_slice(prefix.as_bytes());
    dst.put_u8(b':');
    put_pair(b"CONTENT_LENGTH", content_length, dst);
    put_pair(b"SCGI", b"1", dst);
    for (name, value) in kept() {
        put_pair(name, value, dst);
    }
    dst.put_u8(b',');
}

/// Appends `block` as a netstring: `len:block,`. For tests that build malformed blocks.
pub fn encode_netstring(block: &[u8], dst: &mut BytesMut) {
    let prefix = Decimal::new(block.len() as u64);
    dst.reserve(prefix.as_bytes().len() + block.len() + 2);
    dst.put_slice(prefix.as_bytes());
    dst.put_u8(b':');
    dst.put_slice(block);
    dst.put_u8(b',');
}

fn pair_len(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 2
}

fn put_pair(name: &[u8], value: &[u8], dst: &mut BytesMut) {
    dst.put_slice(name);
    dst.put_u8(0);
    dst.put_slice(value);
    dst.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_drops_caller_content_length_and_scgi() {
        let mut params = Params::new();
        params.set(b"SCGI", b"7");
        params.set(b"CONTENT_LENGTH", b"99");
        params.set(b"X", b"");
        let mut dst = BytesMut::from(&b"keep"[..]);
        encode_request(&params, 5, &mut dst);
        assert_eq!(
            &dst[..],
            b"keep27:CONTENT_LENGTH\x005\x00SCGI\x001\x00X\x00\x00,"
        );
    }

    #[test]
    fn netstring_of_empty_block() {
        let mut dst = BytesMut::new();
        encode_netstring(b"", &mut dst);
        assert_eq!(&dst[..], b"0:,");
    }
}
