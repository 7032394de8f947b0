//! Listeners: TCP (IPv4 or IPv6), unix sockets, and the listening socket inherited on fd 0 or
//! from systemd; the accepted [`Stream`]s, their [`PeerAddr`]s and the [`AllowList`].
//!
//! Binding happens before any runtime or fork exists (errors reach the terminal, the daemon and
//! prefork workers inherit the socket), so it is split in two: [`bind`] makes a std
//! [`StdListener`]; [`Listener::from_std`] turns it into a tokio listener inside the runtime.
//!
//! Unix socket files are handled with care for the seed's restart script (`kill old; start
//! new` on the same path): a socket file is replaced only when nothing answers on it, and
//! [`SocketGuard`] removes it at exit only while it is still the file this process created.
//!
//! This module reads and writes no connection bytes (the drivers do) and knows no protocol.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self as nix_socket, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Config, Inherited, Listen};
use crate::sys;

/// How long [`bind`] keeps retrying while the address is held by a live server.
///
/// The seed's restart script sends SIGTERM and starts the new server at once; the old one
/// closes its listener within milliseconds of the signal, so a short wait turns that race
/// into a clean start, while a server that really keeps listening still fails after 3 s.
pub const IN_USE_WAIT: Duration = Duration::from_secs(3);

/// Pause between two attempts while the address is in use.
const IN_USE_RETRY: Duration = Duration::from_millis(50);

/// Mode of a new unix socket file when `umask=` is not given (minus the process umask): the
/// owner and the group may connect (connecting needs write permission), nobody else.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Binds the listener `config` asks for: `host=`/`port=`, `socket=`, or the inherited one.
///
/// Call before the runtime or any thread exists. TCP sockets get `SO_REUSEADDR` and the
/// `backlog=`; unix socket files get their mode from `umask=` (see [`socket_mode`]).
pub fn bind(config: &Config) -> io::Result<StdListener> {
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    match &config.listen {
        Listen::Tcp { host, port } => bind_tcp(host, *port, backlog),
        Listen::Unix(path) => bind_unix(path, config.umask, backlog),
        Listen::Inherited(inherited) => take_inherited(inherited),
    }
}

/// A bound, listening socket outside any runtime.
#[derive(Debug)]
pub struct StdListener {
    // Field order matters: the socket closes before the guard checks whether anyone still
    // answers on the path.
    socket: StdSocket,
    guard: Option<SocketGuard>,
    description: String,
}

#[derive(Debug)]
enum StdSocket {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener),
}

impl StdListener {
    /// Where it listens, as the ready line shows it: `127.0.0.1:43125` (the real port when
    /// `port=0`), `[::1]:3033`, `unix:/path`, `fd0`, `fd3`.
    pub fn description(&self) -> String {
        self.description.clone()
    }

    /// The TCP address, when it is a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            StdSocket::Tcp(l) => l.local_addr().ok(),
            StdSocket::Unix(_) => None,
        }
    }

    /// The path and file mode (permission bits) of a unix socket bound to a path, bound here
    /// or inherited: who may connect to it.
    pub fn unix_socket_mode(&self) -> Option<(PathBuf, u32)> {
        let StdSocket::Unix(l) = &self.socket else {
            return None;
        };
        let path = l.local_addr().ok()?.as_pathname()?.to_path_buf();
        let mode = fs::metadata(&path).ok()?.permissions().mode() & 0o7777;
        Some((path, mode))
    }
}

impl AsFd for StdListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            StdSocket::Tcp(l) => l.as_fd(),
            StdSocket::Unix(l) => l.as_fd(),
        }
    }
}

/// Environment variable through which a reloading prefork master (SIGHUP) tells its
/// re-executed self which descriptor is the listener it already holds.
pub const REEXEC_FD_ENV: &str = "APPSERVER_REEXEC_FD";

impl StdListener {
    /// A second handle on the same socket without the socket-file guard: what a prefork
    /// worker accepts on. Only the master removes the socket file at exit.
    pub fn try_clone_unguarded(&self) -> io::Result<StdListener> {
        let socket = match &self.socket {
            StdSocket::Tcp(l) => StdSocket::Tcp(l.try_clone()?),
            StdSocket::Unix(l) => StdSocket::Unix(l.try_clone()?),
        };
        Ok(StdListener {
            socket,
            guard: None,
            description: self.description.clone(),
        })
    }

    /// Makes the listener survive `exec` (clears close-on-exec) and returns its descriptor,
    /// for the re-executed master to take back with [`take_reexec`].
    pub fn keep_across_exec(&self) -> io::Result<RawFd> {
        let fd = self.as_fd().as_raw_fd();
        sys::set_cloexec(fd, false)?;
        Ok(fd)
    }

    /// Closes this handle on the socket and hands back the socket-file guard, if any.
    ///
    /// A prefork master told to stop closes its handle at once (its workers close theirs as
    /// they stop accepting), so the socket soon refuses connections and a server started by
    /// the seed's restart script can bind while old requests finish; the guard, dropped once
    /// the workers are gone, still removes the file if it is ours.
    pub fn close(self) -> Option<SocketGuard> {
        self.guard
    }

