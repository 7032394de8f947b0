//! The command line: `appserver runfcgi key=value ...` and `appserver probe ADDRESS`.
//!
//! The same CLI serves the `appserver` binary (built-in apps, chosen with `app=`) and any
//! program that calls [`run`] with its own handler, so `myapp runfcgi method=threaded
//! socket=/run/myapp.sock` is to a Rust app what `manage.py runfcgi` was to Django. Exit codes:
//! 0 after a clean stop, 1 when serving failed, 2 for a bad command line.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::apps::cgi::Cgi;
use crate::apps::info::Info;
use crate::config::{App, Config, ConfigError, Method, Protocol};
use crate::driver::{self, Shared};
use crate::process::control::{self, TouchReload};
use crate::process::threaded::{self, Exit, ServeOptions};
use crate::process::{hooks, image, prefork};
use crate::request::{Gateway, RequestOptions};
use crate::{config, daemon, exposure, listen, probe, status, Handler};

#[derive(Debug, Parser)]
#[command(version, about = "A FastCGI, SCGI and AJP13 application server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the app: `runfcgi key=value ...` with Django's options; `runfcgi help` lists them.
    Runfcgi {
        /// Options as key=value pairs, or `help`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "KEY=VALUE"
        )]
        options: Vec<String>,
    },
    /// Send one request to a running server and print the response.
    Probe {
        /// host:port, [v6]:port, or a unix socket path.
        address: String,
        /// Path and query to request.
        #[arg(default_value = "/")]
        path: String,
        /// Protocol to speak.
        #[arg(long, default_value = "fcgi", value_parser = ["fcgi", "scgi", "ajp"])]
        protocol: String,
        /// Seconds to wait for the server.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Show a running server's status as a table (like uwsgitop).
    ///
    /// ADDRESS is its metrics= listener (HOST:PORT or a unix socket path), or with --path
    /// its gateway listener, asked for status_path= over --protocol.
    Status {
        /// metrics= address, or the server's own address with --path.
        address: String,
        /// Ask the gateway listener for this status_path= instead of the metrics listener.
        #[arg(long)]
        path: Option<String>,
        /// Protocol to speak with --path.
        #[arg(long, default_value = "fcgi", value_parser = ["fcgi", "scgi", "ajp"])]
        protocol: String,
        /// Refresh every this many seconds until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "SECONDS")]
        watch: Option<u64>,
        /// Print the JSON status instead of the table.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the server.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

/// Runs the CLI with `handler` as the app: the whole of `main` for a user's own binary.
///
/// `app=` is refused here (it picks the `appserver` binary's built-in apps); every other
/// `runfcgi` option works as documented in `docs/options.md`.
pub fn run<H: Handler>(handler: H) -> ExitCode {
    main_with(std::env::args_os(), Some(handler))
}

/// The `appserver` binary: built-in apps only.
#[doc(hidden)]
pub fn main_builtin() -> ExitCode {
    main_with::<Info>(std::env::args_os(), None)
}

fn main_with<H: Handler>(args: impl IntoIterator<Item = OsString>, user: Option<H>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Probe {
            address,
            path,
            timeout,
            protocol,
        } => run_probe(address, path, timeout, &protocol),
        Command::Runfcgi { options } => runfcgi(&options, user),
        Command::Status {
            address,
            path,
            protocol,
            watch,
            json,
            timeout,
        } => status::client::main(&status::client::Options {
            address,
            path,
            protocol,
            watch: watch.map(Duration::from_secs),
            json,
            timeout: Duration::from_secs(timeout),
        }),
    }
}

fn run_probe(address: String, path: String, timeout: u64, protocol: &str) -> ExitCode {
    let probe = probe::Probe {
        address,
        path,
        timeout: Duration::from_secs(timeout),
    };
    match probe.send(protocol) {
        Ok(resp) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&resp.stdout);
            let _ = std::io::stderr().write_all(&resp.stderr);
            if resp.status < 500 {
                ExitCode::SUCCESS
            } else {
                eprintln!("appserver probe: status {}", resp.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("appserver probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    eprintln!("Run `runfcgi help` for the list of options.");
    ExitCode::from(2)
}

/// Files a process needs besides its connections: the listener, logs, the runtime's own
/// descriptors, a CGI script's pipes.
const NOFILE_RESERVE: usize = 64;

fn runfcgi<H: Handler>(options: &[String], user: Option<H>) -> ExitCode {
    if options.len() == 1 && options[0] == "help" {
        print!("{}", config::help_text());
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok();
    let config = match config::Args::parse(options).and_then(|a| Config::from_args(a, &env)) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    if let Some(path) = &config.touch_reload {
        if let Err(message) = control::check_touch_reload(path) {
            return usage_error(&ConfigError::new("touch_reload", message));
        }
    }
    if user.is_some() && config.app_given() {
        return usage_error(&ConfigError::new(
            "app",
            "selects a built-in app of the appserver binary; this program serves its own app",
        ));
    }
    init_logging(config.debug);
    // At the first start only: a reload (re-execution) keeps the limit the running server
    // had, which an operator may have lowered on purpose (prlimit).
    if std::env::var_os(listen::REEXEC_FD_ENV).is_none() {
        match crate::sys::raise_nofile_limit() {
            Ok(limit) if (limit as usize) < config.maxconns + NOFILE_RESERVE => tracing::warn!(
                "the open-file limit is {limit}: fewer than maxconns={} connections fit; raise \
                 LimitNOFILE= (systemd) or ulimit -n",
                config.maxconns
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
        }
    }
    let result = match user {
        Some(handler) => serve(&config, handler),
        None => match config.app {
            App::Info => serve(&config, Info),
            App::Cgi => match Cgi::from_config(&config) {
                Ok(cgi) => serve(&config, cgi),
                Err(e) => return usage_error(&e),
            },
            #[cfg(feature = "wsgi")]
            App::Wsgi => {
                let wsgi = crate::apps::wsgi::Wsgi::from_config(&config);
                match hooks::install(Box::new(wsgi.hooks())) {
                    Ok(()) => serve(&config, wsgi),
                    Err(e) => Err(anyhow::anyhow!(e)),
                }
            }
            // Config::from_args refuses app=wsgi without the feature, naming it.
            #[cfg(not(feature = "wsgi"))]
            App::Wsgi => return usage_error(&ConfigError::new("app", "needs the feature wsgi")),
        },
    };
    match result {
        Ok(Exit::Graceful) => ExitCode::SUCCESS,
        Ok(Exit::Forced) => ExitCode::SUCCESS,
        Err(e) => match e.downcast::<ConfigError>() {
            // A setup refused once the listener was known (crate::exposure): a usage error.
            Ok(e) => usage_error(&e),
            Err(e) => {
                let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
                eprintln!("appserver: {}", chain.join(": "));
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPSERVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Binds, daemonizes if asked, writes the pidfile, and serves until stopped.
fn serve<H: Handler>(config: &Config, handler: H) -> anyhow::Result<Exit> {
    // Every app is observed: counted in the scoreboard, status_path=, accesslog=, slowlog=.
    let handler = status::Observed::new(
        handler,
        config.status_path.clone(),
        config.slowlog,
        config.protocol.name(),
    );
    // A reloading prefork master re-executed itself with the listener still open: take it
    // back instead of binding, and stay the daemon it already is.
    let reexec_fd = std::env::var(listen::REEXEC_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    std::env::remove_var(listen::REEXEC_FD_ENV);
    // What a reload re-executes, taken before daemonizing changes the directory that relative
    // paths are resolved from. A threaded server needs it only to reload itself.
    let image = image::Image::current().context("cannot find the executable")?;
    // Bind before forking or starting threads: errors reach the terminal, and the listener is
    // inherited by the daemon and the workers.
    let mut std_listener = match reexec_fd {
        Some(fd) => listen::take_reexec(config, fd).context("cannot take back the listener")?,
        None => listen::bind(config)
            .with_context(|| format!("cannot listen on {}", config.listen_description()))?,
    };
    let listen_desc = std_listener.description();
    exposure::refuse_unsafe(config, std_listener.local_addr(), &listen_desc)?;
    if reexec_fd.is_none() {
        let socket = std_listener.unix_socket_mode();
        let socket = socket.as_ref().map(|(path, mode)| (path.as_path(), *mode));
        let root = nix::unistd::geteuid().is_root();
        for warning in exposure::warnings(config, root, socket) {
            tracing::warn!("{warning}");
        }
    }
    // Before daemonizing, so that a metrics= address in use is reported on the terminal.
    status::init(config, &listen_desc).context("cannot set up metrics= or accesslog=")?;
    let ready_pipe = if config.daemonize && reexec_fd.is_none() {
        Some(daemon::daemonize(config, &listen_desc, &std_listener).context("cannot daemonize")?)
    } else {
        None
    };
    let pidfile = match &config.pidfile {
        Some(path) => Some(daemon::Pidfile::create(path)?),
        None => None,
    };
    daemon::drop_privileges(config, &mut std_listener).context("cannot switch to user=/group=")?;
    let notify = notifier(config);
    let mut ready_pipe = ready_pipe;
    let method = config.method;
    let mut announce = move || {
        match ready_pipe.take() {
            // The waiting parent prints the one line a daemon start shows.
            Some(pipe) => pipe.ready(),
            None => eprintln!(
                "appserver: ready: protocol={} method={} listen={} pid={}",
                config.protocol.name(),
                method.name(),
                listen_desc,
                std::process::id()
            ),
        }
        notify("READY=1");
    };

    let exit = match config.method {
        Method::Threaded => {
            // The app's start (app=wsgi: the interpreter, which must be the first thing on
            // this thread and must not be forked by daemonizing) comes before the runtime.
            hooks::serve_start().map_err(anyhow::Error::msg)?;
            // Before the runtime's threads exist: it reads and removes an environment
            // variable.
            let reload = threaded::Reload {
                watch: config.touch_reload.clone().map(TouchReload::new),
                max_requests: u64::from(config.maxrequests),
                image,
                listener: std_listener
                    .try_clone_unguarded()
                    .context("cannot keep a handle on the listener for reloads")?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(config.maxchildren.max(1))
                .thread_keep_alive(Duration::from_secs(10))
                .build()
                .context("cannot start the runtime")?;
            let exit = runtime.block_on(async {
                status::worker_started();
                status::spawn_tasks();
                status::watch_listen_queue(&std_listener);
                let listener = listen::Listener::from_std(std_listener)?;
                let shared = shared(config, handler, "threaded");
                threaded::serve(
                    listener,
                    shared,
                    serve_options(config, "threaded"),
                    Some(reload),
                    announce,
                )
                .await
            })?;
            // Handlers still running after a forced stop are dropped with the runtime.
            runtime.shutdown_timeout(Duration::from_millis(100));
            hooks::serve_stop();
            status::worker_exiting();
            exit
        }
        Method::Prefork => {
            // preload=true: the app is imported here, once, before any worker is forked.
            hooks::preload().map_err(anyhow::Error::msg)?;
            let master = prefork::Master::new(config, std_listener, image)
                .context("cannot start the prefork master")?;
            let mut handler = Some(handler);
            let mut worker = |listener, status, budget| {
                // Runs in a freshly forked child, which owns its copy of the handler.
                let Some(handler) = handler.take() else {
                    return 1;
                };
                prefork_worker(config, listener, handler, status, budget)
            };
            let notify = notifier(config);
            master
                .run(&mut worker, &mut announce, &*notify)
                .context("prefork master failed")?
        }
    };
    drop(pidfile);
    Ok(exit)
}

/// The body of a prefork worker process: its own current-thread runtime serving the shared
/// listener, reporting busy/idle to the master and retiring after `budget` requests.
fn prefork_worker<H: Handler>(
    config: &Config,
    listener: listen::StdListener,
    handler: H,
    status: prefork::StatusPipe,
    budget: u64,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(config.maxchildren.max(1))
        .on_thread_park(crate::sys::give_way)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "appserver: worker {}: cannot start the runtime: {e}",
                std::process::id()
            );
            return 1;
        }
    };
    // Lent to the thread an app runs a request on, when the app asks (process::lend).
    let runtime = Arc::new(runtime);
    let result = crate::process::lend::serve(&runtime, async {
        status::worker_started();
        status::spawn_tasks();
        let listener = listen::Listener::from_std(listener)?;
        let shared = shared(config, handler, "prefork");
        // Known to the accept loop and every connection (Load::spent), not just the watcher.
        shared.load.set_budget(budget);
        let mut options = serve_options(config, "prefork");
        // Only the master speaks to systemd.
        options.notify = Arc::new(|_: &str| {});
        let retire = options.retire.clone();
        let load = Arc::clone(&shared.load);
        let status = Arc::new(status);
        let watcher = {
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let mut busy = false;
                loop {
                    load.changed().await;
                    if load.spent() && !retire.is_cancelled() {
                        status.report(prefork::Report::Retiring);
                        crate::status::worker_stopping();
                        retire.cancel();
                    }
                    let now_busy = load.in_flight() > 0;
                    if now_busy != busy && !retire.is_cancelled() {
                        busy = now_busy;
                        status.report(if busy {
                            prefork::Report::Busy
                        } else {
                            prefork::Report::Idle
                        });
                    }
                }
            })
        };
        // Only the master watches touch_reload=.
        let exit = threaded::serve(listener, shared, options, None, || {
            status.report(prefork::Report::Idle);
        })
        .await;
        watcher.abort();
        exit
    });
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown_timeout(Duration::from_millis(100));
    }
    status::worker_exiting();
    match result {
        Ok(_) => 0,
        Err(e) => {
            crate::process::prefork::worker_failed(&e);
            1
        }
    }
}

/// What every connection of this process shares. A prefork worker runs `worker_requests=`
/// requests at once (one by default, as Django's prefork did: `maxchildren` counts its worker
/// processes); a threaded process runs `maxchildren` at once.
fn shared<H: Handler>(config: &Config, handler: H, method: &'static str) -> Arc<Shared<H>> {
    let requests = config.requests_per_process();
    Arc::new(Shared {
        handler,
        requests: Arc::new(Semaphore::new(requests)),
        max_requests: u32::try_from(requests).unwrap_or(u32::MAX),
        max_conns: u32::try_from(config.maxconns).unwrap_or(u32::MAX),
        options: RequestOptions {
            script_name: config.script_name.clone(),
        },
        gateway: Gateway {
            protocol: config.protocol.name(),
            method,
        },
        limits: config.limits(),
        protocol: match config.protocol {
            Protocol::Fcgi => driver::Protocol::Fcgi,
            Protocol::Scgi => driver::Protocol::Scgi,
            Protocol::Ajp => driver::Protocol::Ajp {
                secret: config.secret.clone().map(|s| s.into_bytes().into()),
                packet_size: config.packetsize,
                underscores_in_headers: config.underscores_in_headers,
            },
        },
        timeouts: config.timeouts,
        shutdown: Default::default(),
        load: Arc::default(),
    })
}

/// Sends `sd_notify` states when running under systemd; logs a failure, never fails.
fn notifier(config: &Config) -> Arc<dyn Fn(&str) + Send + Sync> {
    let config = config.clone();
    Arc::new(move |state: &str| {
        if let Err(e) = daemon::notify_systemd(&config, state) {
            tracing::warn!("cannot notify systemd ({state}): {e}");
        }
    })
}

fn serve_options(config: &Config, method: &'static str) -> ServeOptions {
    ServeOptions {
        max_conns: config.maxconns,
        allow: config.allow_list(),
        graceful_timeout: config.graceful_timeout,
        reopen_logs: {
            let config = config.clone();
            Arc::new(move || daemon::reopen_logs(&config).and_then(|()| status::reopen_logs()))
        },
        notify: notifier(config),
        retire: CancellationToken::new(),
        method,
    }
}
