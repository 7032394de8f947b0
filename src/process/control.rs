//! [`Control`]: what a signal asks the server to do, the same for every process model.
//!
//! | signal    | control                     |
//! |-----------|-----------------------------|
//! | TERM, INT | [`Control::GracefulStop`]   |
//! | QUIT      | [`Control::ImmediateStop`]  |
//! | HUP       | [`Control::Reload`]         |
//! | USR1      | [`Control::ReopenLogs`]     |
//! | TTIN      | [`Control::MoreWorkers`]    |
//! | TTOU      | [`Control::FewerWorkers`]   |
//!
//! `docs/operations.md` repeats this table for operators.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A request to the server from its operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop accepting, finish requests in flight (bounded by `graceful_timeout=`), exit 0.
    GracefulStop,
    /// Exit now.
    ImmediateStop,
    /// Replace the workers with fresh ones without losing a request.
    Reload,
    /// Reopen `outlog=`/`errlog=` (after logrotate moved them).
    ReopenLogs,
    /// Keep one more idle worker (prefork).
    MoreWorkers,
    /// Keep one idle worker fewer (prefork).
    FewerWorkers,
}

impl Control {
    /// The control a signal number asks for, if any.
    pub fn from_signal(signal: i32) -> Option<Self> {
        match signal {
            libc::SIGTERM | libc::SIGINT => Some(Self::GracefulStop),
            libc::SIGQUIT => Some(Self::ImmediateStop),
            libc::SIGHUP => Some(Self::Reload),
            libc::SIGUSR1 => Some(Self::ReopenLogs),
            libc::SIGTTIN => Some(Self::MoreWorkers),
            libc::SIGTTOU => Some(Self::FewerWorkers),
            _ => None,
        }
    }
}

/// Every signal that maps to a [`Control`].
pub const CONTROL_SIGNALS: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The signal streams a server listens to.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    ttin: Signal,
    ttou: Signal,
}

impl Signals {
    /// Installs the handlers; call inside the runtime, before announcing readiness, so a
    /// signal sent right after the ready line is never lost to the default action.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
        })
    }

    /// The next control request.
    pub async fn recv(&mut self) -> Control {
        tokio::select! {
            _ = self.term.recv() => Control::GracefulStop,
            _ = self.int.recv() => Control::GracefulStop,
            _ = self.quit.recv() => Control::ImmediateStop,
            _ = self.hup.recv() => Control::Reload,
            _ = self.usr1.recv() => Control::ReopenLogs,
            _ = self.ttin.recv() => Control::MoreWorkers,
            _ = self.ttou.recv() => Control::FewerWorkers,
        }
    }
}
