//! The interpreter's life in a process: initialisation (once, on the main thread, with no
//! Python signal handlers), `sys.path`, importing the app, and the fork hooks around a
//! `preload=true` master's forks. The C calls themselves are in `crate::sys::python`.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::sys::python;

/// What the interpreter needs to load the app; from `module=`, `pythonpath=`, `virtualenv=`.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Dotted module path.
    pub(crate) module: String,
    /// Name of the WSGI callable in the module.
    pub(crate) callable: String,
    /// Directories put first on `sys.path`, in order.
    pub(crate) pythonpath: Vec<PathBuf>,
    /// A virtualenv whose interpreter Python acts as.
    pub(crate) virtualenv: Option<PathBuf>,
}

/// Initialises Python in this process on the calling thread, which must be the process's
/// main thread and must not have started other threads yet. Idempotent: a second call (a
/// preloaded master's worker) finds it done.
pub(crate) fn start(settings: &Settings) -> Result<(), String> {
    if python::is_initialized() {
        return Ok(());
    }
    let executable = match &settings.virtualenv {
        Some(venv) => {
            let exe = venv.join("bin/python");
            if !venv.join("pyvenv.cfg").is_file() || !exe.exists() {
                return Err(format!(
                    "virtualenv={} is not a virtualenv (no pyvenv.cfg or bin/python in it)",
                    venv.display()
                ));
            }
            Some(python::c_path(&exe)?)
        }
        None => None,
    };
    python::initialize(executable.as_deref())?;
    Python::attach(|py| -> PyResult<()> {
        // With install_signal_handlers=0 Python installs nothing at start, but importing
        // `signal` (any library may) would still install its SIGINT handler, which raises
        // KeyboardInterrupt in whatever Python code runs instead of letting appserver stop
        // gracefully. Import it now, on the main thread, and put SIGINT back.
        let signal = py.import("signal")?;
        let sigint = signal.getattr("SIGINT")?;
        let current = signal.call_method1("getsignal", (&sigint,))?;
        if current.is(&signal.getattr("default_int_handler")?) {
            signal.call_method1("signal", (&sigint, signal.getattr("SIG_DFL")?))?;
        }
        let sys_path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
        for (i, dir) in settings.pythonpath.iter().enumerate() {
            sys_path.insert(i, dir.to_string_lossy().as_ref())?;
        }
        Ok(())
    })
    .map_err(|e| Python::attach(|py| format!("cannot set up Python: {}", traceback(py, &e))))
}

/// Imports the app's module and returns its WSGI callable. An import error is the Python
/// traceback, which the caller prints before exiting 1.
pub(crate) fn load_app(settings: &Settings) -> Result<Py<PyAny>, String> {
    Python::attach(|py| {
        let load = || -> PyResult<Py<PyAny>> {
            let module = py
                .import("importlib")?
                .call_method1("import_module", (&settings.module,))?;
            let app = module.getattr(settings.callable.as_str())?;
            if !app.is_callable() {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "{}:{} is not callable",
                    settings.module, settings.callable
                )));
            }
            Ok(app.unbind())
        };
        load().map_err(|e| {
            format!(
                "cannot load the WSGI app {}:{}:\n{}",
                settings.module,
                settings.callable,
                traceback(py, &e)
            )
        })
    })
}

/// How many Python threads run now (`threading.active_count()`): a preloading master must
/// have only its own, or forking would copy threads that do not exist in the workers.
pub(crate) fn python_threads() -> usize {
    Python::attach(|py| {
        py.import("threading")
            .and_then(|t| t.call_method0("active_count"))
            .and_then(|n| n.extract::<usize>())
            .unwrap_or(1)
    })
}

/// The formatted traceback of `err`, as Python prints it.
pub(crate) fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        pyo3::types::PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract::<String>()
    });
    match formatted {
        Ok(text) => text.trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}

/// Runs the interpreter's `atexit` handlers (the process is about to exit without
/// finalising Python), giving up after `deadline`: they run on a thread of their own, which
/// the exit then ends.
pub(crate) fn run_atexit(deadline: std::time::Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("python-atexit".into())
        .spawn(move || {
            Python::attach(|py| {
                let run = py
                    .import("atexit")
                    .and_then(|m| m.call_method0("_run_exitfuncs"));
                if let Err(e) = run {
                    tracing::warn!("atexit handlers failed:\n{}", traceback(py, &e));
                }
            });
            let _ = done_tx.send(());
        });
    if started.is_ok() && done_rx.recv_timeout(deadline).is_err() {
        tracing::warn!(
            "atexit handlers still running after {}s: exiting without them",
            deadline.as_secs()
        );
    }
}
