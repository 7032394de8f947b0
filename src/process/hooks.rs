//! Process-model hooks: the few moments at which a built-in app must act in a given process.
//!
//! Most apps need none. An embedded interpreter (`app=wsgi`) does: it must start in the
//! process that will serve (a prefork worker, after the fork; the threaded server, after
//! daemonizing and before the runtime's threads exist), may load the app once in the prefork
//! master before forking (`preload=true`), and then needs the interpreter's own fork hooks
//! around every fork. The process models call the free functions below at those moments; an
//! app installs its [`ProcessHooks`] once, before serving. This keeps `process` free of any
//! app's internals and apps free of the process models'.

use std::sync::OnceLock;

/// What an app does at the process model's boundaries. Every method defaults to nothing.
pub trait ProcessHooks: Send + Sync + 'static {
    /// In the prefork master, before the first worker is forked (`preload=true`). An error
    /// stops the server with exit status 1.
    fn preload(&self) -> Result<(), String> {
        Ok(())
    }

    /// Just before a worker is forked, in the master.
    fn before_fork(&self) {}

    /// Just after a fork: in the child when `child`, else in the master (also when the fork
    /// failed).
    fn after_fork(&self, _child: bool) {}

    /// In the process that will serve (each prefork worker; the threaded server) before it
    /// accepts: load the app. An error stops that process with exit status 1.
    fn serve_start(&self) -> Result<(), String> {
        Ok(())
    }

    /// In the serving process once it stopped serving, just before it exits (app=wsgi: the
    /// interpreter's `atexit` handlers, under a deadline).
    fn serve_stop(&self) {}
}

static HOOKS: OnceLock<Box<dyn ProcessHooks>> = OnceLock::new();

/// Installs the app's hooks; at most once per process (a second call is refused).
pub fn install(hooks: Box<dyn ProcessHooks>) -> Result<(), String> {
    HOOKS
        .set(hooks)
        .map_err(|_| "process hooks are already installed".to_owned())
}

/// Runs [`ProcessHooks::preload`], if hooks are installed.
pub fn preload() -> Result<(), String> {
    HOOKS.get().map_or(Ok(()), |h| h.preload())
}

/// Runs [`ProcessHooks::before_fork`], if hooks are installed.
pub fn before_fork() {
    if let Some(h) = HOOKS.get() {
        h.before_fork();
    }
}

/// Runs [`ProcessHooks::after_fork`], if hooks are installed.
pub fn after_fork(child: bool) {
    if let Some(h) = HOOKS.get() {
        h.after_fork(child);
    }
}

/// Runs [`ProcessHooks::serve_start`], if hooks are installed.
pub fn serve_start() -> Result<(), String> {
    HOOKS.get().map_or(Ok(()), |h| h.serve_start())
}

/// Runs [`ProcessHooks::serve_stop`], if hooks are installed.
pub fn serve_stop() {
    if let Some(h) = HOOKS.get() {
        h.serve_stop();
    }
}
