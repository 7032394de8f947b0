//! [`Params`]: the CGI variables of one request, ordered and byte-exact.
//!
//! All three protocols deliver the request as CGI/1.1 meta-variables: FastCGI as name-value
//! pairs, SCGI as NUL-separated strings, AJP as fields the server side maps to the same names.
//! `Params` keeps them in arrival order, as raw bytes (non-UTF-8 and empty values are normal),
//! in one shared buffer indexed by spans: building it costs one buffer and one index vector
//! per request, never an allocation per parameter.
//!
//! Duplicate names: [`Params::get`] returns the last one (what PHP-FPM and flup do; nginx sends a
//! duplicate when `fastcgi_param` repeats a name from an included file); iteration yields all.

use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::limits::{MAX_PARAM_NAME_LEN, MAX_PARAM_VALUE_LEN};
use crate::{Limits, ProtocolError};

/// Spare bytes a decoder leaves after the pairs it buffers, so that the variables the
/// server derives (appserver's request model sets `SCRIPT_NAME` and `PATH_INFO`, nginx's
/// FastCGI request lacks `PATH_INFO`) are appended by [`Params::set_all`] in place instead of
/// copying the whole list.
pub const SET_ROOM: usize = 64;

/// Where one pair lives in the shared buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    name: Range<u32>,
    value: Range<u32>,
}

impl Span {
    /// A pair whose name and value are the given byte ranges of the buffer.
    pub fn new(name: Range<usize>, value: Range<usize>) -> Self {
        // Buffers are bounded by MAX_MAX_PARAMS_BYTES (16 MiB) plus appended overrides, far
        // below u32::MAX, so these casts cannot truncate.
        Self {
            name: name.start as u32..name.end as u32,
            value: value.start as u32..value.end as u32,
        }
    }
}

/// The ordered CGI variables of one request.
///
/// Equality compares the pairs in order, not how they are laid out in the buffer.
#[derive(Clone, Default)]
pub struct Params {
    buf: Bytes,
    spans: Vec<Span>,
}

impl Params {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a buffer and the spans of its pairs. Spans must lie inside `buf`; decoders build
    /// them while parsing `buf` itself.
    pub fn from_parts(buf: Bytes, spans: Vec<Span>) -> Self {
        debug_assert!(spans
            .iter()
            .all(|s| s.name.end as usize <= buf.len() && s.value.end as usize <= buf.len()));
        Self { buf, spans }
    }

    /// The value of the last pair named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        last_named(&self.spans, &self.buf, name).map(|i| self.slice(&self.spans[i].value))
    }

    /// `part`, a name or value this list returned, as [`Bytes`] sharing the list's buffer:
    /// a reference count, no copy.
    ///
    /// # Panics
    /// When `part` does not lie inside the list's buffer.
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.buf.slice_ref(part)
    }

    /// The value of `name` as UTF-8, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// True when a pair named `name` is present (even with an empty value).
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Every pair in arrival order, duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .map(|s| (self.slice(&s.name), self.slice(&s.value)))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sets `name` to `value`: the last pair of that name takes the new value in place, or a
    /// new pair is appended. Used by the server for derived variables (`SCRIPT_NAME`,
    /// `PATH_INFO`); see [`set_all`](Self::set_all).
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        self.set_all(&[(name, value)]);
    }

    /// Sets every `(name, value)` like [`set`](Self::set), copying the buffer at most once
    /// for all of them and not at all when every value is already what is asked: the decode
    /// path never copies, and a request's derived variables cost one copy together.
    pub fn set_all(&mut self, pairs: &[(&[u8], &[u8])]) {
        if pairs.iter().all(|(n, v)| self.get(n) == Some(*v)) {
            return;
        }
        let extra: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        // Appended in place when this list is the buffer's only owner and it has room (a
        // decoder leaves [`SET_ROOM`] spare); copied otherwise.
        let mut buf = match std::mem::take(&mut self.buf).try_into_mut() {
            Ok(mut buf) => {
                buf.reserve(extra);
                buf
            }
            Err(shared) => {
                let mut buf = BytesMut::with_capacity(shared.len() + extra);
                buf.extend_from_slice(&shared);
                buf
            }
        };
        for (name, value) in pairs {
            let value_start = buf.len();
            buf.extend_from_slice(value);
            let value_range = value_start..buf.len();
            if let Some(i) = last_named(&self.spans, &buf, name) {
                self.spans[i].value = value_range.start as u32..value_range.end as u32;
            } else {
                let name_start = buf.len();
                buf.extend_from_slice(name);
                self.spans
                    .push(Span::new(name_start..buf.len(), value_range));
            }
        }
        self.buf = buf.freeze();
    }

    fn slice(&self, r: &Range<u32>) -> &[u8] {
        &self.buf[r.start as usize..r.end as usize]
    }
}

