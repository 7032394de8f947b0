//! AJP13 encoding: the packets a container sends (`SEND_BODY_CHUNK`, `END_RESPONSE`,
//! `GET_BODY_CHUNK`, `CPONG`; `SEND_HEADERS` is [`encode_send_headers`]) and, for the client
//! side (`appserver probe`, tests), the packets a web server sends.
//!
//! Every encoder appends to `dst` and never overwrites (style rule 2).
//!
//! ```text
//! SEND_BODY_CHUNK  41 42 <n+4> 03 <n> data[n] 00      n <= packet size - 8 (8184)
//!   flush          41 42 00 04 03 00 00 00
//! END_RESPONSE     41 42 00 02 05 <reuse 0|1>
//! GET_BODY_CHUNK   41 42 00 03 06 <requested length>
//! CPONG            41 42 00 01 09
//!
//! body packet      12 34 <n+2> <n> data[n]             n <= packet size - 6 (8186)
//! end of body      12 34 00 02 00 00    (Apache)  or  12 34 00 00  (spec, lighttpd)
//! CPING            12 34 00 01 0A
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{AJP_HEADER_LEN, AJP_MAX_PACKET_SIZE};
use crate::Output;

use super::packet::{
    max_payload, Code, ForwardRequest, PacketHeader, PacketOverflow, CONTAINER_MAGIC, SERVER_MAGIC,
};

pub use super::packet::encode_send_headers;

/// Bytes a `SEND_BODY_CHUNK` packet adds around its data: header (4), code (1), length (2),
/// trailing `0x00` (1).
pub const SEND_BODY_CHUNK_OVERHEAD: usize = 8;

/// Bytes a request body packet adds around its data: header (4), length (2).
pub const BODY_PACKET_OVERHEAD: usize = 6;

/// The most data one `SEND_BODY_CHUNK` of a `packet_size`-byte packet carries: 8184 by default.
pub fn max_send_body_chunk(packet_size: usize) -> usize {
    max_payload(packet_size) - (SEND_BODY_CHUNK_OVERHEAD - AJP_HEADER_LEN)
}

/// The most data one request body packet of a `packet_size`-byte packet carries: 8186 by
/// default.
pub fn max_body_packet(packet_size: usize) -> usize {
    max_payload(packet_size) - (BODY_PACKET_OVERHEAD - AJP_HEADER_LEN)
}

/// Queues `data` as `SEND_BODY_CHUNK` packets of at most `packet_size` bytes (so at most
/// `packet_size - 8` data bytes each), each with the trailing `0x00` mod_proxy_ajp checks,
/// each packet's data handed to [`Output::put`] (uncopied when large). Empty `data` queues
/// nothing; a flush is [`encode_flush`].
pub fn queue_send_body_chunk(mut data: Bytes, packet_size: usize, out: &mut Output) {
    let max = max_send_body_chunk(packet_size);
    out.reserve_for(
        data.len(),
        data.len().div_ceil(max) * SEND_BODY_CHUNK_OVERHEAD,
    );
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(max));
        send_body_chunk_head(chunk.len(), out.buf());
        out.put(chunk);
        out.buf().put_u8(0);
    }
}

/// The packet header, code and length before a `SEND_BODY_CHUNK`'s `len` data bytes.
fn send_body_chunk_head(len: usize, dst: &mut BytesMut) {
    // len <= max_send_body_chunk <= 65 524, so the casts cannot truncate.
    PacketHeader {
        magic: CONTAINER_MAGIC,
        len: (len + 4) as u16,
    }
    .encode(dst);
    dst.put_u8(Code::SendBodyChunk.to_u8());
    dst.put_u16(len as u16);
}

/// Appends the empty `SEND_BODY_CHUNK` that asks the web server to flush what it has
/// (`41 42 00 04 03 00 00 00`).
pub fn encode_flush(dst: &mut BytesMut) {
    dst.put_slice(&[
        0x41,
        0x42,
        0x00,
        0x04,
        Code::SendBodyChunk.to_u8(),
        0x00,
        0x00,
        0x00,
    ]);
}

/// Appends `END_RESPONSE` (`41 42 00 02 05 <reuse>`).
pub fn encode_end_response(reuse: bool, dst: &mut BytesMut) {
    dst.put_slice(&[
        0x41,
        0x42,
        0x00,
        0x02,
        Code::EndResponse.to_u8(),
        u8::from(reuse),
    ]);
}

/// Appends `GET_BODY_CHUNK` asking for `len` bytes (`41 42 00 03 06 <len>`).
pub fn encode_get_body_chunk(len: u16, dst: &mut BytesMut) {
    dst.put_slice(&[0x41, 0x42, 0x00, 0x03, Code::GetBodyChunk.to_u8()]);
    dst.put_u16(len);
}

