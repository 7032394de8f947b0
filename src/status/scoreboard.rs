//! The scoreboard: the server's counters and one slot per worker, in memory shared by the
//! prefork master, its workers and a re-executed master (as Apache's and php-fpm's).
//!
//! The memory is a memfd mapped `MAP_SHARED` (`sys::map_shared_words`) and seen
//! here as a slice of `AtomicU64` words at fixed offsets: every access is one atomic
//! instruction, no lock is ever taken, so a worker killed mid-update leaves nothing locked.
//! Counters only grow (`fetch_add`); gauges are differences of two counters (in flight =
//! started − finished) so that a worker dying between the two never leaves a gauge stuck.
//!
//! ```text
//! word 0 ........ HEADER_WORDS-1   magic, layout size, server counters, histogram
//! HEADER_WORDS .. + SLOT_WORDS     slot 0: pid, state, served, started, current request
//! ...                              slot MAX_SLOTS-1
//! ```
//!
//! A slot belongs to the process whose pid it holds: it claims a free slot (pid 0) with a
//! compare-and-swap, writes it alone, and frees it when it exits; the master frees the slot
//! of a worker it reaps (one that died without freeing it). The current request's method and
//! URI are written under a sequence lock (odd while writing), so a reader never shows half
//! of one request and half of another; a writer that finds the lock taken (another thread of
//! a threaded server) skips, it never waits.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys;

/// Worker slots in the scoreboard: the most worker processes shown one by one.
///
/// A prefork server runs at most `maxchildren` workers, and after a reload (HUP) the previous
/// image's workers finish beside the new ones, so twice that can be alive. A thousand covers
/// any sensible pool twice over and keeps the mapping at half a megabyte; a worker that finds
/// no free slot still counts in every total and in `appserver_workers_unslotted`.
pub const MAX_SLOTS: usize = 1024;

/// Words (8 bytes each) of one worker slot: 512 bytes.
const SLOT_WORDS: usize = 64;

/// Words of the header, the server-wide part.
const HEADER_WORDS: usize = 128;

/// Words of the whole scoreboard.
pub(crate) const WORDS: usize = HEADER_WORDS + MAX_SLOTS * SLOT_WORDS;

/// Marks a scoreboard of this layout ("ASSCORE" + version 2): a re-executed image maps the
/// memory it inherited only when it holds this, so a binary with another layout starts
/// afresh instead of misreading it.
const MAGIC: u64 = 0x4153_5343_4f52_4502;

/// Longest method kept in a slot; longer ones are cut.
pub const SLOT_METHOD_BYTES: usize = 16;

/// Longest URI kept in a slot (the status page shows the current request's URI); longer ones
/// are cut at this many bytes.
pub const SLOT_URI_BYTES: usize = (SLOT_WORDS - 10) * 8;

/// Upper bounds, in seconds, of the request-duration histogram's buckets (Prometheus'
/// default buckets); a last bucket holds everything slower.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The protocols requests are counted by, in label order.
pub const PROTOCOLS: [&str; 3] = ["fcgi", "scgi", "ajp"];

/// Status classes requests are counted by.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a connection ended before its natural end, by the connection engine's names
/// (`driver::engine::Close::reason`): one counter each. A name not in the list counts as
/// `other`, so a reason the engine gains later is never lost from the totals.
pub const CLOSE_REASONS: [&str; 12] = [
    "aborted",
    "silent",
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "send_timeout",
    "evicted",
    "request_timeout",
    "protocol_error",
    "io_error",
    "response_failed",
    "other",
];

fn close_index(reason: &str) -> usize {
    CLOSE_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(CLOSE_REASONS.len() - 1)
}

/// What a worker is doing, as its slot shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// No request in flight.
    Idle,
    /// A connection was accepted; its request is being read.
    Reading,
    /// The app is handling a request.
    Handling,
    /// The response is being written.
    Writing,
    /// Finishing its requests before it exits (recycled, reloaded, stopping).
    Stopping,
}

