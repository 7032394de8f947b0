//! Daemonizing, the pidfile, switching to `user=`/`group=`, and systemd readiness.
//!
//! [`daemonize`] runs after the listener is bound and before the tokio runtime or any thread
//! exists (threads do not survive a fork). The parent waits until the child reports that it is
//! serving (or has failed), prints one line, and exits; the child detaches and returns a
//! [`Ready`] to call once it serves. Until then the child's standard error is still the
//! terminal's, so a failure to start (a live pidfile, a bad `workdir=`) is seen where the
//! command was typed, and the parent exits 1.
//!
//! [`Pidfile`] writes the pid atomically, through a temporary file no other user can plant a
//! symlink for, treats a pidfile naming a process that is not a running appserver as stale,
//! and removes the file at exit only while it still names this process: the seed's restart script (`kill old; rm pidfile; start new`) lets the
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
    /// Writes this process's pid to `path`, atomically: to a new file of an unpredictable
    /// name in the same directory, opened with `O_CREAT|O_EXCL|O_NOFOLLOW` (so a symlink
    /// planted there is never followed, even as root), then renamed over `path`.
    ///
    /// Fails when the file names a live appserver (`pidfile PATH: appserver already running
    /// as pid N`). A file naming a dead process, a process that is not this program (its
    /// `/proc/PID/exe` differs) or one started after the file was written (the pid was
    /// reused), or not a pid at all, is stale: it is replaced, with a log line.
    pub fn create(path: &Path) -> io::Result<Self> {
        let context = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("pidfile {}: {what}: {e}", path.display()))
        };
        match read_nofollow(path) {
            Ok((text, written)) => {
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
                    match holder(pid, written) {
                        Holder::Appserver => {
                            return Err(io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                format!(
                                    "pidfile {}: appserver already running as pid {pid}",
                                    path.display()
                                ),
                            ));
                        }
                        Holder::Other(what) => tracing::warn!(
                            "pidfile {}: pid {pid} is {what}, not a running appserver: \
                             replacing the stale pidfile",
                            path.display()
                        ),
                        Holder::Dead => {}
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A symlink where the pidfile should be: never followed, replaced by the rename.
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {}
            Err(e) => return Err(context(e, "cannot read")),
        }
        let pid = std::process::id();
        let (tmp, written) = match write_temp(path, pid) {
            Ok(tmp) => {
                let renamed = fs::rename(&tmp, path);
                (tmp, renamed)
            }
            Err(e) => return Err(context(e, "cannot write")),
        };
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

/// Most attempts at a fresh temporary name before giving up: each name is 64 random bits,
/// so a clash means someone is guessing, not bad luck.
const TEMP_ATTEMPTS: u32 = 16;

/// Writes `pid` to a new file `DIR/.NAME.RANDOM.tmp` next to the pidfile (so the rename
/// stays on one file system) and returns its path. The name cannot be predicted by another
/// user, and `O_EXCL|O_NOFOLLOW` refuses whatever is already there, a symlink included.
fn write_temp(path: &Path, pid: u32) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", random_u64()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .mode(PIDFILE_MODE)
            .open(&tmp);
        match file {
            Ok(mut f) => {
                if let Err(e) = f.write_all(format!("{pid}\n").as_bytes()) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                return Ok(tmp);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// 64 bits no other process can predict: std's per-process random hash keys (read from the
/// OS once), mixed with the time and a counter.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Reads the pidfile without following a symlink (`ELOOP` if it is one); returns its text
/// and when it was last written.
fn read_nofollow(path: &Path) -> io::Result<(String, Option<std::time::SystemTime>)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    let written = file.metadata().and_then(|m| m.modified()).ok();
    let mut text = String::new();
    // A pidfile is a number: what does not fit in a page is not one.
    (&mut file).take(4096).read_to_string(&mut text)?;
    Ok((text, written))
}

/// Who holds the pid a pidfile names.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// Nobody: the process is gone.
    Dead,
    /// A process running this very program, started before the pidfile was written (or
    /// one that cannot be looked at, which is treated the same, to be safe).
    Appserver,
    /// Another program, or a process started after the pidfile was written: the pid was
    /// reused. Says which.
    Other(String),
}

/// Linux's `USER_HZ`: the unit of `/proc/PID/stat` start times, 100 on every architecture
/// (the kernel converts to it for user space).
const USER_HZ: u64 = 100;

/// Whether `pid` is a running appserver: alive, running the same executable as this
/// process (`/proc/PID/exe`), and not started after `written` (the pidfile's mtime).
fn holder(pid: u32, written: Option<std::time::SystemTime>) -> Holder {
    if !sys::process_alive(pid) {
        return Holder::Dead;
    }
    let exe = |p: &str| {
        fs::read_link(format!("/proc/{p}/exe")).map(|l| {
            // An upgraded binary still runs as its old, now deleted, file.
            let text = l.to_string_lossy().into_owned();
            text.strip_suffix(" (deleted)")
                .map(str::to_owned)
                .unwrap_or(text)
        })
    };
    match (exe(&pid.to_string()), exe("self")) {
        (Ok(theirs), Ok(ours)) if theirs != ours => {
            return Holder::Other(format!("a process of {theirs}"));
        }
        // Not ours to look at (another user's, hidepid): assume the worst.
        _ => {}
    }
    if let (Some(started), Some(written)) = (start_time(pid), written) {
        // One second of slack: /proc/stat's boot time is in whole seconds.
        if started > written + std::time::Duration::from_secs(1) {
            return Holder::Other("a process started after the pidfile was written".to_owned());
        }
    }
    Holder::Appserver
}

/// When process `pid` started (from `/proc/PID/stat` and the boot time in `/proc/stat`).
fn start_time(pid: u32) -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = std::time::Duration::from_millis(ticks.checked_mul(1000)? / USER_HZ);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
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
    fn pidfile_of_a_live_other_program_is_stale() {
        // issue 12, finding 6: a pid reused by an unrelated process blocked the start.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(&path, format!("{}\n", child.id())).unwrap();
        let result = Pidfile::create(&path);
        let _ = child.kill();
        let _ = child.wait();
        let pidfile = result.unwrap();
        assert!(pidfile.is_ours());
    }

    #[test]
    fn holders_of_a_pid() {
        let now = std::time::SystemTime::now();
        let me = std::process::id();
        assert_eq!(holder(me, Some(now)), Holder::Appserver);
        assert_eq!(holder(me, None), Holder::Appserver);
        // This process started long after 1970: a pidfile that old named someone else.
        assert_eq!(
            holder(me, Some(std::time::UNIX_EPOCH)),
            Holder::Other("a process started after the pidfile was written".to_owned())
        );
        assert_eq!(holder(dead_pid(), Some(now)), Holder::Dead);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = holder(child.id(), Some(now));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(&other, Holder::Other(what) if what.contains("sleep")),
            "{other:?}"
        );
    }

    #[test]
    fn start_time_is_this_process_s() {
        let started = start_time(std::process::id()).unwrap();
        let now = std::time::SystemTime::now();
        assert!(started <= now + std::time::Duration::from_secs(1));
        assert!(now.duration_since(started).unwrap() < std::time::Duration::from_secs(3600));
    }

    #[test]
    fn symlinks_planted_next_to_the_pidfile_are_never_followed() {
        // issue 12, finding 6: the temporary file was `.NAME.PID.tmp`, opened without
        // O_EXCL/O_NOFOLLOW, so a symlink there made root clobber any file.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("app.pid");
        let predictable = dir
            .path()
            .join(format!(".app.pid.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &predictable).unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert!(pidfile.is_ours());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        drop(pidfile);

        // The pidfile itself a symlink: replaced, not written through.
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let pidfile = Pidfile::create(&path).unwrap();
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        drop(pidfile);
    }

    #[test]
    fn temporary_names_are_fresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let a = write_temp(&path, 1).unwrap();
        let b = write_temp(&path, 1).unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".app.pid.") && name.ends_with(".tmp"),
            "{name}"
        );
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
