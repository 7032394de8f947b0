//! Connection slots (`maxconns=`) and eviction: when every slot is taken, a new connection
//! closes the connection that has waited longest without a request in progress (never sent
//! a byte, or idle between requests), as nginx reuses its idle keep-alive connections when
//! `worker_connections` run out. Silent connections therefore cannot keep the server from
//! answering: each new connection pushes the oldest silent one out.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Marks a connection that is busy with a request: not evictable.
const BUSY: u64 = u64::MAX;

/// The slot table: open connections' states by id.
type Table = HashMap<u64, Arc<SlotState>, BuildHasherDefault<IdHasher>>;

/// Hashes the table's keys, ids this process numbers itself from a counter: no peer chooses
/// them, so the standard library's keyed `SipHash` (about 250 instructions per connection, an
/// insert and a remove; docs/performance.md, "The hot path") guards against nothing here. One
/// multiply by an odd constant maps consecutive ids to distinct buckets and spreads the high
/// bits `hashbrown` tags its entries with.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called for a `u64` key; any other input still hashes whole.
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The `maxconns` slots of one process.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Every open connection's state, by id; bounded by `maxconns` (plus the one being
    /// admitted).
    table: Mutex<Table>,
    next_id: AtomicU64,
    base: Instant,
    /// Accept loops waiting in [`take_or_evict`](Self::take_or_evict), and how a connection
    /// that becomes evictable wakes them.
    waiters: AtomicUsize,
    evictable: Notify,
}

/// What the engine tells the slot table about one connection, and how it is told to go.
#[derive(Debug)]
pub(crate) struct SlotState {
    /// Nanoseconds since [`Slots::base`] at which the connection became evictable, or
    /// [`BUSY`].
    evictable_since: AtomicU64,
    evict: Notify,
}