impl WorkerState {
    /// The word shown on the status page.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Reading => "reading",
            Self::Handling => "handling",
            Self::Writing => "writing",
            Self::Stopping => "stopping",
        }
    }

    fn from_word(w: u64) -> Self {
        match w {
            1 => Self::Reading,
            2 => Self::Handling,
            3 => Self::Writing,
            4 => Self::Stopping,
            _ => Self::Idle,
        }
    }

    fn word(self) -> u64 {
        match self {
            Self::Idle => 0,
            Self::Reading => 1,
            Self::Handling => 2,
            Self::Writing => 3,
            Self::Stopping => 4,
        }
    }
}

// Header word offsets.
const H_MAGIC: usize = 0;
const H_WORDS: usize = 1;
const H_CREATED: usize = 2;
const H_RELOADS: usize = 3;
const H_ACCEPTED: usize = 4;
const H_CLOSED: usize = 5;
const H_STARTED: usize = 6;
const H_FINISHED: usize = 7;
const H_OVERLOADED: usize = 8;
const H_BYTES_IN: usize = 9;
const H_BYTES_OUT: usize = 10;
const H_QUEUE: usize = 11;
const H_QUEUE_MAX: usize = 12;
const H_QUEUE_LIMIT: usize = 13;
const H_LAST_RELOAD: usize = 14;
const H_DURATION_SUM_US: usize = 15;
const H_UNSLOTTED: usize = 16;
const H_QUEUE_KNOWN: usize = 17;
/// Slots ever claimed, a high-water mark: slots are taken from the front, so searches and
/// snapshots read this many and not all [`MAX_SLOTS`] (a worker that scanned them all would
/// have half a megabyte of the mapping in its resident set for nothing).
const H_SLOTS_USED: usize = 18;
const H_CLOSE_REASONS: usize = 24;
const H_REQUESTS: usize = H_CLOSE_REASONS + CLOSE_REASONS.len();
const H_BUCKETS: usize = H_REQUESTS + PROTOCOLS.len() * CODE_CLASSES.len();
const H_END: usize = H_BUCKETS + DURATION_BUCKETS.len() + 1;
const _: () = assert!(H_END <= HEADER_WORDS);

// Slot word offsets.
const S_PID: usize = 0;
const S_STATE: usize = 1;
const S_SERVED: usize = 2;
const S_STARTED_MS: usize = 3;
const S_REQUEST_US: usize = 4;
const S_SEQ: usize = 5;
const S_IN_FLIGHT: usize = 6;
const S_LENS: usize = 7;
const S_METHOD: usize = 8;
const S_URI: usize = 10;
const _: () = assert!(S_URI * 8 + SLOT_URI_BYTES == SLOT_WORDS * 8);
const _: () = assert!((S_URI - S_METHOD) * 8 == SLOT_METHOD_BYTES);

/// The shared scoreboard; cheap to copy (a reference to the mapping).
#[derive(Clone, Copy, Debug)]
pub struct Scoreboard {
    words: &'static [AtomicU64],
}

/// The memory behind a scoreboard: mapped, and the file to hand to a re-executed image.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) board: Scoreboard,
    pub(crate) file: OwnedFd,
}

impl Scoreboard {
    /// A fresh scoreboard in new shared memory.
    pub(crate) fn create() -> std::io::Result<Mapped> {
        let file = sys::shared_memory_file("appserver-scoreboard", WORDS)?;
        let words = sys::map_shared_words(file.as_fd(), WORDS)?;
        let board = Scoreboard { words };
        board.set(H_WORDS, WORDS as u64);
        board.set(H_CREATED, unix_secs(SystemTime::now()));
        board.set(H_MAGIC, MAGIC);
        Ok(Mapped { board, file })
    }

