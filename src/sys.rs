//! The only `unsafe` code in appserver (style rule 14): taking ownership of inherited file
//! descriptors, forking, the status scoreboard's shared memory and `TCP_INFO`. Each block says why it is sound; everything that nix or std offer
//! safely (setsid, dup2, umask, kill) is called safely, here or at its use.
//!
//! Nothing here knows about protocols, configuration or the runtime.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::kill;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{dup2, Pid};

/// Whether the inherited systemd descriptor (fd 3) has been made into an [`OwnedFd`].
static FD3_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes an inherited listening socket (fd 0 from a web server, fd 3 from systemd) as an
/// owned, close-on-exec descriptor.
///
/// fd 0 is duplicated to a descriptor above 2 and fd 0 itself then reads `/dev/null`, so
/// neither a daemon's stdin redirection nor a spawned program (a CGI script inheriting stdin)
/// ever gets the listening socket. fd 3 is taken as is, at most once.
pub(crate) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd == 0 {
        let dup = fcntl(0, FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: `dup` was just returned by fcntl(F_DUPFD_CLOEXEC): it is open and no other
        // object in the process refers to it, so the OwnedFd is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let null = File::open("/dev/null")?;
        dup2(null.as_raw_fd(), 0)?;
        return Ok(owned);
    }
    if fd != 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not an inherited listener"),
        ));
    }
    if FD3_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "fd 3 was already taken",
        ));
    }
    // Also proves fd 3 is open (EBADF otherwise).
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: systemd passed fd 3 to this process (the caller checked LISTEN_PID), fcntl just
    // showed it is open, std never opens fd 3 behind our back before this point (bind runs
    // first thing), and FD3_TAKEN guarantees this is the only OwnedFd ever made for it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flag = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flag))?;
    Ok(())
}

/// Takes the listener descriptor a reloading master passed to its re-executed self through
/// `APPSERVER_REEXEC_FD`, at most once.
pub(crate) fn take_reexec_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} cannot be a re-exec listener"),
        ));
    }
    if REEXEC_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the re-exec listener was already taken",
        ));
    }
    // Also proves the descriptor is open (EBADF otherwise).
    set_cloexec(fd, true)?;
    // SAFETY: the previous image of this very process (same pid: exec keeps it) kept `fd`
    // open across exec for exactly this purpose and named it in the environment; fcntl just
    // showed it is open; this runs before anything else opens descriptors, and REEXEC_TAKEN
    // guarantees this is the only OwnedFd ever made for it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

static REEXEC_TAKEN: AtomicBool = AtomicBool::new(false);

/// A descriptor of the status module that a reloading process keeps across exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusFd {
    /// The scoreboard's shared memory file (`APPSERVER_SCOREBOARD_FD`).
    Scoreboard,
    /// The `metrics=` listener (`APPSERVER_METRICS_FD`).
    Metrics,
}

/// Takes a status descriptor that the previous image of this process kept across exec, at
/// most once per kind.
pub(crate) fn take_status_fd(fd: RawFd, kind: StatusFd) -> io::Result<OwnedFd> {
    static TAKEN: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} cannot be an inherited {kind:?} descriptor"),
        ));
    }
    if TAKEN[kind as usize].swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("the inherited {kind:?} descriptor was already taken"),
        ));
    }
    // Also proves the descriptor is open (EBADF otherwise).
    set_cloexec(fd, true)?;
    // SAFETY: as for take_reexec_fd: the previous image of this process (same pid) kept `fd`
    // open across exec for this purpose and named it in the environment, fcntl just showed it
    // is open, it is taken before the runtime or any thread starts, and TAKEN guarantees this
    // is the only OwnedFd ever made for it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The outcome of [`fork`] in each process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forked {
    /// In the parent, with the child's pid.
    Parent(u32),
    /// In the child.
    Child,
}