/// One connection's slot; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    state: Arc<SlotState>,
    slots: Arc<Slots>,
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `max` slots.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            table: Mutex::new(Table::with_capacity_and_hasher(
                max.min(4096),
                BuildHasherDefault::default(),
            )),
            next_id: AtomicU64::new(0),
            base: Instant::now(),
            waiters: AtomicUsize::new(0),
            evictable: Notify::new(),
        })
    }

    /// A free slot, if there is one.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(self.register(permit))
    }

    /// Waits for a free slot.
    pub(crate) async fn take(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = loop {
            if let Ok(p) = Arc::clone(&self.permits).acquire_owned().await {
                break p;
            }
        };
        self.register(permit)
    }

    /// Waits until a slot is free (`Some`) or a connection is evictable, and tells it to go
    /// (`None`: the caller's connection takes the evicted one's slot with
    /// [`take`](Self::take)).
    ///
    /// Waiting for a free slot alone is not enough: when every slot is taken by connections
    /// accepted a moment ago whose tasks have not run yet (a flood of connections on a busy
    /// machine), none is evictable, and a silent one only frees its slot at `header_timeout`.
    /// Each of them becomes evictable once its first read finds nothing, which is what ends
    /// this wait.
    pub(crate) async fn take_or_evict(self: &Arc<Self>) -> Option<Slot> {
        loop {
            let notified = self.evictable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = Waiting::new(&self.waiters);
            if let Some(slot) = self.try_take() {
                return Some(slot);
            }
            if self.evict_oldest() {
                return None;
            }
            tokio::select! {
                slot = self.take() => return Some(slot),
                () = &mut notified => {}
            }
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Not evictable until its connection says it waits (Slot::set_evictable): one this
        // process has not read yet is not a silent one.
        let state = Arc::new(SlotState {
            evictable_since: AtomicU64::new(BUSY),
            evict: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&state));
        Slot {
            id,
            state,
            slots: Arc::clone(self),
            _permit: permit,
        }
    }

    /// Tells the connection that has been evictable the longest to close; false when every
    /// connection is busy with a request.
    pub(crate) fn evict_oldest(&self) -> bool {
        let table = self.lock();
        let oldest = table
            .values()
            .map(|s| (s.evictable_since.load(Ordering::Relaxed), s))
            .filter(|(since, _)| *since != BUSY)
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, state)) => {
                // Not evictable twice: the next eviction picks another connection.
                state.evictable_since.store(BUSY, Ordering::Relaxed);
                state.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().len()
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(BUSY - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent map (single inserts and
        // removes), so a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts one waiter in [`Slots::take_or_evict`] while it lives. The fences pair with the one
/// in [`Slot::set_evictable`]: either the waiter's scan sees the connection evictable, or
/// the connection sees the waiter and wakes it.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    /// The connection waits for a request (`true`, since `now`) or is busy with one.
    pub(crate) fn set_evictable(&self, evictable: bool, now: Instant) {
        let v = if evictable {
            self.slots.nanos(now)
        } else {
            BUSY
        };
        self.state.evictable_since.store(v, Ordering::Relaxed);
        if evictable {
            fence(Ordering::SeqCst);
            if self.slots.waiters.load(Ordering::Relaxed) > 0 {
                self.slots.evictable.notify_waiters();
            }
        }
    }

    /// Resolves when the slot table wants this connection closed.
    pub(crate) async fn evicted(&self) {
        self.state.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Consecutive ids, as the table gets them, fill a table's buckets one each (the low bits
    /// `hashbrown` indexes with are all different) and vary in the high bits it tags with.
    #[test]
    fn consecutive_ids_spread_over_buckets_and_tags() {
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let buckets: std::collections::HashSet<u64> = (0..1024).map(|id| hash(id) & 1023).collect();
        assert_eq!(buckets.len(), 1024);
        let tags: std::collections::HashSet<u64> = (0..1024).map(|id| hash(id) >> 57).collect();
        assert_eq!(tags.len(), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_waiting_connection_is_evicted_never_a_busy_one() {
        let slots = Slots::new(3);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        let c = slots.try_take().unwrap();
        assert!(slots.try_take().is_none(), "maxconns=3 taken");
        // None has said it waits yet.
        assert!(!slots.evict_oldest());
        a.set_evictable(true, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        b.set_evictable(true, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        c.set_evictable(true, Instant::now());
        a.set_evictable(false, Instant::now());
        assert!(slots.evict_oldest());
        // b is the oldest waiting one.
        tokio::time::timeout(Duration::from_millis(1), b.evicted())
            .await
            .expect("b evicted");
        assert!(tokio::time::timeout(Duration::from_millis(1), c.evicted())
            .await
            .is_err());
        drop(b);
        assert_eq!(slots.open(), 2);
        assert!(slots.try_take().is_some());
        // c is next; then only the busy a is left.
        assert!(slots.evict_oldest());
        assert!(!slots.evict_oldest());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_a_slot_ends_when_a_connection_becomes_evictable() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        // Both just accepted: neither has said it waits, so there is nothing to evict yet.
        let wait = slots.take_or_evict();
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut wait)
                .await
                .is_err(),
            "no slot free and none evictable"
        );
        // b's first read finds nothing: it is a silent connection, and is evicted at once
        // (without this, the wait lasted until a connection closed: header_timeout).
        b.set_evictable(true, Instant::now());
        let got = tokio::time::timeout(Duration::from_millis(1), &mut wait)
            .await
            .expect("the wait ended when b became evictable");
        assert!(got.is_none(), "b evicted, not a free slot");
        tokio::time::timeout(Duration::from_millis(1), b.evicted())
            .await
            .expect("b told to go");
        // A slot freed while waiting ends the wait too.
        let wait = slots.take_or_evict();
        tokio::pin!(wait);
        assert!(tokio::time::timeout(Duration::from_secs(1), &mut wait)
            .await
            .is_err());
        drop(a);
        let got = tokio::time::timeout(Duration::from_millis(1), &mut wait)
            .await
            .expect("a's slot");
        assert!(got.is_some());
    }
}
