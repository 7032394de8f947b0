//! AJP13 decoding: packet framing ([`PacketDecoder`]), request body packets
//! ([`load_body`]) and the client-side decoder of what a container sends ([`ClientDecoder`]).
//!
//! Decoders follow style rule 2: `decode(&mut self, src: &mut BytesMut)` returns `Ok(None)`
//! while a packet is incomplete and consumes bytes only when it returns one. The magic is
//! checked as soon as 2 bytes are in and the payload length as soon as 4 are, before anything
//! is reserved (rule 10), so `12 34 FF FF` against an 8192-byte packet size fails without
//! allocating. Payloads are [`Bytes`] split off the input: framing copies nothing.

use bytes::{Buf, Bytes, BytesMut};

use crate::limits::AJP_HEADER_LEN;
use crate::ProtocolError;

use super::packet::{max_payload, Code, PacketHeader, SendHeaders, CONTAINER_MAGIC, SERVER_MAGIC};

/// Frames AJP packets of one direction out of a byte stream.
///
/// ```
/// use appserver_proto::ajp::decode::PacketDecoder;
/// use bytes::BytesMut;
///
/// let mut dec = PacketDecoder::server(8192);
/// let mut src = BytesMut::from(&[0x12, 0x34, 0x00, 0x01][..]);
/// assert_eq!(dec.decode(&mut src), Ok(None)); // payload missing: nothing consumed
/// src.extend_from_slice(&[0x0a]);
/// assert_eq!(&dec.decode(&mut src).unwrap().unwrap()[..], [0x0a]); // CPING
/// assert!(src.is_empty());
/// ```
#[derive(Debug)]
pub struct PacketDecoder {
    magic: [u8; 2],
    max_payload: usize,
}

impl PacketDecoder {
    /// A decoder for packets a web server sends (`12 34`), at most `packet_size` bytes each.
    pub fn server(packet_size: usize) -> Self {
        Self {
            magic: SERVER_MAGIC,
            max_payload: max_payload(packet_size),
        }
    }

    /// A decoder for packets a container sends (`41 42`), at most `packet_size` bytes each.
    pub fn client(packet_size: usize) -> Self {
        Self {
            magic: CONTAINER_MAGIC,
            max_payload: max_payload(packet_size),
        }
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Decodes the next packet's payload, or returns `Ok(None)` (consuming nothing) while it is
    /// incomplete.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        if let Some(magic) = src.first_chunk::<2>() {
            if *magic != self.magic {
                return Err(ProtocolError::BadMagic(*magic));
            }
        }
        let Some(head) = src.first_chunk::<AJP_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(PacketHeader::parse(head).len);
        if len > self.max_payload {
            return Err(ProtocolError::PacketTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let total = AJP_HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(AJP_HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }
}

/// How the web server frames request body packets. Decided by the first body packet of a
/// connection that carries data, then kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No data-bearing body packet seen yet.
    Unknown,
    /// The spec's framing (Apache, mod_jk): `12 34 <len> <n> data[n]` with `n = len - 2`.
    Standard,
    /// lighttpd's mod_ajp13: `12 34 <len> data[len]`, no inner length.
    Raw,
}

/// A request body packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPacket {
    /// Body bytes (never empty).
    Data(Bytes),
    /// The end-of-body packet: `12 34 00 02 00 00` (Apache) or `12 34 00 00` (the spec,
    /// lighttpd).
    End,
}

/// Parses a request body packet's payload (spec "Request Body"; no code byte).
///
/// An empty payload, or an inner length of 0, is [`BodyPacket::End`]. Otherwise the framing
/// decides: `Standard` requires the inner length to be the payload length minus 2
/// ([`ProtocolError::BadBodyPacket`]); `Raw` takes the whole payload as data. While the
/// framing is `Unknown`, a packet that satisfies the standard rule makes it `Standard`, and
/// any other makes it `Raw` if `allow_raw`, else fails.
pub fn load_body(
    payload: Bytes,
    framing: &mut BodyFraming,
    allow_raw: bool,
) -> Result<BodyPacket, ProtocolError> {
    let len = payload.len();
    if len == 0 {
        return Ok(BodyPacket::End);
    }
    let inner = payload.first_chunk::<2>().map(|b| u16::from_be_bytes(*b));
    let standard = inner.is_some_and(|n| usize::from(n) + 2 == len);
    if standard && len == 2 && *framing != BodyFraming::Raw {
        // Apache's end-of-body; it carries no data, so it does not decide the framing.
        return Ok(BodyPacket::End);
    }
    if *framing == BodyFraming::Unknown {
        *framing = if standard || !allow_raw {
            BodyFraming::Standard
        } else {
            BodyFraming::Raw
        };
    }
    match *framing {
        BodyFraming::Raw => Ok(BodyPacket::Data(payload)),
        _ if standard => Ok(BodyPacket::Data(payload.slice(2..))),
        _ => Err(ProtocolError::BadBodyPacket {
            len,
            inner: inner.unwrap_or(0),
        }),
    }
}

