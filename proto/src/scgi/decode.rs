//! SCGI decoding: the netstring header block ([`HeaderDecoder`]), its length prefix
//! ([`parse_length`]) and its `name NUL value NUL` pairs ([`parse_headers`]).
//!
//! The decoder follows style rule 2: `decode` returns `Ok(None)` while the block is incomplete
//! and consumes nothing until it returns the whole head. The length prefix is validated digit
//! by digit as it arrives (at most [`SCGI_MAX_LENGTH_DIGITS`] digits are ever looked at) and
//! checked against the cap before anything is reserved for the block (rule 10). The block
//! becomes the [`Params`] buffer itself: pairs are spans into it, so a request costs one
//! buffer and one span vector, never an allocation per pair.

use bytes::{Bytes, BytesMut};

use crate::limits::SCGI_MAX_LENGTH_DIGITS;
use crate::params::{check_pair, Span};
use crate::{Limits, Params, ProtocolError};

/// The largest length [`SCGI_MAX_LENGTH_DIGITS`] digits can write: 9 999 999.
const MAX_DIGITS_VALUE: usize = 9_999_999;

/// The pairs a header block's span list is first sized for, so that it is allocated once:
/// nginx's stock `scgi_params` sends 15 and a browser 10 to 15 headers more. A longer list
/// grows as any `Vec` does.
const EXPECTED_PAIRS: usize = 32;

/// A parsed SCGI request head: everything before the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Every header in arrival order, `CONTENT_LENGTH` and `SCGI` included.
    pub params: Params,
    /// The value of `CONTENT_LENGTH`: exactly this many body bytes follow the netstring.
    pub content_length: u64,
    /// True when the block has no `SCGI` header. nginx omits it unless its config includes
    /// the stock `scgi_params`; the driver accepts the request and may log a warning.
    pub scgi_missing: bool,
}

/// Decodes the netstring header block of one SCGI request.
///
/// ```
/// use appserver_proto::scgi::decode::HeaderDecoder;
/// use appserver_proto::Limits;
/// use bytes::BytesMut;
///
/// let mut dec = HeaderDecoder::new(Limits::default());
/// let mut src = BytesMut::from(&b"24:CONTENT_LENGTH\x000\x00SCGI\x00"[..]);
/// assert_eq!(dec.decode(&mut src), Ok(None)); // incomplete: nothing consumed
/// src.extend_from_slice(b"1\x00,rest");
/// let head = dec.decode(&mut src).unwrap().unwrap();
/// assert_eq!(head.content_length, 0);
/// assert_eq!(head.params.get(b"SCGI"), Some(&b"1"[..]));
/// assert_eq!(&src[..], b"rest");
/// ```
#[derive(Debug)]
pub struct HeaderDecoder {
    limits: Limits,
}

impl HeaderDecoder {
    /// A decoder bounded by `limits`: the block may not exceed
    /// [`Limits::max_params_bytes`] (nor 9 999 999, the 7-digit bound), and its pairs obey the
    /// pair limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The largest header block accepted, in bytes.
    pub fn max_len(&self) -> usize {
        self.limits.max_params_bytes().min(MAX_DIGITS_VALUE)
    }

    /// Decodes the request head, or returns `Ok(None)` (consuming nothing) while it is
    /// incomplete. On success the netstring and its `,` are consumed; body bytes stay in `src`.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RequestHead>, ProtocolError> {
        let Some((len, prefix)) = parse_length(src, self.max_len())? else {
            return Ok(None);
        };
        // len <= 9 999 999 and prefix <= 8, so this cannot overflow.
        let total = prefix + len + 1;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        if src[total - 1] != b',' {
            return Err(ProtocolError::BadNetstring(
                "missing ',' after the header block",
            ));
        }
        let netstring = src.split_to(total).freeze();
        let block = netstring.slice(prefix..total - 1);
        parse_headers(block, &self.limits).map(Some)
    }
}

