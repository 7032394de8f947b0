//! Daemonizing, the pidfile, switching to `user=`/`group=`, and systemd readiness.
//!
//! [`daemonize`] runs after the listener is bound and before the tokio runtime or any thread
//! exists (threads do not survive a fork). The parent waits until the child reports that it is
//! serving (or has failed), prints one line, and exits; the child detaches and returns a
//! [`Ready`] to call once it serves. Until then the child's standard error is still the
//! terminal's, so a failure to start (a live pidfile, a bad `workdir=`) is seen where the
//! command was typed, and the parent exits 1.
//!
//! [`Pidfile`] writes the pid atomically and removes the file at exit only while it still
//! names this process: the seed's restart script (`kill old; rm pidfile; start new`) lets the
//! new server write its pidfile while the old one is still finishing.
//!
//! This module knows no protocol and no runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, pipe2, setsid, Pid};

use crate::config::Config;
use crate::listen::StdListener;
use crate::sys::{self, Forked};

/// Mode of `outlog=`/`errlog=` files created by appserver (minus the umask): the owner writes,
/// the group reads.
pub const LOG_MODE: u32 = 0o640;

/// Mode of the pidfile (minus the umask): anyone may read it, as `kill $(cat pidfile)` needs.
pub const PIDFILE_MODE: u32 = 0o644;

/// What the child writes to the readiness pipe once it serves.
const READY_MESSAGE: &[u8] = b"ok\n";

/// Detaches from the terminal: forks, and in the parent waits for the child's readiness,
/// prints `appserver: pid N serving PROTOCOL on LISTEN` to stdout and exits (0 once the child
/// is ready, 1 if it exits first); it never returns there.
///
/// The parent closes its copy of `listener` before it waits: a child that fails then finds
/// nobody listening on its unix socket any more, and removes the file as it exits.
///
/// In the child: `setsid`, the daemon umask ([`Config::daemon_umask`]), `chdir(workdir)`,
/// stdin from `/dev/null`; `outlog=`/`errlog=` (or `/dev/null`) are opened now, so an
/// unwritable log is an error here, and become stdout/stderr at [`Ready::ready`].
///
/// Call before the tokio runtime or any thread exists: a process with more than one thread
/// refuses to fork.
pub fn daemonize(config: &Config, listen: &str, listener: &impl AsFd) -> io::Result<Ready> {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)?;
    // Flush before forking, or both processes would write what is buffered.
    io::stdout().flush()?;
    match sys::fork()? {
        Forked::Parent(child) => {
            drop(write_end);
            // The parent only waits, then exits without running destructors (parent_exit):
            // the handle it closes here is never used or closed again in this process.
            let _ = nix::unistd::close(listener.as_fd().as_raw_fd());
            let ready = wait_ready(File::from(read_end));
            parent_exit(child, ready, config.protocol.name(), listen)
        }
        Forked::Child => {
            drop(read_end);
            detach(config, write_end)
        }
    }
}

/// The child's promise to report readiness to the waiting parent.
///
/// Dropping it without calling [`Ready::ready`] (the child failed to start) lets the parent
/// exit 1.
#[derive(Debug)]
pub struct Ready {
    pipe: File,
    outlog: File,
    errlog: File,
}

impl Ready {
    /// Reports readiness to the parent (which prints its line and exits 0), then points stdout
    /// and stderr at `outlog=`/`errlog=`. Call right after printing the ready line.
    pub fn ready(self) {
        let Self {
            mut pipe,
            outlog,
            errlog,
        } = self;
        // A parent that is gone has nobody to tell; serving goes on.
        let _ = pipe.write_all(READY_MESSAGE);
        drop(pipe);
        let _ = io::stderr().flush();
        let _ = io::stdout().flush();
        // These only fail for invalid descriptors, and both are open files; output then stays
        // where it was.
        let _ = dup2(outlog.as_raw_fd(), 1);
        let _ = dup2(errlog.as_raw_fd(), 2);
    }
}

/// Reopens `outlog=`/`errlog=` as stdout/stderr (SIGUSR1, after logrotate moved them).
/// Does nothing when not daemonized.
pub fn reopen_logs(config: &Config) -> io::Result<()> {
    if !config.daemonize {
        return Ok(());
    }
    let out = open_log(config.outlog.as_deref(), "outlog")?;
    let err = open_log(config.errlog.as_deref(), "errlog")?;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    dup2(out.as_raw_fd(), 1)?;
    dup2(err.as_raw_fd(), 2)?;
    Ok(())
}