/// A packet as the client (web server side) decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerPacket {
    /// `SEND_HEADERS`.
    SendHeaders(SendHeaders),
    /// `SEND_BODY_CHUNK` data; empty for a flush packet.
    SendBodyChunk(Bytes),
    /// `END_RESPONSE`.
    EndResponse {
        /// The `reuse` flag: the web server may send another request on this connection.
        reuse: bool,
    },
    /// `GET_BODY_CHUNK` with the requested length.
    GetBodyChunk(u16),
    /// `CPONG`.
    CPong,
}

/// Client-side decoder: the packets a container sends to a web server.
///
/// Used by `appserver probe` and by tests that play the web server. A code only a web server
/// sends is [`ProtocolError::UnexpectedPacket`].
#[derive(Debug)]
pub struct ClientDecoder {
    packets: PacketDecoder,
}

impl ClientDecoder {
    /// A decoder for packets of at most `packet_size` bytes.
    pub fn new(packet_size: usize) -> Self {
        Self {
            packets: PacketDecoder::client(packet_size),
        }
    }

    /// Decodes one packet.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ContainerPacket>, ProtocolError> {
        let Some(payload) = self.packets.decode(src)? else {
            return Ok(None);
        };
        let Some(&code) = payload.first() else {
            return Err(ProtocolError::UnexpectedPacket {
                expected: "a packet a container sends",
                got: "an empty packet",
            });
        };
        let packet = match Code::from_u8(code) {
            Code::SendHeaders => ContainerPacket::SendHeaders(SendHeaders::load(&payload)?),
            Code::SendBodyChunk => {
                let Some(&[_, hi, lo]) = payload.first_chunk::<3>() else {
                    return Err(ProtocolError::MissingData("SEND_BODY_CHUNK length"));
                };
                let n = usize::from(u16::from_be_bytes([hi, lo]));
                // mod_proxy_ajp requires exactly n + 4 payload bytes: code, length, data, 0x00.
                if payload.len() != n + 4 {
                    return Err(if payload.len() < n + 4 {
                        ProtocolError::MissingData("SEND_BODY_CHUNK data")
                    } else {
                        ProtocolError::TrailingData {
                            what: "SEND_BODY_CHUNK",
                            len: payload.len() - n - 4,
                        }
                    });
                }
                if payload[n + 3] != 0 {
                    return Err(ProtocolError::UnterminatedString("SEND_BODY_CHUNK data"));
                }
                ContainerPacket::SendBodyChunk(payload.slice(3..3 + n))
            }
            Code::EndResponse => match payload[..] {
                [_, reuse] => ContainerPacket::EndResponse { reuse: reuse != 0 },
                [_] => return Err(ProtocolError::MissingData("END_RESPONSE reuse")),
                _ => {
                    return Err(ProtocolError::TrailingData {
                        what: "END_RESPONSE",
                        len: payload.len() - 2,
                    })
                }
            },
            Code::GetBodyChunk => match payload[..] {
                [_, hi, lo] => ContainerPacket::GetBodyChunk(u16::from_be_bytes([hi, lo])),
                [_] | [_, _] => return Err(ProtocolError::MissingData("GET_BODY_CHUNK length")),
                _ => {
                    return Err(ProtocolError::TrailingData {
                        what: "GET_BODY_CHUNK",
                        len: payload.len() - 3,
                    })
                }
            },
            Code::CPong => match payload.len() {
                1 => ContainerPacket::CPong,
                n => {
                    return Err(ProtocolError::TrailingData {
                        what: "CPONG",
                        len: n - 1,
                    })
                }
            },
            Code::Unknown(c) => return Err(ProtocolError::UnknownPacketCode(c)),
            other => {
                return Err(ProtocolError::UnexpectedPacket {
                    expected: "a packet a container sends",
                    got: other.name(),
                })
            }
        };
        Ok(Some(packet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ajp::encode::{
        encode_body_packet, encode_cpong, encode_end_response, encode_flush, encode_get_body_chunk,
        queue_send_body_chunk,
    };
    use crate::ajp::packet::encode_send_headers;
    use crate::limits::{AJP_DEFAULT_PACKET_SIZE, AJP_MAX_PACKET_SIZE};

    #[test]
    fn magic_is_checked_from_two_bytes() {
        let mut dec = PacketDecoder::server(AJP_DEFAULT_PACKET_SIZE);
        assert_eq!(dec.decode(&mut BytesMut::from(&[0x12][..])), Ok(None));
        assert_eq!(
            dec.decode(&mut BytesMut::from(&b"AB"[..])),
            Err(ProtocolError::BadMagic([0x41, 0x42]))
        );
        assert_eq!(
            dec.decode(&mut BytesMut::from(&[0x12, 0x35, 0x00, 0x01, 0x0a][..])),
            Err(ProtocolError::BadMagic([0x12, 0x35]))
        );
        let mut client = PacketDecoder::client(AJP_DEFAULT_PACKET_SIZE);
        assert_eq!(
            client.decode(&mut BytesMut::from(&[0x12, 0x34][..])),
            Err(ProtocolError::BadMagic([0x12, 0x34]))
        );
    }

    #[test]
    fn packet_size_at_and_over_the_limit_without_allocating() {
        let max = AJP_DEFAULT_PACKET_SIZE - 4;
        let mut dec = PacketDecoder::server(AJP_DEFAULT_PACKET_SIZE);
        assert_eq!(dec.max_payload(), 8188);
        let mut src = BytesMut::with_capacity(16);
        src.extend_from_slice(&[0x12, 0x34, 0xff, 0xff]);
        assert_eq!(
            dec.decode(&mut src),
            Err(ProtocolError::PacketTooLarge { len: 0xffff, max })
        );
        assert!(src.capacity() < 1024, "reserved for a refused packet");

        let over = (max as u16 + 1).to_be_bytes();
        let mut src = BytesMut::from(&[0x12, 0x34, over[0], over[1]][..]);
        assert_eq!(
            dec.decode(&mut src),
            Err(ProtocolError::PacketTooLarge { len: max + 1, max })
        );
        // At the limit: reserved, then decoded whole.
        let at = (max as u16).to_be_bytes();
        let mut src = BytesMut::from(&[0x12, 0x34, at[0], at[1]][..]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert!(src.capacity() >= 4 + max);
        src.extend_from_slice(&vec![7; max]);
        assert_eq!(dec.decode(&mut src).unwrap().unwrap().len(), max);
        assert!(src.is_empty());

        let mut big = PacketDecoder::server(AJP_MAX_PACKET_SIZE);
        assert_eq!(big.max_payload(), 65532);
        let mut src = BytesMut::from(&[0x12, 0x34, 0xff, 0xfd][..]);
        assert_eq!(
            big.decode(&mut src),
            Err(ProtocolError::PacketTooLarge {
                len: 65533,
                max: 65532
            })
        );
    }

    #[test]
    fn incomplete_packets_consume_nothing() {
        let whole = [0x12, 0x34, 0x00, 0x03, 0x00, 0x01, b'x', 0x12, 0x34];
        let mut dec = PacketDecoder::server(AJP_DEFAULT_PACKET_SIZE);
        for cut in 0..7 {
            let mut src = BytesMut::from(&whole[..cut]);
            assert_eq!(dec.decode(&mut src), Ok(None));
            assert_eq!(src.len(), cut);
        }
        let mut src = BytesMut::from(&whole[..]);
        assert_eq!(
            &dec.decode(&mut src).unwrap().unwrap()[..],
            [0x00, 0x01, b'x']
        );
        assert_eq!(&src[..], [0x12, 0x34]);
    }

    #[test]
    fn body_packets_both_end_forms_and_framings() {
        let body = |p: &[u8], framing: &mut BodyFraming, raw: bool| {
            load_body(Bytes::copy_from_slice(p), framing, raw)
        };
        let mut f = BodyFraming::Unknown;
        // Both end-of-body forms, framing still undecided.
        assert_eq!(body(b"", &mut f, true), Ok(BodyPacket::End));
        assert_eq!(body(b"\x00\x00", &mut f, true), Ok(BodyPacket::End));
        assert_eq!(f, BodyFraming::Unknown);
        // Standard: digest §3.8 case 3, `12 34 00 05 00 03 'abc'`.
        assert_eq!(
            body(b"\x00\x03abc", &mut f, true),
            Ok(BodyPacket::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(f, BodyFraming::Standard);
        assert_eq!(
            body(b"abc", &mut f, true),
            Err(ProtocolError::BadBodyPacket {
                len: 3,
                inner: 0x6162
            })
        );
        assert_eq!(
            body(b"\x01", &mut f, true),
            Err(ProtocolError::BadBodyPacket { len: 1, inner: 0 })
        );
        assert_eq!(body(b"", &mut f, true), Ok(BodyPacket::End));

        // lighttpd: `12 34 00 03 'abc'`.
        let mut f = BodyFraming::Unknown;
        assert_eq!(
            body(b"abc", &mut f, true),
            Ok(BodyPacket::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(f, BodyFraming::Raw);
        // Once raw, a packet that looks standard is still raw data.
        assert_eq!(
            body(b"\x00\x01x", &mut f, true),
            Ok(BodyPacket::Data(Bytes::from_static(b"\x00\x01x")))
        );
        assert_eq!(
            body(b"\x00\x00", &mut f, true),
            Ok(BodyPacket::Data(Bytes::from_static(b"\x00\x00")))
        );
        assert_eq!(body(b"", &mut f, true), Ok(BodyPacket::End));

        // Raw framing disabled.
        let mut f = BodyFraming::Unknown;
        assert_eq!(
            body(b"abc", &mut f, false),
            Err(ProtocolError::BadBodyPacket {
                len: 3,
                inner: 0x6162
            })
        );
    }

    #[test]
    fn client_decodes_every_container_packet() {
        let mut src = BytesMut::new();
        encode_send_headers(
            302,
            b"Found",
            &[(b"Location", b"/x"), (b"X-Y", b"z")],
            AJP_DEFAULT_PACKET_SIZE,
            &mut src,
        )
        .unwrap();
        let mut body = crate::Output::new();
        let hello = Bytes::from_static(b"hello");
        queue_send_body_chunk(hello, AJP_DEFAULT_PACKET_SIZE, &mut body);
        src.extend_from_slice(&body.to_vec());
        encode_flush(&mut src);
        encode_get_body_chunk(0x1ffa, &mut src);
        encode_cpong(&mut src);
        encode_end_response(true, &mut src);
        encode_end_response(false, &mut src);
        let mut dec = ClientDecoder::new(AJP_DEFAULT_PACKET_SIZE);
        let mut got = Vec::new();
        while let Some(p) = dec.decode(&mut src).unwrap() {
            got.push(p);
        }
        assert_eq!(
            got,
            [
                ContainerPacket::SendHeaders(SendHeaders {
                    status: 302,
                    reason: Bytes::from("Found"),
                    headers: vec![
                        (Bytes::from("location"), Bytes::from("/x")),
                        (Bytes::from("X-Y"), Bytes::from("z")),
                    ],
                }),
                ContainerPacket::SendBodyChunk(Bytes::from("hello")),
                ContainerPacket::SendBodyChunk(Bytes::new()),
                ContainerPacket::GetBodyChunk(0x1ffa),
                ContainerPacket::CPong,
                ContainerPacket::EndResponse { reuse: true },
                ContainerPacket::EndResponse { reuse: false },
            ]
        );
    }

    #[test]
    fn client_refuses_malformed_container_packets() {
        let bad = |raw: &[u8], err: ProtocolError| {
            let mut dec = ClientDecoder::new(AJP_DEFAULT_PACKET_SIZE);
            assert_eq!(dec.decode(&mut BytesMut::from(raw)), Err(err), "{raw:02x?}");
        };
        // SEND_BODY_CHUNK without its trailing zero (mod_proxy_ajp refuses it too).
        bad(
            b"AB\x00\x06\x03\x00\x03abc",
            ProtocolError::MissingData("SEND_BODY_CHUNK data"),
        );
        bad(
            b"AB\x00\x08\x03\x00\x03abc\x00\x00",
            ProtocolError::TrailingData {
                what: "SEND_BODY_CHUNK",
                len: 1,
            },
        );
        bad(
            b"AB\x00\x07\x03\x00\x03abcX",
            ProtocolError::UnterminatedString("SEND_BODY_CHUNK data"),
        );
        bad(
            b"AB\x00\x00",
            ProtocolError::UnexpectedPacket {
                expected: "a packet a container sends",
                got: "an empty packet",
            },
        );
        bad(
            b"AB\x00\x01\x0a",
            ProtocolError::UnexpectedPacket {
                expected: "a packet a container sends",
                got: "CPING",
            },
        );
        bad(b"AB\x00\x01\x42", ProtocolError::UnknownPacketCode(0x42));
        bad(
            b"AB\x00\x01\x05",
            ProtocolError::MissingData("END_RESPONSE reuse"),
        );
        bad(
            b"AB\x00\x02\x06\x00",
            ProtocolError::MissingData("GET_BODY_CHUNK length"),
        );
        bad(
            b"AB\x00\x02\x09\x00",
            ProtocolError::TrailingData {
                what: "CPONG",
                len: 1,
            },
        );
        bad(
            b"AB\x00\x09\x04\x00\xc8\xff\xff\x00\x01\xa0\x0c",
            ProtocolError::UnknownHeaderCode(0xa00c),
        );
    }

    #[test]
    fn client_body_packet_encoder_matches_the_spec_bytes() {
        let mut dst = BytesMut::new();
        encode_body_packet(b"abc", &mut dst);
        encode_body_packet(b"", &mut dst);
        assert_eq!(
            &dst[..],
            b"\x12\x34\x00\x05\x00\x03abc\x12\x34\x00\x02\x00\x00"
        );
    }
}
