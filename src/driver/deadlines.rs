//! Deadlines: one `Phase` per stage of a connection, one duration (and for transfers a
//! minimum rate) per phase, enforced in one place (`driver::engine`).
//!
//! The names follow what operators know from nginx (`*_timeout`) and Apache's
//! mod_reqtimeout (`MinRate`). Time is read only by the engine; the clocks here take `now`
//! as a parameter, so they are tested on a paused clock.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The phases of a connection, each with a deadline of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted, nothing received yet: `header_timeout` from accept, so a connection that
    /// never sends a byte is closed as soon as one that sends half a head.
    Fresh,
    /// A request head (params, netstring, FORWARD_REQUEST) is arriving: `header_timeout`
    /// from its first byte.
    Head,
    /// Kept alive between requests: `idle_timeout` from the end of the last response.
    Idle,
}

/// The per-phase limits of one server: `header_timeout=`, `body_timeout=`,
/// `body_min_rate=`, `send_timeout=`, `send_min_rate=`, `idle_timeout=`,
/// `request_timeout=` and `queue_timeout=` (see `docs/options.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A request head must be complete this long after its first byte, and a new connection
    /// must deliver one this long after accept. Default 20 s, mod_reqtimeout's `header=20`.
    pub header: Duration,
    /// The request body gets this long plus one second per `body_min_rate` bytes received,
    /// and may not pause longer than this between bytes. Default 20 s (mod_reqtimeout's
    /// `body=20`). Time the handler spends not reading does not count.
    pub body: Duration,
    /// Bytes per second that extend the body deadline; 0 turns the rate off (only the gap
    /// counts). Default 500, mod_reqtimeout's `MinRate=500`.
    pub body_min_rate: u64,
    /// Output owed to the web server may wait this long without any byte being taken, and
    /// gets this long plus one second per `send_min_rate` bytes taken. Default 60 s, nginx's
    /// `send_timeout`.
    pub send: Duration,
    /// Bytes per second that extend the send deadline; 0 turns the rate off. Default 500.
    pub send_min_rate: u64,
    /// A kept-alive connection may wait this long for its next request. Default 60 s.
    pub idle: Duration,
    /// A handler may run this long before it is cancelled (504 when no head was sent);
    /// `None` (the default) leaves handlers unbounded, as `cgi_timeout=` bounds CGI scripts.
    pub request: Option<Duration>,
    /// A request beyond the in-flight limit waits this long for a slot before
    /// `FCGI_OVERLOADED` or 503. Default 30 s: less than nginx's 60 s
    /// `fastcgi_read_timeout`, so the web server gets a clean answer, not its own timeout.
    pub queue: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(20),
            body: Duration::from_secs(20),
            body_min_rate: 500,
            send: Duration::from_secs(60),
            send_min_rate: 500,
            idle: Duration::from_secs(60),
            request: None,
            queue: Duration::from_secs(30),
        }
    }
}

/// A transfer's deadline: at most `gap` without progress, and at most `gap` plus one second
/// per `min_rate` bytes since it began, with time spent paused (the engine's own
/// backpressure, not the peer's doing) left out. mod_reqtimeout's `body=20,MinRate=500`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateClock {
    start: Instant,
    last_progress: Instant,
    bytes: u64,
    paused_at: Option<Instant>,
    gap: Duration,
    min_rate: u64,
}

impl RateClock {
    /// A transfer that begins at `now`.
    pub(crate) fn new(now: Instant, gap: Duration, min_rate: u64) -> Self {
        Self {
            start: now,
            last_progress: now,
            bytes: 0,
            paused_at: None,
            gap,
            min_rate,
        }
    }

    /// A clock that runs out `limit` after `now`, whatever moves.
    pub(crate) fn total(now: Instant, limit: Duration) -> Self {
        // No rate can earn time: `bytes / u64::MAX` is 0 for any count below it.
        Self::new(now, limit, u64::MAX)
    }

    /// `n` bytes moved at `now`.
    pub(crate) fn progress(&mut self, now: Instant, n: usize) {
        if n > 0 {
            self.bytes = self.bytes.saturating_add(n as u64);
            self.last_progress = now;
        }
    }

    /// Stops (`paused`) or restarts the clock at `now`; the paused time is not counted.
    pub(crate) fn set_paused(&mut self, now: Instant, paused: bool) {
        match (self.paused_at, paused) {
            (None, true) => self.paused_at = Some(now),
            (Some(since), false) => {
                let d = now.saturating_duration_since(since);
                self.start += d;
                self.last_progress += d;
                self.paused_at = None;
            }
            _ => {}
        }
    }

