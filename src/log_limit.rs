//! Rate limits for log lines a peer or a script can cause: a token bucket per key that
//! counts what it suppresses, so the next line let through says how many were left out.
//!
//! Every peer may be hostile, and a log line is a write to disk: without a bound, a peer
//! opening connections with garbage, or a CGI script writing to stderr in a loop, turns into
//! as many bytes of log (30 MB of stderr once became 30 MB of log). This module decides
//! whether a line is logged; it never logs itself and takes the time as a parameter, so its
//! tests need no clock. It knows no protocol and no socket.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Connection-close warnings logged per peer address in a burst: enough to see what a
/// misbehaving web server does, far from a flood.
pub(crate) const PEER_WARNING_BURST: u32 = 10;

/// Connection-close warnings per peer address per second once the burst is spent: a peer
/// reconnecting with garbage in a loop costs one log line a second.
pub(crate) const PEER_WARNINGS_PER_SEC: u32 = 1;

/// Most peer addresses tracked at once; further addresses share one bucket, so a peer
/// cycling through many addresses (an IPv6 /64) cannot grow the table.
pub(crate) const MAX_TRACKED_PEERS: usize = 1024;

/// A token bucket: up to `burst` lines at once, refilled at `per_sec` a second; counts the
/// lines it refused since the last one it let through.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    burst: u32,
    per_sec: u32,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// What to do with one line: log it (with the count of lines suppressed before it) or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log the line; `suppressed` lines were left out since the last logged one.
    Log {
        /// Lines refused since the last one let through.
        suppressed: u64,
    },
    /// Leave the line out (it has been counted).
    Suppress,
}

impl Verdict {
    /// `None` to suppress; else the note to append to the line: empty, or
    /// ` (N similar lines suppressed)`.
    pub(crate) fn note(self) -> Option<Suppressed> {
        match self {
            Verdict::Log { suppressed } => Some(Suppressed(suppressed)),
            Verdict::Suppress => None,
        }
    }
}

/// Displays as nothing, or as ` (N similar lines suppressed)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 similar line suppressed)"),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

impl TokenBucket {
    /// A full bucket at `now`. `burst` is at least 1.
    pub(crate) fn new(burst: u32, per_sec: u32, now: Instant) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            burst,
            per_sec,
            tokens: f64::from(burst),
            last: now,
            suppressed: 0,
        }
    }

    /// Takes a token for one line at `now`, or counts the line as suppressed.
    pub(crate) fn admit(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * f64::from(self.per_sec)).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Lines suppressed since the last one let through, reset to zero: for the summary at the
    /// end of a stream.
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// Whether the bucket is full again at `now` with nothing to report: it can be forgotten.
    fn idle(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.suppressed == 0
            && (self.tokens + elapsed.as_secs_f64() * f64::from(self.per_sec)
                >= f64::from(self.burst)
                || elapsed > Duration::from_secs(3600))
    }
}

/// One [`TokenBucket`] per key, at most `max_keys` of them; keys beyond share one overflow
/// bucket.
#[derive(Debug)]
pub(crate) struct KeyedLimit {
    burst: u32,
    per_sec: u32,
    max_keys: usize,
    inner: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_key: HashMap<String, TokenBucket>,
    overflow: Option<TokenBucket>,
}

impl KeyedLimit {
    /// A limit of `burst` lines, then `per_sec` a second, for each of up to `max_keys` keys.
    pub(crate) fn new(burst: u32, per_sec: u32, max_keys: usize) -> KeyedLimit {
        KeyedLimit {
            burst,
            per_sec,
            max_keys,
            inner: Mutex::new(Buckets::default()),
        }
    }

    /// Whether a line for `key` is logged at `now`.
    pub(crate) fn admit_at(&self, key: &str, now: Instant) -> Verdict {
        // A poisoned lock only means another thread panicked mid-update of counters.
        let mut buckets = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (burst, per_sec) = (self.burst, self.per_sec);
        if let Some(bucket) = buckets.by_key.get_mut(key) {
            return bucket.admit(now);
        }
        if buckets.by_key.len() >= self.max_keys {
            buckets.by_key.retain(|_, b| !b.idle(now));
        }
        if buckets.by_key.len() >= self.max_keys {
            return buckets
                .overflow
                .get_or_insert_with(|| TokenBucket::new(burst, per_sec, now))
                .admit(now);
        }
        let mut bucket = TokenBucket::new(burst, per_sec, now);
        let verdict = bucket.admit(now);
        buckets.by_key.insert(key.to_owned(), bucket);
        verdict
    }

