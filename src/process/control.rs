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
//!
//! [`TouchReload`] is the other way to ask for [`Control::Reload`]: `touch_reload=FILE`, as
//! uWSGI's `touch-reload`, for operators who can touch a file but not signal the server (a
//! server spawned by mod_fcgid on shared hosting).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// How often `touch_reload=` looks at its file.
///
/// One `stat` a second costs nothing, and whoever touched the file waits a second at most.
/// Looking on every request instead would put a syscall on the hot path, in every worker,
/// when only the prefork master (or the single `method=threaded` process) may reload.
pub const TOUCH_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Environment variable through which a reloading server tells its re-executed image what
/// the `touch_reload=` file looked like just before the exec.
///
/// The new image compares with that instead of with what it finds once it runs, so a touch
/// made while it was starting still reloads; the state is read right before the exec, so the
/// touch that caused the reload (and any made while the old image finished its requests,
/// which the new image has loaded anyway) does not cause another one.
pub const TOUCH_STATE_ENV: &str = "APPSERVER_TOUCH_STATE";

/// What `touch_reload=` compares: the file's identity and modification time, or its absence.
///
/// The identity (device and inode) makes a file replaced by another (`mv new FILE`, a
/// deployment switching a symlink) count even when the modification times are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileState {
    Missing,
    Present {
        dev: u64,
        ino: u64,
        mtime: i64,
        mtime_nsec: i64,
    },
}

impl FileState {
    /// The state of `path` (symlinks followed); an error other than "not there" when it
    /// cannot be told.
    fn of(path: &Path) -> io::Result<Self> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Self::Present {
                dev: meta.dev(),
                ino: meta.ino(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(Self::Missing)
            }
            Err(e) => Err(e),
        }
    }

    /// The form [`TOUCH_STATE_ENV`] carries: `missing` or `DEV:INO:MTIME:NSEC`.
    fn encode(self) -> String {
        match self {
            Self::Missing => "missing".to_owned(),
            Self::Present {
                dev,
                ino,
                mtime,
                mtime_nsec,
            } => format!("{dev}:{ino}:{mtime}:{mtime_nsec}"),
        }
    }

    fn decode(value: &str) -> Option<Self> {
        if value == "missing" {
            return Some(Self::Missing);
        }
        let mut fields = value.split(':');
        let state = Self::Present {
            dev: fields.next()?.parse().ok()?,
            ino: fields.next()?.parse().ok()?,
            mtime: fields.next()?.parse().ok()?,
            mtime_nsec: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(state)
    }
}

/// Checks a `touch_reload=` path before the server starts: the file, or at least its
/// directory, must exist (a file that does not exist yet is watched for its creation, as
/// uWSGI does, so a typo in the directory is the mistake worth catching), and it must not be
/// a directory. The message says what is wrong, without the option name.
pub fn check_touch_reload(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{} is a directory; name a file (touching it reloads the server)",
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            let parent = path.parent().unwrap_or(Path::new("/"));
            match fs::metadata(parent) {
                Ok(dir) if dir.is_dir() => Ok(()),
                Ok(_) => Err(format!("{} is not a directory", parent.display())),
                Err(_) => Err(format!("{}: its directory does not exist", path.display())),
            }
        }
        Err(e) => Err(format!("cannot look at {}: {e}", path.display())),
    }
}

/// `touch_reload=FILE`: watches a file, and tells when it was touched, replaced, created or
/// removed. Only the process that reloads (the prefork master, the `method=threaded`
/// process) keeps one, and asks [`TouchReload::changed`] once per
/// [`TOUCH_RELOAD_INTERVAL`].
#[derive(Debug)]
pub struct TouchReload {
    path: PathBuf,
    /// What the file looked like at the last look that could tell (`None` while it never
    /// could).
    seen: Option<FileState>,
    /// Whether the last look failed (logged once, until a look succeeds again).
    failing: bool,
}