/// Switches to `user=`/`group=`: call once the listener is bound and the pidfile written,
/// before any worker or thread exists. A unix socket appserver bound is first handed to that
/// user and group, so that the web server's group may connect and the server may still
/// remove it at exit. Does nothing without `user=`/`group=`, or when the process already runs
/// as them (a prefork master re-executed by HUP).
pub fn drop_privileges(config: &Config, listener: &mut StdListener) -> io::Result<()> {
    let Some(account) = sys::Account::resolve(config.user.as_deref(), config.group.as_deref())?
    else {
        return Ok(());
    };
    if account.is_current() {
        return Ok(());
    }
    let uid = account.user.as_ref().map(|(_, uid)| *uid);
    listener.chown(uid, Some(account.gid)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot hand {} to user=/group=: {e}",
                config.listen_description()
            ),
        )
    })?;
    account.switch()
}

/// Tells systemd about a state change (`READY=1`, `STOPPING=1`) when `NOTIFY_SOCKET` is set;
/// returns whether a message was sent.
pub fn notify_systemd(config: &Config, state: &str) -> io::Result<bool> {
    let Some(socket) = &config.notify_socket else {
        return Ok(false);
    };
    let message = format!("{state}\nMAINPID={}\n", std::process::id());
    let datagram = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        datagram.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        datagram.send_to(message.as_bytes(), socket)?;
    }
    Ok(true)
}

/// Reads the pipe until the child's ready message or end of file.
fn wait_ready(mut pipe: File) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(READY_MESSAGE) {
                    return true;
                }
                if got.len() >= READY_MESSAGE.len() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The parent's end: one line, then exit without running destructors (the listener and its
/// socket file belong to the child now).
fn parent_exit(child: u32, ready: bool, protocol: &str, listen: &str) -> ! {
    if ready {
        println!("appserver: pid {child} serving {protocol} on {listen}");
        let _ = io::stdout().flush();
        std::process::exit(0);
    }
    let how = match i32::try_from(child).map(|pid| waitpid(Pid::from_raw(pid), None)) {
        Ok(Ok(WaitStatus::Exited(_, code))) => format!("exited with status {code}"),
        Ok(Ok(WaitStatus::Signaled(_, signal, _))) => format!("was killed by {signal}"),
        _ => "stopped".to_owned(),
    };
    eprintln!("appserver: the server (pid {child}) {how} before it was ready");
    std::process::exit(1);
}

/// The child's side of [`daemonize`].
fn detach(config: &Config, pipe: OwnedFd) -> io::Result<Ready> {
    setsid()?;
    sys::set_umask(config.daemon_umask());
    std::env::set_current_dir(&config.workdir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("workdir {}: {e}", config.workdir.display()),
        )
    })?;
    let outlog = open_log(config.outlog.as_deref(), "outlog")?;
    let errlog = open_log(config.errlog.as_deref(), "errlog")?;
    let null = File::open("/dev/null")?;
    dup2(null.as_raw_fd(), 0)?;
    Ok(Ready {
        pipe: File::from(pipe),
        outlog,
        errlog,
    })
}

/// Opens a log file for appending (created [`LOG_MODE`]), or `/dev/null` when none is set.
fn open_log(path: Option<&Path>, option: &str) -> io::Result<File> {
    let Some(path) = path else {
        return OpenOptions::new().write(true).open("/dev/null");
    };
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{option} {}: {e}", path.display())))
}

/// A pidfile naming this process, removed when dropped if it still does.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

impl Pidfile {
    /// Writes this process's pid to `path`, atomically (a temporary file renamed over it).
    ///
    /// Fails when the file names a live process (`pidfile PATH: appserver already running as
    /// pid N`); a file naming a dead process, or not a pid at all, is stale and replaced.
    pub fn create(path: &Path) -> io::Result<Self> {
        let context = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("pidfile {}: {what}: {e}", path.display()))
        };
        match fs::read_to_string(path) {
            Ok(text) => {
                if let Some(pid) = parse_pid(&text) {
                    // Our own pid: a graceful reload (HUP) re-executed this very process. The
                    // file is right as it is, and after user= the process may no longer be
                    // allowed to write in its directory.
                    if pid == std::process::id() {
                        return Ok(Self {
                            path: path.to_owned(),
                            pid,
                        });
                    }
                    if sys::process_alive(pid) {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "pidfile {}: appserver already running as pid {pid}",
                                path.display()
                            ),
                        ));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context(e, "cannot read")),
        }
        let pid = std::process::id();
        let tmp = temp_path(path, pid);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PIDFILE_MODE)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(context(e, "cannot write"));
        }
        Ok(Self {
            path: path.to_owned(),
            pid,
        })
    }

    /// The pidfile's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file still names this process (and this is the process that wrote it).
    pub fn is_ours(&self) -> bool {
        std::process::id() == self.pid
            && fs::read_to_string(&self.path)
                .ok()
                .and_then(|t| parse_pid(&t))
                == Some(self.pid)
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if self.is_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pid in a pidfile's text: decimal digits, surrounding whitespace allowed.
fn parse_pid(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&pid| pid > 0)
}

