//! `method=threaded`: one process, a multi-threaded tokio runtime.
//!
//! The accept loop admits at most `maxconns` connections at once (more wait in the listen
//! backlog) and gives each to its protocol driver on its own task; `maxchildren` bounds the
//! requests in flight inside the drivers. Signals map to [`Control`]: a graceful stop stops
//! accepting, lets busy connections finish within `graceful_timeout=`, then returns.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::driver::{self, Shared};
use crate::listen::{AllowList, Listener};
use crate::process::control::{Control, Signals};
use crate::Handler;

/// How the accept loop runs; resolved from the configuration.
#[derive(Clone)]
pub struct ServeOptions {
    /// Which driver serves the connections.
    pub protocol: Protocol,
    /// `maxconns=`: connections served at once.
    pub max_conns: usize,
    /// Who may connect (`allow=`, `FCGI_WEB_SERVER_ADDRS`).
    pub allow: AllowList,
    /// `graceful_timeout=`: how long a graceful stop waits for requests in flight.
    pub graceful_timeout: Duration,
    /// Reopens `outlog=`/`errlog=` on SIGUSR1.
    pub reopen_logs: Arc<dyn Fn() -> io::Result<()> + Send + Sync>,
    /// Tells the service manager about state changes (`STOPPING=1`).
    pub notify: Arc<dyn Fn(&str) + Send + Sync>,
    /// Cancelled to stop gracefully without a signal: a prefork worker that reached
    /// `maxrequests`.
    pub retire: CancellationToken,
    /// `threaded` or `prefork`, for log lines.
    pub method: &'static str,
    /// AJP settings (secret, packet size, attribute allowlist) when `protocol=ajp`.
    pub ajp: appserver_proto::ajp::AjpConfig,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("protocol", &self.protocol)
            .field("max_conns", &self.max_conns)
            .field("allow", &self.allow)
            .field("graceful_timeout", &self.graceful_timeout)
            .finish_non_exhaustive()
    }
}

/// Why serving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Graceful stop completed: every request in flight was answered.
    Graceful,
    /// Graceful stop timed out with requests still running, or an immediate stop.
    Forced,
}

/// Accepts and serves until a stop is requested. `ready` runs once the loop is about to
/// accept (signal handlers are installed by then), to print the ready line.
pub async fn serve<H: Handler>(
    listener: Listener,
    shared: Arc<Shared<H>>,
    options: ServeOptions,
    ready: impl FnOnce(),
) -> io::Result<Exit> {
    let mut signals = Signals::install()?;
    let conns = Arc::new(Semaphore::new(options.max_conns));
    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    ready();

    let accept_loop = {
        let tracker = tracker.clone();
        let shared = Arc::clone(&shared);
        let stop = stop_accepting.clone();
        let options = options.clone();
        async move {
            loop {
                let permit = tokio::select! {
                    p = Arc::clone(&conns).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    () = stop.cancelled() => return,
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = stop.cancelled() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning; the backlog
                        // holds the connection until descriptors free up.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !options.allow.permits(&peer) {
                    tracing::warn!(peer = %peer, "connection refused: peer not in allow= / FCGI_WEB_SERVER_ADDRS");
                    continue;
                }
                let shared = Arc::clone(&shared);
                let protocol = options.protocol;
                let options = options.clone();
                tracker.spawn(async move {
                    match protocol {
                        Protocol::Fcgi => driver::fcgi::serve(stream, peer, shared).await,
                        Protocol::Scgi => driver::scgi::serve(stream, peer, shared).await,
                        Protocol::Ajp => {
                            driver::ajp::serve(stream, peer, shared, options.ajp.clone()).await;
                        }
                    }
                    drop(permit);
                });
            }
        }
    };
    let accept_task = tokio::spawn(accept_loop);

    let exit = loop {
        let control = tokio::select! {
            c = signals.recv() => c,
            () = options.retire.cancelled() => Control::GracefulStop,
        };
        match control {
            Control::GracefulStop => {
                tracing::debug!("graceful stop: finishing requests in flight");
                (options.notify)("STOPPING=1");
                stop_accepting.cancel();
                shared.shutdown.cancel();
                let _ = accept_task.await;
                tracker.close();
                match tokio::time::timeout(options.graceful_timeout, tracker.wait()).await {
                    Ok(()) => break Exit::Graceful,
                    Err(_) => {
                        tracing::warn!(
                            "graceful_timeout={}s reached with requests still running: stopping",
                            options.graceful_timeout.as_secs()
                        );
                        break Exit::Forced;
                    }
                }
            }
            Control::ImmediateStop => {
                tracing::info!("immediate stop");
                (options.notify)("STOPPING=1");
                break Exit::Forced;
            }
            Control::Reload => {
                tracing::warn!(
                    "SIGHUP: method=threaded does not reload (one process serves everything); \
                     use method=prefork for graceful reloads"
                );
            }
            Control::MoreWorkers | Control::FewerWorkers => {
                tracing::info!(
                    "SIGTTIN/SIGTTOU: method={} has no worker pool to resize here",
                    options.method
                );
            }
            Control::ReopenLogs => match (options.reopen_logs)() {
                Ok(()) => tracing::info!("SIGUSR1: logs reopened"),
                Err(e) => tracing::error!("SIGUSR1: cannot reopen logs: {e}"),
            },
        }
    };
    Ok(exit)
}
