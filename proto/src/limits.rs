//! Every limit the codecs enforce, as a named constant with its reason.
//!
//! Limits are checked right after the header that announces a length parses, before any
//! buffer is reserved for it (style rule 10). The configurable ones live in [`Limits`]; each
//! has a `MIN_*` floor so a configuration cannot make ordinary web-server traffic impossible.
//! When a value changes here, update `docs/protocols/*.md` and `docs/options.md` too.

/// Default cap on the bytes of one request's CGI parameters (names + values + length
/// prefixes).
///
/// FastCGI lets PARAMS streams grow without bound; nginx, lighttpd and mod_fcgid never send
/// more than 64 KiB (they put PARAMS in one record), so 64 KiB bounds memory without refusing
/// any of them. Behind Apache with very large headers raise it (`maxparams=`).
pub const DEFAULT_MAX_PARAMS_BYTES: usize = 64 * 1024;

/// Floor for [`Limits::max_params_bytes`]: below 4 KiB even a stock nginx request (its
/// `fastcgi_params` plus a browser's headers) would be refused.
pub const MIN_MAX_PARAMS_BYTES: usize = 4 * 1024;

/// Hard ceiling for [`Limits::max_params_bytes`]: 16 MiB. Params are buffered whole before the
/// handler runs, so this bounds the memory one request can pin.
pub const MAX_MAX_PARAMS_BYTES: usize = 16 * 1024 * 1024;

/// Default cap on the number of name-value pairs in one request: 1000.
///
/// A request carries ~20 CGI variables plus one per HTTP header; web servers cap headers at
/// ~100. A thousand leaves room for odd configurations while bounding the per-pair index.
pub const DEFAULT_MAX_PARAMS_PAIRS: usize = 1000;

/// Floor for [`Limits::max_params_pairs`]: 64, enough for the stock CGI set and headers.
pub const MIN_MAX_PARAMS_PAIRS: usize = 64;

/// Longest parameter name accepted: 1 KiB. Names are CGI variable names (`HTTP_` + a header
/// name); web servers limit header names far below this.
pub const MAX_PARAM_NAME_LEN: usize = 1024;

/// Longest parameter value accepted: 32 KiB. nginx's largest header buffer defaults to 8 KiB and
/// Apache's `LimitRequestFieldSize` to 8190 bytes; 32 KiB leaves room for long cookies.
pub const MAX_PARAM_VALUE_LEN: usize = 32 * 1024;

/// FastCGI record header length, `FCGI_HEADER_LEN` (spec §3.3).
pub const FCGI_HEADER_LEN: usize = 8;

/// Largest FastCGI record content: 65 535 bytes, fixed by the 16-bit contentLength field
/// (spec §3.3), so no record can make us reserve more than this.
pub const FCGI_MAX_CONTENT_LEN: usize = 0xffff;

/// Requests in flight on one FastCGI connection: 1.
///
/// Every web server we serve (nginx, Apache, mod_fcgid, lighttpd) uses request id 1 and never
/// multiplexes, so a second concurrent `FCGI_BEGIN_REQUEST` is answered with
/// `FCGI_CANT_MPX_CONN` (libfcgi's behaviour) and `FCGI_MPXS_CONNS` is advertised as `0`.
pub const FCGI_MAX_REQUESTS_PER_CONN: usize = 1;

/// Bytes of output queued in a connection before `poll_transmit` must be called: 256 KiB.
///
/// The drivers stop pulling response body frames from the handler while this much is waiting
/// for the socket, which is what gives a slow client backpressure all the way to the app.
pub const MAX_QUEUED_OUTPUT: usize = 256 * 1024;

/// Most digits an SCGI netstring length may have: 7 (lengths up to 9 999 999).
///
/// The protocol sets no bound; the header block is also capped by
/// [`Limits::max_params_bytes`] (it *is* the request's parameters), so this only decides
/// how many digits are read before giving up: the 8th digit is refused without buffering
/// anything, whatever the configured cap.
pub const SCGI_MAX_LENGTH_DIGITS: usize = 7;

/// AJP13 packet header length: magic (2) + payload length (2).
pub const AJP_HEADER_LEN: usize = 4;

/// Default AJP13 packet size: 8192 bytes including the 4-byte header, the size Apache
/// (`ProxyIOBufferSize`), mod_jk (`max_packet_size`) and Tomcat (`packetSize`) use unless both
/// sides are configured alike.
pub const AJP_DEFAULT_PACKET_SIZE: usize = 8192;

/// Floor for the AJP packet size: 8192. No web server sends smaller packets; mod_proxy_ajp
/// clamps its own setting to 8192..=65536.
pub const AJP_MIN_PACKET_SIZE: usize = 8192;

/// Ceiling for the AJP packet size: 65 536 (the spec's and Tomcat's maximum), so at most
/// 65 532 payload bytes are ever buffered for one packet.
pub const AJP_MAX_PACKET_SIZE: usize = 65536;

/// Most request headers one AJP `FORWARD_REQUEST` may announce: 100, Tomcat's default
/// `maxHeaderCount`. The whole request head must fit one packet anyway; this bounds the header
/// index before any header is parsed.
pub const AJP_MAX_HEADERS: usize = 100;

/// The configurable limits of a connection, with documented defaults.
///
/// ```
/// let limits = appserver_proto::Limits::default().with_max_params_bytes(256 * 1024);
/// assert_eq!(limits.max_params_bytes(), 256 * 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_params_bytes: usize,
    max_params_pairs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params_bytes: DEFAULT_MAX_PARAMS_BYTES,
            max_params_pairs: DEFAULT_MAX_PARAMS_PAIRS,
        }
    }
}

impl Limits {
    /// Cap on one request's parameter bytes; default [`DEFAULT_MAX_PARAMS_BYTES`].
    pub fn max_params_bytes(&self) -> usize {
        self.max_params_bytes
    }

    /// Cap on one request's parameter count; default [`DEFAULT_MAX_PARAMS_PAIRS`].
    pub fn max_params_pairs(&self) -> usize {
        self.max_params_pairs
    }

    /// Sets the parameter byte cap.
    ///
    /// # Panics
    /// When `bytes` is outside [`MIN_MAX_PARAMS_BYTES`]..=[`MAX_MAX_PARAMS_BYTES`]; the CLI
    /// validates the option before it gets here.
    pub fn with_max_params_bytes(mut self, bytes: usize) -> Self {
        assert!(
            (MIN_MAX_PARAMS_BYTES..=MAX_MAX_PARAMS_BYTES).contains(&bytes),
            "max_params_bytes {bytes} outside {MIN_MAX_PARAMS_BYTES}..={MAX_MAX_PARAMS_BYTES}"
        );
        self.max_params_bytes = bytes;
        self
    }

    /// Sets the parameter count cap.
    ///
    /// # Panics
    /// When `pairs` is below [`MIN_MAX_PARAMS_PAIRS`].
    pub fn with_max_params_pairs(mut self, pairs: usize) -> Self {
        assert!(
            pairs >= MIN_MAX_PARAMS_PAIRS,
            "max_params_pairs {pairs} below {MIN_MAX_PARAMS_PAIRS}"
        );
        self.max_params_pairs = pairs;
        self
    }
}
