//! The `runfcgi` options: one table ([`OPTIONS`]) drives parsing, `runfcgi help`
//! ([`help_text`]) and `docs/options.md` ([`options_markdown`]).
//!
//! Configuration is built in two stages (style rule 17):
//!
//! 1. [`Args::parse`] keeps the raw `key=value` pairs: known names only, each at most once, no
//!    syscalls and no interpretation of the values.
//! 2. [`Config::from_args`] validates and resolves them into typed values with Django's
//!    defaults. Environment variables (`FCGI_WEB_SERVER_ADDRS`, `NOTIFY_SOCKET`, `LISTEN_FDS`,
//!    `LISTEN_PID`) come through an injected lookup so tests never read the real environment;
//!    the only other thing it consults is the current directory, to make relative paths
//!    absolute before a daemon changes to `workdir=`.
//!
//! This module binds nothing, forks nothing and opens no files: that is [`crate::listen`] and
//! [`crate::daemon`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appserver_proto::limits::{MAX_MAX_PARAMS_BYTES, MIN_MAX_PARAMS_BYTES};
use appserver_proto::Limits;

use crate::driver::Timeouts;
use crate::listen::{AllowList, IpNet};

/// An invalid command line or environment: the option (or environment variable) at fault and
/// what is wrong with it.
///
/// Displays as `runfcgi: option "port": "x" is not a number between 0 and 65535`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("runfcgi: option \"{option}\": {message}")]
pub struct ConfigError {
    option: String,
    message: String,
}

impl ConfigError {
    /// An error about `option` (an option name, or an environment variable's name).
    pub fn new(option: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            option: option.into(),
            message: message.into(),
        }
    }

    /// The option (or environment variable) at fault.
    pub fn option(&self) -> &str {
        &self.option
    }

    /// What is wrong, without the option name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// What an option's value may be; drives parsing and the accepted-values part of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One of a fixed list of words.
    Choice(&'static [&'static str]),
    /// `true|false|yes|no|t|f`, case-insensitive, as Django's `daemonize`.
    Bool,
    /// A decimal number within `min..=max`.
    Number {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A permission mask in octal (`0002`, `022`, `0o027`), at most `0777`.
    Octal,
    /// A file system path; relative paths are taken from the directory appserver started in.
    Path,
    /// Free text, checked by the option's own rules.
    Text,
}

/// One `runfcgi` option: its name, accepted values, default and help.
#[derive(Clone, Copy, Debug)]
pub struct OptionDef {
    /// The name before `=`.
    pub name: &'static str,
    /// Placeholder shown in help for the value (`PORTNUM`, `FILE`, ...).
    pub metavar: &'static str,
    /// What the value may be.
    pub kind: Kind,
    /// The default, as text for help and docs.
    pub default: &'static str,
    /// One paragraph of help.
    pub help: &'static str,
}

/// Booleans as Django's `daemonize=` accepts them.
const BOOLS: &[&str] = &["true", "false", "yes", "no", "t", "f"];

/// Largest `maxchildren=`/`maxspare=`/`minspare=`: requests in flight (threaded) or worker
/// processes (prefork). Ten thousand is beyond any single machine's sensible worker count.
const MAX_CHILDREN: u64 = 10_000;

/// Largest `maxconns=`: connections are file descriptors, and no machine allows more than a
/// million per process by default.
const MAX_CONNS: u64 = 1_000_000;

/// Largest `socket=` path in bytes: `sun_path` holds 108 bytes including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Every `runfcgi` option, in the order help and docs list them: Django's first, then ours.
pub static OPTIONS: &[OptionDef] = &[
    OptionDef {
        name: "protocol",
        metavar: "PROTOCOL",
        kind: Kind::Choice(&["fcgi", "scgi", "ajp"]),
        default: "fcgi",
        help: "Gateway protocol the web server speaks: FastCGI, SCGI or AJP13.",
    },
    OptionDef {
        name: "host",
        metavar: "HOSTNAME",
        kind: Kind::Text,
        default: "",
        help: "Host name or IP address (IPv4 or IPv6) to listen on; needs port=.",
    },
    OptionDef {
        name: "port",
        metavar: "PORTNUM",
        kind: Kind::Number { min: 0, max: 65535 },
        default: "",
        help: "TCP port to listen on; needs host=. port=0 picks a free port, shown in the \
               ready line.",
    },
    OptionDef {
        name: "socket",
        metavar: "FILE",
        kind: Kind::Path,
        default: "",
        help: "Unix socket to listen on (instead of host/port). A stale socket file is \
               replaced after checking that nothing listens on it. Its mode is 0660 minus \
               the process umask, or 0777 minus umask= when that is given.",
    },
    OptionDef {
        name: "method",
        metavar: "IMPL",
        kind: Kind::Choice(&["prefork", "fork", "threaded", "thread"]),
        default: "prefork",
        help: "Process model: prefork (or fork) keeps a pool of single-threaded worker \
               processes (minspare..maxspare idle, at most maxchildren); threaded (or thread) \
               serves from one multi-threaded process.",
    },
    OptionDef {
        name: "maxrequests",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 0,
            max: u32::MAX as u64,
        },
        default: "0",
        help: "Requests a worker process serves before it is replaced, plus up to an \
               eighth more so workers do not recycle together (0 = no limit). With \
               method=threaded the process re-executes itself gracefully after that many, \
               as on SIGHUP.",
    },
    OptionDef {
        name: "maxspare",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 1,
            max: MAX_CHILDREN,
        },
        default: "5",
        help: "Most idle worker processes (prefork) or threads (threaded) kept around.",
    },
    OptionDef {
        name: "minspare",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 0,
            max: MAX_CHILDREN,
        },
        default: "2",
        help: "Fewest idle worker processes (prefork) or threads (threaded) kept ready.",
    },
    OptionDef {
        name: "maxchildren",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 1,
            max: MAX_CHILDREN,
        },
        default: "50",
        help: "Hard limit on worker processes (prefork) or requests in flight (threaded). \
               Beyond it FastCGI answers FCGI_OVERLOADED and SCGI/AJP a 503.",
    },
    OptionDef {
        name: "daemonize",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "true with host/port or socket, else false",
        help: "Detach from the terminal and run in the background. Under systemd \
               (NOTIFY_SOCKET or LISTEN_FDS set) the default is false.",
    },
    OptionDef {
        name: "pidfile",
        metavar: "FILE",
        kind: Kind::Path,
        default: "",
        help: "Write the server's process id to this file once listening; removed on exit. \
               A pidfile naming a live process refuses the start; a stale one is replaced.",
    },
    OptionDef {
        name: "workdir",
        metavar: "DIRECTORY",
        kind: Kind::Path,
        default: "/",
        help: "Directory to change to when daemonizing.",
    },
    OptionDef {
        name: "debug",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "false",
        help: "Log at debug level (APPSERVER_LOG overrides).",
    },
    OptionDef {
        name: "outlog",
        metavar: "FILE",
        kind: Kind::Path,
        default: "/dev/null",
        help: "When daemonizing, append standard output to this file.",
    },
    OptionDef {
        name: "errlog",
        metavar: "FILE",
        kind: Kind::Path,
        default: "/dev/null",
        help: "When daemonizing, append standard error (the log) to this file.",
    },
    OptionDef {
        name: "umask",
        metavar: "UMASK",
        kind: Kind::Octal,
        default: "022 when daemonizing",
        help: "Umask in octal. The daemon's process umask (Django's default 022 applies \
               when daemonizing without umask=) and, when given, the unix socket's mode: \
               0777 minus umask, so umask=0002 lets the web server's group connect.",
    },
    OptionDef {
        name: "app",
        metavar: "APP",
        kind: Kind::Choice(&["info", "cgi", "wsgi"]),
        default: "info",
        help: "Built-in app of the appserver binary: info shows the request's CGI \
               variables; cgi runs CGI scripts (see docs/cgi.md); wsgi serves a Python \
               WSGI app such as Django's in an embedded interpreter (cargo feature wsgi, \
               see docs/wsgi.md).",
    },
    OptionDef {
        name: "module",
        metavar: "MODULE[:CALLABLE]",
        kind: Kind::Text,
        default: "",
        help: "app=wsgi (required): the Python module holding the WSGI app and the name of \
               the callable in it, application by default: mysite.wsgi serves Django's \
               mysite/wsgi.py.",
    },
    OptionDef {
        name: "pythonpath",
        metavar: "DIRS",
        kind: Kind::Text,
        default: "the directory appserver started in",
        help: "app=wsgi: colon-separated directories put first on sys.path, before \
               PYTHONPATH from the environment; relative ones are taken from the directory \
               appserver started in.",
    },
    OptionDef {
        name: "virtualenv",
        metavar: "DIRECTORY",
        kind: Kind::Path,
        default: "none",
        help: "app=wsgi: a virtualenv whose bin/python the embedded interpreter acts as: \
               its prefix and site-packages. It must have been made from the Python \
               appserver was built against.",
    },
    OptionDef {
        name: "preload",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "false",
        help: "app=wsgi with method=prefork: import the app once in the master before \
               forking (workers share its memory and start at once) instead of in each \
               worker after the fork. Refused when the import starts threads.",
    },
    OptionDef {
        name: "script",
        metavar: "FILE",
        kind: Kind::Path,
        default: "",
        help: "app=cgi: run this CGI script for every request, whatever SCRIPT_FILENAME \
               says.",
    },
    OptionDef {
        name: "docroot",
        metavar: "DIRECTORY",
        kind: Kind::Path,
        default: "",
        help: "app=cgi: scripts must resolve inside this directory, symlinks followed \
               (outside: 403). Without SCRIPT_FILENAME from the web server, the script is \
               the first file along SCRIPT_NAME and PATH_INFO under it.",
    },
    OptionDef {
        name: "cgi_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 86400 },
        default: "60",
        help: "app=cgi: seconds a script may run. Then its process group gets SIGTERM, \
               SIGKILL 2 s later, and the client a 504 if no header was sent yet.",
    },
    OptionDef {
        name: "cgi_env",
        metavar: "NAMES",
        kind: Kind::Text,
        default: "PATH",
        help: "app=cgi: comma-separated names of appserver's own environment variables \
               passed on to scripts besides the CGI variables; may be empty. HTTP_PROXY is \
               never passed.",
    },
    OptionDef {
        name: "cgi_vars",
        metavar: "NAMES",
        kind: Kind::Text,
        default: "none",
        help: "app=cgi: comma-separated request variables passed to scripts besides the \
               allowlist (RFC 3875 names, HTTP_*, SSL_*, what web servers send: see \
               docs/cgi.md), such as one set with fastcgi_param or SetEnv. LD_*, BASH_ENV \
               and the like are refused.",
    },
    OptionDef {
        name: "cgi_background",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "false",
        help: "app=cgi: leave processes a script started in its process group running when \
               the script exits. By default they get SIGTERM, then SIGKILL 2 s later. A \
               timeout or an aborted request stops the group either way.",
    },
    OptionDef {
        name: "cgi_unconfined",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "false",
        help: "app=cgi: accept serving without docroot= or script= on a listener that is \
               not loopback. Then any peer that can connect runs any program it names in \
               SCRIPT_FILENAME; without this option appserver refuses to start (see \
               docs/security.md).",
    },
    OptionDef {
        name: "script_name",
        metavar: "PREFIX",
        kind: Kind::Text,
        default: "from the request",
        help: "Force SCRIPT_NAME to this prefix (Django's FORCE_SCRIPT_NAME); may be empty. \
               Otherwise it comes from SCRIPT_URL or REDIRECT_URL minus PATH_INFO, else \
               SCRIPT_NAME.",
    },
    OptionDef {
        name: "allow",
        metavar: "ADDRS",
        kind: Kind::Text,
        default: "anyone who can connect",
        help: "Comma-separated IP addresses or CIDR networks (IPv4 or IPv6) allowed to \
               connect, merged with FCGI_WEB_SERVER_ADDRS from the environment. When a list \
               is set, unix socket peers are refused, as libfcgi does.",
    },
    OptionDef {
        name: "user",
        metavar: "USER",
        kind: Kind::Text,
        default: "unchanged",
        help: "Once the listener is bound and the pidfile written, switch to this user (a \
               name or a numeric uid) and its groups; needs root. A unix socket appserver \
               creates is handed to this user and group=.",
    },
    OptionDef {
        name: "group",
        metavar: "GROUP",
        kind: Kind::Text,
        default: "primary group of user=, else unchanged",
        help: "Switch to this group (a name or a numeric gid) along with user=; needs root. \
               It owns the unix socket: with umask=0007 (mode 0770) the web server's group \
               can connect.",
    },
    OptionDef {
        name: "secret",
        metavar: "TEXT",
        kind: Kind::Text,
        default: "none",
        help: "protocol=ajp: the shared secret Apache sends (ProxyPass ... secret=TEXT). \
               Requests without it or with another one get 403 (constant-time compare). \
               Required when host= is not a loopback address.",
    },
    OptionDef {
        name: "underscores_in_headers",
        metavar: "BOOL",
        kind: Kind::Bool,
        default: "false",
        help: "protocol=ajp: keep request headers whose names contain an underscore. By \
               default they are dropped, as nginx and Apache's CGI mapping do: X_User and \
               X-User would both become HTTP_X_USER, so a client could forge a header the \
               app trusts.",
    },
    OptionDef {
        name: "packetsize",
        metavar: "BYTES",
        kind: Kind::Number {
            min: 8192,
            max: 65536,
        },
        default: "8192",
        help: "protocol=ajp: the AJP packet size; must equal the web server's \
               (ProxyIOBufferSize, mod_jk max_packet_size).",
    },
    OptionDef {
        name: "backlog",
        metavar: "NUMBER",
        kind: Kind::Number { min: 1, max: 65535 },
        default: "1024",
        help: "Listen backlog (the kernel caps it at net.core.somaxconn). nginx connects to \
               unix sockets without waiting: a full backlog is an immediate 502.",
    },
    OptionDef {
        name: "maxconns",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 1,
            max: MAX_CONNS,
        },
        default: "1024",
        help: "Connections served at once; more wait in the listen backlog.",
    },
    OptionDef {
        name: "worker_requests",
        metavar: "NUMBER",
        kind: Kind::Number {
            min: 1,
            max: MAX_CHILDREN,
        },
        default: "1",
        help: "Requests one prefork worker runs at once. 1, as Django's prefork: maxchildren \
               is then also the most requests the server runs. More lets each worker \
               interleave that many (long downloads, an async app's slow calls; app=wsgi \
               runs that many Python threads per worker, as gunicorn's --threads). A \
               worker counts as idle only while it runs none. method=prefork only.",
    },
    OptionDef {
        name: "maxparams",
        metavar: "BYTES",
        kind: Kind::Number {
            min: MIN_MAX_PARAMS_BYTES as u64,
            max: MAX_MAX_PARAMS_BYTES as u64,
        },
        default: "65536",
        help: "Most bytes of CGI parameters in one request. 64 KiB covers nginx, lighttpd \
               and mod_fcgid; raise it behind Apache with very large headers.",
    },
    OptionDef {
        name: "header_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 3600 },
        default: "20",
        help: "Seconds a new connection may take to deliver a complete request head (from \
               accept, so a connection that sends nothing is closed too), and a kept-alive \
               one from the first byte of its next request. mod_reqtimeout's header=20.",
    },
    OptionDef {
        name: "body_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 86400 },
        default: "20",
        help: "Seconds a request body may pause between bytes, and the base of its \
               minimum-rate deadline (see body_min_rate). Time the application spends not \
               reading the body does not count. mod_reqtimeout's body=20.",
    },
    OptionDef {
        name: "body_min_rate",
        metavar: "BYTES",
        kind: Kind::Number {
            min: 0,
            max: 1 << 30,
        },
        default: "500",
        help: "Bytes per second a request body must average: every BYTES received extend \
               its body_timeout by one second, so a body trickled a few bytes at a time \
               frees its slot after about body_timeout. 0: only the pause counts. \
               mod_reqtimeout's MinRate=500.",
    },
    OptionDef {
        name: "send_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 86400 },
        default: "60",
        help: "Seconds output owed to the web server may wait without a byte being taken, \
               and the base of its minimum-rate deadline (see send_min_rate); a web server \
               that stops reading is cut off after this. nginx's send_timeout.",
    },
    OptionDef {
        name: "send_min_rate",
        metavar: "BYTES",
        kind: Kind::Number {
            min: 0,
            max: 1 << 30,
        },
        default: "500",
        help: "Bytes per second the web server must take, on average, while output is \
               owed: every BYTES taken extend send_timeout by one second. 0: only the \
               pause counts.",
    },
    OptionDef {
        name: "idle_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 86400 },
        default: "60",
        help: "Seconds a kept-alive connection may wait for its next request.",
    },
    OptionDef {
        name: "request_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 0, max: 86400 },
        default: "0",
        help: "Seconds a handler may run before it is cancelled: the web server gets a 504 \
               when no response head was sent yet, else the connection is cut so the \
               response is not passed off as complete; the log names the request. 0: \
               unbounded (app=cgi scripts are bounded by cgi_timeout).",
    },
    OptionDef {
        name: "queue_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 0, max: 3600 },
        default: "30",
        help: "Seconds a request that arrives while a process runs all the requests it \
               may (maxchildren threaded, worker_requests per prefork worker) waits for one \
               to end before it is refused (FCGI_OVERLOADED, or 503 for scgi and ajp). 0: \
               refuse at once.",
    },
    OptionDef {
        name: "graceful_timeout",
        metavar: "SECONDS",
        kind: Kind::Number { min: 0, max: 86400 },
        default: "30",
        help: "Seconds a graceful stop (SIGTERM, SIGINT), or a method=threaded reload \
               (touch_reload=), waits for requests in flight.",
    },
    OptionDef {
        name: "touch_reload",
        metavar: "FILE",
        kind: Kind::Path,
        default: "",
        help: "Reload gracefully, as SIGHUP does for prefork, when this file is touched, \
               replaced, created or removed (checked once a second); method=threaded \
               re-executes itself once its requests are answered. For servers that cannot be \
               signalled: mod_fcgid does not restart a server when its script is touched, \
               touch_reload=\"$0\" in the script makes it.",
    },
    OptionDef {
        name: "status_path",
        metavar: "PATH",
        kind: Kind::Text,
        default: "off",
        help: "Answer requests for this path with the server's status (as php-fpm's \
               pm.status_path): text, ?json, ?openmetrics, ?full for every worker. The \
               web server decides who may reach it (see docs/operations.md).",
    },
    OptionDef {
        name: "metrics",
        metavar: "ADDRESS",
        kind: Kind::Text,
        default: "off",
        help: "Serve GET /metrics (Prometheus, OpenMetrics) and GET /status (JSON) over \
               HTTP on this loopback HOST:PORT or unix socket PATH, for a scrape that does \
               not go through the web server.",
    },
    OptionDef {
        name: "accesslog",
        metavar: "FILE",
        kind: Kind::Path,
        default: "off",
        help: "Append one line per request to this file (- for standard error): combined \
               log format plus duration, worker pid and protocol. Buffered (written every \
               64 KiB or 1 s); reopened on SIGUSR1.",
    },
    OptionDef {
        name: "accesslog_format",
        metavar: "FORMAT",
        kind: Kind::Choice(&["combined", "json"]),
        default: "combined",
        help: "accesslog=: combined (Apache/nginx, then duration, pid, protocol) or json \
               (one object per line).",
    },
    OptionDef {
        name: "slowlog",
        metavar: "SECONDS",
        kind: Kind::Number { min: 1, max: 86400 },
        default: "off",
        help: "Log a request still running after this many seconds, once, to the error log: \
               method, URI, worker pid, elapsed time, and for app=cgi the script and its pid.",
    },
];