/// Forks the process, refusing when more than one thread runs.
///
/// Daemonizing and prefork fork before the tokio runtime or any other thread exists: a child
/// forked from a multi-threaded process holds copies of locks that threads which no longer
/// exist (in the child) may have held.
pub(crate) fn fork() -> io::Result<Forked> {
    if let Some(threads) = thread_count() {
        if threads > 1 {
            return Err(io::Error::other(format!(
                "cannot fork: {threads} threads are running (fork must happen before any \
                 thread or runtime starts)"
            )));
        }
    }
    bind_thread_exit();
    // SAFETY: the process has a single thread (checked above through /proc; where /proc is
    // missing, callers' documented precondition is that no thread has been started), so the
    // child is a complete copy in which no lock is held by a vanished thread and any code,
    // not only async-signal-safe code, may run.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            Ok(Forked::Parent(child.as_raw().unsigned_abs()))
        }
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Has glibc bind, once in this process, what each child would otherwise bind for itself.
///
/// Registering a thread-local destructor (`__cxa_thread_atexit_impl`, on a thread's first use
/// of a thread-local that needs dropping) calls `_dl_find_dso_for_object` through libc's own
/// PLT, which glibc binds lazily whatever the binary's BIND_NOW: the first call in a process
/// looks the symbol up through every loaded library's hash tables. A prefork worker's runtime
/// registers its first destructors when it starts, so every worker made that lookup, and
/// fault-around left the dynamic loader's code and the libraries' symbol tables resident in
/// it: about 280 KiB of an idle worker's RSS (docs/performance.md, "Memory"). Registered here
/// first, on the thread that forks, the binding is copied into every child.
fn bind_thread_exit() {
    thread_local! {
        static BOUND: String = const { String::new() };
    }
    BOUND.with(|_| {});
}

/// Threads in this process, from `/proc/self/task`; `None` when /proc is not available.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|dir| dir.count())
}

/// The process umask, read without changing it where /proc allows.
pub(crate) fn current_umask() -> u32 {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
        if let Some(mask) = value {
            return mask;
        }
    }
    // Without /proc the only way to read it is to set it; put it straight back.
    let old = umask(Mode::from_bits_truncate(0o077));
    umask(old);
    old.bits()
}

/// Sets the process umask; returns the previous one.
pub(crate) fn set_umask(mask: u32) -> u32 {
    umask(Mode::from_bits_truncate(mask)).bits()
}

/// The account a server switches to after binding (`user=`, `group=`), resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    /// The user, when `user=` was given: its name (for its supplementary groups) and uid.
    pub(crate) user: Option<(std::ffi::CString, nix::unistd::Uid)>,
    /// The group: `group=`, else the user's primary group.
    pub(crate) gid: nix::unistd::Gid,
}

impl Account {
    /// Looks up `user` and `group` (names, or numeric ids) in the system's databases;
    /// `None` when neither is given.
    pub(crate) fn resolve(user: Option<&str>, group: Option<&str>) -> io::Result<Option<Self>> {
        use nix::unistd::{Gid, Group, Uid, User};
        let not_found = |what: &str, name: &str| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{what}={name}: no such {what}"),
            )
        };
        let user = match user {
            None => None,
            Some(name) => {
                let found = match name.parse::<u32>() {
                    Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
                    Err(_) => User::from_name(name)?,
                };
                Some(found.ok_or_else(|| not_found("user", name))?)
            }
        };
        let gid = match (group, &user) {
            (Some(name), _) => match name.parse::<u32>() {
                Ok(gid) => Gid::from_raw(gid),
                Err(_) => {
                    Group::from_name(name)?
                        .ok_or_else(|| not_found("group", name))?
                        .gid
                }
            },
            (None, Some(user)) => user.gid,
            (None, None) => return Ok(None),
        };
        let user = match user {
            Some(user) => Some((
                std::ffi::CString::new(user.name).map_err(io::Error::other)?,
                user.uid,
            )),
            None => None,
        };
        Ok(Some(Self { user, gid }))
    }

    /// Whether this process already runs as the account (a re-executed prefork master).
    pub(crate) fn is_current(&self) -> bool {
        use nix::unistd::{getegid, geteuid, getgid, getuid};
        let uid_ok = self
            .user
            .as_ref()
            .is_none_or(|(_, uid)| getuid() == *uid && geteuid() == *uid);
        uid_ok && getgid() == self.gid && getegid() == self.gid
    }

    /// Switches the process to the account for good: supplementary groups (the user's, or
    /// just the group), then the group, then the user, so root cannot be regained. Call
    /// before any thread exists: the ids are per thread at the kernel level.
    pub(crate) fn switch(&self) -> io::Result<()> {
        use nix::unistd::{initgroups, setgid, setgroups, setuid};
        let context = |what: String| {
            move |e: Errno| {
                let hint = if e == Errno::EPERM {
                    " (only root may switch; run as root or drop user=/group=)"
                } else {
                    ""
                };
                io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}{hint}"))
            }
        };
        match &self.user {
            Some((name, _)) => initgroups(name, self.gid),
            None => setgroups(&[self.gid]),
        }
        .map_err(context("cannot set the supplementary groups".to_owned()))?;
        setgid(self.gid).map_err(context(format!("cannot switch to group {}", self.gid)))?;
        if let Some((name, uid)) = &self.user {
            setuid(*uid).map_err(context(format!(
                "cannot switch to user {} ({uid})",
                name.to_string_lossy()
            )))?;
        }
        Ok(())
    }
}

