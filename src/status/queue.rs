//! The listen queue from the kernel: connections that completed the handshake (TCP) or
//! `connect` (unix) and wait for a worker to accept them.
//!
//! - TCP: `TCP_INFO` on the listening socket, whose `tcpi_unacked` is the accept queue's
//!   length and `tcpi_sacked` its limit (the effective backlog).
//! - Unix: `sock_diag` (netlink) asked about the listener's inode with `UDIAG_SHOW_RQLEN`,
//!   whose `udiag_rqueue` is the queue's length on a listening socket and `udiag_wqueue` its
//!   limit, as `ss -xl` shows them.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::{
    getsockname, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType, SockaddrLike, SockaddrStorage,
};

use crate::sys;

/// How often a threaded server measures its listen queue. The maximum seen is the most
/// among the measurements: a burst shorter than this can be missed, and ten samples a second
/// cost about ten microseconds.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Connections waiting in `listener`'s accept queue and the queue's limit; `None` when the
/// kernel does not say (an inherited socket of another kind, no `sock_diag` for unix).
pub(crate) fn measure(listener: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let addr: SockaddrStorage = getsockname(listener.as_raw_fd()).ok()?;
    match addr.family()? {
        AddressFamily::Inet | AddressFamily::Inet6 => sys::tcp_listen_queue(listener)
            .ok()
            .map(|(waiting, limit)| (u64::from(waiting), u64::from(limit))),
        AddressFamily::Unix => unix_queue(listener),
        _ => None,
    }
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_RQLEN` (linux/unix_diag.h).
const UDIAG_SHOW_RQLEN: u32 = 0x10;
/// `UNIX_DIAG_RQLEN`: the attribute carrying `struct unix_diag_rqlen`.
const UNIX_DIAG_RQLEN: u16 = 4;
/// `TCP_LISTEN`, the state of a listening unix socket too.
const TCP_LISTEN: u32 = 10;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;

fn unix_queue(listener: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let inode = u32::try_from(nix::sys::stat::fstat(listener.as_raw_fd()).ok()?.st_ino).ok()?;
    let nl = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    // struct nlmsghdr (16 bytes) + struct unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&inode.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    // The cookie: "any" (INET_DIAG_NOCOOKIE).
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    sendto(
        nl.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 512];
    let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
        .or_else(|_| recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()))
        .ok()?;
    parse_rqlen(buf.get(..n)?)
}

/// `udiag_rqueue` and `udiag_wqueue` from a `sock_diag` reply.
fn parse_rqlen(msg: &[u8]) -> Option<(u64, u64)> {
    let u16_at = |at: usize| Some(u16::from_ne_bytes(msg.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_ne_bytes(msg.get(at..at + 4)?.try_into().ok()?));
    let len = usize::try_from(u32_at(0)?).ok()?.min(msg.len());
    if u16_at(4)? == NLMSG_ERROR {
        return None;
    }
    // nlmsghdr (16) + unix_diag_msg (16), then the attributes, each 4-byte aligned.
    let mut at = 32;
    while at + 4 <= len {
        let attr_len = usize::from(u16_at(at)?);
        if attr_len < 4 {
            return None;
        }
        if u16_at(at + 2)? == UNIX_DIAG_RQLEN {
            return Some((u64::from(u32_at(at + 4)?), u64::from(u32_at(at + 8)?)));
        }
        at += attr_len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// Connections nobody accepts wait in the queue, and the kernel says how many: TCP and
    /// unix, at several lengths.
    #[test]
    fn queue_length_is_measured() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(measure(tcp.as_fd()).map(|m| m.0), Some(0));
        let mut held = Vec::new();
        for n in 1..=3 {
            held.push(std::net::TcpStream::connect(addr).unwrap());
            assert_eq!(measure(tcp.as_fd()).map(|m| m.0), Some(n), "tcp");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held_unix = Vec::new();
        let measured = measure(unix.as_fd());
        assert_eq!(
            measured.map(|m| m.0),
            Some(0),
            "unix: sock_diag must answer"
        );
        let limit = measured.map(|m| m.1).unwrap();
        assert!(limit > 0, "unix queue limit {limit}");
        for n in 1..=3 {
            held_unix.push(std::os::unix::net::UnixStream::connect(&path).unwrap());
            assert_eq!(measure(unix.as_fd()).map(|m| m.0), Some(n), "unix");
        }
        let _ = unix.accept().unwrap();
        assert_eq!(measure(unix.as_fd()).map(|m| m.0), Some(2), "one accepted");
    }

    #[test]
    fn malformed_replies_are_none() {
        assert_eq!(parse_rqlen(&[]), None);
        assert_eq!(parse_rqlen(&[0; 8]), None);
        let mut msg = vec![0u8; 32];
        msg.extend_from_slice(&12u16.to_ne_bytes());
        msg.extend_from_slice(&UNIX_DIAG_RQLEN.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&128u32.to_ne_bytes());
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_rqlen(&msg), Some((7, 128)));
        // A zero-length attribute would loop forever.
        msg[32..34].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse_rqlen(&msg), None);
    }
}