/// The definition of option `name`, if it is one.
pub fn option(name: &str) -> Option<&'static OptionDef> {
    OPTIONS.iter().find(|o| o.name == name)
}

/// Stage one: the raw `key=value` pairs of a `runfcgi` command line.
///
/// Keys are matched case-insensitively against [`OPTIONS`], as Django lowercases them; values
/// are kept as given. Makes no syscalls.
#[derive(Clone, Debug, Default)]
pub struct Args {
    pairs: Vec<(&'static OptionDef, String)>,
}

impl Args {
    /// Parses `key=value` items; unknown names, items without `=` and repeated names are
    /// errors.
    pub fn parse(items: &[String]) -> Result<Self, ConfigError> {
        let mut pairs: Vec<(&'static OptionDef, String)> = Vec::with_capacity(items.len());
        for item in items {
            let Some((key, value)) = item.split_once('=') else {
                let message = if item == "help" {
                    "must be the only option: runfcgi help"
                } else {
                    "expected key=value"
                };
                return Err(ConfigError::new(item.as_str(), message));
            };
            let key = key.to_ascii_lowercase();
            let Some(def) = option(&key) else {
                return Err(ConfigError::new(key, "not a runfcgi option"));
            };
            if let Some((_, first)) = pairs.iter().find(|(d, _)| d.name == def.name) {
                return Err(ConfigError::new(
                    def.name,
                    format!("given twice ({first:?} and {value:?})"),
                ));
            }
            pairs.push((def, value.to_owned()));
        }
        Ok(Self { pairs })
    }

    /// The raw value of option `name`, when given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(d, _)| d.name == name)
            .map(|(_, v)| v.as_str())
    }

    /// The given options in command-line order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.pairs.iter().map(|(d, v)| (d.name, v.as_str()))
    }
}

/// `protocol=`: the gateway protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// FastCGI 1.0 (`fcgi`).
    Fcgi,
    /// SCGI (`scgi`).
    Scgi,
    /// AJP13 (`ajp`).
    Ajp,
}

impl Protocol {
    /// The option value naming this protocol.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fcgi => "fcgi",
            Self::Scgi => "scgi",
            Self::Ajp => "ajp",
        }
    }
}

/// `method=`: the process model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `prefork` or `fork`: a master and a pool of worker processes.
    Prefork,
    /// `threaded` or `thread`: one multi-threaded process.
    Threaded,
}

impl Method {
    /// The canonical option value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prefork => "prefork",
            Self::Threaded => "threaded",
        }
    }
}

/// `app=`: the `appserver` binary's built-in app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `info`: shows protocol, process model and the request's CGI variables.
    Info,
    /// `cgi`: a CGI/1.1 gateway.
    Cgi,
    /// `wsgi`: a Python WSGI app in an embedded interpreter (cargo feature `wsgi`).
    Wsgi,
}

impl App {
    /// The option value naming this app.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Cgi => "cgi",
            Self::Wsgi => "wsgi",
        }
    }
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `host=` and `port=`: a TCP socket; the host is resolved when binding.
    Tcp {
        /// Host name or IP address, without IPv6 brackets.
        host: String,
        /// Port; 0 picks a free one.
        port: u16,
    },
    /// `socket=`: a unix socket at this absolute path.
    Unix(PathBuf),
    /// Neither: the listening socket handed over by the web server on fd 0, or by systemd.
    Inherited(Inherited),
}