    /// The scoreboard a previous image of this process kept across exec in `file`; `Err`
    /// when the file is not a scoreboard of this layout.
    pub(crate) fn inherit(file: OwnedFd) -> std::io::Result<Mapped> {
        if sys::shared_memory_words(file.as_fd())? != WORDS {
            return Err(std::io::Error::other("not a scoreboard of this layout"));
        }
        let words = sys::map_shared_words(file.as_fd(), WORDS)?;
        let board = Scoreboard { words };
        if board.get(H_MAGIC) != MAGIC || board.get(H_WORDS) != WORDS as u64 {
            return Err(std::io::Error::other("not a scoreboard of this layout"));
        }
        board.add(H_RELOADS, 1);
        board.set(H_LAST_RELOAD, unix_secs(SystemTime::now()));
        Ok(Mapped { board, file })
    }

    /// Slots claimed at least once (see [`H_SLOTS_USED`]).
    fn slots_used(&self) -> usize {
        usize::try_from(self.get(H_SLOTS_USED)).map_or(MAX_SLOTS, |n| n.min(MAX_SLOTS))
    }

    fn w(&self, i: usize) -> &AtomicU64 {
        // Every offset is a constant below WORDS or a slot index checked against MAX_SLOTS.
        &self.words[i]
    }

    fn get(&self, i: usize) -> u64 {
        self.w(i).load(Ordering::Relaxed)
    }

    fn set(&self, i: usize, v: u64) {
        self.w(i).store(v, Ordering::Relaxed);
    }

    fn add(&self, i: usize, v: u64) {
        self.w(i).fetch_add(v, Ordering::Relaxed);
    }

