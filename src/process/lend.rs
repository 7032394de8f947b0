//! A prefork worker lends its runtime to the thread a request runs on.
//!
//! A prefork worker serves one request at a time on one current-thread runtime. An app that
//! runs a request on a thread of its own (app=wsgi with a request body: `wsgi.input` blocks
//! while the body arrives) would otherwise hand every body chunk from the worker's thread to
//! its own, two thread wake-ups a chunk. With a loan, the worker's thread steps out of its
//! runtime and waits, and the app's thread drives the runtime itself whenever it waits for
//! something (the next body chunk, room for output): the connection is read and written on
//! the thread that runs the app, as uWSGI does, and no chunk changes threads. When the app's
//! thread gives the loan back, the worker's thread takes its runtime up again.
//!
//! While the app computes, nothing drives the runtime: as for a request the app runs on the
//! worker's own thread, no timer fires and no other connection is read meanwhile, which is
//! why the app asks for a loan only where it would run on the worker's thread too (prefork,
//! no `request_timeout=`, no `slowlog=`).

// Only app=wsgi borrows today: without it the lending side is all that is compiled in use.
#![cfg_attr(not(feature = "wsgi"), allow(dead_code))]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;

thread_local! {
    /// The lender of the worker's thread, while [`serve`] runs on it.
    static LENDER: RefCell<Option<Arc<Lender>>> = const { RefCell::new(None) };
    /// This thread is driving a lent runtime (inside [`Waiter::block_on`]).
    static DRIVING: Cell<bool> = const { Cell::new(false) };
}

struct Lender {
    state: Mutex<State>,
    /// Signals every change of `state` (the worker's thread stepped out, a loan came back).
    changed: Condvar,
    /// A loan was asked for: the worker's thread steps out of the runtime at its next turn.
    wanted: Notify,
}

struct State {
    /// The runtime while [`serve`] runs it.
    runtime: Option<Arc<Runtime>>,
    /// Loans given out and not yet given back.
    out: usize,
    /// The worker's thread is out of the runtime: a borrower may drive it.
    away: bool,
}