/// Which inherited listening socket to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inherited {
    /// fd 0 (`FCGI_LISTENSOCK_FILENO`): mod_fcgid, lighttpd `bin-path`, spawn-fcgi.
    Fd0,
    /// systemd socket activation: `LISTEN_FDS` sockets from fd 3, meant for `LISTEN_PID`. When
    /// the pid is not ours (the variables leaked from a parent), fd 0 is used instead.
    Systemd {
        /// `LISTEN_FDS`: how many sockets were passed.
        fds: u32,
        /// `LISTEN_PID`: the process they were passed to.
        pid: Option<u32>,
    },
}

/// Where `metrics=` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A loopback `HOST:PORT` (as given, for binding).
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `accesslog_format=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// The combined log format, then duration, worker pid and protocol.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// Stage two: the validated, resolved configuration of `runfcgi`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// `protocol=`; default [`Protocol::Fcgi`].
    pub protocol: Protocol,
    /// `host=`/`port=` or `socket=`; default (neither given) [`Listen::Inherited`].
    pub listen: Listen,
    /// `method=`; default [`Method::Prefork`], as Django.
    pub method: Method,
    /// `maxrequests=`; default 0 (no limit).
    pub maxrequests: u32,
    /// `maxspare=`; default 5 (lowered to `maxchildren` when only that is given).
    pub maxspare: usize,
    /// `minspare=`; default 2 (lowered to `maxspare` when only that is given).
    pub minspare: usize,
    /// `maxchildren=`; default 50.
    pub maxchildren: usize,
    /// `daemonize=`; default true when host/port or socket is given, false otherwise and
    /// false under systemd (`NOTIFY_SOCKET` or `LISTEN_FDS` set).
    pub daemonize: bool,
    /// `pidfile=`, absolute; default none.
    pub pidfile: Option<PathBuf>,
    /// `workdir=`, absolute, applied when daemonizing; default `/`.
    pub workdir: PathBuf,
    /// `debug=`; default false.
    pub debug: bool,
    /// `outlog=`, absolute, applied when daemonizing; default none (`/dev/null`).
    pub outlog: Option<PathBuf>,
    /// `errlog=`, absolute, applied when daemonizing; default none (`/dev/null`).
    pub errlog: Option<PathBuf>,
    /// `umask=`, at most `0o777`; default none (a daemon then uses `0o022`, the unix socket
    /// `0o660` minus the process umask).
    pub umask: Option<u32>,
    /// `app=`; default [`App::Info`].
    pub app: App,
    /// `script_name=`, the forced `SCRIPT_NAME`; default none (taken from each request).
    pub script_name: Option<String>,
    /// `script=` (app=cgi), absolute: the one script every request runs; default none.
    pub script: Option<PathBuf>,
    /// `docroot=` (app=cgi), absolute: where scripts must resolve; default none.
    pub docroot: Option<PathBuf>,
    /// `cgi_timeout=` (app=cgi): how long a script may run; default 60 s.
    pub cgi_timeout: Duration,
    /// `cgi_env=` (app=cgi): names of environment variables passed on to scripts; default
    /// `["PATH"]`.
    pub cgi_env: Vec<String>,
    /// `cgi_vars=` (app=cgi): request variables passed besides the allowlist; default none.
    pub cgi_vars: Vec<String>,
    /// `cgi_background=` (app=cgi): leave a script's group running after it exits; default
    /// false.
    pub cgi_background: bool,
    /// `cgi_unconfined=` (app=cgi): serve without `docroot=`/`script=` on a non-loopback
    /// listener; default false (refused).
    pub cgi_unconfined: bool,
    /// `module=`, `pythonpath=`, `virtualenv=`, `preload=` (app=wsgi); default
    /// [`WsgiOptions::default`].
    pub wsgi: WsgiOptions,
    /// `allow=` merged with `FCGI_WEB_SERVER_ADDRS`; default empty (anyone may connect).
    pub allow: AllowList,
    /// `user=`, a name or a numeric uid, resolved when switching; default none (unchanged).
    pub user: Option<String>,
    /// `group=`, a name or a numeric gid, resolved when switching; default none (the primary
    /// group of `user=`, or unchanged).
    pub group: Option<String>,
    /// `secret=` (AJP); default none.
    pub secret: Option<String>,
    /// `underscores_in_headers=` (AJP): keep header names with `_`; default false.
    pub underscores_in_headers: bool,
    /// `packetsize=` (AJP); default 8192.
    pub packetsize: usize,
    /// `backlog=`; default 1024.
    pub backlog: u32,
    /// `maxconns=`; default 1024.
    pub maxconns: usize,
    /// `worker_requests=` (prefork): requests one worker runs at once; default 1.
    pub worker_requests: usize,
    /// `maxparams=` in bytes; default
    /// [`DEFAULT_MAX_PARAMS_BYTES`](appserver_proto::limits::DEFAULT_MAX_PARAMS_BYTES) (64 KiB).
    pub maxparams: usize,
    /// `header_timeout=`, `body_timeout=`, `body_min_rate=`, `send_timeout=`,
    /// `send_min_rate=`, `idle_timeout=`, `request_timeout=`, `queue_timeout=`; defaults in
    /// [`Timeouts::default`].
    pub timeouts: Timeouts,
    /// `graceful_timeout=`; default 30 s.
    pub graceful_timeout: Duration,
    /// `touch_reload=`, absolute: the file whose changes reload the server; default none.
    pub touch_reload: Option<PathBuf>,
    /// `status_path=`: the path answered with the status page; default none.
    pub status_path: Option<String>,
    /// `metrics=`: where the metrics listener listens; default none.
    pub metrics: Option<MetricsAddr>,
    /// `accesslog=`, absolute, or `-` for standard error; default none.
    pub accesslog: Option<PathBuf>,
    /// `accesslog_format=`; default [`AccessLogFormat::Combined`].
    pub accesslog_format: AccessLogFormat,
    /// `slowlog=`: how long a request runs before it is logged as slow; default none.
    pub slowlog: Option<Duration>,
    /// `NOTIFY_SOCKET` from the environment, where systemd wants readiness reported; default
    /// none.
    pub notify_socket: Option<String>,
    /// The options given on the command line, as given.
    given: Vec<(&'static str, String)>,
}

impl Default for Config {
    /// The configuration of `runfcgi` with no options and an empty environment.
    fn default() -> Self {
        match Self::from_args(Args::default(), &|_| None) {
            Ok(config) => config,
            // The defaults are constants that `defaults` in the tests checks.
            Err(e) => unreachable!("defaults are valid: {e}"),
        }
    }
}

impl Config {
    /// Validates and resolves `args`; `env` looks up environment variables.
    pub fn from_args(
        args: Args,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let given: Vec<(&'static str, String)> =
            args.iter().map(|(n, v)| (n, v.to_owned())).collect();
        let protocol = match choice(&args, "protocol")? {
            "scgi" => Protocol::Scgi,
            "ajp" => Protocol::Ajp,
            _ => Protocol::Fcgi,
        };
        let listen = resolve_listen(&args, env)?;
        let method = match choice(&args, "method")? {
            "threaded" | "thread" => Method::Threaded,
            _ => Method::Prefork,
        };
        let maxrequests = number_u32(&args, "maxrequests")?;
        let maxchildren = number_usize(&args, "maxchildren")?;
        let mut maxspare = number_usize(&args, "maxspare")?;
        let mut minspare = number_usize(&args, "minspare")?;
        ordered(
            &args,
            ("maxspare", &mut maxspare),
            ("maxchildren", maxchildren),
        )?;
        ordered(&args, ("minspare", &mut minspare), ("maxspare", maxspare))?;
        let worker_requests = number_usize(&args, "worker_requests")?;
        if method == Method::Threaded && args.get("worker_requests").is_some() {
            return Err(ConfigError::new(
                "worker_requests",
                "is an option of method=prefork; a method=threaded process runs \
                 maxchildren= requests at once",
            ));
        }

        let systemd = env("NOTIFY_SOCKET").is_some() || env("LISTEN_FDS").is_some();
        let daemonize = match args.get("daemonize") {
            Some(_) => boolean(&args, "daemonize")?,
            None => !matches!(listen, Listen::Inherited(_)) && !systemd,
        };
        let umask = match args.get("umask") {
            Some(v) => Some(octal("umask", v)?),
            None => None,
        };
        let app = match choice(&args, "app")? {
            "cgi" => App::Cgi,
            "wsgi" => App::Wsgi,
            _ => App::Info,
        };
        if app == App::Wsgi && !cfg!(feature = "wsgi") {
            return Err(ConfigError::new(
                "app",
                "app=wsgi needs appserver built with the cargo feature wsgi \
                 (cargo build --release --features wsgi; see docs/wsgi.md)",
            ));
        }
        let script_name = match args.get("script_name") {
            Some(v) => Some(script_name(v)?),
            None => None,
        };
        for (owner, names) in [(App::Cgi, &CGI_OPTIONS[..]), (App::Wsgi, &WSGI_OPTIONS)] {
            for &name in names {
                if app != owner && args.get(name).is_some() {
                    return Err(ConfigError::new(
                        name,
                        format!(
                            "is an option of app={}; app={} does not use it",
                            owner.name(),
                            app.name()
                        ),
                    ));
                }
            }
        }
        let wsgi = wsgi_options(&args, app, method)?;
        let cgi_env = cgi_env(raw(&args, "cgi_env"))?;
        let mut allow = AllowList::default();
        if let Some(v) = args.get("allow") {
            add_nets(&mut allow, "allow", "", v)?;
        }
        if let Some(v) = env("FCGI_WEB_SERVER_ADDRS") {
            add_nets(&mut allow, "FCGI_WEB_SERVER_ADDRS", " (environment)", &v)?;
        }
        let user = account(&args, "user")?;
        let group = account(&args, "group")?;
        let secret = args.get("secret").map(str::to_owned);
        for name in ["secret", "packetsize", "underscores_in_headers"] {
            if protocol != Protocol::Ajp && args.get(name).is_some() {
                return Err(ConfigError::new(
                    name,
                    format!(
                        "is an option of protocol=ajp; protocol={} does not use it",
                        protocol.name()
                    ),
                ));
            }
        }
        if let (Protocol::Ajp, None, Listen::Tcp { host, .. }) = (protocol, &secret, &listen) {
            if !is_loopback_host(host) {
                return Err(ConfigError::new(
                    "secret",
                    format!(
                        "protocol=ajp on host={host} needs secret=: AJP does not authenticate \
                         its peer, so anyone who can reach the port could forge requests \
                         (Ghostcat, CVE-2020-1938); bind to 127.0.0.1 or set the secret \
                         Apache sends"
                    ),
                ));
            }
        }
        Ok(Self {
            protocol,
            listen,
            method,
            maxrequests,
            maxspare,
            minspare,
            maxchildren,
            daemonize,
            pidfile: optional_path(&args, "pidfile")?,
            workdir: path("workdir", raw(&args, "workdir"))?,
            debug: boolean(&args, "debug")?,
            outlog: optional_path(&args, "outlog")?,
            errlog: optional_path(&args, "errlog")?,
            umask,
            app,
            script_name,
            script: optional_path(&args, "script")?,
            docroot: optional_path(&args, "docroot")?,
            cgi_timeout: Duration::from_secs(number(&args, "cgi_timeout")?),
            cgi_env,
            cgi_vars: names("cgi_vars", args.get("cgi_vars").unwrap_or_default())?,
            cgi_background: boolean(&args, "cgi_background")?,
            cgi_unconfined: boolean(&args, "cgi_unconfined")?,
            wsgi,
            allow,
            user,
            group,
            secret,
            underscores_in_headers: boolean(&args, "underscores_in_headers")?,
            packetsize: number_usize(&args, "packetsize")?,
            backlog: number_u32(&args, "backlog")?,
            maxconns: number_usize(&args, "maxconns")?,
            worker_requests,
            maxparams: number_usize(&args, "maxparams")?,
            timeouts: Timeouts {
                header: Duration::from_secs(number(&args, "header_timeout")?),
                body: Duration::from_secs(number(&args, "body_timeout")?),
                body_min_rate: number(&args, "body_min_rate")?,
                send: Duration::from_secs(number(&args, "send_timeout")?),
                send_min_rate: number(&args, "send_min_rate")?,
                idle: Duration::from_secs(number(&args, "idle_timeout")?),
                request: Some(Duration::from_secs(number(&args, "request_timeout")?))
                    .filter(|d| !d.is_zero()),
                queue: Duration::from_secs(number(&args, "queue_timeout")?),
            },
            graceful_timeout: Duration::from_secs(number(&args, "graceful_timeout")?),
            touch_reload: optional_path(&args, "touch_reload")?,
            status_path: args.get("status_path").map(status_path).transpose()?,
            metrics: args.get("metrics").map(metrics_addr).transpose()?,
            accesslog: match args.get("accesslog") {
                Some("-") => Some(PathBuf::from("-")),
                Some(v) => Some(path("accesslog", v)?),
                None => None,
            },
            accesslog_format: match choice(&args, "accesslog_format")? {
                "json" => AccessLogFormat::Json,
                _ => AccessLogFormat::Combined,
            },
            slowlog: match args.get("slowlog") {
                Some(_) => Some(Duration::from_secs(number(&args, "slowlog")?)),
                None => None,
            },
            notify_socket: env("NOTIFY_SOCKET"),
            given,
        })
    }

    /// Whether `app=` was given (a user's own program refuses it).
    pub fn app_given(&self) -> bool {
        self.is_given("app")
    }

    /// Whether option `name` was given on the command line (rather than defaulted).
    pub fn is_given(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| *n == name)
    }

    /// Where the server will listen, as the ready line shows it: `127.0.0.1:3033`,
    /// `[::1]:3033`, `unix:/path`, `fd0` (or `fd3` under systemd socket activation).
    ///
    /// Before binding, `port=0` shows as `:0`; [`crate::listen::StdListener::description`]
    /// has the real port.
    pub fn listen_description(&self) -> String {
        match &self.listen {
            Listen::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Listen::Tcp { host, port } => format!("{host}:{port}"),
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Inherited(Inherited::Fd0) => "fd0".to_owned(),
            Listen::Inherited(Inherited::Systemd { .. }) => "fd3".to_owned(),
        }
    }

    /// Requests one serving process runs at once: `maxchildren=` for a threaded process,
    /// `worker_requests=` (1 by default) for each prefork worker. Its request slots and, for
    /// app=wsgi, its Python threads.
    pub fn requests_per_process(&self) -> usize {
        match self.method {
            Method::Threaded => self.maxchildren,
            Method::Prefork => self.worker_requests,
        }
    }

    /// The codec limits: `maxparams=` over the protocol defaults.
    pub fn limits(&self) -> Limits {
        // `maxparams` was checked against the same floor and ceiling `Limits` asserts.
        Limits::default().with_max_params_bytes(self.maxparams)
    }

    /// Who may connect (`allow=` plus `FCGI_WEB_SERVER_ADDRS`).
    pub fn allow_list(&self) -> AllowList {
        self.allow.clone()
    }

    /// The process umask a daemon runs with: `umask=`, else Django's `0o022`.
    pub fn daemon_umask(&self) -> u32 {
        self.umask.unwrap_or(0o022)
    }

    /// The raw value option `name` was given with, if it was.
    pub fn given_value(&self, name: &str) -> Option<&str> {
        self.given
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `status_path=`: an absolute URL path without query.
fn status_path(value: &str) -> Result<String, ConfigError> {
    let ok = value.starts_with('/')
        && !value.contains(['?', '#'])
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::new(
            "status_path",
            format!("{value:?} is not a URL path (starting with /, without ?, # or spaces)"),
        ))
    }
}

/// `metrics=`: a unix socket path (absolute) or a loopback `HOST:PORT`. The figures include
/// the URIs of requests in flight (query strings with tokens, too), so they are not served
/// on a public address (docs/security.md).
fn metrics_addr(value: &str) -> Result<MetricsAddr, ConfigError> {
    if value.starts_with('/') {
        if value.len() > MAX_SOCKET_PATH {
            return Err(ConfigError::new(
                "metrics",
                format!("{value:?} is longer than {MAX_SOCKET_PATH} bytes"),
            ));
        }
        return Ok(MetricsAddr::Unix(PathBuf::from(value)));
    }
    let bad = || {
        ConfigError::new(
            "metrics",
            format!(
                "{value:?} is not a loopback HOST:PORT (127.0.0.1:9117, [::1]:9117, \
                 localhost:9117) or an absolute unix socket path"
            ),
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0);
    if !port_ok || host.is_empty() {
        return Err(bad());
    }
    if !is_loopback_host(host) {
        return Err(ConfigError::new(
            "metrics",
            format!(
                "{value:?} is not a loopback address: the status shows the URIs of requests \
                 in flight; listen on 127.0.0.1 or a unix socket and let Prometheus reach it \
                 through the web server (status_path=) or a tunnel"
            ),
        ));
    }
    Ok(MetricsAddr::Tcp(value.to_owned()))
}

/// `user=`/`group=`: a non-empty account name or number; looked up only when switching.
fn account(args: &Args, name: &str) -> Result<Option<String>, ConfigError> {
    match args.get(name) {
        None => Ok(None),
        Some(v)
            if v.is_empty() || v.contains(['\0', ':', '/']) || v.contains(char::is_whitespace) =>
        {
            Err(ConfigError::new(
                name,
                format!("{v:?} is not a {name} name or number"),
            ))
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// Django's message for a bad host/port/socket combination, kept so its users recognise it.
const COMBINATION: &str = "invalid combination of host, port, socket";

fn def(name: &str) -> &'static OptionDef {
    match option(name) {
        Some(d) => d,
        // Every caller passes a name from the table; the tests parse every option.
        None => unreachable!("{name} is in OPTIONS"),
    }
}

/// The given value of `name`, or its default text.
/// True for `localhost` and loopback addresses (127.0.0.0/8, ::1).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn raw<'a>(args: &'a Args, name: &str) -> &'a str {
    args.get(name).unwrap_or(def(name).default)
}

fn choice(args: &Args, name: &str) -> Result<&'static str, ConfigError> {
    let value = raw(args, name);
    let Kind::Choice(words) = def(name).kind else {
        // Callers name choice options only; every option is parsed by the tests.
        unreachable!("{name} is a choice");
    };
    words.iter().copied().find(|w| *w == value).ok_or_else(|| {
        ConfigError::new(
            name,
            format!("{value:?} is not one of {}", words.join(", ")),
        )
    })
}

fn boolean(args: &Args, name: &str) -> Result<bool, ConfigError> {
    let value = raw(args, name);
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "t" => Ok(true),
        "false" | "no" | "f" => Ok(false),
        _ => Err(ConfigError::new(
            name,
            format!("{value:?} is not one of {}", BOOLS.join(", ")),
        )),
    }
}

fn number(args: &Args, name: &str) -> Result<u64, ConfigError> {
    let value = raw(args, name);
    let Kind::Number { min, max } = def(name).kind else {
        // Callers name number options only; every option is parsed by the tests.
        unreachable!("{name} is a number");
    };
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            name,
            format!("{value:?} is not a number between {min} and {max}"),
        )),
    }
}

fn number_u32(args: &Args, name: &str) -> Result<u32, ConfigError> {
    let n = number(args, name)?;
    u32::try_from(n).map_err(|_| ConfigError::new(name, format!("{n} is too large")))
}

fn number_usize(args: &Args, name: &str) -> Result<usize, ConfigError> {
    let n = number(args, name)?;
    usize::try_from(n).map_err(|_| ConfigError::new(name, format!("{n} is too large")))
}

/// Parses an octal umask as Django does (`int(value, 8)`): `0002`, `022`, `0o027`.
fn octal(name: &str, value: &str) -> Result<u32, ConfigError> {
    let digits = value
        .strip_prefix("0o")
        .or_else(|| value.strip_prefix("0O"))
        .unwrap_or(value);
    let parsed = if !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        u32::from_str_radix(digits, 8).ok()
    } else {
        None
    };
    match parsed {
        Some(mask) if mask <= 0o777 => Ok(mask),
        _ => Err(ConfigError::new(
            name,
            format!("{value:?} is not an octal umask between 000 and 777 (e.g. 022 or 0002)"),
        )),
    }
}

/// Makes `value` an absolute path, relative to the directory appserver started in.
fn path(name: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(name, "must not be empty"));
    }
    std::path::absolute(Path::new(value))
        .map_err(|e| ConfigError::new(name, format!("cannot make {value:?} absolute: {e}")))
}

fn optional_path(args: &Args, name: &str) -> Result<Option<PathBuf>, ConfigError> {
    args.get(name).map(|v| path(name, v)).transpose()
}

fn resolve_listen(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Listen, ConfigError> {
    match (args.get("host"), args.get("port"), args.get("socket")) {
        (Some(host), Some(_), None) => {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(ConfigError::new("host", "must not be empty"));
            }
            let port = u16::try_from(number(args, "port")?)
                .map_err(|_| ConfigError::new("port", "is not a port number"))?;
            Ok(Listen::Tcp {
                host: host.to_owned(),
                port,
            })
        }
        (None, None, Some(socket)) => {
            let socket = path("socket", socket)?;
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(ConfigError::new(
                    "socket",
                    format!(
                        "{} is {len} bytes; unix socket paths are limited to {MAX_SOCKET_PATH}",
                        socket.display()
                    ),
                ));
            }
            Ok(Listen::Unix(socket))
        }
        (None, None, None) => Ok(Listen::Inherited(inherited(env)?)),
        (_, _, Some(_)) => Err(ConfigError::new(
            "socket",
            format!("cannot be combined with host= or port= ({COMBINATION})"),
        )),
        (Some(host), None, None) => Err(ConfigError::new(
            "host",
            format!("{host:?} needs port= too ({COMBINATION})"),
        )),
        (None, Some(port), None) => Err(ConfigError::new(
            "port",
            format!("{port:?} needs host= too ({COMBINATION})"),
        )),
    }
}

/// The inherited listener: systemd's when `LISTEN_FDS` is set, else fd 0.
fn inherited(env: &dyn Fn(&str) -> Option<String>) -> Result<Inherited, ConfigError> {
    let env_number = |name: &str| -> Result<Option<u32>, ConfigError> {
        match env(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u32>().map(Some).map_err(|_| {
                ConfigError::new(name, format!("{v:?} (environment) is not a number"))
            }),
        }
    };
    match env_number("LISTEN_FDS")? {
        None | Some(0) => Ok(Inherited::Fd0),
        Some(fds) => Ok(Inherited::Systemd {
            fds,
            pid: env_number("LISTEN_PID")?,
        }),
    }
}

fn script_name(value: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| Err(ConfigError::new("script_name", format!("{value:?} {why}")));
    if value.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if !value.is_empty() && !value.starts_with('/') {
        return bad("must be empty or start with /");
    }
    if value.ends_with('/') {
        return bad("must not end with / (use script_name= for the root)");
    }
    Ok(value.to_owned())
}

/// The options only `app=wsgi` uses.
const WSGI_OPTIONS: [&str; 4] = ["module", "pythonpath", "virtualenv", "preload"];

/// The options of `app=wsgi`, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsgiOptions {
    /// `module=`: the module to import; default empty (required with app=wsgi).
    pub module: String,
    /// The callable's name after `:` in `module=`; default `application`.
    pub callable: String,
    /// `pythonpath=`, absolute, in order; default the directory appserver started in.
    pub pythonpath: Vec<PathBuf>,
    /// `virtualenv=`, absolute; default none.
    pub virtualenv: Option<PathBuf>,
    /// `preload=`; default false.
    pub preload: bool,
}

/// Resolves the `app=wsgi` options: `module=` is required and names a dotted module path
/// (and optionally a callable); `preload=true` needs `method=prefork`.
fn wsgi_options(args: &Args, app: App, method: Method) -> Result<WsgiOptions, ConfigError> {
    if app != App::Wsgi {
        return Ok(WsgiOptions::default());
    }
    let Some(spec) = args.get("module") else {
        return Err(ConfigError::new(
            "module",
            "app=wsgi needs module=PKG.MOD[:CALLABLE], e.g. module=mysite.wsgi",
        ));
    };
    let (module, callable) = spec.split_once(':').unwrap_or((spec, "application"));
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    if !module.split('.').all(ident) || !ident(callable) {
        return Err(ConfigError::new(
            "module",
            format!(
                "{spec:?} is not a Python module path with an optional callable name \
                 (PKG.MOD[:CALLABLE], e.g. mysite.wsgi or app:application)"
            ),
        ));
    }
    let pythonpath = match args.get("pythonpath") {
        None => vec![path("pythonpath", ".")?],
        Some(v) => v
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| path("pythonpath", d))
            .collect::<Result<_, _>>()?,
    };
    let preload = boolean(args, "preload")?;
    if preload && method != Method::Prefork {
        return Err(ConfigError::new(
            "preload",
            "preload=true imports the app in the prefork master; it needs method=prefork",
        ));
    }
    Ok(WsgiOptions {
        module: module.to_owned(),
        callable: callable.to_owned(),
        pythonpath,
        virtualenv: optional_path(args, "virtualenv")?,
        preload,
    })
}

/// The options only `app=cgi` uses.
const CGI_OPTIONS: [&str; 7] = [
    "script",
    "docroot",
    "cgi_timeout",
    "cgi_env",
    "cgi_vars",
    "cgi_background",
    "cgi_unconfined",
];

/// Parses a comma-separated list of variable names (`cgi_vars=`), empty entries skipped.
fn names(option: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.contains('=') || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::new(
                option,
                format!("{name:?} is not a variable name"),
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Parses `cgi_env=`: comma-separated environment variable names, empty entries skipped.
fn cgi_env(value: &str) -> Result<Vec<String>, ConfigError> {
    let mut names = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.contains('=') || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::new(
                "cgi_env",
                format!("{name:?} is not an environment variable name"),
            ));
        }
        // httpoxy (CVE-2016-5385): scripts' HTTP clients read HTTP_PROXY as their proxy.
        if name == "HTTP_PROXY" {
            return Err(ConfigError::new(
                "cgi_env",
                "HTTP_PROXY is never passed to scripts (httpoxy); use http_proxy",
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Adds the comma-separated networks in `value` to `allow`; empty entries are skipped.
fn add_nets(
    allow: &mut AllowList,
    option: &str,
    source: &str,
    value: &str,
) -> Result<(), ConfigError> {
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let net: IpNet = entry.parse().map_err(|_| {
            ConfigError::new(
                option,
                format!(
                    "{entry:?}{source} is not an IP address or CIDR network \
                     (e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
                ),
            )
        })?;
        allow.push(net);
    }
    Ok(())
}

/// Enforces `low <= high`. A defaulted `low` is lowered to fit (`maxchildren=1` alone is
/// fine); a given one that does not fit is an error naming both options.
fn ordered(
    args: &Args,
    (low_name, low): (&str, &mut usize),
    (high_name, high): (&str, usize),
) -> Result<(), ConfigError> {
    if *low <= high {
        return Ok(());
    }
    if args.get(low_name).is_none() {
        *low = high;
        return Ok(());
    }
    let high_text = match args.get(high_name) {
        Some(_) => format!("{high_name}={high}"),
        None => format!("{high_name} (default {high})"),
    };
    Err(ConfigError::new(
        low_name,
        format!("{low_name}={low} is greater than {high_text}"),
    ))
}

/// Width help text is wrapped to.
const HELP_WIDTH: usize = 79;
/// Column where option help starts.
const HELP_COLUMN: usize = 30;

/// What `runfcgi help` prints: usage, every option with its default, and examples.
pub fn help_text() -> String {
    let mut out = String::from(
        "Usage: runfcgi [key=value ...]\n\
         \x20      runfcgi help\n\
         \n\
         Serves the app over FastCGI, SCGI or AJP13, with the options of Django's\n\
         `manage.py runfcgi`. Give host= and port=, or socket=, to listen yourself;\n\
         give neither when the web server (mod_fcgid, lighttpd bin-path, spawn-fcgi)\n\
         or systemd hands over the listening socket.\n\
         \n\
         Options (key=value):\n",
    );
    for o in OPTIONS {
        let left = format!("  {}={}", o.name, value_placeholder(o));
        let mut text = o.help.to_owned();
        if !o.default.is_empty() {
            let _ = write!(text, " [default: {}]", o.default);
        }
        let lines = wrap(&text, HELP_WIDTH - HELP_COLUMN);
        let mut lines = lines.iter();
        if left.len() < HELP_COLUMN {
            let first = lines.next().map_or("", String::as_str);
            let _ = writeln!(out, "{left:<HELP_COLUMN$}{first}");
        } else {
            let _ = writeln!(out, "{left}");
        }
        for line in lines {
            let _ = writeln!(out, "{:HELP_COLUMN$}{line}", "");
        }
    }
    out.push_str(
        "\n\
         Relative paths are taken from the directory runfcgi was started in.\n\
         Environment: FCGI_WEB_SERVER_ADDRS (like allow=), NOTIFY_SOCKET and\n\
         LISTEN_FDS/LISTEN_PID (systemd), APPSERVER_LOG (log filter).\n\
         \n\
         Examples:\n\
         \x20 Serve on a TCP host/port from one multi-threaded process, as a daemon:\n\
         \x20   $ appserver runfcgi method=threaded host=127.0.0.1 port=3033\n\
         \x20 Serve on a unix socket as a daemon and write its pid to a file:\n\
         \x20   $ appserver runfcgi socket=/home/user/mysite.sock pidfile=django.pid\n\
         \x20 Stay in the foreground (good for debugging):\n\
         \x20   $ appserver runfcgi daemonize=false socket=/tmp/mysite.sock\n\
         \x20 Run spawned by the web server, listening socket on fd 0:\n\
         \x20   $ appserver runfcgi method=threaded\n\
         \x20 Run the CGI scripts under /srv/cgi-bin (replaces fcgiwrap):\n\
         \x20   $ appserver runfcgi app=cgi docroot=/srv/cgi-bin socket=/run/cgi.sock\n",
    );
    out
}

/// The content of `docs/options.md`, generated from [`OPTIONS`].
pub fn options_markdown() -> String {
    let mut out = String::from(
        "# runfcgi options\n\
         \n\
         <!-- Generated from the option table in src/config.rs by options_markdown(); a unit\n\
         test fails when this file differs. Regenerate with:\n\
         APPSERVER_UPDATE_DOCS=1 cargo test --lib config::tests::options_md_matches_table -->\n\
         \n\
         `appserver runfcgi key=value ...` (or `myapp runfcgi ...` for a program that calls\n\
         `appserver::run`) takes the options of Django's `manage.py runfcgi`, with Django's\n\
         names and defaults, plus a few of its own. `runfcgi help` prints the same list.\n\
         \n\
         - Listening: give `host=` and `port=`, or `socket=`, or neither: then the listening\n\
         \x20 socket comes from the web server on fd 0 (mod_fcgid, lighttpd `bin-path`,\n\
         \x20 spawn-fcgi) or from systemd (`LISTEN_FDS`). Any other combination is an error\n\
         \x20 (Django's \"invalid combination of host, port, socket\").\n\
         - Option names are case-insensitive; each may be given once. A bad value stops the\n\
         \x20 start (exit status 2) with a message naming the option and the accepted values.\n\
         - Relative paths (`socket=`, `pidfile=`, `workdir=`, `outlog=`, `errlog=`) are taken\n\
         \x20 from the directory appserver was started in, not from `workdir=`.\n\
         - Environment: `FCGI_WEB_SERVER_ADDRS` (merged into `allow=`), `NOTIFY_SOCKET` and\n\
         \x20 `LISTEN_FDS`/`LISTEN_PID` (systemd), `APPSERVER_LOG` (log filter, overrides\n\
         \x20 `debug=`).\n\
         \n\
         See [operations.md](operations.md) for daemonizing, pidfiles, signals and restarts.\n\
         \n\
         | option | values | default |\n\
         |---|---|---|\n",
    );
    for o in OPTIONS {
        let default = if o.default.is_empty() {
            "none".to_owned()
        } else if o.default.contains(' ') {
            o.default.to_owned()
        } else {
            format!("`{}`", o.default)
        };
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {} | {} |",
            o.name,
            o.name,
            values_markdown(o),
            default,
        );
    }
    for o in OPTIONS {
        let _ = write!(
            out,
            "\n## {}\n\n`{}={}`",
            o.name,
            o.name,
            value_placeholder(o)
        );
        if !o.default.is_empty() {
            let _ = write!(out, " (default: {})", o.default);
        }
        let _ = write!(out, "\n\n{}\n", wrap(o.help, 92).join("\n"));
    }
    out
}

/// The value part of `name=VALUE` in help: the words of a choice, else the placeholder.
fn value_placeholder(o: &OptionDef) -> String {
    match o.kind {
        Kind::Choice(words) => words.join("|"),
        _ => o.metavar.to_owned(),
    }
}

/// The accepted values, for the docs table.
fn values_markdown(o: &OptionDef) -> String {
    match o.kind {
        Kind::Choice(words) => words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(", "),
        Kind::Bool => BOOLS
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(", "),
        Kind::Number { min, max } => format!("{min} to {max}"),
        Kind::Octal => "octal, `000` to `777`".to_owned(),
        Kind::Path => "path".to_owned(),
        Kind::Text => o.metavar.to_lowercase(),
    }
}

/// Splits `text` into lines of at most `width` characters at spaces (longer words stay whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use appserver_proto::limits::DEFAULT_MAX_PARAMS_BYTES;

    use super::*;

    fn args(items: &[&str]) -> Result<Args, ConfigError> {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        Args::parse(&items)
    }

    fn with_env(items: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_args(args(items)?, &|name| env.get(name).cloned())
    }

    fn config(items: &[&str]) -> Result<Config, ConfigError> {
        with_env(items, &[])
    }

    fn ok(items: &[&str]) -> Config {
        config(items).unwrap()
    }

    /// The full Display of the error `items` give.
    fn err(items: &[&str]) -> String {
        config(items).unwrap_err().to_string()
    }

    /// `Config` without the record of what was given, to compare resolved values.
    fn resolved(c: &Config) -> String {
        let mut c = c.clone();
        c.given.clear();
        format!("{c:?}")
    }

    const TCP: [&str; 2] = ["host=127.0.0.1", "port=3033"];

    fn tcp(more: &[&str]) -> Config {
        let mut items = TCP.to_vec();
        items.extend_from_slice(more);
        ok(&items)
    }

    // --- the two stages and the error format

    #[test]
    fn error_display_names_option_and_value() {
        assert_eq!(
            err(&["host=a", "port=x"]),
            r#"runfcgi: option "port": "x" is not a number between 0 and 65535"#
        );
        let e = config(&["method=forky"]).unwrap_err();
        assert_eq!(e.option(), "method");
        assert_eq!(
            e.message(),
            r#""forky" is not one of prefork, fork, threaded, thread"#
        );
        assert_eq!(
            ConfigError::new("app", "m").to_string(),
            r#"runfcgi: option "app": m"#
        );
    }

    #[test]
    fn args_keep_raw_pairs() {
        let a = args(&["Host=h", "port=1", "script_name=/a=b", "allow="]).unwrap();
        assert_eq!(a.get("host"), Some("h"), "names are case-insensitive");
        assert_eq!(
            a.get("script_name"),
            Some("/a=b"),
            "only the first = splits"
        );
        assert_eq!(a.get("allow"), Some(""));
        assert_eq!(a.get("socket"), None);
        let order: Vec<_> = a.iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["host", "port", "script_name", "allow"]);
        assert!(args(&[]).unwrap().iter().next().is_none());
    }

    #[test]
    fn args_reject_unknown_names() {
        let e = args(&["colour=red"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runfcgi: option "colour": not a runfcgi option"#
        );
    }

    #[test]
    fn args_reject_items_without_value() {
        let e = args(&["daemonize"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runfcgi: option "daemonize": expected key=value"#
        );
        let e = args(&["port=1", "help"]).unwrap_err();
        assert_eq!(e.option(), "help");
        assert!(e.message().contains("must be the only option"));
    }

    #[test]
    fn args_reject_duplicates() {
        let e = args(&["port=1", "PORT=2"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runfcgi: option "port": given twice ("1" and "2")"#
        );
    }

    // --- defaults

    #[test]
    fn defaults() {
        let c = ok(&[]);
        assert_eq!(c.protocol, Protocol::Fcgi);
        assert_eq!(c.listen, Listen::Inherited(Inherited::Fd0));
        assert_eq!(c.method, Method::Prefork, "Django's default");
        assert_eq!(c.maxrequests, 0);
        assert_eq!((c.minspare, c.maxspare, c.maxchildren), (2, 5, 50));
        assert!(!c.daemonize);
        assert_eq!(c.pidfile, None);
        assert_eq!(c.workdir, PathBuf::from("/"));
        assert!(!c.debug);
        assert_eq!((c.outlog.clone(), c.errlog.clone()), (None, None));
        assert_eq!(c.umask, None);
        assert_eq!(c.daemon_umask(), 0o022);
        assert_eq!(c.app, App::Info);
        assert_eq!(c.script_name, None);
        assert!(c.allow.is_empty());
        assert_eq!(c.backlog, 1024);
        assert_eq!(c.maxconns, 1024);
        assert_eq!(c.maxparams, DEFAULT_MAX_PARAMS_BYTES);
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.touch_reload, None);
        assert_eq!(c.notify_socket, None);
        assert_eq!((c.user.clone(), c.group.clone()), (None, None));
        assert!(!c.app_given());
        assert_eq!(resolved(&Config::default()), resolved(&c));
    }

    #[test]
    fn default_texts_mean_the_defaults() {
        // Giving an option its documented default changes nothing (daemonize, umask and the
        // paths have prose defaults).
        let base = ok(&[]);
        for o in OPTIONS {
            let prose = matches!(o.kind, Kind::Path | Kind::Text | Kind::Octal)
                || o.default == "off"
                || o.default.is_empty()
                || o.name == "daemonize";
            if prose {
                continue;
            }
            let item = format!("{}={}", o.name, o.default);
            // Options of one protocol are compared within that protocol.
            let context: &[&str] = match o.name {
                "packetsize" | "underscores_in_headers" => &["protocol=ajp"],
                name if CGI_OPTIONS.contains(&name) => &["app=cgi"],
                "preload" if !cfg!(feature = "wsgi") => continue,
                "preload" => &["app=wsgi", "module=m"],
                _ => &[],
            };
            let with: Vec<&str> = context.iter().copied().chain([item.as_str()]).collect();
            assert_eq!(resolved(&ok(&with)), resolved(&ok(context)), "{item}");
        }
        assert_eq!(
            option("maxparams").unwrap().default,
            DEFAULT_MAX_PARAMS_BYTES.to_string()
        );
        assert_eq!(resolved(&ok(&["workdir=/"])), resolved(&base));
    }

    #[test]
    fn every_option_parses_a_valid_value() {
        for o in OPTIONS {
            let value = match o.kind {
                Kind::Choice(words) => words[0].to_owned(),
                Kind::Bool => "true".to_owned(),
                Kind::Number { max, .. } => max.to_string(),
                Kind::Octal => "027".to_owned(),
                Kind::Path => "/tmp/x".to_owned(),
                Kind::Text => match o.name {
                    "allow" => "127.0.0.1".to_owned(),
                    "script_name" => "/app".to_owned(),
                    "status_path" => "/status".to_owned(),
                    "metrics" => "127.0.0.1:9117".to_owned(),
                    _ => "localhost".to_owned(),
                },
            };
            let item = format!("{}={value}", o.name);
            let mut items = vec![item.as_str()];
            match o.name {
                "host" => items.push("port=1"),
                "port" => items.push("host=h"),
                "maxspare" => items.push("maxchildren=10000"),
                "minspare" => items.extend(["maxchildren=10000", "maxspare=10000"]),
                "secret" | "packetsize" | "underscores_in_headers" => items.push("protocol=ajp"),
                name if CGI_OPTIONS.contains(&name) => items.push("app=cgi"),
                "module" | "pythonpath" | "virtualenv" | "preload" if !cfg!(feature = "wsgi") => {
                    continue
                }
                "module" => items.push("app=wsgi"),
                "pythonpath" | "virtualenv" | "preload" => items.extend(["app=wsgi", "module=m"]),
                _ => {}
            }
            let c = config(&items);
            assert!(c.is_ok(), "{items:?}: {c:?}");
        }
    }

    // --- protocol

    #[test]
    fn protocol_values() {
        assert_eq!(ok(&["protocol=fcgi"]).protocol, Protocol::Fcgi);
        assert_eq!(ok(&["protocol=scgi"]).protocol, Protocol::Scgi);
        assert_eq!(ok(&["protocol=ajp"]).protocol, Protocol::Ajp);
        assert_eq!(
            err(&["protocol=http"]),
            r#"runfcgi: option "protocol": "http" is not one of fcgi, scgi, ajp"#
        );
        assert_eq!(Protocol::Ajp.name(), "ajp");
    }

    #[test]
    fn ajp_secret_and_packetsize() {
        let c = ok(&["protocol=ajp", "secret=s3cret", "packetsize=65536"]);
        assert_eq!(c.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.packetsize, 65536);
        assert_eq!(ok(&["protocol=ajp"]).packetsize, 8192);
        assert!(err(&["protocol=ajp", "packetsize=8191"]).contains("between 8192 and 65536"));
        assert!(err(&["protocol=ajp", "packetsize=65537"]).contains("between 8192 and 65536"));
        assert_eq!(
            err(&["secret=x"]),
            r#"runfcgi: option "secret": is an option of protocol=ajp; protocol=fcgi does not use it"#
        );
    }

    #[test]
    fn ajp_off_loopback_needs_a_secret() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            let host = format!("host={host}");
            assert!(
                config(&["protocol=ajp", &host, "port=8009"]).is_ok(),
                "{host}"
            );
        }
        let e = err(&["protocol=ajp", "host=0.0.0.0", "port=8009"]);
        assert!(
            e.contains(r#"option "secret": protocol=ajp on host=0.0.0.0 needs secret="#),
            "{e}"
        );
        assert!(e.contains("Ghostcat"));
        ok(&["protocol=ajp", "host=0.0.0.0", "port=8009", "secret=s"]);
        ok(&["protocol=ajp", "socket=/tmp/ajp.sock"]);
    }

    // --- host, port, socket

    #[test]
    fn host_and_port() {
        let c = tcp(&[]);
        assert_eq!(
            c.listen,
            Listen::Tcp {
                host: "127.0.0.1".into(),
                port: 3033
            }
        );
        assert_eq!(c.listen_description(), "127.0.0.1:3033");
        let c = ok(&["host=::1", "port=0"]);
        assert_eq!(c.listen_description(), "[::1]:0");
        let c = ok(&["host=[::1]", "port=80"]);
        assert_eq!(
            c.listen,
            Listen::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
        assert_eq!(
            ok(&["host=localhost", "port=65535"]).listen_description(),
            "localhost:65535"
        );
    }

    #[test]
    fn port_limits() {
        assert!(config(&["host=h", "port=0"]).is_ok());
        assert!(config(&["host=h", "port=65535"]).is_ok());
        for bad in [
            "65536",
            "-1",
            "x",
            "",
            "1.5",
            " 80",
            "99999999999999999999999",
        ] {
            let port = format!("port={bad}");
            assert_eq!(
                err(&["host=h", &port]),
                format!(r#"runfcgi: option "port": {bad:?} is not a number between 0 and 65535"#)
            );
        }
    }

    #[test]
    fn invalid_combinations_of_host_port_socket() {
        assert_eq!(
            err(&["host=127.0.0.1"]),
            r#"runfcgi: option "host": "127.0.0.1" needs port= too (invalid combination of host, port, socket)"#
        );
        assert_eq!(
            err(&["port=3033"]),
            r#"runfcgi: option "port": "3033" needs host= too (invalid combination of host, port, socket)"#
        );
        let socket_and = "runfcgi: option \"socket\": cannot be combined with host= or port= \
                          (invalid combination of host, port, socket)";
        assert_eq!(err(&["socket=/s", "host=h"]), socket_and);
        assert_eq!(err(&["socket=/s", "port=1"]), socket_and);
        assert_eq!(err(&["socket=/s", "host=h", "port=1"]), socket_and);
        assert_eq!(
            err(&["host=", "port=1"]),
            r#"runfcgi: option "host": must not be empty"#
        );
    }

    #[test]
    fn socket_paths() {
        let c = ok(&["socket=/tmp/mysite.sock"]);
        assert_eq!(c.listen, Listen::Unix("/tmp/mysite.sock".into()));
        assert_eq!(c.listen_description(), "unix:/tmp/mysite.sock");
        let c = ok(&["socket=mysite.sock"]);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.listen, Listen::Unix(cwd.join("mysite.sock")));
        assert_eq!(
            err(&["socket="]),
            r#"runfcgi: option "socket": must not be empty"#
        );
    }

    #[test]
    fn socket_path_length_limit() {
        let at_limit = format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1));
        assert!(config(&[&format!("socket={at_limit}")]).is_ok());
        let over = format!("/{}", "s".repeat(MAX_SOCKET_PATH));
        let e = config(&[&format!("socket={over}")]).unwrap_err();
        assert_eq!(e.option(), "socket");
        assert!(
            e.message()
                .ends_with("is 108 bytes; unix socket paths are limited to 107"),
            "{e}"
        );
    }

    #[test]
    fn inherited_listeners() {
        assert_eq!(ok(&[]).listen_description(), "fd0");
        let c = with_env(&[], &[("LISTEN_FDS", "1"), ("LISTEN_PID", "42")]).unwrap();
        assert_eq!(
            c.listen,
            Listen::Inherited(Inherited::Systemd {
                fds: 1,
                pid: Some(42)
            })
        );
        assert_eq!(c.listen_description(), "fd3");
        let c = with_env(&[], &[("LISTEN_FDS", "0")]).unwrap();
        assert_eq!(c.listen, Listen::Inherited(Inherited::Fd0));
        let e = with_env(&[], &[("LISTEN_FDS", "x")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runfcgi: option "LISTEN_FDS": "x" (environment) is not a number"#
        );
        assert_eq!(
            with_env(&[], &[("LISTEN_FDS", "1"), ("LISTEN_PID", "me")])
                .unwrap_err()
                .option(),
            "LISTEN_PID"
        );
        // Listening ourselves ignores systemd's sockets.
        let c = with_env(&TCP, &[("LISTEN_FDS", "1")]).unwrap();
        assert!(matches!(c.listen, Listen::Tcp { .. }));
    }

    // --- method and the process-model numbers

    #[test]
    fn method_values() {
        assert_eq!(ok(&["method=threaded"]).method, Method::Threaded);
        assert_eq!(ok(&["method=thread"]).method, Method::Threaded);
        assert_eq!(ok(&["method=prefork"]).method, Method::Prefork);
        assert_eq!(ok(&["method=fork"]).method, Method::Prefork);
        assert_eq!(
            err(&["method=forky"]),
            r#"runfcgi: option "method": "forky" is not one of prefork, fork, threaded, thread"#
        );
        assert!(err(&["method=Threaded"]).contains("is not one of"));
        assert_eq!(Method::Prefork.name(), "prefork");
    }

    #[test]
    fn every_method_spelling_is_supported() {
        for (given, method) in [
            ("method=prefork", Method::Prefork),
            ("method=fork", Method::Prefork),
            ("method=threaded", Method::Threaded),
            ("method=thread", Method::Threaded),
        ] {
            let c = ok(&[given]);
            assert_eq!(c.method, method, "{given}");
        }
    }

    #[test]
    fn maxrequests_values() {
        assert_eq!(ok(&["maxrequests=0"]).maxrequests, 0);
        assert_eq!(ok(&["maxrequests=4294967295"]).maxrequests, u32::MAX);
        assert_eq!(
            err(&["maxrequests=4294967296"]),
            r#"runfcgi: option "maxrequests": "4294967296" is not a number between 0 and 4294967295"#
        );
        // Both methods: prefork recycles workers, threaded re-executes itself.
        assert_eq!(ok(&["maxrequests=1", "method=threaded"]).maxrequests, 1);
    }

    #[test]
    fn spare_and_children_limits() {
        assert_eq!(ok(&["maxchildren=1"]).maxchildren, 1);
        assert_eq!(ok(&["maxchildren=10000"]).maxchildren, 10_000);
        assert!(err(&["maxchildren=0"]).contains(r#""0" is not a number between 1 and 10000"#));
        assert!(err(&["maxchildren=10001"]).contains("between 1 and 10000"));
        assert_eq!(ok(&["minspare=0"]).minspare, 0);
        assert!(err(&["maxspare=0"]).contains(r#""0" is not a number between 1 and 10000"#));
        assert!(err(&["minspare=x"]).contains(r#""x" is not a number between 0 and 10000"#));
    }

    #[test]
    fn spare_ordering() {
        let c = ok(&["minspare=3", "maxspare=3", "maxchildren=3"]);
        assert_eq!((c.minspare, c.maxspare, c.maxchildren), (3, 3, 3));
        assert_eq!(
            err(&["minspare=4", "maxspare=3"]),
            r#"runfcgi: option "minspare": minspare=4 is greater than maxspare=3"#
        );
        assert_eq!(
            err(&["maxspare=10", "maxchildren=4"]),
            r#"runfcgi: option "maxspare": maxspare=10 is greater than maxchildren=4"#
        );
        assert_eq!(
            err(&["maxspare=51"]),
            r#"runfcgi: option "maxspare": maxspare=51 is greater than maxchildren (default 50)"#
        );
        assert_eq!(
            err(&["minspare=6"]),
            r#"runfcgi: option "minspare": minspare=6 is greater than maxspare (default 5)"#
        );
    }

    #[test]
    fn defaulted_spares_shrink_to_fit() {
        let c = ok(&["maxchildren=1"]);
        assert_eq!((c.minspare, c.maxspare, c.maxchildren), (1, 1, 1));
        let c = ok(&["maxspare=1"]);
        assert_eq!((c.minspare, c.maxspare), (1, 1));
        let c = ok(&["maxchildren=4"]);
        assert_eq!((c.minspare, c.maxspare), (2, 4));
    }

    // --- daemonize

    #[test]
    fn daemonize_spellings() {
        for yes in ["true", "yes", "t", "TRUE", "Yes", "T"] {
            assert!(ok(&[&format!("daemonize={yes}")]).daemonize, "{yes}");
        }
        for no in ["false", "no", "f", "False", "NO"] {
            assert!(!tcp(&[&format!("daemonize={no}")]).daemonize, "{no}");
        }
        assert_eq!(
            err(&["daemonize=maybe"]),
            r#"runfcgi: option "daemonize": "maybe" is not one of true, false, yes, no, t, f"#
        );
        assert!(err(&["daemonize=1"]).contains("is not one of"));
    }

    #[test]
    fn daemonize_default_follows_django() {
        assert!(tcp(&[]).daemonize, "host/port: daemon");
        assert!(ok(&["socket=/tmp/s.sock"]).daemonize, "socket: daemon");
        assert!(!ok(&[]).daemonize, "fd 0: foreground");
    }

    #[test]
    fn daemonize_default_is_false_under_systemd() {
        let c = with_env(
            &["socket=/tmp/s.sock"],
            &[("NOTIFY_SOCKET", "/run/systemd/notify")],
        )
        .unwrap();
        assert!(!c.daemonize);
        assert_eq!(c.notify_socket.as_deref(), Some("/run/systemd/notify"));
        let c = with_env(&TCP, &[("LISTEN_FDS", "1")]).unwrap();
        assert!(!c.daemonize);
        let c = with_env(&["socket=/s", "daemonize=true"], &[("NOTIFY_SOCKET", "@n")]).unwrap();
        assert!(c.daemonize, "an explicit daemonize=true wins");
    }

    // --- files and directories

    #[test]
    fn paths_are_made_absolute_from_the_start_directory() {
        let cwd = std::env::current_dir().unwrap();
        let c = ok(&[
            "pidfile=django.pid",
            "outlog=log/out.log",
            "errlog=/var/log/err.log",
            "workdir=srv",
        ]);
        assert_eq!(c.pidfile, Some(cwd.join("django.pid")));
        assert_eq!(c.outlog, Some(cwd.join("log/out.log")));
        assert_eq!(c.errlog, Some(PathBuf::from("/var/log/err.log")));
        assert_eq!(c.workdir, cwd.join("srv"));
        for name in ["pidfile", "outlog", "errlog", "workdir"] {
            assert_eq!(
                err(&[&format!("{name}=")]),
                format!(r#"runfcgi: option "{name}": must not be empty"#)
            );
        }
    }

    #[test]
    fn debug_values() {
        assert!(ok(&["debug=true"]).debug);
        assert!(!ok(&["debug=false"]).debug);
        assert!(err(&["debug=on"]).starts_with(r#"runfcgi: option "debug": "on" is not one of"#));
    }

    #[test]
    fn umask_is_octal() {
        assert_eq!(ok(&["umask=0002"]).umask, Some(0o002));
        assert_eq!(ok(&["umask=022"]).umask, Some(0o022));
        assert_eq!(ok(&["umask=0o027"]).umask, Some(0o027));
        assert_eq!(ok(&["umask=0"]).umask, Some(0));
        assert_eq!(ok(&["umask=777"]).umask, Some(0o777));
        assert_eq!(ok(&["umask=0777"]).daemon_umask(), 0o777);
        for bad in ["1000", "8", "0999", "", "0o", "-1", "0x1f", "22 "] {
            assert_eq!(
                err(&[&format!("umask={bad}")]),
                format!(
                    r#"runfcgi: option "umask": {bad:?} is not an octal umask between 000 and 777 (e.g. 022 or 0002)"#
                )
            );
        }
    }

    // --- ours

    #[test]
    fn app_values() {
        assert_eq!(ok(&["app=info"]).app, App::Info);
        assert!(ok(&["app=info"]).app_given());
        assert_eq!(ok(&["app=cgi"]).app, App::Cgi);
        assert_eq!(
            err(&["app=php"]),
            r#"runfcgi: option "app": "php" is not one of info, cgi, wsgi"#
        );
        assert_eq!(App::Cgi.name(), "cgi");
    }

    #[test]
    fn cgi_options() {
        let c = ok(&["app=cgi"]);
        assert_eq!((c.script.as_ref(), c.docroot.as_ref()), (None, None));
        assert_eq!(c.cgi_timeout, Duration::from_secs(60));
        assert_eq!(c.cgi_env, ["PATH"]);
        let cwd = std::env::current_dir().unwrap();
        let c = ok(&[
            "app=cgi",
            "script=bin/x.cgi",
            "docroot=/srv/cgi",
            "cgi_timeout=5",
            "cgi_env=PATH, LANG,,PATH,http_proxy",
        ]);
        assert_eq!(c.script, Some(cwd.join("bin/x.cgi")));
        assert_eq!(c.docroot, Some(PathBuf::from("/srv/cgi")));
        assert_eq!(c.cgi_timeout, Duration::from_secs(5));
        assert_eq!(c.cgi_env, ["PATH", "LANG", "http_proxy"]);
        assert!(ok(&["app=cgi", "cgi_env="]).cgi_env.is_empty());
        assert!(config(&["app=cgi", "cgi_timeout=1"]).is_ok());
        assert!(config(&["app=cgi", "cgi_timeout=86400"]).is_ok());
        for bad in ["0", "86401", "1.5", ""] {
            assert_eq!(
                err(&["app=cgi", &format!("cgi_timeout={bad}")]),
                format!(
                    r#"runfcgi: option "cgi_timeout": {bad:?} is not a number between 1 and 86400"#
                )
            );
        }
        assert_eq!(
            err(&["app=cgi", "cgi_env=PATH,HTTP_PROXY"]),
            r#"runfcgi: option "cgi_env": HTTP_PROXY is never passed to scripts (httpoxy); use http_proxy"#
        );
        assert_eq!(
            err(&["app=cgi", "cgi_env=A=B"]),
            r#"runfcgi: option "cgi_env": "A=B" is not an environment variable name"#
        );
        assert!(err(&["app=cgi", "cgi_env=A B"]).contains("not an environment variable"));
        assert_eq!(
            err(&["docroot=/srv"]),
            r#"runfcgi: option "docroot": is an option of app=cgi; app=info does not use it"#
        );
        assert!(err(&["app=info", "script=/x"]).contains("option of app=cgi"));
        assert!(err(&["app=cgi", "docroot="]).contains("must not be empty"));
    }

    #[test]
    fn script_name_values() {
        assert_eq!(ok(&["script_name="]).script_name.as_deref(), Some(""));
        assert_eq!(
            ok(&["script_name=/app"]).script_name.as_deref(),
            Some("/app")
        );
        assert_eq!(
            ok(&["script_name=/a/b c"]).script_name.as_deref(),
            Some("/a/b c")
        );
        assert_eq!(
            err(&["script_name=app"]),
            r#"runfcgi: option "script_name": "app" must be empty or start with /"#
        );
        assert!(err(&["script_name=/app/"]).contains("must not end with /"));
        assert!(err(&["script_name=/"]).contains("must not end with /"));
        assert!(err(&["script_name=/a\nb"]).contains("contains a control character"));
    }

    #[test]
    fn user_and_group_values() {
        let c = ok(&["user=www-data", "group=33"]);
        assert_eq!(c.user.as_deref(), Some("www-data"));
        assert_eq!(c.group.as_deref(), Some("33"));
        for bad in ["user=", "user=a b", "group=x:y", "group=/etc"] {
            let e = err(&[bad]);
            assert!(e.contains("is not a"), "{bad}: {e}");
        }
    }

    #[test]
    fn allow_values() {
        let c = ok(&["allow=127.0.0.1, 10.0.0.0/8,,::1"]);
        let nets: Vec<String> = c.allow.nets().iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        assert_eq!(c.allow_list(), c.allow);
        assert!(ok(&["allow="]).allow.is_empty());
        assert_eq!(
            err(&["allow=127.0.0.1,localhost"]),
            "runfcgi: option \"allow\": \"localhost\" is not an IP address or CIDR network \
             (e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
        );
        assert!(err(&["allow=10.0.0.0/33"]).contains(r#""10.0.0.0/33" is not an IP address"#));
    }

    #[test]
    fn fcgi_web_server_addrs_is_merged() {
        let c = with_env(
            &["allow=10.0.0.1"],
            &[("FCGI_WEB_SERVER_ADDRS", "127.0.0.1,192.0.2.7")],
        )
        .unwrap();
        let nets: Vec<String> = c.allow.nets().iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.1/32", "127.0.0.1/32", "192.0.2.7/32"]);
        let c = with_env(&[], &[("FCGI_WEB_SERVER_ADDRS", "")]).unwrap();
        assert!(c.allow.is_empty());
        let e = with_env(&[], &[("FCGI_WEB_SERVER_ADDRS", "127.0.0.1,bogus")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runfcgi: option \"FCGI_WEB_SERVER_ADDRS\": \"bogus\" (environment) is not an IP \
             address or CIDR network (e.g. 127.0.0.1, 10.0.0.0/8, ::1)"
        );
    }

    /// `name=` accepts `min` and `max` and refuses one beyond each.
    fn check_range(name: &str, min: u64, max: u64) {
        assert!(config(&[&format!("{name}={min}")]).is_ok(), "{name}={min}");
        assert!(config(&[&format!("{name}={max}")]).is_ok(), "{name}={max}");
        let expected = |v: u64| {
            format!(r#"runfcgi: option "{name}": "{v}" is not a number between {min} and {max}"#)
        };
        if min > 0 {
            assert_eq!(err(&[&format!("{name}={}", min - 1)]), expected(min - 1));
        }
        assert_eq!(err(&[&format!("{name}={}", max + 1)]), expected(max + 1));
    }

    #[test]
    fn backlog_limits() {
        check_range("backlog", 1, 65535);
        assert_eq!(ok(&["backlog=1"]).backlog, 1);
    }

    #[test]
    fn maxconns_limits() {
        check_range("maxconns", 1, MAX_CONNS);
        assert_eq!(ok(&["maxconns=7"]).maxconns, 7);
    }

    #[test]
    fn worker_requests_limits() {
        check_range("worker_requests", 1, MAX_CHILDREN);
        assert_eq!(ok(&[]).worker_requests, 1);
        assert_eq!(ok(&["worker_requests=25"]).worker_requests, 25);
        // A threaded process has no workers: maxchildren= is its bound.
        assert_eq!(
            err(&["method=threaded", "worker_requests=4"]),
            "runfcgi: option \"worker_requests\": is an option of method=prefork; a \
             method=threaded process runs maxchildren= requests at once"
        );
    }

    #[test]
    fn maxparams_limits() {
        check_range(
            "maxparams",
            MIN_MAX_PARAMS_BYTES as u64,
            MAX_MAX_PARAMS_BYTES as u64,
        );
        let c = ok(&["maxparams=262144"]);
        assert_eq!(c.limits().max_params_bytes(), 262_144);
        let c = ok(&[&format!("maxparams={MIN_MAX_PARAMS_BYTES}")]);
        assert_eq!(c.limits().max_params_bytes(), MIN_MAX_PARAMS_BYTES);
        let c = ok(&[&format!("maxparams={MAX_MAX_PARAMS_BYTES}")]);
        assert_eq!(c.limits().max_params_bytes(), MAX_MAX_PARAMS_BYTES);
    }

    #[test]
    fn timeout_limits() {
        check_range("idle_timeout", 1, 86400);
        check_range("header_timeout", 1, 3600);
        check_range("body_timeout", 1, 86400);
        check_range("body_min_rate", 0, 1 << 30);
        check_range("send_timeout", 1, 86400);
        check_range("send_min_rate", 0, 1 << 30);
        check_range("request_timeout", 0, 86400);
        check_range("queue_timeout", 0, 3600);
        check_range("graceful_timeout", 0, 86400);
        let c = ok(&["idle_timeout=5", "header_timeout=7", "graceful_timeout=0"]);
        assert_eq!(c.timeouts.idle, Duration::from_secs(5));
        assert_eq!(c.timeouts.header, Duration::from_secs(7));
        assert_eq!(c.timeouts.request, None);
        assert_eq!(c.graceful_timeout, Duration::ZERO);
        let c = ok(&["request_timeout=9", "body_min_rate=0", "queue_timeout=0"]);
        assert_eq!(c.timeouts.request, Some(Duration::from_secs(9)));
        assert_eq!(c.timeouts.body_min_rate, 0);
        assert_eq!(c.timeouts.queue, Duration::ZERO);
    }

    #[test]
    fn touch_reload_paths() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            ok(&["touch_reload=site.fcgi"]).touch_reload,
            Some(cwd.join("site.fcgi"))
        );
        for method in ["method=prefork", "method=threaded"] {
            let c = ok(&[method, "touch_reload=/srv/site/site.fcgi"]);
            assert_eq!(c.touch_reload, Some(PathBuf::from("/srv/site/site.fcgi")));
        }
        assert_eq!(
            err(&["touch_reload="]),
            r#"runfcgi: option "touch_reload": must not be empty"#
        );
    }

    // --- the seed document's command lines

    #[test]
    fn seed_examples_parse() {
        let c = ok(&["method=threaded", "host=127.0.0.1", "port=3033"]);
        assert!(c.daemonize);

        let c = ok(&[
            "method=prefork",
            "socket=/home/user/mysite.sock",
            "pidfile=django.pid",
        ]);
        assert!(c.daemonize);
        assert!(c.pidfile.as_ref().unwrap().is_absolute());

        let c = ok(&[
            "daemonize=false",
            "socket=/tmp/mysite.sock",
            "maxrequests=1",
        ]);
        assert!(!c.daemonize);
        assert_eq!(c.method, Method::Prefork);

        let c = ok(&[
            "socket=/home/user/myproject/mysite.sock",
            "pidfile=/home/user/myproject/mysite.pid",
        ]);
        assert!(c.daemonize);

        let c = ok(&["protocol=scgi"]);
        assert_eq!(c.listen, Listen::Inherited(Inherited::Fd0));

        let c = ok(&["socket=/tmp/s", "umask=0002"]);
        assert_eq!(c.umask, Some(0o002));

        // runfastcgi(method="threaded", daemonize="false")
        let c = ok(&["method=threaded", "daemonize=false"]);
        assert!(!c.daemonize);
    }

    // --- help and docs

    #[test]
    fn help_lists_every_option_within_79_columns() {
        let help = help_text();
        for o in OPTIONS {
            assert!(help.contains(&format!("  {}=", o.name)), "{}", o.name);
        }
        for line in help.lines() {
            assert!(line.chars().count() <= HELP_WIDTH, "too long: {line:?}");
        }
        let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words.contains("protocol=fcgi|scgi|ajp"));
        assert!(!words.contains("[not supported yet"));
        assert!(words.contains("[default: 65536]"));
    }

    #[test]
    fn help_examples_are_valid() {
        for line in help_text().lines() {
            let Some(cmd) = line.trim().strip_prefix("$ appserver runfcgi ") else {
                continue;
            };
            let items: Vec<&str> = cmd.split_whitespace().collect();
            config(&items).unwrap_or_else(|e| panic!("{cmd}: {e}"));
        }
    }

    #[test]
    fn wrap_splits_at_spaces() {
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("longword x", 4), ["longword", "x"]);
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    fn wsgi_options_are_checked() {
        if !cfg!(feature = "wsgi") {
            let e = err(&["app=wsgi", "module=mysite.wsgi"]);
            assert!(
                e.contains("option \"app\"") && e.contains("cargo feature wsgi"),
                "{e}"
            );
            return;
        }
        let c = ok(&["app=wsgi", "module=mysite.wsgi", "pythonpath=/srv/a:b"]);
        assert_eq!(c.app, App::Wsgi);
        assert_eq!(
            (c.wsgi.module.as_str(), c.wsgi.callable.as_str()),
            ("mysite.wsgi", "application")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.wsgi.pythonpath, [PathBuf::from("/srv/a"), cwd.join("b")]);
        assert!(!c.wsgi.preload);
        let c = ok(&["app=wsgi", "module=app:wsgi_app"]);
        assert_eq!(c.wsgi.callable, "wsgi_app");
        assert_eq!(c.wsgi.pythonpath, [cwd]);
        assert!(err(&["app=wsgi"]).contains("needs module="));
        for bad in ["my-site.wsgi", "a..b", "a:", "a:b:c", "1a"] {
            let item = format!("module={bad}");
            assert!(
                err(&["app=wsgi", &item]).contains("not a Python module path"),
                "{bad}"
            );
        }
        assert!(
            err(&["app=wsgi", "module=m", "method=threaded", "preload=true"])
                .contains("needs method=prefork")
        );
        assert!(ok(&["app=wsgi", "module=m", "preload=yes"]).wsgi.preload);
        assert!(err(&["module=m"]).contains("is an option of app=wsgi; app=info"));
        assert!(err(&["app=cgi", "preload=true"]).contains("is an option of app=wsgi"));
    }

    #[test]
    fn status_options() {
        let c = ok(&[]);
        assert_eq!((c.status_path.clone(), c.metrics.clone()), (None, None));
        assert_eq!((c.accesslog.clone(), c.slowlog), (None, None));
        assert_eq!(c.accesslog_format, AccessLogFormat::Combined);
        let c = ok(&[
            "status_path=/fcgi-status",
            "metrics=127.0.0.1:9117",
            "accesslog=-",
            "accesslog_format=json",
            "slowlog=5",
        ]);
        assert_eq!(c.status_path.as_deref(), Some("/fcgi-status"));
        assert_eq!(c.metrics, Some(MetricsAddr::Tcp("127.0.0.1:9117".into())));
        assert_eq!(
            c.accesslog,
            Some(PathBuf::from("-")),
            "- is stderr, not a file"
        );
        assert_eq!(c.accesslog_format, AccessLogFormat::Json);
        assert_eq!(c.slowlog, Some(Duration::from_secs(5)));
        assert!(ok(&["accesslog=a.log"]).accesslog.unwrap().is_absolute());
        for good in ["[::1]:1", "localhost:65535", "/run/appserver-metrics.sock"] {
            assert!(config(&[&format!("metrics={good}")]).is_ok(), "{good}");
        }
        for bad in [
            "9117",
            ":9117",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:x",
            "relative.sock",
        ] {
            let e = err(&[&format!("metrics={bad}")]);
            assert!(
                e.contains("\"metrics\"") && e.contains("loopback HOST:PORT"),
                "{bad}: {e}"
            );
        }
        let e = err(&["metrics=0.0.0.0:9117"]);
        assert!(e.contains("not a loopback address"), "{e}");
        let long = format!("metrics=/{}", "a".repeat(MAX_SOCKET_PATH));
        assert!(err(&[&long]).contains("longer than"));
        let at_limit = format!("metrics=/{}", "a".repeat(MAX_SOCKET_PATH - 1));
        assert!(config(&[&at_limit]).is_ok());
        for bad in ["status", "/a?b", "/a b", "", "/a#b"] {
            let e = err(&[&format!("status_path={bad}")]);
            assert!(e.contains("\"status_path\""), "{bad}: {e}");
        }
        check_range("slowlog", 1, 86400);
        assert!(err(&["accesslog_format=clf"]).contains("combined, json"));
    }

    #[test]
    fn options_md_matches_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/options.md");
        let generated = options_markdown();
        if std::env::var_os("APPSERVER_UPDATE_DOCS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/options.md is out of date; regenerate it with \
             APPSERVER_UPDATE_DOCS=1 cargo test --lib config::tests::options_md_matches_table"
        );
    }
}