impl TouchReload {
    /// Starts watching `path` from the state a reloading image passed on in
    /// [`TOUCH_STATE_ENV`] (which is removed), or else from its state now.
    ///
    /// Changes the environment: call before any thread exists.
    pub fn new(path: PathBuf) -> Self {
        let handed_over = std::env::var_os(TOUCH_STATE_ENV);
        std::env::remove_var(TOUCH_STATE_ENV);
        let handed_over = handed_over.and_then(|value| {
            let state = value.to_str().and_then(FileState::decode);
            if state.is_none() {
                tracing::warn!(
                    "{TOUCH_STATE_ENV}={value:?} is not a file state: ignored, watching \
                     touch_reload={} from now",
                    path.display()
                );
            }
            state
        });
        let mut watch = Self {
            path,
            seen: handed_over,
            failing: false,
        };
        if watch.seen.is_none() {
            watch.seen = watch.look();
        }
        if watch.seen == Some(FileState::Missing) {
            tracing::warn!(
                "touch_reload={}: no such file yet; creating it will reload the server",
                watch.path.display()
            );
        }
        watch
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file: whether its identity or modification time changed, or it appeared
    /// or disappeared, since the last look. A look that fails (permissions, I/O) changes
    /// nothing; the first failure in a row is logged.
    pub fn changed(&mut self) -> bool {
        let Some(now) = self.look() else {
            return false;
        };
        match self.seen.replace(now) {
            Some(before) => before != now,
            None => false,
        }
    }

    /// The variable and value that tell the re-executed image what the file looks like now
    /// (see [`TOUCH_STATE_ENV`]); `None` when that cannot be told, and the new image then
    /// starts from what it finds.
    pub fn handover(&self) -> Option<(&'static str, String)> {
        FileState::of(&self.path)
            .ok()
            .map(|state| (TOUCH_STATE_ENV, state.encode()))
    }

    fn look(&mut self) -> Option<FileState> {
        match FileState::of(&self.path) {
            Ok(state) => {
                self.failing = false;
                Some(state)
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "touch_reload={}: cannot look at it: {e}",
                        self.path.display()
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn file_states_round_trip() {
        let present = FileState::Present {
            dev: 2049,
            ino: 1_234_567,
            mtime: -5,
            mtime_nsec: 999_999_999,
        };
        for state in [FileState::Missing, present] {
            assert_eq!(FileState::decode(&state.encode()), Some(state));
        }
        assert_eq!(present.encode(), "2049:1234567:-5:999999999");
        for bad in [
            "",
            "gone",
            "1:2:3",
            "1:2:3:4:5",
            "1:2:x:4",
            "-1:2:3:4",
            " 1:2:3:4",
        ] {
            assert_eq!(FileState::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn touch_replace_remove_and_create_count_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.fcgi");
        fs::write(&path, "v1").unwrap();
        let mut watch = TouchReload::new(path.clone());
        assert!(!watch.changed(), "nothing happened yet");

        // A touch within the same second still changes the nanoseconds; forward is surest.
        let later = SystemTime::now() + Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(watch.changed(), "touched");
        assert!(!watch.changed(), "one change reloads once");

        // Replaced by another file with the same modification time: the inode differs.
        let new = dir.path().join("site.fcgi.new");
        fs::write(&new, "v2").unwrap();
        fs::File::options()
            .write(true)
            .open(&new)
            .unwrap()
            .set_modified(later)
            .unwrap();
        fs::rename(&new, &path).unwrap();
        assert!(watch.changed(), "replaced");
        assert!(!watch.changed());

        fs::remove_file(&path).unwrap();
        assert!(watch.changed(), "removed");
        assert!(!watch.changed());
        fs::write(&path, "v3").unwrap();
        assert!(watch.changed(), "created");
        assert!(!watch.changed());
    }

    #[test]
    fn checks_before_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("restart.txt");
        assert_eq!(check_touch_reload(&file), Ok(()), "created later");
        fs::write(&file, "").unwrap();
        assert_eq!(check_touch_reload(&file), Ok(()));
        let e = check_touch_reload(dir.path()).unwrap_err();
        assert!(e.ends_with("is a directory; name a file (touching it reloads the server)"));
        let e = check_touch_reload(&dir.path().join("nodir/restart.txt")).unwrap_err();
        assert!(
            e.ends_with("nodir/restart.txt: its directory does not exist"),
            "{e}"
        );
        let e = check_touch_reload(&file.join("x")).unwrap_err();
        assert!(e.ends_with("restart.txt is not a directory"), "{e}");
    }
}
