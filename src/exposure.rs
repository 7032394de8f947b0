//! What a bound listener exposes, checked once at start: setups that would let anyone who
//! can connect run code are refused (exit 2, naming the option and the way to opt in), and
//! setups that are risky but sometimes meant get one warning line each.
//!
//! The checks run on the listener as bound, not on the options alone, so a socket inherited
//! on fd 0 or from systemd is judged by its real address: `host=` says nothing about it.
//! Unix sockets are local: only their file mode decides who may connect. This module makes
//! no decision about requests; `docs/security.md` gives the threat model behind each check.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{App, Config, ConfigError, Protocol};

/// Refuses to serve on `tcp` (the bound TCP address; `None` for a unix socket) when that
/// would let any host that can reach it run code or forge requests:
///
/// - `app=cgi` without `docroot=` or `script=` runs whatever `SCRIPT_FILENAME` names
///   (`/bin/sh` with commands in the body); on a non-loopback address only
///   `cgi_unconfined=true` accepts it.
/// - `protocol=ajp` without `secret=` trusts every peer's request attributes (Ghostcat);
///   on a non-loopback address it needs `secret=`, inherited listeners included.
///
/// `listen` names the listener in the message (`fd0`, `0.0.0.0:8009`).
pub(crate) fn refuse_unsafe(
    config: &Config,
    tcp: Option<SocketAddr>,
    listen: &str,
) -> Result<(), ConfigError> {
    let Some(addr) = tcp.filter(|a| !a.ip().is_loopback()) else {
        return Ok(());
    };
    let unconfined = config.script.is_none() && config.docroot.is_none();
    if config.app == App::Cgi && unconfined && !config.cgi_unconfined {
        return Err(ConfigError::new(
            "cgi_unconfined",
            format!(
                "app=cgi without docroot= or script= on {listen} ({addr}), which is not a \
                 loopback address: any host that can connect could run any program on this \
                 machine by naming it in SCRIPT_FILENAME. Set docroot= or script=, listen on \
                 127.0.0.1 or a unix socket, or accept it with cgi_unconfined=true"
            ),
        ));
    }
    if config.protocol == Protocol::Ajp && config.secret.is_none() {
        return Err(ConfigError::new(
            "secret",
            format!(
                "protocol=ajp on {listen} ({addr}), which is not a loopback address, needs \
                 secret=: AJP does not authenticate its peer, so anyone who can reach it \
                 could forge requests (Ghostcat, CVE-2020-1938); set the secret Apache \
                 sends, or listen on 127.0.0.1 or a unix socket"
            ),
        ));
    }
    Ok(())
}

/// The warnings to log once at start: CGI scripts that would run as root
/// (`root` is whether this process runs as root), and a unix socket `socket` (its path and
/// file mode) that every local user may connect to.
pub(crate) fn warnings(config: &Config, root: bool, socket: Option<(&Path, u32)>) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.app == App::Cgi && root && config.user.is_none() {
        warnings.push(
            "app=cgi runs CGI scripts as root: a flaw in any script is a flaw of the whole \
             machine; give user= (and group=) to run them as an unprivileged account"
                .to_owned(),
        );
    }
    if let Some((path, mode)) = socket {
        if mode & 0o002 != 0 {
            warnings.push(format!(
                "unix socket {} is mode {:04o}: every local user can connect and send \
                 requests; use umask=0007 (and group=) to let only the web server's group in",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;

    fn config(args: &[&str]) -> Config {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        Config::from_args(Args::parse(&args).unwrap(), &|_| None).unwrap()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn unconfined_cgi_is_refused_beyond_loopback() {
        let c = config(&["app=cgi"]);
        let e = refuse_unsafe(&c, addr("0.0.0.0:9000"), "fd0").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "runfcgi: option \"cgi_unconfined\": app=cgi without docroot= or script= on \
                 fd0 (0.0.0.0:9000)"
            ),
            "{e}"
        );
        assert!(e
            .to_string()
            .ends_with("accept it with cgi_unconfined=true"));
        assert!(refuse_unsafe(&c, addr("[::]:9000"), "fd0").is_err());
        // Loopback and unix sockets are local.
        assert!(refuse_unsafe(&c, addr("127.0.0.1:9000"), "x").is_ok());
        assert!(refuse_unsafe(&c, addr("[::1]:9000"), "x").is_ok());
        assert!(refuse_unsafe(&c, None, "unix:/run/cgi.sock").is_ok());
        // Confined, or opted in.
        for ok in [
            &["app=cgi", "docroot=/tmp"][..],
            &["app=cgi", "script=/bin/true"],
            &["app=cgi", "cgi_unconfined=true"],
            &[],
        ] {
            assert!(
                refuse_unsafe(&config(ok), addr("0.0.0.0:9000"), "x").is_ok(),
                "{ok:?}"
            );
        }
    }

    #[test]
    fn ajp_without_secret_is_refused_beyond_loopback_whatever_the_listener() {
        let c = config(&["protocol=ajp"]);
        let e = refuse_unsafe(&c, addr("192.0.2.1:8009"), "fd3").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("runfcgi: option \"secret\": protocol=ajp on fd3 (192.0.2.1:8009)"),
            "{e}"
        );
        assert!(refuse_unsafe(&c, addr("127.0.0.1:8009"), "fd0").is_ok());
        assert!(refuse_unsafe(&c, None, "fd0").is_ok());
        let with_secret = config(&["protocol=ajp", "secret=s"]);
        assert!(refuse_unsafe(&with_secret, addr("192.0.2.1:8009"), "fd0").is_ok());
    }

    #[test]
    fn warnings_for_root_scripts_and_open_sockets() {
        let cgi = config(&["app=cgi"]);
        let w = warnings(&cgi, true, None);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("app=cgi runs CGI scripts as root"),
            "{w:?}"
        );
        assert!(warnings(&cgi, false, None).is_empty());
        assert!(warnings(&config(&["app=cgi", "user=nobody"]), true, None).is_empty());
        assert!(warnings(&config(&[]), true, None).is_empty(), "app=info");

        let path = Path::new("/run/a.sock");
        let info = config(&[]);
        assert_eq!(
            warnings(&info, false, Some((path, 0o777))),
            [
                "unix socket /run/a.sock is mode 0777: every local user can connect and send \
              requests; use umask=0007 (and group=) to let only the web server's group in"
            ]
        );
        assert_eq!(warnings(&info, false, Some((path, 0o666))).len(), 1);
        assert!(warnings(&info, false, Some((path, 0o775))).is_empty());
        assert!(warnings(&info, false, Some((path, 0o660))).is_empty());
    }
}