/// The index of the last span of `spans` whose name in `buf` is `name`. Lengths first: most
/// names differ in length, so most pairs are passed over without comparing bytes.
fn last_named(spans: &[Span], buf: &[u8], name: &[u8]) -> Option<usize> {
    spans.iter().rposition(|s| {
        (s.name.end - s.name.start) as usize == name.len()
            && &buf[s.name.start as usize..s.name.end as usize] == name
    })
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Params {}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// Builds a [`Params`] pair by pair, enforcing the [`Limits`] as it goes.
///
/// Decoders that cannot index the wire buffer directly (AJP maps fields to names) use this;
/// it copies each pair once into a single growing buffer.
#[derive(Debug)]
pub struct ParamsBuilder {
    buf: BytesMut,
    spans: Vec<Span>,
    limits: Limits,
}

impl ParamsBuilder {
    /// An empty builder bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: BytesMut::new(),
            spans: Vec::new(),
            limits,
        }
    }

    /// Appends one pair, or fails when it breaks a limit.
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> Result<(), ProtocolError> {
        check_pair(
            name.len(),
            value.len(),
            self.buf.len(),
            self.spans.len(),
            &self.limits,
        )?;
        let name_start = self.buf.len();
        self.buf.extend_from_slice(name);
        let value_start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.spans.push(Span::new(
            name_start..value_start,
            value_start..self.buf.len(),
        ));
        Ok(())
    }

    /// The finished list.
    pub fn finish(self) -> Params {
        Params::from_parts(self.buf.freeze(), self.spans)
    }
}