    /// Gives the unix socket file this process created to `uid`/`gid` (`user=`/`group=`),
    /// keeping the guard's record of the file in step (a chown changes its ctime). Does
    /// nothing for other listeners.
    pub fn chown(
        &mut self,
        uid: Option<nix::unistd::Uid>,
        gid: Option<nix::unistd::Gid>,
    ) -> io::Result<()> {
        if let Some(guard) = &mut self.guard {
            nix::unistd::chown(&guard.path, uid, gid)?;
            guard.identity = FileIdentity::of(&guard.path)?;
        }
        Ok(())
    }
}

/// Takes back the listener a reloading master kept open across `exec` (see
/// [`StdListener::keep_across_exec`]), instead of binding again: the socket never closes, so
/// no connection is refused during a reload.
pub fn take_reexec(config: &Config, fd: RawFd) -> io::Result<StdListener> {
    let owned = sys::take_reexec_fd(fd)?;
    let socket = inherited_socket(fd, owned)?;
    let (guard, description) = match (&socket, &config.listen) {
        (StdSocket::Unix(_), Listen::Unix(path)) => (
            SocketGuard::new(path).ok(),
            format!("unix:{}", path.display()),
        ),
        (StdSocket::Tcp(l), _) => (None, l.local_addr()?.to_string()),
        (StdSocket::Unix(_), _) => (None, config.listen_description()),
    };
    Ok(StdListener {
        socket,
        guard,
        description,
    })
}

/// A listener registered with the tokio runtime.
#[derive(Debug)]
pub struct Listener {
    // The socket closes before the guard runs (see `StdListener`).
    inner: Inner,
    _guard: Option<SocketGuard>,
    description: String,
}

/// The listening socket, registered with the runtime for readiness only: accepting with
/// mio's `accept4` (non-blocking, close-on-exec) gives a socket the runtime does not know yet
/// (see [`Stream`]).
#[derive(Debug)]
enum Inner {
    Tcp(AsyncFd<mio::net::TcpListener>),
    Unix(AsyncFd<mio::net::UnixListener>),
}

impl Listener {
    /// Registers `listener` with the current tokio runtime; call inside it.
    pub fn from_std(listener: StdListener) -> io::Result<Self> {
        let StdListener {
            socket,
            guard,
            description,
        } = listener;
        let inner = match socket {
            StdSocket::Tcp(l) => {
                l.set_nonblocking(true)?;
                Inner::Tcp(sys::readable_listener(mio::net::TcpListener::from_std(l))?)
            }
            StdSocket::Unix(l) => {
                l.set_nonblocking(true)?;
                Inner::Unix(sys::readable_listener(mio::net::UnixListener::from_std(l))?)
            }
        };
        Ok(Self {
            inner,
            _guard: guard,
            description,
        })
    }

    /// Accepts one connection. TCP streams get `TCP_NODELAY`: AJP's body round trips and
    /// FastCGI's small records must not wait for Nagle plus delayed ACK.
    pub async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match &self.inner {
            Inner::Tcp(l) => {
                let (stream, addr) = accept_ready(l, |l| l.accept()).await?;
                let stream = std::net::TcpStream::from(stream);
                // Fails only when the peer is already gone; the read that follows says so.
                let _ = stream.set_nodelay(true);
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                Ok((Stream::plain(Conn::TcpPlain(stream)), PeerAddr::Tcp(addr)))
            }
            Inner::Unix(l) => {
                let (stream, _) = accept_ready(l, |l| l.accept()).await?;
                let stream = std::os::unix::net::UnixStream::from(stream);
                Ok((Stream::plain(Conn::UnixPlain(stream)), PeerAddr::Unix))
            }
        }
    }

    /// Where it listens (see [`StdListener::description`]).
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// Waits until `listener` is readable and accepts with `accept`, again while it would block.
async fn accept_ready<L: AsRawFd, T>(
    listener: &AsyncFd<L>,
    accept: impl Fn(&L) -> io::Result<T>,
) -> io::Result<T> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| accept(l.get_ref())) {
            Ok(accepted) => return accepted,
            Err(_would_block) => continue,
        }
    }
}

/// An accepted connection.
///
/// It starts unknown to the runtime's poller: reads and writes go straight to the socket, and
/// only the first one that would block registers it. A web server's request usually arrives
/// whole before appserver reads it, and a short answer fits the socket's buffer, so a
/// connection per request (FastCGI without `fastcgi_keep_conn`, SCGI) then costs no
/// `epoll_ctl` to add the socket and none to remove it: two system calls of about seven a
/// request (docs/performance.md, "The hot path").
#[derive(Debug)]
pub struct Stream {
    conn: Conn,
    /// The unix socket's send buffer has been raised to [`UNIX_SEND_BUFFER`] (or found as
    /// large): asked at most once per connection.
    send_buffer_raised: bool,
}

/// The send buffer a unix socket asks for once a write does not fit the default one (a large
/// response): Linux doubles the figure for its bookkeeping, 512 KiB against the default 208.
/// A prefork worker serves one response at a time, and with the default buffer it and the web
/// server took turns in small steps, each side sleeping and waking for every 200 KiB or so:
/// nginx's CPU per MiB relayed fell from about 710 to 620 µs and a pool of two served 10 MiB
/// responses 12-15 % faster (docs/performance.md, "The hot path"). Twice as much measured no
/// better. Kernel memory, not the process's: a connection holds at most twice this much of
/// queued output, and only while the web server is slower to read than appserver to write.
/// TCP sockets are left alone (Linux sizes their buffers itself, and a fixed size would turn
/// that off).
pub(crate) const UNIX_SEND_BUFFER: usize = 256 * 1024;