    /// When the transfer is too slow, or `None` while paused.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.paused_at.is_some() {
            return None;
        }
        let stalled = self.last_progress + self.gap;
        if self.min_rate == 0 {
            return Some(stalled);
        }
        let earned = Duration::from_secs(self.bytes / self.min_rate);
        Some(stalled.min(self.start + self.gap + earned))
    }

    /// True when the deadline passed because the average rate fell short, not a pause in
    /// the bytes: for the log line.
    pub(crate) fn too_slow(&self) -> bool {
        self.min_rate != 0
            && self.start + self.gap + Duration::from_secs(self.bytes / self.min_rate)
                < self.last_progress + self.gap
    }

    /// Bytes moved so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Time since the transfer began, less the paused time.
    pub(crate) fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }
}

/// The connection's one timer, aimed at this turn's deadline only once the engine waits on
/// it.
///
/// Aiming a tokio timer puts it into the runtime's timer wheel at once, and when the wheel
/// was empty the last time the runtime slept (a prefork worker between connections), tokio
/// wakes its own driver so that it reads the new earliest deadline: an eventfd write, a
/// system call, per aim. A connection served without ever waiting (its request in the socket
/// at accept, its answer taken by the socket's buffer) never needs a deadline, so the engine
/// builds an `Aim` each turn and the timer moves only when it is polled, which the engine's
/// biased `select!` does only once every branch before it is pending.
pub(crate) struct Aim<'a> {
    timer: Pin<&'a mut Sleep>,
    aimed: &'a mut Option<Instant>,
    at: Instant,
}

impl<'a> Aim<'a> {
    /// `timer` at `at` when polled; `aimed` remembers where it points across turns.
    pub(crate) fn new(
        timer: Pin<&'a mut Sleep>,
        aimed: &'a mut Option<Instant>,
        at: Instant,
    ) -> Self {
        Self { timer, aimed, at }
    }
}

impl Future for Aim<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if *this.aimed != Some(this.at) {
            this.timer.as_mut().reset(this.at);
            *this.aimed = Some(this.at);
        }
        this.timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_by_the_rate_not_kept_alive_by_each_byte() {
        let t0 = Instant::now();
        let mut c = RateClock::new(t0, 20 * S, 500);
        // One byte every 3 s: never a 20 s gap, but far under 500 B/s.
        for i in 1..=6 {
            c.progress(t0 + 3 * i * S, 1);
        }
        assert_eq!(c.deadline(), Some(t0 + 20 * S));
        assert!(c.too_slow());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_at_the_minimum_rate_earn_time_and_a_gap_still_ends_it() {
        let t0 = Instant::now();
        let mut c = RateClock::new(t0, 20 * S, 500);
        c.progress(t0 + S, 500 * 30);
        // 30 s earned, but 20 s without a byte is the limit: at 21 s.
        assert_eq!(c.deadline(), Some(t0 + 21 * S));
        assert!(!c.too_slow());
        // Exactly at the rate: start + 20 s + bytes/500.
        let mut c = RateClock::new(t0, 20 * S, 500);
        for i in 1..=40 {
            c.progress(t0 + i * S, 500);
        }
        assert_eq!(c.deadline(), Some(t0 + 60 * S));
        // One byte short of the next second.
        let mut c = RateClock::new(t0, 20 * S, 500);
        c.progress(t0 + S, 499);
        assert_eq!(c.deadline(), Some(t0 + 20 * S));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_does_not_count() {
        let t0 = Instant::now();
        let mut c = RateClock::new(t0, 20 * S, 500);
        c.set_paused(t0 + 5 * S, true);
        assert_eq!(c.deadline(), None);
        c.set_paused(t0 + 105 * S, false);
        assert_eq!(c.deadline(), Some(t0 + 120 * S));
        assert_eq!(c.elapsed(t0 + 120 * S), 20 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_is_aimed_when_polled_not_when_its_deadline_is_named() {
        let t0 = Instant::now();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(t0 + 100 * S));
        let mut aimed = None;
        // A turn that never waited: named, never polled, the timer has not moved.
        {
            let _unpolled = Aim::new(timer.as_mut(), &mut aimed, t0 + 5 * S);
        }
        assert_eq!(timer.deadline(), t0 + 100 * S);
        assert_eq!(aimed, None);
        // Polled: aimed, pending until its deadline.
        let mut aim = Aim::new(timer.as_mut(), &mut aimed, t0 + 5 * S);
        assert!(futures_poll_once(&mut aim).is_pending());
        assert_eq!(aimed, Some(t0 + 5 * S));
        // Re-aimed earlier, it fires then and not at the first deadline.
        Aim::new(timer.as_mut(), &mut aimed, t0 + 2 * S).await;
        assert_eq!(Instant::now(), t0 + 2 * S);
    }

    /// Polls `f` once with a no-op waker.
    fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(f).poll(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_is_a_gap_timeout_only() {
        let t0 = Instant::now();
        let mut c = RateClock::new(t0, 20 * S, 0);
        c.progress(t0 + 19 * S, 1);
        assert_eq!(c.deadline(), Some(t0 + 39 * S));
        assert!(!c.too_slow());
    }
}
