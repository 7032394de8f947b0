//! The process image a reload re-executes: the same binary and command line, in place (same
//! pid), with the listener inherited. The prefork master reloads this way on HUP, and so does
//! a `method=threaded` process (HUP, `maxrequests=`); both also on `touch_reload=`.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{self, Kind};
use crate::listen::{StdListener, REEXEC_FD_ENV};
use crate::sys;

/// The process image to re-execute on a reload (HUP, `touch_reload=`).
#[derive(Clone, Debug)]
pub struct Image {
    /// The executable's path as resolved at startup (so a binary replaced on disk is loaded).
    pub exe: PathBuf,
    /// The command line, with relative paths in options made absolute (see
    /// [`Image::current`]).
    pub args: Vec<OsString>,
}

impl Image {
    /// This process's image. Call before daemonizing.
    ///
    /// Relative paths in `key=value` options (`pidfile=app.pid`, `touch_reload=site.fcgi`)
    /// are made absolute from the directory the process started in, as
    /// [`Config`](crate::config::Config) does: a daemon has changed to `workdir=` by the time
    /// it re-executes itself, and the new image would take them from there.
    pub fn current() -> io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            args: std::env::args_os()
                .enumerate()
                .map(|(i, arg)| {
                    if i == 0 {
                        arg
                    } else {
                        absolute_path_option(arg)
                    }
                })
                .collect(),
        })
    }

    /// Whether the executable can still be run (a reload does not begin with one that was
    /// removed or made unexecutable).
    pub fn executable(&self) -> io::Result<()> {
        nix::unistd::access(&self.exe, nix::unistd::AccessFlags::X_OK).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", self.exe.display()),
            )
        })
    }

    /// Replaces this process's image with this one (same pid), `listener` inherited (named
    /// in [`REEXEC_FD_ENV`]) and `env` added to the environment; `args[0]` is kept as given.
    /// Returns only on failure, with the listener close-on-exec again. Other descriptors
    /// without close-on-exec stay open in the new image.
    ///
    /// `env` is passed to the new image, not set in this process, where other threads (of
    /// `method=threaded`) may be reading the environment.
    pub fn reexec(&self, listener: &StdListener, mut env: Vec<(&str, String)>) -> io::Error {
        let fd = match listener.keep_across_exec() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        env.push((REEXEC_FD_ENV, fd.to_string()));
        env.extend(crate::status::handover());
        let mut cmd = Command::new(&self.exe);
        if let Some((arg0, rest)) = self.args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
        cmd.envs(env);
        let err = cmd.exec();
        crate::status::handover_failed();
        if let Err(e) = sys::set_cloexec(fd, true) {
            tracing::warn!("cannot restore close-on-exec on the listener: {e}");
        }
        err
    }
}

/// `arg` with its value made absolute when it is `key=value` for a path option and the value
/// is relative; anything else unchanged.
fn absolute_path_option(arg: OsString) -> OsString {
    let Some((key, value)) = arg.to_str().and_then(|a| a.split_once('=')) else {
        return arg;
    };
    let is_path = config::option(&key.to_ascii_lowercase()).is_some_and(|d| d.kind == Kind::Path);
    // `accesslog=-` means standard error, not a file named "-".
    if !is_path || value.is_empty() || value == "-" || Path::new(value).is_absolute() {
        return arg;
    }
    match std::path::absolute(value) {
        Ok(path) => {
            let mut absolute = OsString::from(format!("{key}="));
            absolute.push(path);
            absolute
        }
        Err(_) => arg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_options_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let made = |arg: &str| absolute_path_option(OsString::from(arg));
        assert_eq!(
            made("pidfile=run/app.pid"),
            OsString::from(format!("pidfile={}", cwd.join("run/app.pid").display()))
        );
        assert_eq!(
            made("SOCKET=s.sock"),
            OsString::from(format!("SOCKET={}", cwd.join("s.sock").display())),
            "option names are case-insensitive"
        );
        for unchanged in [
            "pidfile=/run/app.pid",
            "pidfile=",
            "port=3033",
            "runfcgi",
            "nosuchoption=x",
        ] {
            assert_eq!(made(unchanged), OsString::from(unchanged), "{unchanged}");
        }
    }
}