/// A read at least this large is part of a bulk transfer (a request body): after it, a TCP
/// connection is put back in quick-ACK mode. On a keep-alive connection Linux takes the
/// request-response exchange for an interactive one ("pingpong" mode) and delays its ACKs and
/// window updates up to 40 ms, hoping to send them with a response; while the app reads the
/// body in bursts (a prefork worker's Python thread reads the connection itself between
/// steps of the app), the web server then waits for that ACK to send more. Measured through
/// nginx with 10 MiB uploads: 45 stalls of 40-44 ms in 169 uploads without it, none with it.
/// Smaller reads (a request's head, a short body) skip the extra system call.
pub(crate) const QUICKACK_AFTER_READ: usize = 16 * 1024;

#[derive(Debug)]
enum Conn {
    TcpPlain(std::net::TcpStream),
    UnixPlain(std::os::unix::net::UnixStream),
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Registering failed: the socket is closed.
    Lost,
}

impl Stream {
    fn plain(conn: Conn) -> Self {
        Self {
            conn,
            send_buffer_raised: false,
        }
    }

    /// Raises a unix socket's send buffer to [`UNIX_SEND_BUFFER`], once, unless it is as large
    /// already (a larger system default is kept). Raising it wakes a writer that waits for
    /// room, so a write that has just returned `Pending` is polled again.
    fn raise_send_buffer(&mut self) {
        self.send_buffer_raised = true;
        let Some(sock) = self.unix_socket() else {
            return;
        };
        // Linux reports the doubled figure it keeps.
        if sock
            .send_buffer_size()
            .is_ok_and(|now| now < 2 * UNIX_SEND_BUFFER)
        {
            // Only an optimisation: a socket that refuses it still works.
            let _ = sock.set_send_buffer_size(UNIX_SEND_BUFFER);
        }
    }

    /// True once the socket is registered with the runtime's poller.
    #[cfg(test)]
    fn is_registered(&self) -> bool {
        matches!(self.conn, Conn::Tcp(_) | Conn::Unix(_))
    }

    /// Registers the socket with the runtime, for an operation that would block.
    fn register(&mut self) -> io::Result<()> {
        self.conn = match std::mem::replace(&mut self.conn, Conn::Lost) {
            Conn::TcpPlain(s) => Conn::Tcp(TcpStream::from_std(s)?),
            Conn::UnixPlain(s) => Conn::Unix(UnixStream::from_std(s)?),
            other => other,
        };
        Ok(())
    }

    /// The socket while it is not registered.
    fn plain_socket(&self) -> Option<socket2::SockRef<'_>> {
        match &self.conn {
            Conn::TcpPlain(s) => Some(socket2::SockRef::from(s)),
            Conn::UnixPlain(s) => Some(socket2::SockRef::from(s)),
            _ => None,
        }
    }

    /// The socket, registered or not, when it is TCP.
    fn tcp_socket(&self) -> Option<socket2::SockRef<'_>> {
        match &self.conn {
            Conn::TcpPlain(s) => Some(socket2::SockRef::from(s)),
            Conn::Tcp(s) => Some(socket2::SockRef::from(s)),
            _ => None,
        }
    }

    /// The socket, registered or not, when it is a unix socket.
    fn unix_socket(&self) -> Option<socket2::SockRef<'_>> {
        match &self.conn {
            Conn::UnixPlain(s) => Some(socket2::SockRef::from(s)),
            Conn::Unix(s) => Some(socket2::SockRef::from(s)),
            _ => None,
        }
    }

    /// Acknowledges what arrives next at once (TCP only): see [`QUICKACK_AFTER_READ`].
    fn rearm_quickack(&self) {
        if let Some(sock) = self.tcp_socket() {
            // Only an optimisation: a socket that refuses it still works.
            let _ = sock.set_quickack(true);
        }
    }

    /// Runs `op` on the unregistered socket; `None` when it would block (the socket is then
    /// registered) or when the socket is registered already.
    fn try_plain<T>(
        &mut self,
        mut op: impl FnMut(socket2::SockRef<'_>) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        loop {
            let sock = self.plain_socket()?;
            match op(sock) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.register().err().map(Err);
                }
                done => return Some(done),
            }
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection could not be registered with the runtime",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match this.try_plain(|sock| sys::recv_into(&sock, buf)) {
            Some(read) => Poll::Ready(read.map(drop)),
            None => match &mut this.conn {
                Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
                _ => Poll::Ready(Err(lost())),
            },
        };
        if buf.filled().len() - before >= QUICKACK_AFTER_READ {
            this.rearm_quickack();
        }
        read
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // One slice is a vectored write of one: the same send, one path to keep.
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One slice (the engine's usual write) goes by send(2): sendmsg(2) copies in a message
        // header and an iovec array first, about 50 ns more per write (docs/performance.md).
        let send = |sock: socket2::SockRef<'_>| match bufs {
            [one] => sock.send(one),
            _ => sock.send_vectored(bufs),
        };
        let written = match this.try_plain(send) {
            Some(written) => Poll::Ready(written),
            None => match &mut this.conn {
                Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                _ => Poll::Ready(Err(lost())),
            },
        };
        // A write the send buffer could not take whole: a large response (see
        // UNIX_SEND_BUFFER). A response that fits costs nothing more.
        if !this.send_buffer_raised {
            let short = match &written {
                Poll::Pending => true,
                Poll::Ready(Ok(n)) => *n < bufs.iter().map(|b| b.len()).sum::<usize>(),
                Poll::Ready(Err(_)) => false,
            };
            if short {
                this.raise_send_buffer();
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().conn {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            // A socket holds nothing back to flush.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(sock) = this.plain_socket() {
            return Poll::Ready(sock.shutdown(std::net::Shutdown::Write));
        }
        match &mut this.conn {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(lost())),
        }
    }
}