/// Checks one pair of announced lengths against the limits before any byte of it is stored.
/// `used` is the bytes already accepted for this request and `count` the pairs.
pub fn check_pair(
    name_len: usize,
    value_len: usize,
    used: usize,
    count: usize,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    if name_len > MAX_PARAM_NAME_LEN {
        return Err(ProtocolError::ParamNameTooLong {
            len: name_len,
            max: MAX_PARAM_NAME_LEN,
        });
    }
    if value_len > MAX_PARAM_VALUE_LEN {
        return Err(ProtocolError::ParamValueTooLong {
            len: value_len,
            max: MAX_PARAM_VALUE_LEN,
        });
    }
    if count >= limits.max_params_pairs() {
        return Err(ProtocolError::TooManyParams {
            max: limits.max_params_pairs(),
        });
    }
    let total = used
        .checked_add(name_len)
        .and_then(|t| t.checked_add(value_len))
        .unwrap_or(usize::MAX);
    if total > limits.max_params_bytes() {
        return Err(ProtocolError::ParamsTooLarge {
            len: total,
            max: limits.max_params_bytes(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Params {
        let mut b = ParamsBuilder::new(Limits::default());
        b.push(b"REQUEST_METHOD", b"GET").unwrap();
        b.push(b"QUERY_STRING", b"").unwrap();
        b.push(b"HTTP_X", b"\xff\x00raw").unwrap();
        b.push(b"REQUEST_METHOD", b"POST").unwrap();
        b.finish()
    }

    #[test]
    fn last_duplicate_wins_and_iteration_keeps_all() {
        let p = sample();
        assert_eq!(p.get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
        assert_eq!(p.get(b"QUERY_STRING"), Some(&b""[..]));
        assert_eq!(p.get(b"HTTP_X"), Some(&b"\xff\x00raw"[..]));
        assert_eq!(p.get_str("HTTP_X"), None);
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().next(), Some((&b"REQUEST_METHOD"[..], &b"GET"[..])));
    }

    #[test]
    fn a_shared_value_points_into_the_buffer() {
        let p = sample();
        let value = p.get(b"HTTP_X").unwrap();
        let shared = p.share(value);
        assert_eq!(&shared[..], value);
        assert_eq!(shared.as_ptr(), value.as_ptr(), "shared, not copied");
    }

    #[test]
    fn set_all_copies_once_and_not_at_all_when_unchanged() {
        let mut p = sample();
        let before = p.buf.as_ptr();
        p.set_all(&[(b"QUERY_STRING", b""), (b"HTTP_X", b"\xff\x00raw")]);
        assert_eq!(p.buf.as_ptr(), before, "no copy when nothing changes");
        p.set_all(&[(b"SCRIPT_NAME", b"/app"), (b"PATH_INFO", b"/x")]);
        assert_eq!(p.get(b"SCRIPT_NAME"), Some(&b"/app"[..]));
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/x"[..]));
        assert_eq!(p.len(), 6);
    }

    /// A decoded list keeps [`SET_ROOM`] spare: the server's derived variables go in place.
    /// A list whose buffer is shared (a clone) is copied, and the clone is left as it was.
    #[test]
    fn set_all_appends_in_place_when_it_owns_the_room() {
        let mut dec = crate::fcgi::decode::ParamsDecoder::new(Limits::default());
        dec.push(b"\x0b\x04SCRIPT_NAME/app").unwrap();
        let mut p = dec.finish().unwrap();
        let before = p.buf.as_ptr();
        p.set_all(&[(b"SCRIPT_NAME", b"/app"), (b"PATH_INFO", b"/x")]);
        assert_eq!(p.buf.as_ptr(), before, "appended in place");
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/x"[..]));

        let kept = p.clone();
        p.set(b"PATH_INFO", b"/y");
        assert_ne!(p.buf.as_ptr(), before, "a shared buffer is copied");
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/y"[..]));
        assert_eq!(kept.get(b"PATH_INFO"), Some(&b"/x"[..]));
    }

    /// [`SET_ROOM`] at its boundary: the decoder leaves exactly that much spare, derived
    /// pairs of exactly that many bytes go in place, and one byte more still lands whole and
    /// right. (Whether that one moves the list is the allocator's business: `realloc` may
    /// grow a buffer where it is, so the spare room is checked instead.)
    #[test]
    fn set_room_holds_exactly_its_bytes() {
        let decoded = || {
            let mut dec = crate::fcgi::decode::ParamsDecoder::new(Limits::default());
            dec.push(b"\x0b\x04SCRIPT_NAME/app").unwrap();
            dec.finish().unwrap()
        };
        let mut p = decoded();
        let owned = std::mem::take(&mut p.buf)
            .try_into_mut()
            .expect("a decoded list owns its buffer");
        assert_eq!(
            owned.capacity() - owned.len(),
            SET_ROOM,
            "spare after decoding"
        );

        let name = b"PATH_INFO";
        for (len, fits) in [
            (SET_ROOM - name.len(), true),
            (SET_ROOM - name.len() + 1, false),
        ] {
            let mut p = decoded();
            let before = p.buf.as_ptr();
            let value = vec![b'/'; len];
            p.set(name, &value);
            if fits {
                assert_eq!(p.buf.as_ptr(), before, "{len}-byte value: in place");
            }
            assert_eq!(p.get(b"SCRIPT_NAME"), Some(&b"/app"[..]));
            assert_eq!(p.get(name), Some(&value[..]));
        }
    }

    #[test]
    fn equality_is_by_pairs_not_layout() {
        let mut a = sample();
        a.set(b"QUERY_STRING", b"");
        assert_eq!(a, sample());
        a.set(b"QUERY_STRING", b"x");
        assert_ne!(a, sample());
    }

    #[test]
    fn set_replaces_in_place_or_appends() {
        let mut p = sample();
        p.set(b"QUERY_STRING", b"a=1");
        p.set(b"PATH_INFO", b"/x");
        let names: Vec<_> = p.iter().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names[1], b"QUERY_STRING");
        assert_eq!(names[4], b"PATH_INFO");
        assert_eq!(p.get(b"QUERY_STRING"), Some(&b"a=1"[..]));
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/x"[..]));
    }

    #[test]
    fn name_and_value_caps_at_and_over_limit() {
        let l = Limits::default();
        assert!(check_pair(MAX_PARAM_NAME_LEN, 0, 0, 0, &l).is_ok());
        assert!(matches!(
            check_pair(MAX_PARAM_NAME_LEN + 1, 0, 0, 0, &l),
            Err(ProtocolError::ParamNameTooLong { .. })
        ));
        assert!(check_pair(1, MAX_PARAM_VALUE_LEN, 0, 0, &l).is_ok());
        assert!(matches!(
            check_pair(1, MAX_PARAM_VALUE_LEN + 1, 0, 0, &l),
            Err(ProtocolError::ParamValueTooLong { .. })
        ));
    }

    #[test]
    fn byte_and_pair_caps_at_and_over_limit() {
        let l = Limits::default();
        let max = l.max_params_bytes();
        assert!(check_pair(1, 9, max - 10, 0, &l).is_ok());
        assert_eq!(
            check_pair(1, 10, max - 10, 0, &l),
            Err(ProtocolError::ParamsTooLarge { len: max + 1, max })
        );
        let pairs = l.max_params_pairs();
        assert!(check_pair(1, 1, 0, pairs - 1, &l).is_ok());
        assert_eq!(
            check_pair(1, 1, 0, pairs, &l),
            Err(ProtocolError::TooManyParams { max: pairs })
        );
        // Lengths near usize::MAX must not overflow into acceptance.
        assert!(check_pair(1, usize::MAX, 0, 0, &l).is_err());
    }
}