    /// Whether a line for `key` is logged now.
    pub(crate) fn admit(&self, key: &str) -> Verdict {
        self.admit_at(key, Instant::now())
    }
}

/// The limit on connection-close warnings of this process, per peer address.
pub(crate) fn peer_warnings() -> &'static KeyedLimit {
    static LIMIT: LazyLock<KeyedLimit> = LazyLock::new(|| {
        KeyedLimit::new(PEER_WARNING_BURST, PEER_WARNINGS_PER_SEC, MAX_TRACKED_PEERS)
    });
    &LIMIT
}

/// The key of a peer as its log lines show it: the address without the port
/// (`192.0.2.7:51234` → `192.0.2.7`, `[::1]:8080` → `[::1]`), so a peer reconnecting from new
/// ports stays one peer.
pub(crate) fn peer_key(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((addr, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!addr.contains(':') || addr.ends_with(']')) =>
        {
            addr
        }
        _ => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_the_count_comes_with_the_next_line() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3, 2, t0);
        for _ in 0..3 {
            assert_eq!(bucket.admit(t0), Verdict::Log { suppressed: 0 });
        }
        // At the limit: the fourth line in the same instant is over.
        assert_eq!(bucket.admit(t0), Verdict::Suppress);
        assert_eq!(bucket.admit(t0), Verdict::Suppress);
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(bucket.admit(t1), Verdict::Log { suppressed: 2 });
        assert_eq!(bucket.admit(t1), Verdict::Suppress);
        assert_eq!(bucket.take_suppressed(), 1);
        assert_eq!(bucket.take_suppressed(), 0);
        // A long pause refills up to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(matches!(bucket.admit(t2), Verdict::Log { .. }));
        }
        assert_eq!(bucket.admit(t2), Verdict::Suppress);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(matches!(bucket.admit(t0), Verdict::Log { .. }));
        assert_eq!(bucket.admit(t0 - Duration::from_secs(5)), Verdict::Suppress);
    }

    #[test]
    fn keys_are_limited_apart() {
        let t0 = Instant::now();
        let limit = KeyedLimit::new(2, 1, 16);
        assert!(matches!(limit.admit_at("a", t0), Verdict::Log { .. }));
        assert!(matches!(limit.admit_at("a", t0), Verdict::Log { .. }));
        assert_eq!(limit.admit_at("a", t0), Verdict::Suppress);
        // Another peer is not silenced by the first one's flood.
        assert!(matches!(limit.admit_at("b", t0), Verdict::Log { .. }));
    }

    #[test]
    fn keys_beyond_the_table_share_one_bucket() {
        let t0 = Instant::now();
        let limit = KeyedLimit::new(1, 1, 2);
        assert!(matches!(limit.admit_at("a", t0), Verdict::Log { .. }));
        assert!(matches!(limit.admit_at("b", t0), Verdict::Log { .. }));
        // The table is full of busy peers: new ones share the overflow bucket.
        assert!(matches!(limit.admit_at("c", t0), Verdict::Log { .. }));
        assert_eq!(limit.admit_at("d", t0), Verdict::Suppress);
        assert_eq!(limit.inner.lock().unwrap().by_key.len(), 2);
        // Once the tracked peers are idle, their places are reused.
        let later = t0 + Duration::from_secs(5);
        assert!(matches!(limit.admit_at("e", later), Verdict::Log { .. }));
        assert!(limit.inner.lock().unwrap().by_key.contains_key("e"));
    }

    #[test]
    fn notes() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(1).to_string(), " (1 similar line suppressed)");
        assert_eq!(Suppressed(7).to_string(), " (7 similar lines suppressed)");
        assert_eq!(Verdict::Suppress.note(), None);
    }

    #[test]
    fn peer_keys_drop_the_port() {
        assert_eq!(peer_key("192.0.2.7:51234"), "192.0.2.7");
        assert_eq!(peer_key("[::1]:8080"), "[::1]");
        assert_eq!(peer_key("::1"), "::1");
        assert_eq!(peer_key("unix"), "unix");
        assert_eq!(peer_key("unix:/run/x.sock"), "unix:/run/x.sock");
    }
}