/// Who is on the other end of a connection, for the allow-list and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP peer; IPv4-mapped IPv6 addresses are shown and checked as IPv4.
    Tcp(SocketAddr),
    /// A unix socket peer (web servers connect from unnamed sockets).
    Unix,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix => f.write_str("unix"),
        }
    }
}

/// The peers allowed to connect: `allow=` plus `FCGI_WEB_SERVER_ADDRS`.
///
/// Empty means anyone who can connect. A non-empty list admits only TCP peers in one of its
/// networks: unix socket peers are refused, as libfcgi does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Adds a network.
    pub fn push(&mut self, net: IpNet) {
        self.nets.push(net);
    }

    /// Whether no restriction is configured.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks, in the order given.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `peer` may be served.
    pub fn permits(&self, peer: &PeerAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        match peer {
            PeerAddr::Tcp(addr) => self.nets.iter().any(|n| n.contains(addr.ip())),
            PeerAddr::Unix => false,
        }
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// The error of parsing an [`IpNet`]: not `ADDRESS` or `ADDRESS/PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address or CIDR network")]
pub struct InvalidNet;

impl IpNet {
    /// The network of `addr` with `prefix` leading bits; `None` when the prefix is longer than
    /// the address. IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) become IPv4 ones.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        if let (IpAddr::V6(v6), true) = (addr, prefix >= 96) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Some(Self {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = InvalidNet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| InvalidNet)?;
        let prefix = match prefix {
            None if addr.is_ipv4() => 32,
            None => 128,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| InvalidNet)?
            }
            Some(_) => return Err(InvalidNet),
        };
        Self::new(addr, prefix).ok_or(InvalidNet)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Removes a unix socket file at exit, but only the file this process created.
///
/// The seed's restart script starts a new server on the same path while the old one is still
/// finishing: the old one's guard must leave the new socket alone. So the file is removed only
/// when it is still the same file (device, inode and change time recorded at bind) and nobody
/// answers on it any more. The second check also keeps a forked process (a prefork worker)
/// from removing a socket its siblings still listen on, while the daemonized child, which
/// inherits the guard from the process that bound, still cleans up after itself.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    identity: FileIdentity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileIdentity {
    fn of(path: &Path) -> io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }
}

impl SocketGuard {
    /// Records the file now at `path` as ours.
    pub fn new(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            identity: FileIdentity::of(path)?,
        })
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether dropping the guard now would remove the file.
    pub fn would_remove(&self) -> bool {
        FileIdentity::of(&self.path).is_ok_and(|id| id == self.identity)
            && matches!(probe_socket(&self.path), Ok(SocketState::Dead))
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.would_remove() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The mode a new unix socket file gets: `0o777` minus `umask=` when given, else
/// [`DEFAULT_SOCKET_MODE`] minus the process umask (so `0660` or tighter).
pub fn socket_mode(umask: Option<u32>) -> u32 {
    match umask {
        Some(mask) => 0o777 & !mask,
        None => DEFAULT_SOCKET_MODE & !sys::current_umask(),
    }
}

fn bind_tcp(host: &str, port: u16, backlog: i32) -> io::Result<StdListener> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve host {host:?}: {e}")))?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("host {host:?} has no address"),
            )
        })?;
    let socket = retry_in_use(|| {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        Ok(Some(socket))
    })
    .map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(e.kind(), format!("address in use: {addr}"))
        } else {
            e
        }
    })?;
    let listener = std::net::TcpListener::from(socket);
    let description = listener.local_addr()?.to_string();
    Ok(StdListener {
        socket: StdSocket::Tcp(listener),
        guard: None,
        description,
    })
}