/// Whether process `pid` exists (including one owned by another user).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Raises the soft limit on open files to the hard limit, so `maxconns=` (default 1024)
/// connections fit beside the listener and the logs where the soft limit is 1024 (systemd's
/// default, and many shells'). nginx (`worker_rlimit_nofile`) and Go's runtime do the same.
/// Returns the soft limit now in force.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// Gives the CPU to another runnable process, if there is one (`sched_yield`): a prefork
/// worker's runtime calls it each time it has nothing left to run, before it sleeps in
/// `epoll_wait`.
///
/// Behind a busy web server on the same cores, the runnable process is usually one of the
/// web server's workers, about to connect with its next request or to send it on a kept-alive
/// connection. Once it has, the worker's `epoll_wait` finds the event there and does not
/// sleep; going to sleep first cost a wake-up for nearly every request (on a virtual machine,
/// an idle vCPU and an interrupt to wake it) and, without keep-conn, an `epoll_ctl` pair for
/// each connection accepted before its request arrived. Measured behind nginx, two workers,
/// `wrk -c50` (docs/performance.md, "Giving way before sleeping"): voluntary context switches
/// 202 -> 9 per 1,000 requests without keep-conn, worker CPU 12 -> 9 µs per request and
/// 7-13 % more requests/s; with keep-conn 9-10 -> 7 µs, requests/s the same. With nothing
/// else runnable it returns at once: one system call per sleep. Not for the threaded model's
/// runtime: there it cost 2-9 % of the requests/s, with or without keep-conn.
pub(crate) fn give_way() {
    // SAFETY: sched_yield(2) takes nothing and touches no memory; it cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

/// Registers a listening socket with the runtime for readiness only (accepting stays with
/// the caller); call inside the runtime.
pub(crate) fn readable_listener<L: AsRawFd>(
    listener: L,
) -> io::Result<tokio::io::unix::AsyncFd<L>> {
    // SAFETY: `L` is one of mio's listeners, which own their descriptor and close it only
    // when dropped: the descriptor stays open, the same and returned by every as_raw_fd()
    // for as long as the AsyncFd owns the listener.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
            .map_err(io::Error::from)
    }
}