/// `DIR/.NAME.PID.tmp` next to the pidfile, so the rename stays on one file system.
fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{pid}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pidfile_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(pidfile.path(), path);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(entries(dir.path()), ["app.pid"], "no temporary file left");
        assert!(pidfile.is_ours());
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn pidfile_of_a_live_process_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.pid");
        // A child of ours stands for the running server.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = format!("{}\n", child.id());
        fs::write(&path, &live).unwrap();
        let result = Pidfile::create(&path);
        let _ = child.kill();
        let _ = child.wait();
        let e = result.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            e.to_string(),
            format!(
                "pidfile {}: appserver already running as pid {}",
                path.display(),
                child.id()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), live, "left untouched");
    }

    #[test]
    fn pidfile_naming_this_very_process_is_taken_over() {
        // A prefork master re-executed by SIGHUP keeps its pid and its pidfile.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("self.pid");
        fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert!(pidfile.is_ours());
    }

    #[test]
    fn pidfile_of_a_dead_process_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.pid");
        fs::write(&path, format!("{}\n", dead_pid())).unwrap();
        let _pidfile = Pidfile::create(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn pidfile_with_garbage_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        for garbage in [
            "",
            "not a pid\n",
            "-5\n",
            "0\n",
            "12x\n",
            "99999999999999999999\n",
        ] {
            let path = dir.path().join("garbage.pid");
            fs::write(&path, garbage).unwrap();
            let pidfile = Pidfile::create(&path).unwrap();
            assert!(pidfile.is_ours(), "{garbage:?}");
        }
    }

    #[test]
    fn pidfile_replaced_by_a_new_server_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restart.pid");
        let old = Pidfile::create(&path).unwrap();
        // The restart script removed it and the new server wrote its own pid.
        fs::remove_file(&path).unwrap();
        fs::write(&path, "4242\n").unwrap();
        assert!(!old.is_ours());
        drop(old);
        assert_eq!(fs::read_to_string(&path).unwrap(), "4242\n");
    }

    #[test]
    fn pidfile_already_removed_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.pid");
        let pidfile = Pidfile::create(&path).unwrap();
        fs::remove_file(&path).unwrap();
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn pidfile_in_a_missing_directory_fails_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/app.pid");
        let e = Pidfile::create(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("pidfile {}: cannot write: ", path.display())),
            "{e}"
        );
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid("  77  "), Some(77));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("1 2"), None);
        assert_eq!(parse_pid("+3"), None);
    }

    #[test]
    fn log_files_are_created_for_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("err.log");
        fs::write(&path, "before\n").unwrap();
        let mut f = open_log(Some(&path), "errlog").unwrap();
        f.write_all(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "before\nafter\n");

        let new = dir.path().join("out.log");
        drop(open_log(Some(&new), "outlog").unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !LOG_MODE, 0, "mode {mode:o}");

        let e = open_log(Some(&dir.path().join("no/such.log")), "outlog").unwrap_err();
        assert!(e.to_string().starts_with("outlog "), "{e}");
    }

    #[test]
    fn readiness_pipe_protocol() {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        File::from(w).write_all(READY_MESSAGE).unwrap();
        assert!(wait_ready(File::from(r)));

        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        drop(w);
        assert!(!wait_ready(File::from(r)), "closed without a word: failed");

        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        File::from(w).write_all(b"no\n").unwrap();
        assert!(!wait_ready(File::from(r)));
    }

    #[test]
    fn systemd_notification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let env = |name: &str| (name == "NOTIFY_SOCKET").then(|| path.display().to_string());
        let config = Config::from_args(crate::config::Args::default(), &env).unwrap();
        assert!(notify_systemd(&config, "READY=1").unwrap());
        let mut buf = [0u8; 128];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("READY=1\nMAINPID={}\n", std::process::id())
        );
        assert!(!notify_systemd(&Config::default(), "READY=1").unwrap());
    }
}