fn bind_unix(path: &Path, umask: Option<u32>, backlog: i32) -> io::Result<StdListener> {
    let live = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "address in use: a live server is listening on {}",
                path.display()
            ),
        )
    };
    let socket = retry_in_use(|| {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Ok(_) => match probe_socket(path)? {
                SocketState::Live => return Ok(None),
                SocketState::Dead => match fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot remove stale socket {}: {e}", path.display()),
                        ))
                    }
                    _ => {}
                },
                SocketState::Absent => {}
            },
        }
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.bind(&SockAddr::unix(path)?)?;
        // Nobody can connect before listen(), so setting the mode here leaves no window
        // with a wider one.
        fs::set_permissions(path, fs::Permissions::from_mode(socket_mode(umask)))?;
        socket.listen(backlog)?;
        Ok(Some(socket))
    })
    .map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            live()
        } else {
            e
        }
    })?;
    let guard = SocketGuard::new(path)?;
    Ok(StdListener {
        socket: StdSocket::Unix(StdUnixListener::from(socket)),
        guard: Some(guard),
        description: format!("unix:{}", path.display()),
    })
}

/// Runs `attempt` until it binds, retrying for [`IN_USE_WAIT`] while the address is in use:
/// `Ok(None)` or an `AddrInUse` error. After the wait, fails with `AddrInUse`.
fn retry_in_use(mut attempt: impl FnMut() -> io::Result<Option<Socket>>) -> io::Result<Socket> {
    let deadline = Instant::now() + IN_USE_WAIT;
    loop {
        let last = match attempt() {
            Ok(Some(socket)) => return Ok(socket),
            Ok(None) => io::Error::from(io::ErrorKind::AddrInUse),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => e,
            Err(e) => return Err(e),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        // Polling the file system: the old server gives no signal we could wait on.
        std::thread::sleep(IN_USE_RETRY);
    }
}

/// What answers on a unix socket path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SocketState {
    /// A server accepts connections (or its backlog is full).
    Live,
    /// The file exists but nobody listens: a stale socket file.
    Dead,
    /// No file.
    Absent,
}

fn probe_socket(path: &Path) -> io::Result<SocketState> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Non-blocking: a live server with a full backlog must not make us wait.
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(SocketState::Live),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(SocketState::Live),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(SocketState::Dead),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SocketState::Absent),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check whether {} is in use: {e}", path.display()),
        )),
    }
}

/// Takes the inherited listening socket: systemd's fd 3 when `LISTEN_PID` is ours, else fd 0.
fn take_inherited(inherited: &Inherited) -> io::Result<StdListener> {
    let (fd, name) = match inherited {
        Inherited::Systemd { fds, pid } if *pid == Some(std::process::id()) => {
            if *fds != 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("LISTEN_FDS={fds}: appserver serves exactly one socket"),
                ));
            }
            (3, "fd3")
        }
        _ => (0, "fd0"),
    };
    check_listening(fd, nix_socket::getpeername::<SockaddrStorage>(fd).map(drop))?;
    let owned = sys::take_inherited_fd(fd)?;
    let socket = inherited_socket(fd, owned)?;
    Ok(StdListener {
        socket,
        guard: None,
        description: name.to_owned(),
    })
}

/// Classifies an inherited descriptor by the outcome of `getpeername` on it (FastCGI spec
/// §2.2, protocols.md §1.1): `ENOTCONN` means a listening socket; anything else is an error
/// that says how to run appserver instead.
fn check_listening(fd: RawFd, peer: Result<(), Errno>) -> io::Result<()> {
    const HOW: &str = "run from a web server that passes a listening socket \
                       (mod_fcgid, lighttpd bin-path, spawn-fcgi) or give host/port or socket";
    let (kind, what) = match peer {
        Err(Errno::ENOTCONN) => return Ok(()),
        Err(Errno::ENOTSOCK) => (io::ErrorKind::InvalidInput, "is not a socket".to_owned()),
        Err(Errno::EBADF) => (io::ErrorKind::InvalidInput, "is not open".to_owned()),
        Ok(()) => (
            io::ErrorKind::InvalidInput,
            "is a connected socket, not a listening one".to_owned(),
        ),
        Err(e) => (io::Error::from(e).kind(), format!("cannot be checked: {e}")),
    };
    Err(io::Error::new(kind, format!("fd {fd} {what}: {HOW}")))
}