/// Reads what the socket holds into `buf`'s unfilled part, as the runtime's own reads do,
/// without zeroing it first (a read buffer is 64 KiB or more); `Ok(0)` at the end.
pub(crate) fn recv_into(
    sock: &socket2::SockRef<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> io::Result<usize> {
    // SAFETY: recv(2) only writes initialised bytes into the slice it is given, never
    // de-initialises any, and reports how many it wrote; assume_init covers exactly those.
    unsafe {
        let n = sock.recv(buf.unfilled_mut())?;
        buf.assume_init(n);
        buf.advance(n);
        Ok(n)
    }
}

/// Duplicates `fd` (close-on-exec) into a [`File`] of its own, sharing the file offset: the
/// `wsgi.file_wrapper` fast path reads a Python file object's descriptor without the GIL.
#[cfg(feature = "wsgi")]
pub(crate) fn dup_file(fd: RawFd) -> io::Result<File> {
    let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: `dup` was just returned by fcntl(F_DUPFD_CLOEXEC): it is open and nothing else
    // in the process refers to it, so the File is its only owner.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// The embedded interpreter's C entry points that pyo3 has no safe form of: initialisation
/// with appserver's settings, and the fork hooks. Only the main thread calls these (the one
/// that initialised Python), which is what keeps [`MAIN`](python::MAIN) consistent.
#[cfg(feature = "wsgi")]
pub(crate) mod python {
    use std::ffi::{CStr, CString};
    use std::mem::MaybeUninit;
    use std::ptr::{addr_of_mut, null_mut};
    use std::sync::atomic::{AtomicPtr, Ordering};

    use pyo3::ffi;

    /// The main thread's Python thread state while that thread does not hold the GIL; null
    /// before initialisation and between [`before_fork`] and the matching after-fork call.
    pub(crate) static MAIN: AtomicPtr<ffi::PyThreadState> = AtomicPtr::new(null_mut());

    /// True once [`initialize`] succeeded in this process (or its forked parent).
    pub(crate) fn is_initialized() -> bool {
        // SAFETY: Py_IsInitialized only reads a flag; it may be called at any time.
        unsafe { ffi::Py_IsInitialized() != 0 }
    }

    /// Initialises the interpreter on the calling thread, which becomes Python's main thread,
    /// and releases the GIL. Python installs no signal handlers (`install_signal_handlers=0`):
    /// signals are appserver's. `executable` (a virtualenv's `bin/python`) makes Python find
    /// the venv's `pyvenv.cfg`, prefix and site-packages as that interpreter would.
    pub(crate) fn initialize(executable: Option<&CStr>) -> Result<(), String> {
        if is_initialized() {
            return Err("the Python interpreter is already initialised".to_owned());
        }
        let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
        let cfg = config.as_mut_ptr();
        // SAFETY: PyConfig_InitPythonConfig fully initialises the struct it is given, before
        // any field is read; the field pointers passed below point into that live struct;
        // PyConfig_Clear frees what the setters allocated, once, after Py_InitializeFromConfig
        // copied the configuration. No other thread touches Python before this returns.
        unsafe {
            ffi::PyConfig_InitPythonConfig(cfg);
            (*cfg).install_signal_handlers = 0;
            let mut status = None;
            if let Some(exe) = executable {
                for field in [
                    addr_of_mut!((*cfg).executable),
                    addr_of_mut!((*cfg).program_name),
                ] {
                    let st = ffi::PyConfig_SetBytesString(cfg, field, exe.as_ptr());
                    if ffi::PyStatus_Exception(st) != 0 {
                        status = Some(st);
                    }
                }
            }
            let status = match status {
                Some(st) => st,
                None => ffi::Py_InitializeFromConfig(cfg),
            };
            ffi::PyConfig_Clear(cfg);
            if ffi::PyStatus_Exception(status) != 0 {
                let msg = if status.err_msg.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(status.err_msg)
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(format!("cannot initialise Python: {msg}"));
            }
            MAIN.store(ffi::PyEval_SaveThread(), Ordering::SeqCst);
        }
        Ok(())
    }

    /// Before a fork in a process where Python runs: takes the GIL on the main thread and
    /// runs `PyOS_BeforeFork` (the `os.register_at_fork(before=...)` handlers, the import
    /// lock). A no-op when Python was not initialised here.
    pub(crate) fn before_fork() {
        let tstate = MAIN.swap(null_mut(), Ordering::SeqCst);
        if tstate.is_null() {
            return;
        }
        // SAFETY: `tstate` is the main thread's state saved by PyEval_SaveThread on this very
        // thread (only the main thread forks); restoring it takes the GIL, which
        // PyOS_BeforeFork requires.
        unsafe {
            ffi::PyEval_RestoreThread(tstate);
            ffi::PyOS_BeforeFork();
        }
    }

    /// After a fork, in the parent (`child == false`) or the child: the matching
    /// `PyOS_AfterFork_*` (the child's reinitialises the GIL and runs the
    /// `after_in_child` handlers, which reseed `random`), then releases the GIL again.
    pub(crate) fn after_fork(child: bool) {
        if !MAIN.load(Ordering::SeqCst).is_null() || !is_initialized() {
            return;
        }
        // SAFETY: MAIN is null while initialised only between before_fork and here, so this
        // thread holds the GIL that before_fork took, as both AfterFork calls require.
        unsafe {
            if child {
                ffi::PyOS_AfterFork_Child();
            } else {
                ffi::PyOS_AfterFork_Parent();
            }
            MAIN.store(ffi::PyEval_SaveThread(), Ordering::SeqCst);
        }
    }

    /// A `bytes` object holding `parts` one after the other, each byte copied once. pyo3's
    /// `PyBytes::new_with` zeroes the object before the copy, a second pass over the data:
    /// `wsgi.input` reads that span chunks spent a twentieth of an upload's CPU zeroing.
    pub(crate) fn bytes_from_parts<'py>(
        py: pyo3::Python<'py>,
        parts: &[bytes::Bytes],
    ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::types::PyBytes>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let size = ffi::Py_ssize_t::try_from(len)
            .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("read too large"))?;
        // SAFETY: `py` proves the GIL is held. PyBytes_FromStringAndSize(NULL, size) returns
        // a new object of `size` bytes not yet written (or null with an exception set, which
        // from_owned_ptr_or_err returns as the error). Its buffer, from PyBytes_AsString, is
        // `size` bytes long and written here exactly once, with no overlap (the parts are
        // not Python memory), before the object is handed to anyone; the cast is the type
        // the constructor made.
        unsafe {
            let obj = ffi::PyBytes_FromStringAndSize(null_mut(), size);
            let obj = pyo3::Bound::from_owned_ptr_or_err(py, obj)?;
            let dst = ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
            let mut at = 0;
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), dst.add(at), part.len());
                at += part.len();
            }
            Ok(obj.cast_into_unchecked())
        }
    }

    /// A virtualenv's interpreter path as a C string, refusing interior NULs.
    pub(crate) fn c_path(path: &std::path::Path) -> Result<CString, String> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", path.display()))
    }
}