/// Parses a netstring length prefix `DIGITS:` at the start of `buf`.
///
/// Returns `(length, prefix length including ':')`, or `Ok(None)` while the `:` has not
/// arrived. Fails as soon as the bytes seen so far cannot start a valid prefix: a non-digit,
/// `:` first, a leading zero (only `0` itself may start with `0`), an 8th digit, or a value
/// above `max`.
pub fn parse_length(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i == 0 => return Err(ProtocolError::BadNetstring("empty length")),
            b':' => return Ok(Some((len, i + 1))),
            b'0'..=b'9' => {
                if i == SCGI_MAX_LENGTH_DIGITS {
                    return Err(ProtocolError::BadNetstring("length has more than 7 digits"));
                }
                if i == 1 && buf[0] == b'0' {
                    return Err(ProtocolError::BadNetstring("leading zero in length"));
                }
                // At most 7 digits: len <= 9 999 999, no overflow.
                len = len * 10 + usize::from(b - b'0');
                // More digits only make it larger: refuse now, before waiting for the ':'.
                if len > max {
                    return Err(ProtocolError::ParamsTooLarge { len, max });
                }
            }
            _ => return Err(ProtocolError::BadNetstring("length is not ASCII digits")),
        }
    }
    Ok(None)
}

/// Parses a header block (the netstring's content) into a [`RequestHead`].
///
/// Rules (SCGI protocol 1, §2.1 of our digest):
///
/// - the block is a sequence of `name NUL value NUL`; a name or value without its NUL is
///   [`ProtocolError::MissingData`]; names are non-empty ([`ProtocolError::EmptyName`]);
/// - the first pair is `CONTENT_LENGTH`, ASCII digits only
///   ([`ProtocolError::MissingContentLength`], [`ProtocolError::InvalidContentLength`]);
/// - `SCGI`, anywhere, must be `1` when present ([`ProtocolError::UnsupportedScgiVersion`]);
/// - names are unique ([`ProtocolError::DuplicateParam`]): the spec forbids duplicates, and
///   unlike FastCGI no web server sends them;
/// - each pair obeys [`check_pair`] (name and value length, pair count).
pub fn parse_headers(block: Bytes, limits: &Limits) -> Result<RequestHead, ProtocolError> {
    let mut nuls = Nuls::new(&block);
    let mut pos = 0;
    // Every pair takes at least 3 bytes (a name byte and two NULs).
    let mut spans = Vec::with_capacity(EXPECTED_PAIRS.min(block.len() / 3));
    let mut content_length = None;
    let mut scgi_missing = true;
    while pos < block.len() {
        let name_start = pos;
        let name_end = nuls
            .next()
            .ok_or(ProtocolError::MissingData("SCGI header name"))?;
        let value_start = name_end + 1;
        let value_end = nuls
            .next()
            .ok_or(ProtocolError::MissingData("SCGI header value"))?;
        pos = value_end + 1;
        let name = &block[name_start..name_end];
        let value = &block[value_start..value_end];
        if name.is_empty() {
            return Err(ProtocolError::EmptyName("SCGI header"));
        }
        check_pair(name.len(), value.len(), name_start, spans.len(), limits)?;
        if spans.is_empty() {
            if name != b"CONTENT_LENGTH" {
                return Err(ProtocolError::MissingContentLength);
            }
            content_length = Some(parse_content_length(value)?);
        } else if name == b"SCGI" {
            if value != b"1" {
                return Err(ProtocolError::UnsupportedScgiVersion(
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            scgi_missing = false;
        }
        spans.push(Span::new(name_start..name_end, value_start..value_end));
    }
    let Some(content_length) = content_length else {
        return Err(ProtocolError::MissingContentLength);
    };
    let params = Params::from_parts(block, spans);
    reject_duplicates(&params)?;
    Ok(RequestHead {
        params,
        content_length,
        scgi_missing,
    })
}

/// Parses a `Content-Length` value: a non-empty run of ASCII digits (leading zeros allowed),
/// no sign, no spaces, at most `u64::MAX`. Shared by SCGI's `CONTENT_LENGTH` and AJP's
/// `Content-Length` header.
pub fn parse_content_length(value: &[u8]) -> Result<u64, ProtocolError> {
    if value.is_empty() {
        return Err(ProtocolError::InvalidContentLength("empty"));
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(ProtocolError::InvalidContentLength("not ASCII digits"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ProtocolError::InvalidContentLength("beyond 2^64 - 1"))?;
    }
    Ok(n)
}

/// The positions of a block's NUL bytes, in order, found eight bytes at a time: the block is
/// scanned once, where finding each name's and value's NUL anew was the largest part of an
/// SCGI request's parsing (docs/performance.md, "The hot path").
struct Nuls<'a> {
    buf: &'a [u8],
    /// Where the word in `mask` starts.
    base: usize,
    /// The NULs of the current word not yet returned: the high bit of each such byte.
    mask: u64,
}

impl<'a> Nuls<'a> {
    /// Low seven bits of every byte.
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

    fn new(buf: &'a [u8]) -> Self {
        let mut nuls = Self {
            buf,
            base: 0,
            mask: 0,
        };
        nuls.mask = nuls.word_mask();
        nuls
    }

    /// The high bit of every NUL byte in the word at `base` (bytes past the end count as
    /// non-NUL). Exact: `(w & LOW7) + LOW7` cannot carry from one byte into the next.
    fn word_mask(&self) -> u64 {
        let w = match self.buf.get(self.base..self.base + 8) {
            Some(word) => u64::from_le_bytes(word.try_into().expect("eight bytes")),
            None => {
                let mut bytes = [0xFFu8; 8];
                let tail = &self.buf[self.base..];
                bytes[..tail.len()].copy_from_slice(tail);
                u64::from_le_bytes(bytes)
            }
        };
        !(((w & Self::LOW7) + Self::LOW7) | w | Self::LOW7)
    }
}

impl Iterator for Nuls<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 8;
            if self.base >= self.buf.len() {
                return None;
            }
            self.mask = self.word_mask();
        }
        let at = self.base + self.mask.trailing_zeros() as usize / 8;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// Names whose filter bit was already set before [`reject_duplicates`] stops comparing each
/// with the names before it and sorts them all instead. Web servers' names rarely share a bit
/// (nginx's stock `scgi_params` and a browser's headers: none or one or two); a block made so
/// that every name shares one costs O(n log n) this way, not O(n²).
const MAX_FILTER_HITS: usize = 8;

/// Fails on a name that occurs twice. Each name sets one bit of a 256-bit filter chosen by
/// its length and three of its bytes; only a name whose bit is already set is compared with
/// the names before it. Sorting every name's slice cost a request about 1 400 instructions
/// (docs/performance.md, "The hot path"); the filter costs a few per name.
fn reject_duplicates(params: &Params) -> Result<(), ProtocolError> {
    let mut filter = [0u64; 4];
    let mut hits = 0;
    for (i, (name, _)) in params.iter().enumerate() {
        let bit = filter_bit(name);
        let (word, mask) = (&mut filter[bit / 64], 1u64 << (bit % 64));
        if *word & mask != 0 {
            hits += 1;
            if hits > MAX_FILTER_HITS {
                return reject_duplicates_sorted(params);
            }
            if params.iter().take(i).any(|(earlier, _)| earlier == name) {
                return Err(duplicate(name));
            }
        }
        *word |= mask;
    }
    Ok(())
}

/// The filter bit of a name, 0..256: its length and its first, middle and last bytes, mixed.
fn filter_bit(name: &[u8]) -> usize {
    let n = name.len();
    let byte = |i: usize| u32::from(name.get(i).copied().unwrap_or(0));
    // `n` is below MAX_PARAM_NAME_LEN, so the cast keeps it whole.
    let mix = (n as u32).wrapping_mul(0x9E37_79B9)
        ^ byte(0) << 16
        ^ byte(n / 2) << 8
        ^ byte(n.wrapping_sub(1));
    (mix.wrapping_mul(0x85EB_CA6B) >> 24) as usize
}

/// [`reject_duplicates`] for a block whose names crowd the filter: sorted by length, then
/// bytes, so equal names sit side by side.
fn reject_duplicates_sorted(params: &Params) -> Result<(), ProtocolError> {
    let mut names: Vec<&[u8]> = params.iter().map(|(name, _)| name).collect();
    names.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(duplicate(w[0])),
        None => Ok(()),
    }
}

fn duplicate(name: &[u8]) -> ProtocolError {
    ProtocolError::DuplicateParam(String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{
        MAX_MAX_PARAMS_BYTES, MAX_PARAM_NAME_LEN, MAX_PARAM_VALUE_LEN, MIN_MAX_PARAMS_BYTES,
        MIN_MAX_PARAMS_PAIRS,
    };
    use crate::scgi::encode::{encode_netstring, encode_request};

    /// The spec's example request, byte for byte (digest §2.4 case 1).
    const SPEC_EXAMPLE: &[u8] = b"70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00\
REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/deepthought\x00,What is the answer to life?";

    fn block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in pairs {
            b.extend_from_slice(n);
            b.push(0);
            b.extend_from_slice(v);
            b.push(0);
        }
        b
    }

    fn decode_block(raw: &[u8]) -> Result<Option<RequestHead>, ProtocolError> {
        let mut src = BytesMut::new();
        encode_netstring(raw, &mut src);
        HeaderDecoder::new(Limits::default()).decode(&mut src)
    }

    fn decode_bytes(raw: &[u8]) -> Result<Option<RequestHead>, ProtocolError> {
        HeaderDecoder::new(Limits::default()).decode(&mut BytesMut::from(raw))
    }

    fn with_cl(value: &[u8]) -> Result<Option<RequestHead>, ProtocolError> {
        decode_block(&block(&[(b"CONTENT_LENGTH", value), (b"SCGI", b"1")]))
    }

    #[test]
    fn spec_example_decodes_and_leaves_the_body() {
        let mut src = BytesMut::from(SPEC_EXAMPLE);
        let head = HeaderDecoder::new(Limits::default())
            .decode(&mut src)
            .unwrap()
            .unwrap();
        assert_eq!(head.content_length, 27);
        assert!(!head.scgi_missing);
        let pairs: Vec<_> = head.params.iter().collect();
        assert_eq!(
            pairs,
            [
                (&b"CONTENT_LENGTH"[..], &b"27"[..]),
                (b"SCGI", b"1"),
                (b"REQUEST_METHOD", b"POST"),
                (b"REQUEST_URI", b"/deepthought"),
            ]
        );
        assert_eq!(&src[..], b"What is the answer to life?");
    }

    #[test]
    fn incomplete_head_consumes_nothing_and_reserves_the_block() {
        let mut dec = HeaderDecoder::new(Limits::default());
        for cut in 0..SPEC_EXAMPLE.len() - 27 {
            let mut src = BytesMut::from(&SPEC_EXAMPLE[..cut]);
            assert_eq!(dec.decode(&mut src), Ok(None), "cut at {cut}");
            assert_eq!(src.len(), cut);
            if cut >= 3 {
                assert!(src.capacity() >= 74);
            }
        }
    }

    #[test]
    fn length_prefix_rejects() {
        let bad = |raw: &[u8], why: &'static str| {
            assert_eq!(
                decode_bytes(raw),
                Err(ProtocolError::BadNetstring(why)),
                "{raw:?}"
            );
        };
        // Case 3: each is refused as soon as the offending byte arrives.
        bad(b"070:", "leading zero in length");
        bad(b"07", "leading zero in length");
        bad(b"00:", "leading zero in length");
        bad(b"7a:", "length is not ASCII digits");
        bad(b"a", "length is not ASCII digits");
        bad(b"-1:", "length is not ASCII digits");
        bad(b" 7:", "length is not ASCII digits");
        bad(b":", "empty length");
        bad(b":,", "empty length");
    }

    #[test]
    fn length_digits_at_and_over_the_limit() {
        let big = MAX_DIGITS_VALUE;
        assert_eq!(parse_length(b"9999999", big), Ok(None));
        assert_eq!(parse_length(b"9999999:", big), Ok(Some((9_999_999, 8))));
        assert_eq!(
            parse_length(b"10000000", big),
            Err(ProtocolError::BadNetstring("length has more than 7 digits"))
        );
        // Even the largest configurable cap cannot lift the 7-digit bound.
        let limits = Limits::default().with_max_params_bytes(MAX_MAX_PARAMS_BYTES);
        let mut dec = HeaderDecoder::new(limits);
        assert_eq!(dec.max_len(), 9_999_999);
        assert_eq!(dec.decode(&mut BytesMut::from(&b"9999999"[..])), Ok(None));
        assert_eq!(
            dec.decode(&mut BytesMut::from(&b"99999999"[..])),
            Err(ProtocolError::BadNetstring("length has more than 7 digits"))
        );
        assert_eq!(parse_length(b"0:", big), Ok(Some((0, 2))));
    }

    #[test]
    fn netstring_length_cap_at_and_over_limit_before_buffering() {
        let max = MIN_MAX_PARAMS_BYTES;
        let limits = Limits::default().with_max_params_bytes(max);
        // Over: refused from the prefix alone, before any block byte is buffered.
        let mut src = BytesMut::from(format!("{}:", max + 1).as_bytes());
        assert_eq!(
            HeaderDecoder::new(limits).decode(&mut src),
            Err(ProtocolError::ParamsTooLarge { len: max + 1, max })
        );
        // Over by digits: "40961" exceeds the cap at its 5th digit, no ':' needed.
        assert_eq!(
            parse_length(b"40961", max),
            Err(ProtocolError::ParamsTooLarge { len: 40961, max })
        );
        // At the limit: a block of exactly `max` bytes is accepted.
        let head = block(&[(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1")]);
        let filler_len = max - head.len() - b"F\0\0".len();
        let mut raw = head;
        raw.extend_from_slice(b"F\0");
        raw.extend(std::iter::repeat_n(b'x', filler_len));
        raw.push(0);
        assert_eq!(raw.len(), max);
        let mut src = BytesMut::new();
        encode_netstring(&raw, &mut src);
        let got = HeaderDecoder::new(limits)
            .decode(&mut src)
            .unwrap()
            .unwrap();
        assert_eq!(got.params.get(b"F").map(<[u8]>::len), Some(filler_len));
    }

    #[test]
    fn missing_comma_is_refused() {
        let mut raw = BytesMut::new();
        encode_netstring(&block(&[(b"CONTENT_LENGTH", b"0")]), &mut raw);
        let last = raw.len() - 1;
        raw[last] = b';';
        assert_eq!(
            decode_bytes(&raw),
            Err(ProtocolError::BadNetstring(
                "missing ',' after the header block"
            ))
        );
    }

    #[test]
    fn content_length_must_come_first() {
        assert_eq!(
            decode_bytes(b"0:,"),
            Err(ProtocolError::MissingContentLength)
        );
        assert_eq!(
            decode_block(&block(&[(b"SCGI", b"1"), (b"CONTENT_LENGTH", b"0")])),
            Err(ProtocolError::MissingContentLength)
        );
        assert_eq!(
            decode_block(&block(&[(b"content_length", b"0")])),
            Err(ProtocolError::MissingContentLength)
        );
    }

    #[test]
    fn content_length_values() {
        let invalid = |v: &[u8], why: &'static str| {
            assert_eq!(
                with_cl(v),
                Err(ProtocolError::InvalidContentLength(why)),
                "{v:?}"
            );
        };
        invalid(b"", "empty");
        invalid(b"-1", "not ASCII digits");
        invalid(b"+5", "not ASCII digits");
        invalid(b" 5", "not ASCII digits");
        invalid(b"5 ", "not ASCII digits");
        invalid(b"0x10", "not ASCII digits");
        invalid(b"1234567890123456789012345", "beyond 2^64 - 1");
        invalid(b"18446744073709551616", "beyond 2^64 - 1");
        let ok = |v: &[u8]| with_cl(v).unwrap().unwrap().content_length;
        assert_eq!(ok(b"18446744073709551615"), u64::MAX);
        assert_eq!(ok(b"0"), 0);
        assert_eq!(ok(b"007"), 7);
    }

    #[test]
    fn scgi_header_absent_one_or_refused() {
        let head = decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (b"X", b"")]))
            .unwrap()
            .unwrap();
        assert!(head.scgi_missing);
        // lighttpd puts SCGI last.
        let head = decode_block(&block(&[
            (b"CONTENT_LENGTH", b"0"),
            (b"REQUEST_METHOD", b"GET"),
            (b"SCGI", b"1"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!head.scgi_missing);
        for v in [&b"2"[..], b"", b"1 ", b"01"] {
            assert_eq!(
                decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (b"SCGI", v)])),
                Err(ProtocolError::UnsupportedScgiVersion(
                    String::from_utf8_lossy(v).into_owned()
                ))
            );
        }
    }

    #[test]
    fn duplicates_and_empty_names_are_refused() {
        let dup = |pairs: &[(&[u8], &[u8])], name: &str| {
            assert_eq!(
                decode_block(&block(pairs)),
                Err(ProtocolError::DuplicateParam(name.into()))
            );
        };
        dup(
            &[
                (b"CONTENT_LENGTH", b"0"),
                (b"REQUEST_METHOD", b"GET"),
                (b"SCGI", b"1"),
                (b"REQUEST_METHOD", b"POST"),
            ],
            "REQUEST_METHOD",
        );
        dup(
            &[(b"CONTENT_LENGTH", b"0"), (b"CONTENT_LENGTH", b"5")],
            "CONTENT_LENGTH",
        );
        dup(
            &[(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1"), (b"SCGI", b"1")],
            "SCGI",
        );
        // Case 3: `00 'v' 00`, an empty name.
        assert_eq!(
            decode_block(b"CONTENT_LENGTH\x000\x00\x00v\x00"),
            Err(ProtocolError::EmptyName("SCGI header"))
        );
        assert_eq!(
            decode_block(b"\x000\x00"),
            Err(ProtocolError::EmptyName("SCGI header"))
        );
    }

    /// 300 names of one length and first byte crowd the filter past [`MAX_FILTER_HITS`], so
    /// the sort decides: a repeat is still found, and distinct names still pass.
    #[test]
    fn names_that_crowd_the_filter_are_sorted_instead() {
        let names: Vec<String> = (0..300).map(|i| format!("N{i:03}")).collect();
        let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"CONTENT_LENGTH", b"0")];
        pairs.extend(names.iter().map(|n| (n.as_bytes(), &b"v"[..])));
        let hits = {
            let mut seen = std::collections::HashSet::new();
            names
                .iter()
                .filter(|n| !seen.insert(filter_bit(n.as_bytes())))
                .count()
        };
        assert!(hits > MAX_FILTER_HITS, "{hits} names share a bit");
        assert!(decode_block(&block(&pairs)).is_ok());
        pairs.push((b"N123", b"again"));
        assert_eq!(
            decode_block(&block(&pairs)),
            Err(ProtocolError::DuplicateParam("N123".into()))
        );
    }

    #[test]
    fn block_must_end_in_nul_after_a_value() {
        // Odd number of strings: a name without a value.
        assert_eq!(
            decode_block(b"CONTENT_LENGTH\x000\x00SCGI\x00"),
            Err(ProtocolError::MissingData("SCGI header value"))
        );
        // Last value without its NUL.
        assert_eq!(
            decode_block(b"CONTENT_LENGTH\x000\x00SCGI\x001"),
            Err(ProtocolError::MissingData("SCGI header value"))
        );
        // Trailing name bytes without a NUL.
        assert_eq!(
            decode_block(b"CONTENT_LENGTH\x000\x00SCGI"),
            Err(ProtocolError::MissingData("SCGI header name"))
        );
        assert_eq!(
            decode_block(b"CONTENT_LENGTH"),
            Err(ProtocolError::MissingData("SCGI header name"))
        );
    }

    #[test]
    fn pair_limits_at_and_over() {
        let name = vec![b'N'; MAX_PARAM_NAME_LEN];
        let ok = decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (&name, b"")]));
        assert!(ok.unwrap().is_some());
        let name = vec![b'N'; MAX_PARAM_NAME_LEN + 1];
        assert_eq!(
            decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (&name, b"")])),
            Err(ProtocolError::ParamNameTooLong {
                len: MAX_PARAM_NAME_LEN + 1,
                max: MAX_PARAM_NAME_LEN
            })
        );
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN];
        let ok = decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (b"V", &value)]));
        assert!(ok.unwrap().is_some());
        let value = vec![b'v'; MAX_PARAM_VALUE_LEN + 1];
        assert_eq!(
            decode_block(&block(&[(b"CONTENT_LENGTH", b"0"), (b"V", &value)])),
            Err(ProtocolError::ParamValueTooLong {
                len: MAX_PARAM_VALUE_LEN + 1,
                max: MAX_PARAM_VALUE_LEN
            })
        );

        let limits = Limits::default().with_max_params_pairs(MIN_MAX_PARAMS_PAIRS);
        let names: Vec<Vec<u8>> = (1..=MIN_MAX_PARAMS_PAIRS)
            .map(|i| format!("P{i}").into_bytes())
            .collect();
        let pairs_of = |n: usize| {
            let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"CONTENT_LENGTH", b"0")];
            pairs.extend(names[..n - 1].iter().map(|n| (n.as_slice(), &b""[..])));
            let mut src = BytesMut::new();
            encode_netstring(&block(&pairs), &mut src);
            HeaderDecoder::new(limits).decode(&mut src)
        };
        assert_eq!(
            pairs_of(MIN_MAX_PARAMS_PAIRS)
                .unwrap()
                .unwrap()
                .params
                .len(),
            64
        );
        assert_eq!(
            pairs_of(MIN_MAX_PARAMS_PAIRS + 1),
            Err(ProtocolError::TooManyParams {
                max: MIN_MAX_PARAMS_PAIRS
            })
        );
    }

    fn pairs_strategy() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        let name = proptest::collection::vec(1u8..=255, 1..12);
        let value = proptest::collection::vec(1u8..=255, 0..40);
        proptest::collection::btree_map(name, value, 0..20).prop_map(|m| {
            m.into_iter()
                .filter(|(n, _)| n != b"CONTENT_LENGTH" && n != b"SCGI")
                .collect()
        })
    }

    proptest! {
        #[test]
        fn netstring_length_round_trips(len in 0usize..=9_999_999) {
            let prefix = format!("{len}:");
            prop_assert_eq!(
                parse_length(prefix.as_bytes(), MAX_DIGITS_VALUE),
                Ok(Some((len, prefix.len())))
            );
        }

        /// Names from a small alphabet, so that equal lengths and repeats are common: a
        /// block is refused exactly when a name repeats, whatever the lengths around it.
        #[test]
        fn a_repeated_name_is_found_among_names_of_any_length(
            names in proptest::collection::vec("[AB]{1,3}", 1..12)
        ) {
            let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"CONTENT_LENGTH", b"0")];
            pairs.extend(names.iter().map(|n| (n.as_bytes(), &b"v"[..])));
            let mut seen = std::collections::HashSet::new();
            let repeated = names.iter().any(|n| !seen.insert(n));
            let decoded = decode_block(&block(&pairs));
            prop_assert_eq!(
                matches!(decoded, Err(ProtocolError::DuplicateParam(_))),
                repeated,
                "{:?}", decoded
            );
        }

        /// Bytes of 0, 1 and 0x80 (the values a borrow or carry between bytes would confuse)
        /// and any other: every NUL is found, in order, and nothing else.
        #[test]
        fn nuls_are_found_a_word_at_a_time_exactly(
            buf in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0x80), any::<u8>()], 0..70)
        ) {
            let want: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] == 0).collect();
            prop_assert_eq!(Nuls::new(&buf).collect::<Vec<_>>(), want);
        }

        #[test]
        fn request_head_round_trips(pairs in pairs_strategy(), body_len in any::<u64>()) {
            let mut params = Params::new();
            for (n, v) in &pairs {
                params.set(n, v);
            }
            let mut src = BytesMut::new();
            encode_request(&params, body_len, &mut src);
            src.extend_from_slice(b"body");
            let head = HeaderDecoder::new(Limits::default()).decode(&mut src).unwrap().unwrap();
            prop_assert_eq!(&src[..], b"body");
            prop_assert_eq!(head.content_length, body_len);
            prop_assert!(!head.scgi_missing);
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                head.params.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let mut want = vec![
                (b"CONTENT_LENGTH".to_vec(), body_len.to_string().into_bytes()),
                (b"SCGI".to_vec(), b"1".to_vec()),
            ];
            want.extend(pairs);
            prop_assert_eq!(got, want);
        }
    }
}
