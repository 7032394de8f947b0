//! SCGI protocol 1 (Neil Schemenauer, "SCGI: A Simple Common Gateway Interface alternative",
//! 2008-06-23): the request decoder, the server connection and the client encoder.
//!
//! # The protocol in brief
//!
//! One request per connection (spec "Protocol"): a netstring holding the CGI headers,
//! immediately followed by exactly `CONTENT_LENGTH` body bytes. There is no response framing:
//! the application writes CGI output and closes the connection.
//!
//! ```text
//! request:   netstring(headers) body[CONTENT_LENGTH]
//!
//! netstring: DIGITS ":" block ","          DIGITS = len(block) in decimal, no leading zero
//!                                                   except "0" itself
//! block:     name NUL value NUL  name NUL value NUL  ...
//!            └ first pair: CONTENT_LENGTH NUL <ASCII digits> NUL (present even when 0)
//!            └ some pair:  SCGI NUL 1 NUL
//!
//! spec example (70-byte block, 27-byte body):
//!   "70:" "CONTENT_LENGTH" 00 "27" 00 "SCGI" 00 "1" 00 "REQUEST_METHOD" 00 "POST" 00
//!         "REQUEST_URI" 00 "/deepthought" 00 "," "What is the answer to life?"
//! ```
//!
//! # Modules
//!
//! - [`decode`]: [`HeaderDecoder`] (netstring + pairs → [`RequestHead`]),
//!   [`parse_length`](decode::parse_length), [`parse_content_length`].
//! - [`encode`]: the client's [`encode_request`] (for `appserver probe` and tests).
//! - [`conn`]: [`Connection`], the server state machine, and its [`Event`]s.
//!
//! # What we accept, and where we deviate
//!
//! - **Header cap**: the netstring length is refused before buffering when it exceeds
//!   [`Limits::max_params_bytes`](crate::Limits::max_params_bytes) (64 KiB by default, the
//!   digest's §4 suggestion) or has more than
//!   [`SCGI_MAX_LENGTH_DIGITS`](crate::limits::SCGI_MAX_LENGTH_DIGITS) digits. We reuse the
//!   params cap instead of a separate constant because the block is exactly the request's
//!   parameters, and one `maxparams=` setting then bounds all three protocols alike.
//! - **`SCGI` header**: required by the spec, but nginx omits it when its config lacks the
//!   stock `scgi_params`, so its absence is accepted and reported
//!   ([`Event::Request`]'s `scgi_missing`); a value other than `1` is refused. Its position is
//!   free (Apache sends it second, lighttpd last).
//! - **Duplicate names** are refused, as the spec requires (no web server sends them; a
//!   duplicate is a sign of an injected or broken block). FastCGI keeps duplicates instead.
//! - **Empty values** are accepted (nginx sends them; the 2006 text said non-empty, the current
//!   spec does not). Empty names are refused.
//! - **`CONTENT_LENGTH`** must be ASCII digits only: no sign, no spaces, no hex, at most
//!   `u64::MAX`; leading zeros are tolerated.
//! - **After the body** every byte is discarded, never parsed as a second request.
//! - **EOF** mid-body is [`ProtocolError::TruncatedBody`](crate::ProtocolError::TruncatedBody);
//!   a half-close after the body is normal (lighttpd's `tcp-fin-propagate`).

pub mod conn;
pub mod decode;
pub mod encode;

pub use conn::{Connection, Event};
pub use decode::{parse_content_length, HeaderDecoder, RequestHead};
pub use encode::{encode_netstring, encode_request};