/// A memory region shared by every process that maps the same memfd: the status scoreboard.
///
/// Creates an anonymous file (`memfd_create`, close-on-exec) of `words` 64-bit words, zeroed.
/// Its descriptor can be kept across exec to map the same memory again in a re-executed
/// image ([`map_shared_words`]).
pub(crate) fn shared_memory_file(name: &str, words: usize) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    let len = words
        .checked_mul(std::mem::size_of::<u64>())
        .and_then(|n| libc::off_t::try_from(n).ok())
        .ok_or_else(|| io::Error::other("shared memory size overflows"))?;
    nix::unistd::ftruncate(&fd, len)?;
    Ok(fd)
}

/// The size in 64-bit words of the file behind `fd` (a [`shared_memory_file`]).
pub(crate) fn shared_memory_words(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
    let bytes = usize::try_from(stat.st_size).map_err(io::Error::other)?;
    Ok(bytes / std::mem::size_of::<u64>())
}

/// Maps `words` 64-bit words of `fd` shared (`MAP_SHARED`), for the life of the process: what
/// one process stores through the slice, every process that mapped the same file (the master,
/// its forked workers, a re-executed master) loads.
///
/// The mapping is never unmapped, so the slice is `'static`. The file must be at least
/// `words` words long ([`shared_memory_words`]).
pub(crate) fn map_shared_words(
    fd: BorrowedFd<'_>,
    words: usize,
) -> io::Result<&'static [AtomicU64]> {
    if words == 0 || shared_memory_words(fd)? < words {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shared memory file smaller than the mapping",
        ));
    }
    let len = words * std::mem::size_of::<u64>();
    // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object; `fd`
    // is open (borrowed) and at least `len` bytes long (checked above), so every page of the
    // mapping is backed and reading it never faults with SIGBUS.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ptr` is page-aligned (mmap), so aligned for AtomicU64, and valid for `len`
    // bytes = `words` AtomicU64 for the rest of the process's life (never unmapped). Every
    // bit pattern, zero included, is a valid AtomicU64, and other processes change the
    // memory only through atomic instructions too (the scoreboard's only access), so shared
    // references to atomics over it are sound: atomics are the one type whose values may
    // change behind a `&`.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), words) })
}

/// The accept queue of a listening TCP socket: connections the kernel completed that nobody
/// has accepted yet, and the queue's limit (the effective backlog), from `TCP_INFO`
/// (`tcpi_unacked`, `tcpi_sacked` mean exactly that on a listening socket).
pub(crate) fn tcp_listen_queue(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(io::Error::other)?;
    // SAFETY: `info` is a zeroed tcp_info and `len` its size, so the kernel writes at most
    // that many bytes into memory we own; `fd` is open (borrowed).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised above and possibly partly overwritten by the kernel: every
    // field is an integer, for which any bytes are valid.
    let info = unsafe { info.assume_init() };
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_nofile_limit().unwrap(), hard);
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
    }

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn reaped_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn impossible_pids_are_dead() {
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn umask_reads_back() {
        let mask = current_umask();
        assert!(mask <= 0o777);
    }

    #[test]
    fn fork_refuses_with_threads_running() {
        // The test harness runs this on a thread of its own, so there are at least two.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let e = fork().unwrap_err();
        assert!(e.to_string().starts_with("cannot fork: "), "{e}");
        tx.send(()).unwrap();
        other.join().unwrap().unwrap();
    }

    #[test]
    fn accounts_resolve_by_name_and_number() {
        assert_eq!(Account::resolve(None, None).unwrap(), None);
        let root = Account::resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(root.user.as_ref().map(|(_, uid)| uid.as_raw()), Some(0));
        assert_eq!(root.gid.as_raw(), 0, "the user's primary group");
        let numeric = Account::resolve(Some("0"), Some("0")).unwrap().unwrap();
        assert_eq!(numeric, root);
        let group_only = Account::resolve(None, Some("0")).unwrap().unwrap();
        assert_eq!((group_only.user, group_only.gid.as_raw()), (None, 0));
        let e = Account::resolve(Some("no-such-user-4f2a"), None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "user=no-such-user-4f2a: no such user");
        let e = Account::resolve(Some("root"), Some("no-such-group-4f2a")).unwrap_err();
        assert_eq!(e.to_string(), "group=no-such-group-4f2a: no such group");
    }

    #[test]
    fn only_inherited_fds_are_taken() {
        let e = take_inherited_fd(5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
