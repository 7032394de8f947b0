//! AJP13, the Apache JServ Protocol 1.3 ("The Apache Tomcat Connectors - AJP Protocol
//! Reference", AJPv13): packets, the container-side connection and the web-server-side codec.
//!
//! # The protocol in brief
//!
//! Binary packets on a persistent connection, one request at a time (spec "Packet Format"):
//! a 2-byte magic giving the direction, a 2-byte payload length, the payload. Integers are
//! big-endian; a string is a 2-byte length, the bytes and a `0x00` (length `0xFFFF` = null, no
//! bytes follow). Packets are at most 8192 bytes unless both sides are configured alike (up to
//! 65 536).
//!
//! ```text
//! packet:  12 34 | len(2) | payload      web server → container
//!          41 42 | len(2) | payload      container → web server ('A' 'B')
//!
//! web server ──▶ container                       container ──▶ web server
//!   [CPING 0A]                                     [CPONG 09]
//!   FORWARD_REQUEST 02 method protocol req_uri     SEND_HEADERS 04 status reason
//!     remote_addr remote_host server_name port       num_headers {name value}*
//!     is_ssl num_headers {name value}*             SEND_BODY_CHUNK 03 n data[n] 00 ...
//!     {attribute}* FF                              [GET_BODY_CHUNK 06 len]
//!   [first body packet, unrequested,               END_RESPONSE 05 reuse
//!    when Content-Length > 0]
//!   [body packet per GET_BODY_CHUNK: n data[n]]
//!   [end of body: 12 34 00 02 00 00 | 12 34 00 00]
//! ```
//!
//! Body packets carry no code byte; only the container's accounting tells them apart from a
//! request, which is why that accounting is the security boundary of this module (a body
//! packet of 512..767 bytes even starts with `0x02`, the `FORWARD_REQUEST` code).
//!
//! # Modules
//!
//! - [`packet`]: [`PacketHeader`], [`Code`], [`AttributeCode`], strings, [`ForwardRequest`] and
//!   [`SendHeaders`] with `load` / `encode` side by side.
//! - [`decode`]: [`PacketDecoder`] (framing), [`load_body`] (body packets, both framings) and
//!   the client's [`ClientDecoder`].
//! - [`encode`]: `SEND_BODY_CHUNK`, `END_RESPONSE`, `GET_BODY_CHUNK`, `CPONG`, and the client's
//!   [`encode_forward_request`], [`encode_body_packet`], [`encode_cping`].
//! - [`conn`]: [`Connection`], the container state machine, its [`AjpConfig`] and [`Event`]s.
//!
//! # What we support, and where we deviate
//!
//! - **Messages**: `FORWARD_REQUEST`, body packets and `CPING` in; `SEND_HEADERS`,
//!   `SEND_BODY_CHUNK` (and the empty flush form), `GET_BODY_CHUNK`, `END_RESPONSE` and `CPONG`
//!   out. `SHUTDOWN` and `PING` are never obeyed from the network: they close the connection,
//!   as does any unknown code. The "AJP14" extension codes are not supported.
//! - **Limits**: packet size 8192..=65536 ([`AJP_MIN_PACKET_SIZE`](crate::limits::AJP_MIN_PACKET_SIZE),
//!   [`AJP_MAX_PACKET_SIZE`](crate::limits::AJP_MAX_PACKET_SIZE)), refused from the length
//!   field before buffering; at most
//!   [`AJP_MAX_HEADERS`](crate::limits::AJP_MAX_HEADERS) (100) request headers; each header and
//!   `req_attribute` within the parameter limits.
//! - **Security** (digest §4, Tomcat's post-Ghostcat behaviour): with a configured secret, a
//!   request without it or with another one is [`Event::Forbidden`] (constant-time compare);
//!   without one, a received secret is ignored. Every `req_attribute` must be on the allowlist
//!   ([`DEFAULT_ALLOWED_ATTRIBUTES`]) or the request is forbidden. The secret is removed from
//!   the request before the driver sees it. Two `Content-Length` headers are an error;
//!   `Transfer-Encoding` takes precedence over `Content-Length`.
//! - **Reuse**: `END_RESPONSE` offers reuse only after the whole request body was received; an
//!   unread body closes the connection instead of being drained (§3.8 case 4 allows either;
//!   closing never reads a body byte as a request).
//! - **Strings**: null strings decode as empty except `remote_host` and attributes; header
//!   names are lowercase canonical names when coded, as sent otherwise.
//! - **Obsolete attributes** `context` (0x01) and `servlet_path` (0x02) are read and ignored.
//! - **Stored method**: method 0xFF needs attribute 0x0D; 0x0D with a coded method is refused
//!   rather than overriding it (Tomcat lets 0x0D win; no web server sends both).
//!
//! # lighttpd's mod_ajp13
//!
//! lighttpd (1.4.59+) frames request body packets without the inner length
//! (`12 34 <len> data[len]`, seen on the wire with 1.4.69, digest §6), sends `12 34 00 00` right
//! after every request with `Content-Length: 0`, and sends `ssl_key_size` as a string. We
//! **accept** all three, so lighttpd POSTs work:
//!
//! - The body framing is decided per connection by the first body packet that carries data: a
//!   packet whose first two bytes are its payload length minus 2 is standard (every Apache and
//!   mod_jk packet is), any other is lighttpd's, and the connection keeps that framing.
//!   lighttpd always sends `Content-Length` and never reuses connections, so a lighttpd body
//!   whose first two bytes happen to equal its packet length minus 2 (one in 65 536 for random
//!   data) is misread as standard, and the shortfall then surfaces as
//!   [`ProtocolError::TruncatedBody`](crate::ProtocolError::TruncatedBody), never as silently
//!   accepted data or a desynchronised stream: framing always follows the outer length. In
//!   lighttpd framing a `GET_BODY_CHUNK` may be answered by several packets (it streams
//!   against the requested credit), so packets are accepted while the body is incomplete.
//! - The stray `12 34 00 00` is ignored once, directly after a request with
//!   `Content-Length: 0`.
//! - `ssl_key_size` as a string is recognised without ambiguity (see
//!   [`ForwardRequest::load`]).
//!
//! [`AjpConfig::with_lighttpd_framing(false)`](AjpConfig::with_lighttpd_framing) turns the
//! first two off for deployments behind Apache only. lighttpd also sends only its mount as
//! `req_uri` (PATH_INFO is lost); that is outside this layer.

pub mod cgi;
pub mod conn;
pub mod decode;
pub mod encode;
pub mod packet;

pub use cgi::{cgi_params, header_var};
pub use conn::{AjpConfig, Connection, Event, ForbiddenReason, DEFAULT_ALLOWED_ATTRIBUTES};
pub use decode::{
    load_body, BodyFraming, BodyPacket, ClientDecoder, ContainerPacket, PacketDecoder,
};
pub use encode::{encode_body_packet, encode_cping, encode_forward_request};
pub use packet::{
    AttributeCode, Attributes, Code, ForwardRequest, PacketHeader, PacketOverflow, SendHeaders,
};