impl Lender {
    /// Locks the state, poisoned or not: it is a few counts, whole either way.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: std::sync::MutexGuard<'a, State>) -> std::sync::MutexGuard<'a, State> {
        self.changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `serve` on `runtime` on this thread (a prefork worker's only one), stepping out of
/// the runtime for each loan until it is given back. Loans are offered only meanwhile.
pub(crate) fn serve<F: Future>(runtime: &Arc<Runtime>, serve: F) -> F::Output {
    let lender = Arc::new(Lender {
        state: Mutex::new(State {
            runtime: Some(Arc::clone(runtime)),
            out: 0,
            away: false,
        }),
        changed: Condvar::new(),
        wanted: Notify::new(),
    });
    LENDER.with(|l| *l.borrow_mut() = Some(Arc::clone(&lender)));
    let out = serve_lending(&lender, runtime, serve);
    LENDER.with(|l| *l.borrow_mut() = None);
    // The caller may shut the runtime down now: nothing borrows it any more.
    lender.lock().runtime = None;
    out
}

fn serve_lending<F: Future>(lender: &Lender, runtime: &Runtime, serve: F) -> F::Output {
    let mut serve = std::pin::pin!(serve);
    loop {
        let done = runtime.block_on(async {
            tokio::select! {
                biased;
                out = &mut serve => Some(out),
                () = lender.wanted.notified() => None,
            }
        });
        if let Some(out) = done {
            return out;
        }
        // Out of the runtime: the borrower's `block_on` drives it until the loan comes back
        // (a loan given back before this thread stepped out leaves nothing to wait for).
        let mut st = lender.lock();
        st.away = true;
        lender.changed.notify_all();
        while st.out > 0 {
            st = lender.wait(st);
        }
        st.away = false;
    }
}

/// Asks for the worker's runtime, from a task on the worker's thread; `None` elsewhere (a
/// threaded server, a test). The worker's thread steps out of the runtime at its next turn;
/// a [`Waiter`] made on it then drives the runtime from the borrowing thread, and dropping
/// the loan gives it back.
pub(crate) fn borrow() -> Option<Loan> {
    let lender = LENDER.with(|l| l.borrow().clone())?;
    {
        let mut st = lender.lock();
        st.runtime.as_ref()?;
        st.out += 1;
    }
    lender.wanted.notify_one();
    Some(Loan { lender })
}

/// True where a task may run app code on the thread polling it: not on a thread driving a
/// lent runtime (the app already runs there, inside one of its waits), and not on the
/// worker's thread while a loan is out.
pub(crate) fn at_home() -> bool {
    !DRIVING.get() && LENDER.with(|l| l.borrow().as_ref().is_none_or(|l| l.lock().out == 0))
}

/// The worker's runtime, lent to the thread that holds this (see [`borrow`]).
pub(crate) struct Loan {
    lender: Arc<Lender>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.lender.lock().out -= 1;
        self.lender.changed.notify_all();
    }
}

/// How a thread outside the runtime waits for a future of it (a body chunk, room for
/// output): made on the runtime's thread by [`waiter`].
#[derive(Clone)]
pub(crate) struct Waiter {
    handle: Handle,
    lender: Option<Arc<Lender>>,
}

/// A [`Waiter`] for the runtime running the calling task.
pub(crate) fn waiter() -> Waiter {
    Waiter {
        handle: Handle::current(),
        lender: LENDER.with(|l| l.borrow().clone()),
    }
}

impl Waiter {
    /// Waits for `f` on this thread. While a loan is out, this is the borrower's thread: it
    /// waits for the worker's thread to step out of the runtime, then drives the runtime
    /// (its connections and timers) until `f` completes, and then lets the tasks that are
    /// ready run once more, so that what `f` made possible happens before the borrower goes
    /// on computing (a response chunk just queued is written, the next part of a body is
    /// read). Otherwise it parks until the runtime completes `f`.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        let lent = self.lender.as_ref().and_then(|lender| {
            let mut st = lender.lock();
            // Until the worker's thread is out, it is still reading the connection: taking
            // each chunk from it here would be the hand-off the loan is for avoiding.
            while st.out > 0 && !st.away {
                st = lender.wait(st);
            }
            if st.out > 0 {
                st.runtime.clone()
            } else {
                None
            }
        });
        match lent {
            Some(runtime) => {
                DRIVING.set(true);
                let out = runtime.block_on(async {
                    let out = f.await;
                    tokio::task::yield_now().await;
                    out
                });
                DRIVING.set(false);
                out
            }
            None => self.handle.block_on(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;
    use tokio::sync::{mpsc, oneshot};

    fn runtime() -> Arc<Runtime> {
        Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    /// A task that reports, for each item it passes on, the thread that polled it.
    fn relay(mut rx: mpsc::Receiver<u32>, tx: mpsc::Sender<(u32, ThreadId)>) {
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let _ = tx.send((n, std::thread::current().id())).await;
            }
        });
    }

    #[test]
    fn a_loan_moves_the_runtime_to_the_borrowers_thread_and_back() {
        let rt = runtime();
        let worker = std::thread::current().id();
        let out = serve(&rt, async {
            let (in_tx, in_rx) = mpsc::channel(1);
            let (out_tx, mut out_rx) = mpsc::channel(1);
            relay(in_rx, out_tx);
            assert!(at_home());
            // Before the loan the relay runs here.
            in_tx.send(1).await.unwrap();
            assert_eq!(out_rx.recv().await.unwrap(), (1, worker));

            let loan = borrow().expect("serve installs a lender");
            assert!(!at_home(), "no app code on the worker's thread while lent");
            let waiter = waiter();
            let (done_tx, done_rx) = oneshot::channel();
            std::thread::spawn(move || {
                let me = std::thread::current().id();
                // Each wait drives the runtime here: the relay runs on this thread.
                for n in 2..5 {
                    waiter.block_on(in_tx.send(n)).unwrap();
                    let (got, on) = waiter.block_on(out_rx.recv()).unwrap();
                    assert_eq!((got, on), (n, me));
                }
                drop(loan);
                let _ = done_tx.send((in_tx, out_rx, me));
            });
            // The worker's thread is out of the runtime until the loan comes back.
            let (in_tx, mut out_rx, borrower) = done_rx.await.unwrap();
            assert_ne!(borrower, worker);
            assert!(at_home());
            in_tx.send(5).await.unwrap();
            out_rx.recv().await.unwrap()
        });
        assert_eq!(
            out,
            (5, worker),
            "the runtime is back on the worker's thread"
        );
    }

    #[test]
    fn a_loan_given_back_unused_lets_the_worker_go_on() {
        let rt = runtime();
        let out = serve(&rt, async {
            drop(borrow().expect("serve installs a lender"));
            tokio::task::yield_now().await;
            7
        });
        assert_eq!(out, 7);
        assert!(borrow().is_none(), "no loans once serve returned");
        assert!(
            Arc::try_unwrap(rt).is_ok(),
            "serve keeps no hold on the runtime"
        );
    }

    #[test]
    fn without_a_lender_a_waiter_parks_until_the_runtime_completes_the_future() {
        let rt = runtime();
        let (tx, rx) = oneshot::channel();
        let waiter = rt.block_on(async { waiter() });
        let t = std::thread::spawn(move || waiter.block_on(rx).unwrap());
        rt.block_on(async {
            tx.send(3).unwrap();
        });
        assert_eq!(t.join().unwrap(), 3);
        assert!(borrow().is_none());
    }
}