    // --- writers

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.add(H_ACCEPTED, 1);
    }

    /// A connection ended (whatever the reason).
    pub fn connection_closed(&self) {
        self.add(H_CLOSED, 1);
    }

    /// A connection ended early for `reason`, one of [`CLOSE_REASONS`] (counted besides
    /// [`Self::connection_closed`]).
    pub fn connection_failed(&self, reason: &str) {
        self.add(H_CLOSE_REASONS + close_index(reason), 1);
    }

    /// A request was answered "overloaded" (its process ran all the requests it may).
    pub fn overloaded(&self) {
        self.add(H_OVERLOADED, 1);
    }

    /// Bytes read from connections.
    pub fn bytes_in(&self, n: u64) {
        self.add(H_BYTES_IN, n);
    }

    /// Bytes written to connections.
    pub fn bytes_out(&self, n: u64) {
        self.add(H_BYTES_OUT, n);
    }

    /// A request started.
    pub fn request_started(&self) {
        self.add(H_STARTED, 1);
    }

    /// A request finished with `status` after `elapsed`, over `protocol`.
    pub fn request_finished(&self, protocol: &str, status: u16, elapsed: Duration) {
        let p = PROTOCOLS.iter().position(|p| *p == protocol).unwrap_or(0);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.add(H_REQUESTS + p * CODE_CLASSES.len() + class, 1);
        let secs = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.add(H_BUCKETS + bucket, 1);
        self.add(
            H_DURATION_SUM_US,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        // Last, so that a reader never sees more finished than counted by class.
        self.add(H_FINISHED, 1);
    }

    /// The listen queue as just measured: connections waiting, and the queue's limit.
    pub fn listen_queue(&self, waiting: u64, limit: u64) {
        self.set(H_QUEUE, waiting);
        self.set(H_QUEUE_LIMIT, limit);
        self.set(H_QUEUE_KNOWN, 1);
        self.w(H_QUEUE_MAX).fetch_max(waiting, Ordering::Relaxed);
    }

    // --- slots

    /// Claims a slot for process `pid`: the one it already holds (a threaded server
    /// re-executed in place keeps its pid), else a free one. `None` when all are taken (the
    /// process is counted in `unslotted`).
    pub fn claim_slot(&self, pid: u32) -> Option<Slot> {
        let pid = u64::from(pid);
        let base = |i: usize| HEADER_WORDS + i * SLOT_WORDS;
        let used = self.slots_used();
        let held = (0..used).find(|&i| self.get(base(i) + S_PID) == pid);
        let claim = |i: usize| {
            self.w(base(i) + S_PID)
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        let index = held.or_else(|| (0..used).find(|&i| claim(i))).or_else(|| {
            // A slot never used before: the next one past the high-water mark, this
            // process's alone once the mark is moved past it.
            let fresh = self
                .w(H_SLOTS_USED)
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_SLOTS as u64).then_some(n + 1)
                })
                .ok()?;
            let i = usize::try_from(fresh).ok()?;
            claim(i).then_some(i)
        });
        let Some(index) = index else {
            self.add(H_UNSLOTTED, 1);
            return None;
        };
        let slot = Slot {
            board: *self,
            base: base(index),
        };
        slot.board
            .set(slot.base + S_STATE, WorkerState::Idle.word());
        slot.board.set(slot.base + S_SERVED, 0);
        slot.board.set(slot.base + S_IN_FLIGHT, 0);
        slot.board.set(slot.base + S_REQUEST_US, 0);
        slot.board
            .set(slot.base + S_STARTED_MS, unix_millis(SystemTime::now()));
        Some(slot)
    }

    /// Frees the slot of `pid` (a worker that exited), if it holds one.
    pub fn release_pid(&self, pid: u32) {
        for i in 0..self.slots_used() {
            let at = HEADER_WORDS + i * SLOT_WORDS + S_PID;
            if self
                .w(at)
                .compare_exchange(u64::from(pid), 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    // --- readers

    /// A consistent-enough copy of everything, for rendering: each word is read once.
    pub fn snapshot(&self) -> Snapshot {
        let now = SystemTime::now();
        let requests = PROTOCOLS
            .iter()
            .enumerate()
            .flat_map(|(p, proto)| {
                CODE_CLASSES.iter().enumerate().map(move |(c, class)| {
                    (*proto, *class, H_REQUESTS + p * CODE_CLASSES.len() + c)
                })
            })
            .map(|(p, c, at)| (p, c, self.get(at)))
            .collect();
        let mut cumulative = 0;
        let buckets = (0..=DURATION_BUCKETS.len())
            .map(|i| {
                cumulative += self.get(H_BUCKETS + i);
                cumulative
            })
            .collect();
        let finished = self.get(H_FINISHED);
        let started = self.get(H_STARTED);
        let accepted = self.get(H_ACCEPTED);
        let closed = self.get(H_CLOSED);
        let workers = (0..self.slots_used())
            .filter_map(|i| self.read_slot(HEADER_WORDS + i * SLOT_WORDS, now))
            .collect();
        Snapshot {
            created_unix: self.get(H_CREATED),
            uptime: now
                .duration_since(UNIX_EPOCH + Duration::from_secs(self.get(H_CREATED)))
                .unwrap_or_default(),
            reloads: self.get(H_RELOADS),
            last_reload_unix: self.get(H_LAST_RELOAD),
            accepted,
            active_connections: accepted.saturating_sub(closed),
            closed,
            close_reasons: CLOSE_REASONS
                .iter()
                .enumerate()
                .map(|(i, r)| (*r, self.get(H_CLOSE_REASONS + i)))
                .collect(),
            requests_started: started,
            in_flight: started.saturating_sub(finished),
            requests,
            overloaded: self.get(H_OVERLOADED),
            bytes_in: self.get(H_BYTES_IN),
            bytes_out: self.get(H_BYTES_OUT),
            listen_queue: (self.get(H_QUEUE_KNOWN) == 1).then(|| ListenQueue {
                waiting: self.get(H_QUEUE),
                max_seen: self.get(H_QUEUE_MAX),
                limit: self.get(H_QUEUE_LIMIT),
            }),
            duration_buckets: buckets,
            duration_count: finished,
            duration_sum: Duration::from_micros(self.get(H_DURATION_SUM_US)),
            unslotted: self.get(H_UNSLOTTED),
            workers,
            ..Snapshot::default()
        }
    }

    fn read_slot(&self, base: usize, now: SystemTime) -> Option<WorkerSnapshot> {
        let pid = self.get(base + S_PID);
        if pid == 0 {
            return None;
        }
        let mut request = None;
        for _ in 0..4 {
            let seq = self.w(base + S_SEQ).load(Ordering::Acquire);
            if seq % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let started_us = self.get(base + S_REQUEST_US);
            let lens = self.get(base + S_LENS);
            let method = self.read_bytes(base + S_METHOD, (lens >> 32) as usize);
            let uri = self.read_bytes(base + S_URI, (lens & 0xffff_ffff) as usize);
            if self.w(base + S_SEQ).load(Ordering::Acquire) == seq {
                request = (started_us != 0).then(|| CurrentRequest {
                    method: String::from_utf8_lossy(&method).into_owned(),
                    uri: String::from_utf8_lossy(&uri).into_owned(),
                    elapsed: now
                        .duration_since(UNIX_EPOCH + Duration::from_micros(started_us))
                        .unwrap_or_default(),
                });
                break;
            }
        }
        let started_ms = self.get(base + S_STARTED_MS);
        Some(WorkerSnapshot {
            pid: u32::try_from(pid).unwrap_or(0),
            state: WorkerState::from_word(self.get(base + S_STATE)),
            served: self.get(base + S_SERVED),
            in_flight: self.get(base + S_IN_FLIGHT),
            started_unix: started_ms / 1000,
            request,
            rss_bytes: None,
        })
    }

    fn read_bytes(&self, at: usize, len: usize) -> Vec<u8> {
        let words = len.div_ceil(8);
        let mut out = Vec::with_capacity(words * 8);
        for i in 0..words {
            out.extend_from_slice(&self.get(at + i).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// One process's slot; only that process writes it.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    board: Scoreboard,
    base: usize,
}

impl Slot {
    /// Sets the worker's state.
    pub fn state(&self, state: WorkerState) {
        self.board.set(self.base + S_STATE, state.word());
    }

    /// Sets the worker's state if it is idle (a connection accepted by an idle worker).
    pub fn state_if_idle(&self, state: WorkerState) {
        let _ = self.board.w(self.base + S_STATE).compare_exchange(
            WorkerState::Idle.word(),
            state.word(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A connection closed: a worker that was only reading (no request in flight) is idle
    /// again.
    pub fn connection_closed(&self) {
        if self.board.get(self.base + S_IN_FLIGHT) == 0 {
            let _ = self.board.w(self.base + S_STATE).compare_exchange(
                WorkerState::Reading.word(),
                WorkerState::Idle.word(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request started: shown as the worker's current request.
    pub fn request_started(&self, method: &[u8], uri: &[u8]) {
        self.board.add(self.base + S_IN_FLIGHT, 1);
        self.state(WorkerState::Handling);
        let seq = self.board.w(self.base + S_SEQ);
        let even = seq.load(Ordering::Relaxed) & !1;
        // Another thread (threaded server) is writing: its request is shown instead.
        if seq
            .compare_exchange(even, even + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let method = &method[..method.len().min(SLOT_METHOD_BYTES)];
        let uri = &uri[..uri.len().min(SLOT_URI_BYTES)];
        self.write_bytes(self.base + S_METHOD, method);
        self.write_bytes(self.base + S_URI, uri);
        self.board.set(
            self.base + S_LENS,
            ((method.len() as u64) << 32) | uri.len() as u64,
        );
        self.board.set(
            self.base + S_REQUEST_US,
            unix_micros(SystemTime::now()).max(1),
        );
        seq.store(even + 2, Ordering::Release);
    }

    /// The response head is out; its body is being written.
    pub fn responding(&self) {
        self.state(WorkerState::Writing);
    }

    /// A request finished.
    pub fn request_finished(&self) {
        self.board.add(self.base + S_SERVED, 1);
        let before = self
            .board
            .w(self.base + S_IN_FLIGHT)
            .fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            self.board.set(self.base + S_REQUEST_US, 0);
            if WorkerState::from_word(self.board.get(self.base + S_STATE)) != WorkerState::Stopping
            {
                self.state(WorkerState::Idle);
            }
        }
    }

    /// Frees the slot (the process is exiting).
    pub fn release(&self) {
        self.board.set(self.base + S_PID, 0);
    }

    fn write_bytes(&self, at: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.board.set(at + i, u64::from_le_bytes(word));
        }
    }
}

/// Everything the scoreboard holds at one moment, plus what the reader adds (process model,
/// listen address, each worker's RSS).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Process model (`prefork`, `threaded`).
    pub method: &'static str,
    /// Gateway protocol.
    pub protocol: &'static str,
    /// Listen address as the ready line shows it.
    pub listen: String,
    /// When the server first started (unix seconds); kept across reloads.
    pub created_unix: u64,
    /// Time since then.
    pub uptime: Duration,
    /// Reloads (re-executions: HUP, `touch_reload=`, threaded `maxrequests=`) since then.
    pub reloads: u64,
    /// When the last reload happened (unix seconds; 0: never).
    pub last_reload_unix: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active_connections: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections closed early, by reason.
    pub close_reasons: Vec<(&'static str, u64)>,
    /// Requests started.
    pub requests_started: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests answered, by protocol and status class.
    pub requests: Vec<(&'static str, &'static str, u64)>,
    /// Requests answered "overloaded".
    pub overloaded: u64,
    /// Bytes read from connections.
    pub bytes_in: u64,
    /// Bytes written to connections.
    pub bytes_out: u64,
    /// The listen queue, when the listener's kind allows measuring it.
    pub listen_queue: Option<ListenQueue>,
    /// Cumulative counts per [`DURATION_BUCKETS`] bound, then the total.
    pub duration_buckets: Vec<u64>,
    /// Requests timed (= answered).
    pub duration_count: u64,
    /// Their total duration.
    pub duration_sum: Duration,
    /// Workers that found no free slot.
    pub unslotted: u64,
    /// One entry per live worker.
    pub workers: Vec<WorkerSnapshot>,
}

/// The listen queue as last measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenQueue {
    /// Connections the kernel accepted that no worker has taken yet.
    pub waiting: u64,
    /// The most seen waiting at once since the server started.
    pub max_seen: u64,
    /// The queue's limit (the effective backlog).
    pub limit: u64,
}

/// One worker's slot.
#[derive(Clone, Debug)]
pub struct WorkerSnapshot {
    /// Its pid.
    pub pid: u32,
    /// What it is doing.
    pub state: WorkerState,
    /// Requests it has answered.
    pub served: u64,
    /// Requests it has in flight.
    pub in_flight: u64,
    /// When it started (unix seconds).
    pub started_unix: u64,
    /// Its current (latest started) request, if one is in flight.
    pub request: Option<CurrentRequest>,
    /// Its resident set size, when the reader could see it (`/proc/PID/statm`).
    pub rss_bytes: Option<u64>,
}

/// A request in flight.
#[derive(Clone, Debug)]
pub struct CurrentRequest {
    /// Its method.
    pub method: String,
    /// Its URI (cut at [`SLOT_URI_BYTES`]).
    pub uri: String,
    /// How long it has been running.
    pub elapsed: Duration,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_slots() {
        let mapped = Scoreboard::create().unwrap();
        let board = mapped.board;
        board.connection_opened();
        board.connection_failed("header_timeout");
        board.connection_failed("a reason from a newer engine");
        let slot = board.claim_slot(4242).unwrap();
        slot.request_started(b"GET", b"/long?x=1");
        let snap = board.snapshot();
        assert_eq!(snap.accepted, 1);
        assert!(snap.close_reasons.contains(&("header_timeout", 1)));
        assert!(snap.close_reasons.contains(&("other", 1)));
        assert_eq!(snap.in_flight, 0, "slot writes alone do not start requests");
        let w = snap.workers.iter().find(|w| w.pid == 4242).unwrap();
        let req = w.request.as_ref().unwrap();
        assert_eq!(
            (req.method.as_str(), req.uri.as_str()),
            ("GET", "/long?x=1")
        );
        assert_eq!(w.state, WorkerState::Handling);
        slot.request_finished();
        board.request_started();
        board.request_finished("scgi", 404, Duration::from_millis(30));
        let snap = board.snapshot();
        let w = snap.workers.iter().find(|w| w.pid == 4242).unwrap();
        assert_eq!((w.served, w.state), (1, WorkerState::Idle));
        assert!(w.request.is_none());
        assert!(snap.requests.contains(&("scgi", "4xx", 1)));
        // 30 ms lands in the 0.05 s bucket: cumulative counts 0 below it, 1 from it on.
        assert_eq!(snap.duration_buckets[2], 0);
        assert_eq!(snap.duration_buckets[3], 1);
        assert_eq!(*snap.duration_buckets.last().unwrap(), 1);
        board.release_pid(4242);
        assert!(board.snapshot().workers.iter().all(|w| w.pid != 4242));
    }

    #[test]
    fn a_long_uri_is_cut_at_the_slot_size() {
        let board = Scoreboard::create().unwrap().board;
        let slot = board.claim_slot(7).unwrap();
        let uri = vec![b'a'; SLOT_URI_BYTES + 1];
        slot.request_started(b"VERYLONGMETHODNAMEX", &uri);
        let snap = board.snapshot();
        let req = snap.workers[0].request.clone().unwrap();
        assert_eq!(req.uri.len(), SLOT_URI_BYTES);
        assert_eq!(req.method.len(), SLOT_METHOD_BYTES);
        // At the limit: kept whole.
        slot.request_finished();
        slot.request_started(b"GET", &uri[..SLOT_URI_BYTES]);
        let req = board.snapshot().workers[0].request.clone().unwrap();
        assert_eq!(req.uri.len(), SLOT_URI_BYTES);
    }

    #[test]
    fn slots_are_bounded() {
        let board = Scoreboard::create().unwrap().board;
        for pid in 1..=MAX_SLOTS as u32 {
            assert!(board.claim_slot(pid).is_some(), "slot for {pid}");
        }
        // The same pid gets its slot back; one more process gets none and is counted.
        assert!(board.claim_slot(1).is_some());
        assert!(board.claim_slot(MAX_SLOTS as u32 + 1).is_none());
        assert_eq!(board.snapshot().unslotted, 1);
        assert_eq!(board.snapshot().workers.len(), MAX_SLOTS);
    }

    /// Resident KiB of the mapping holding `board`, from /proc/self/smaps.
    fn resident_kib(board: &Scoreboard) -> u64 {
        let at = board.words.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&at);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("Rss:") {
                    return kib.trim().trim_end_matches(" kB").parse().unwrap();
                }
            }
        }
        panic!("no mapping at {at:#x}")
    }

    #[test]
    fn slots_come_from_the_front_and_only_those_are_read() {
        let board = Scoreboard::create().unwrap().board;
        for pid in 1..=3 {
            board.claim_slot(pid).unwrap();
        }
        board.release_pid(2);
        // The freed slot is taken again before a new one.
        board.claim_slot(4).unwrap();
        assert_eq!(board.slots_used(), 3);
        let pids: Vec<u32> = board.snapshot().workers.iter().map(|w| w.pid).collect();
        assert_eq!(pids, [1, 4, 3]);
        // Claims, releases and snapshots touched the first page and no other: a worker does
        // not carry the whole mapping in its resident set.
        assert!(resident_kib(&board) <= 8, "{} KiB", resident_kib(&board));
    }

    #[test]
    fn inherited_memory_keeps_the_totals() {
        let mapped = Scoreboard::create().unwrap();
        mapped.board.request_started();
        mapped
            .board
            .request_finished("fcgi", 200, Duration::from_millis(1));
        let again = Scoreboard::inherit(mapped.file.try_clone().unwrap()).unwrap();
        let snap = again.board.snapshot();
        assert_eq!(snap.reloads, 1);
        assert!(snap.requests.contains(&("fcgi", "2xx", 1)));
        // Two mappings of one file are one memory: what the re-executed image (or a forked
        // worker) writes, the other reads.
        again.board.bytes_out(5);
        assert_eq!(mapped.board.snapshot().bytes_out, 5);
        // Memory that is not a scoreboard is refused.
        let other = sys::shared_memory_file("x", 16).unwrap();
        assert!(Scoreboard::inherit(other).is_err());
    }
}
