//! Load through a web server: client threads looping requests until stopped, and the
//! [`Report`] of every outcome, for the tests that prove an event (a reload, a recycle, a
//! flood) loses no request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::client::try_http_request;

/// How long a load may take to complete the requests a test waits for.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or `timeout` passes; returns whether it held. Used where no
/// event announces the state (a fork, an exit seen from outside the parent): polling /proc
/// is the readiness check there.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `pid:` line of the info app's page.
pub(crate) fn page_pid(body: &str) -> Option<u32> {
    body.lines()
        .find_map(|l| l.strip_prefix("pid: "))
        .and_then(|p| p.trim().parse().ok())
}

/// What one request of a load came to.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// When it was sent and when it completed, since the load started.
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    /// The body of a 200 response, or what went wrong.
    pub(crate) result: Result<String, String>,
}

/// Client threads looping `GET path` through nginx (one connection per request) until
/// stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    pub(crate) done: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<Outcome>>>,
    t0: Instant,
}

impl Load {
    pub(crate) fn start(port: u16, path: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let done = Arc::clone(&done);
                let path = path.to_owned();
                thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = t0.elapsed();
                        let result = match try_http_request(port, "GET", &path, &[], &[]) {
                            Ok(r) if r.status == 200 => Ok(r.text()),
                            Ok(r) => Err(format!(
                                "status {}: {}",
                                r.status,
                                r.text().lines().next().unwrap_or_default()
                            )),
                            Err(e) => Err(e.to_string()),
                        };
                        outcomes.push(Outcome {
                            start,
                            end: t0.elapsed(),
                            result,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    outcomes
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
            t0,
        }
    }

    /// Time since the load started.
    pub(crate) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Waits until `n` requests have completed (so the event that follows hits a running
    /// load).
    pub(crate) fn wait_done(&self, n: usize) {
        assert!(
            wait_until(SETTLE_TIMEOUT, || self.done.load(Ordering::Relaxed) >= n),
            "the load completed only {} requests in {SETTLE_TIMEOUT:?}",
            self.done.load(Ordering::Relaxed)
        );
    }

    /// Stops the clients and collects every outcome.
    pub(crate) fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes: Vec<Outcome> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        outcomes.sort_by_key(|o| o.start);
        Report {
            outcomes,
            elapsed: self.t0.elapsed(),
        }
    }
}

/// The outcomes of a load.
pub(crate) struct Report {
    pub(crate) outcomes: Vec<Outcome>,
    elapsed: Duration,
}

impl Report {
    pub(crate) fn sent(&self) -> usize {
        self.outcomes.len()
    }

    pub(crate) fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Requests served per worker pid (from the info app's `pid:` line).
    pub(crate) fn per_pid(&self) -> BTreeMap<u32, usize> {
        let mut map = BTreeMap::new();
        for body in self.outcomes.iter().filter_map(|o| o.result.as_ref().ok()) {
            if let Some(pid) = page_pid(body) {
                *map.entry(pid).or_insert(0) += 1;
            }
        }
        map
    }

    /// Prints the figures: requests sent, failed, during which event, in how long.
    pub(crate) fn print(&self, event: &str) {
        eprintln!(
            "load: {} requests sent, {} failed, during {event}, in {:.2?}",
            self.sent(),
            self.failures().len(),
            self.elapsed
        );
    }

    /// The first few failures, for assertion messages.
    pub(crate) fn first_failures(&self) -> String {
        self.failures()
            .iter()
            .take(5)
            .map(|o| format!("  [{:?}..{:?}] {:?}\n", o.start, o.end, o.result))
            .collect()
    }

    /// Asserts that no request failed; `during` names the event, `logs` are shown otherwise.
    pub(crate) fn assert_none_failed(&self, during: &str, logs: &str) {
        assert!(
            self.failures().is_empty(),
            "{} of {} requests failed{during}:\n{}{logs}",
            self.failures().len(),
            self.sent(),
            self.first_failures(),
        );
    }
}