/// Appends `CPONG` (`41 42 00 01 09`).
pub fn encode_cpong(dst: &mut BytesMut) {
    dst.put_slice(&[0x41, 0x42, 0x00, 0x01, Code::CPong.to_u8()]);
}

/// Client side: appends `req` as a `FORWARD_REQUEST` packet of at most 65 536 bytes (the
/// protocol's maximum; a server configured smaller refuses a larger packet, which is what
/// limit tests want). See [`ForwardRequest::encode`] to choose the size.
pub fn encode_forward_request(
    req: &ForwardRequest,
    dst: &mut BytesMut,
) -> Result<(), PacketOverflow> {
    req.encode(AJP_MAX_PACKET_SIZE, dst)
}

/// Client side: appends `data` as one request body packet in the spec's framing
/// (`12 34 <n+2> <n> data`). Empty `data` is the end-of-body packet `12 34 00 02 00 00`, the
/// form Apache sends.
///
/// # Panics
///
/// When `data` is longer than `AJP_MAX_PACKET_SIZE - 6` (65 530) bytes: one packet answers one
/// `GET_BODY_CHUNK`, so the caller splits.
pub fn encode_body_packet(data: &[u8], dst: &mut BytesMut) {
    let max = max_body_packet(AJP_MAX_PACKET_SIZE);
    assert!(data.len() <= max, "body packet data longer than {max}");
    // data.len() <= 65 530, so the casts cannot truncate.
    PacketHeader {
        magic: SERVER_MAGIC,
        len: (data.len() + 2) as u16,
    }
    .encode(dst);
    dst.put_u16(data.len() as u16);
    dst.put_slice(data);
}

/// Client side: appends `CPING` (`12 34 00 01 0A`).
pub fn encode_cping(dst: &mut BytesMut) {
    dst.put_slice(&[0x12, 0x34, 0x00, 0x01, Code::CPing.to_u8()]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::AJP_DEFAULT_PACKET_SIZE;

    /// The packets `data` is queued as.
    fn body_chunks(data: &[u8]) -> Vec<u8> {
        let mut out = Output::new();
        queue_send_body_chunk(
            Bytes::copy_from_slice(data),
            AJP_DEFAULT_PACKET_SIZE,
            &mut out,
        );
        out.to_vec()
    }

    #[test]
    fn case2_body_chunk_and_end_bytes() {
        let mut dst = BytesMut::from(&body_chunks(b"abc")[..]);
        encode_end_response(true, &mut dst);
        assert_eq!(
            &dst[..],
            b"\x41\x42\x00\x07\x03\x00\x03abc\x00\x41\x42\x00\x02\x05\x01"
        );
    }

    #[test]
    fn fixed_packets() {
        let mut dst = BytesMut::new();
        encode_flush(&mut dst);
        encode_end_response(false, &mut dst);
        encode_get_body_chunk(8186, &mut dst);
        encode_cpong(&mut dst);
        encode_cping(&mut dst);
        assert_eq!(
            &dst[..],
            b"AB\x00\x04\x03\x00\x00\x00AB\x00\x02\x05\x00AB\x00\x03\x06\x1f\xfaAB\x00\x01\x09\
\x12\x34\x00\x01\x0a"
        );
    }

    #[test]
    fn case10_body_chunks_at_and_over_the_chunk_size() {
        assert_eq!(max_send_body_chunk(AJP_DEFAULT_PACKET_SIZE), 8184);
        assert_eq!(max_send_body_chunk(AJP_MAX_PACKET_SIZE), 65528);
        assert_eq!(max_body_packet(AJP_DEFAULT_PACKET_SIZE), 8186);
        // Exactly one full chunk: one packet of exactly the packet size.
        let dst = body_chunks(&[1; 8184]);
        assert_eq!(dst.len(), AJP_DEFAULT_PACKET_SIZE);
        assert_eq!(&dst[..7], b"AB\x1f\xfc\x03\x1f\xf8");
        assert_eq!(dst[dst.len() - 1], 0);
        // One byte more: a second packet.
        let dst = body_chunks(&[1; 8185]);
        assert_eq!(dst.len(), AJP_DEFAULT_PACKET_SIZE + 9);
        assert_eq!(&dst[8192..], b"AB\x00\x05\x03\x00\x01\x01\x00");
        // Nothing for nothing.
        assert!(body_chunks(b"").is_empty());
    }

    #[test]
    #[should_panic(expected = "body packet data longer than 65530")]
    fn client_body_packet_over_the_maximum_panics() {
        encode_body_packet(&vec![0; 65531], &mut BytesMut::new());
    }
}
