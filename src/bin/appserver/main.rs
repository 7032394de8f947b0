//! The `appserver` binary: `appserver runfcgi key=value ...` with the built-in apps.
//!
//! All the work is in the library (`appserver::cli`), so a user's own binary calling
//! `appserver::run(handler)` gets exactly the same command line.

fn main() -> std::process::ExitCode {
    appserver::cli::main_builtin()
}