/// Wraps an inherited listening socket as a std listener of its address family.
fn inherited_socket(fd: RawFd, owned: OwnedFd) -> io::Result<StdSocket> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} {what}: give host/port or socket"),
        )
    };
    if nix_socket::getsockopt(&owned, sockopt::SockType)? != SockType::Stream {
        return Err(invalid("is not a stream socket"));
    }
    if !nix_socket::getsockopt(&owned, sockopt::AcceptConn)? {
        return Err(invalid("is a socket that is not listening"));
    }
    let local: SockaddrStorage = nix_socket::getsockname(owned.as_raw_fd())?;
    match local.family() {
        Some(AddressFamily::Unix) => Ok(StdSocket::Unix(StdUnixListener::from(owned))),
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            Ok(StdSocket::Tcp(std::net::TcpListener::from(owned)))
        }
        _ => Err(invalid("is neither a unix nor a TCP socket")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::config::Args;

    fn config(items: &[&str]) -> Config {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        Config::from_args(Args::parse(&items).unwrap(), &|_| None).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn tcp_peer(s: &str) -> PeerAddr {
        PeerAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn bind_tcp_port_zero_reports_the_real_port() {
        let l = bind(&config(&["host=127.0.0.1", "port=0"])).unwrap();
        let addr = l.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(l.description(), format!("127.0.0.1:{}", addr.port()));
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn bind_tcp_ipv6() {
        let Ok(l) = bind(&config(&["host=::1", "port=0"])) else {
            return; // no IPv6 loopback in this sandbox
        };
        assert!(l.description().starts_with("[::1]:"), "{}", l.description());
    }

    #[test]
    fn bind_tcp_applies_backlog_and_reuseaddr() {
        let l = bind(&config(&["host=127.0.0.1", "port=0", "backlog=7"])).unwrap();
        let reuse = nix_socket::getsockopt(&l, sockopt::ReuseAddr).unwrap();
        assert!(reuse);
    }

    #[test]
    fn bind_unresolvable_host_fails() {
        let e = bind(&config(&["host=no such host.invalid", "port=1"])).unwrap_err();
        assert!(e.to_string().contains("cannot resolve host"), "{e}");
    }

    /// A listener on `s.sock` in `dir` (inside the runtime), and the socket's path.
    fn unix_listener(dir: &tempfile::TempDir) -> (Listener, std::path::PathBuf) {
        let path = dir.path().join("s.sock");
        let std_l = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        (Listener::from_std(std_l).unwrap(), path)
    }

    #[tokio::test]
    async fn a_request_there_at_accept_and_answered_at_once_never_registers_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = unix_listener(&dir);
        let mut client = StdUnixStream::connect(&path).unwrap();
        std::io::Write::write_all(&mut client, b"request").unwrap();
        let (mut stream, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 7);
        stream.write_all(b"answer").await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(!stream.is_registered(), "nothing had to wait");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut client, &mut got).unwrap();
        assert_eq!(got, "answer");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_the_socket_and_wakes_when_bytes_come() {
        use tokio::io::AsyncReadExt;
        let std_l = bind(&config(&["host=127.0.0.1", "port=0"])).unwrap();
        let addr = std_l.local_addr().unwrap();
        let l = Listener::from_std(std_l).unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut stream, _) = l.accept().await.unwrap();
        let writer = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::io::Write::write_all(&mut client, b"late").unwrap();
            client
        });
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"late");
        assert!(stream.is_registered(), "the first read had to wait");
        // The end of the stream still reads as the end, through the registered socket.
        drop(writer.await.unwrap());
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    /// The send buffer Linux keeps for the stream's socket (the doubled figure).
    fn send_buffer(stream: &Stream) -> usize {
        let sock = stream.unix_socket().expect("a unix socket");
        sock.send_buffer_size().unwrap()
    }

    #[tokio::test]
    async fn a_unix_socket_gets_a_larger_send_buffer_only_when_a_write_does_not_fit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = unix_listener(&dir);
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (mut stream, _) = l.accept().await.unwrap();
        let default = send_buffer(&stream);
        // An answer that fits: the buffer is left as it is.
        stream.write_all(&[b'a'; 4096]).await.unwrap();
        assert_eq!(send_buffer(&stream), default);
        // Four times what the buffer holds cannot go in one write: raised then (a larger
        // system default is kept).
        let big = vec![b'b'; 4 * default];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        stream.write_all(&big).await.unwrap();
        assert_eq!(send_buffer(&stream), default.max(2 * UNIX_SEND_BUFFER));
        stream.shutdown().await.unwrap();
        drop(stream);
        assert_eq!(
            reader.await.unwrap(),
            4096 + big.len(),
            "every byte arrived"
        );
    }

    /// Whether the socket is out of Linux's delayed-ACK "pingpong" mode.
    fn quickack(stream: &Stream) -> bool {
        stream.tcp_socket().expect("TCP").quickack().unwrap()
    }

    #[tokio::test]
    async fn a_bulk_read_takes_a_keep_alive_connection_out_of_delayed_acks() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let std_l = bind(&config(&["host=127.0.0.1", "port=0"])).unwrap();
        let addr = std_l.local_addr().unwrap();
        let l = Listener::from_std(std_l).unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut stream, _) = l.accept().await.unwrap();
        // A request answered at once: Linux now takes the connection for an interactive one.
        let mut buf = vec![0u8; 64 * 1024];
        client.write_all(b"request").await.unwrap();
        stream.read_exact(&mut buf[..7]).await.unwrap();
        stream.write_all(b"answer").await.unwrap();
        client.read_exact(&mut buf[..6]).await.unwrap();
        assert!(
            !quickack(&stream),
            "a reply right after a request enters pingpong mode"
        );
        // A body's worth of bytes, read at once: quick ACKs again.
        let body = vec![b'x'; QUICKACK_AFTER_READ];
        client.write_all(&body).await.unwrap();
        let mut got = 0;
        while got < body.len() {
            let n = stream.read(&mut buf[got..body.len()]).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        assert!(
            quickack(&stream),
            "re-armed after a read of QUICKACK_AFTER_READ bytes"
        );
    }

    #[tokio::test]
    async fn accept_tcp_sets_nodelay_and_reports_peer() {
        let std_l = bind(&config(&["host=127.0.0.1", "port=0"])).unwrap();
        let addr = std_l.local_addr().unwrap();
        let l = Listener::from_std(std_l).unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let Conn::TcpPlain(tcp) = &stream.conn else {
            panic!("expected TCP, not yet registered")
        };
        assert!(tcp.nodelay().unwrap());
        assert_eq!(peer, PeerAddr::Tcp(client.local_addr().unwrap()));
        assert_eq!(peer.to_string(), client.local_addr().unwrap().to_string());
    }

    #[tokio::test]
    async fn stream_reads_and_writes_over_unix() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = unix_listener(&dir);
        assert_eq!(l.description(), format!("unix:{}", path.display()));
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (mut stream, peer) = l.accept().await.unwrap();
        assert_eq!(peer, PeerAddr::Unix);
        assert_eq!(peer.to_string(), "unix");
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn unix_socket_mode_from_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let l = bind(&config(&[
            &format!("socket={}", path.display()),
            "umask=0002",
        ]))
        .unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        assert_eq!(mode_of(&path), 0o775);
        drop(l);

        let l = bind(&config(&[
            &format!("socket={}", path.display()),
            "umask=077",
        ]))
        .unwrap();
        assert_eq!(mode_of(&path), 0o700);
        drop(l);
    }

    #[test]
    fn unix_socket_default_mode_is_0660_or_tighter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        let _l = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        let mode = mode_of(&path);
        assert_eq!(mode & !DEFAULT_SOCKET_MODE, 0, "mode {mode:o}");
        assert_eq!(mode, DEFAULT_SOCKET_MODE & !sys::current_umask());
    }

    #[test]
    fn socket_mode_values() {
        assert_eq!(socket_mode(Some(0o002)), 0o775);
        assert_eq!(socket_mode(Some(0o022)), 0o755);
        assert_eq!(socket_mode(Some(0o000)), 0o777);
        assert_eq!(socket_mode(Some(0o777)), 0o000);
        assert_eq!(socket_mode(None) & !0o660, 0);
    }

    #[test]
    fn stale_unix_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        // A listener that went away without removing its file.
        drop(StdUnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        StdUnixStream::connect(&path).unwrap();
        drop(l);
        assert!(!path.exists(), "the guard removes our own socket at exit");
    }

    #[test]
    fn live_unix_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let _live = StdUnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let e = bind(&config(&[&format!("socket={}", path.display())])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            e.to_string(),
            format!(
                "address in use: a live server is listening on {}",
                path.display()
            )
        );
        assert!(start.elapsed() >= IN_USE_WAIT);
        assert!(path.exists(), "the live server's socket stays");
    }

    #[test]
    fn socket_freed_during_the_wait_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restart.sock");
        let old = StdUnixListener::bind(&path).unwrap();
        // The old server closes its listener shortly after SIGTERM, as in the restart script.
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(old);
        });
        let l = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        closer.join().unwrap();
        StdUnixStream::connect(&path).unwrap();
        drop(l);
    }

    #[test]
    fn non_socket_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.sock");
        fs::write(&path, b"data").unwrap();
        let e = bind(&config(&[&format!("socket={}", path.display())])).unwrap_err();
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn guard_leaves_a_socket_replaced_by_a_live_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let old = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        // The new server found the old one gone (here: removed) and bound the same path.
        fs::remove_file(&path).unwrap();
        let _new = StdUnixListener::bind(&path).unwrap();
        drop(old);
        assert!(path.exists());
        StdUnixStream::connect(&path).unwrap();
    }

    #[test]
    fn guard_leaves_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let old = bind(&config(&[&format!("socket={}", path.display())])).unwrap();
        // Keep the old inode allocated so the new file cannot reuse its number.
        fs::rename(&path, dir.path().join("moved")).unwrap();
        fs::write(&path, b"new").unwrap();
        drop(old);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn guard_removes_its_own_dead_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.sock");
        let listener = StdUnixListener::bind(&path).unwrap();
        let guard = SocketGuard::new(&path).unwrap();
        assert_eq!(guard.path(), path);
        assert!(!guard.would_remove(), "still listening");
        drop(listener);
        assert!(guard.would_remove());
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn ip_nets_parse() {
        assert_eq!(net("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert_eq!(net("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "x",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
        ] {
            assert_eq!(bad.parse::<IpNet>(), Err(InvalidNet), "{bad:?}");
        }
        assert_eq!(IpNet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33), None);
    }

    #[test]
    fn ip_net_contains() {
        assert!(net("10.0.0.0/8").contains("10.255.1.2".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(net("127.0.0.1").contains("127.0.0.1".parse().unwrap()));
        assert!(!net("127.0.0.1").contains("127.0.0.2".parse().unwrap()));
        assert!(net("127.0.0.1").contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(net("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("fe80::1".parse().unwrap()));
        assert!(!net("::1").contains("127.0.0.1".parse().unwrap()));
        assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn allow_list_permits() {
        let empty = AllowList::default();
        assert!(empty.is_empty());
        assert!(empty.permits(&tcp_peer("192.0.2.1:1234")));
        assert!(empty.permits(&PeerAddr::Unix));

        let mut list = AllowList::default();
        list.push(net("127.0.0.1"));
        list.push(net("2001:db8::/32"));
        assert_eq!(list.nets().len(), 2);
        assert!(list.permits(&tcp_peer("127.0.0.1:5000")));
        assert!(list.permits(&tcp_peer("[2001:db8::7]:5000")));
        assert!(!list.permits(&tcp_peer("127.0.0.2:5000")));
        assert!(!list.permits(&tcp_peer("[2001:db9::7]:5000")));
        assert!(
            !list.permits(&PeerAddr::Unix),
            "unix peers refused, as libfcgi"
        );
    }

    #[test]
    fn listening_fd_classification() {
        assert!(check_listening(0, Err(Errno::ENOTCONN)).is_ok());
        let e = check_listening(0, Err(Errno::ENOTSOCK)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fd 0 is not a socket: run from a web server that passes a listening socket \
             (mod_fcgid, lighttpd bin-path, spawn-fcgi) or give host/port or socket"
        );
        let e = check_listening(0, Ok(())).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("fd 0 is a connected socket, not a listening one: "));
        let e = check_listening(3, Err(Errno::EBADF)).unwrap_err();
        assert!(e.to_string().starts_with("fd 3 is not open: "), "{e}");
        let e = check_listening(0, Err(Errno::EIO)).unwrap_err();
        assert!(e.to_string().starts_with("fd 0 cannot be checked: "), "{e}");
    }

    /// Environment variable that makes [`inherited_child`] act: it runs in a child process
    /// whose fd 0 (or fd 3) the parent test arranged.
    const CHILD_ENV: &str = "APPSERVER_LISTEN_TEST_CHILD";

    /// Runs `inherited_child` in a child process with `stdin` as fd 0 (and `shell` wrapping
    /// the exec when set), returning its stdout.
    fn run_child(stdin: Stdio, shell: Option<&str>, env: &[(&str, &str)]) -> String {
        let exe = std::env::current_exe().unwrap();
        let test_args = [
            "listen::tests::inherited_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ];
        let mut cmd = match shell {
            Some(script) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(script).arg(&exe).args(test_args);
                c
            }
            None => {
                let mut c = Command::new(&exe);
                c.args(test_args);
                c
            }
        };
        cmd.env(CHILD_ENV, "1")
            .stdin(stdin)
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Not a test on its own: the child half of the fd 0 / fd 3 tests.
    #[test]
    fn inherited_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let env = |name: &str| std::env::var(name).ok();
        let config = Config::from_args(Args::default(), &env).unwrap();
        match bind(&config) {
            Ok(l) => {
                let desc = l.description();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    use tokio::io::AsyncWriteExt;
                    let l = Listener::from_std(l).unwrap();
                    let (mut s, peer) = l.accept().await.unwrap();
                    let msg = format!("child: ok {desc} {}\n", matches!(peer, PeerAddr::Tcp(_)));
                    s.write_all(msg.as_bytes()).await.unwrap();
                });
                // fd 0 now reads /dev/null.
                let mut rest = Vec::new();
                std::io::stdin().read_to_end(&mut rest).unwrap();
                println!("child: stdin after take: {} bytes", rest.len());
            }
            Err(e) => println!("child: error {e}"),
        }
    }

    #[test]
    fn fd0_unix_listener_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fd0.sock");
        let listener = StdUnixListener::bind(&path).unwrap();
        let fd: OwnedFd = listener.into();
        let client = std::thread::spawn(move || {
            let mut s = StdUnixStream::connect(&path).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        });
        let out = run_child(Stdio::from(fd), None, &[]);
        assert_eq!(client.join().unwrap(), "child: ok fd0 false\n");
        assert!(out.contains("child: stdin after take: 0 bytes"), "{out}");
    }

    #[test]
    fn fd0_tcp_listener_is_served() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd: OwnedFd = listener.into();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        });
        run_child(Stdio::from(fd), None, &[]);
        assert_eq!(client.join().unwrap(), "child: ok fd0 true\n");
    }

    #[test]
    fn fd0_not_a_socket_is_a_clear_error() {
        let out = run_child(Stdio::null(), None, &[]);
        assert!(
            out.contains("child: error fd 0 is not a socket: run from a web server"),
            "{out}"
        );
    }

    #[test]
    fn fd0_connected_socket_is_refused() {
        let (a, _b) = StdUnixStream::pair().unwrap();
        let out = run_child(Stdio::from(OwnedFd::from(a)), None, &[]);
        assert!(
            out.contains("child: error fd 0 is a connected socket, not a listening one"),
            "{out}"
        );
    }

    #[test]
    fn fd0_unlistened_socket_is_refused() {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        let out = run_child(Stdio::from(OwnedFd::from(socket)), None, &[]);
        assert!(
            out.contains("child: error fd 0 is a socket that is not listening"),
            "{out}"
        );
    }

    #[test]
    fn systemd_fd3_is_served_when_listen_pid_is_ours() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd: OwnedFd = listener.into();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        });
        // sh's pid becomes the test binary's through exec, as systemd sets LISTEN_PID.
        let script = "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\" 3<&0 0</dev/null";
        run_child(Stdio::from(fd), Some(script), &[]);
        assert_eq!(client.join().unwrap(), "child: ok fd3 true\n");
    }

    #[test]
    fn systemd_vars_for_another_pid_fall_back_to_fd0() {
        let out = run_child(
            Stdio::null(),
            None,
            &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
        );
        assert!(out.contains("child: error fd 0 is not a socket"), "{out}");
    }
}
