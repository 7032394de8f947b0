//! The Python stack of the thread running a slow request, for the slow log (`slowlog=`), as
//! php-fpm's slowlog shows the PHP backtrace.
//!
//! Each request carries a [`RunningOn`] slot: the Python thread that runs it writes its
//! thread ident there when it starts the request and clears it when done, both while it holds
//! the GIL. When the request is found slow, the status layer calls [`PythonStack::take`] on a
//! thread of its own: it takes the GIL (Python hands it over within its switch interval, even
//! from a busy loop), reads the slot, and formats that thread's frame from
//! `sys._current_frames()` with `traceback`, one entry per frame, innermost frames kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::status::layer::SlowDetail;

/// Innermost frames shown: where a request is stuck is at the bottom of its stack (a Django
/// request is 30 to 60 frames deep, mostly middleware); php-fpm's
/// `request_slowlog_trace_depth` defaults to 20 for the same reason.
pub(crate) const MAX_STACK_FRAMES: usize = 20;

/// Bytes of stack text at most (outer frames are left out first): frames with their source
/// lines are about 150 bytes, so this holds the innermost frames whole, and one slow request
/// cannot write an unbounded entry to the error log.
pub(crate) const MAX_STACK_BYTES: usize = 8 * 1024;

/// How deep a stack is counted before the count gives up (it only says how many outer frames
/// were left out, "at least" beyond it): Python's own recursion limit is 1000.
pub(crate) const MAX_COUNTED_DEPTH: usize = 10_000;

/// The Python thread running one request: its `threading.get_ident()`, 0 while none does
/// (the request waits for a thread, or its Python part is done).
#[derive(Clone, Debug, Default)]
pub(crate) struct RunningOn(Arc<AtomicU64>);

impl RunningOn {
    /// The request now runs on the thread `ident`; called with the GIL held.
    pub(crate) fn start(&self, _py: Python<'_>, ident: u64) {
        self.0.store(ident, Ordering::SeqCst);
    }

    /// The request's Python part is done; called with the GIL held.
    pub(crate) fn end(&self, _py: Python<'_>) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// The slow log's view of one request's Python thread.
#[derive(Debug)]
pub(crate) struct PythonStack(pub(crate) RunningOn);

impl SlowDetail for PythonStack {
    fn what(&self) -> &'static str {
        "Python stack"
    }

    fn take(&self) -> String {
        Python::attach(|py| {
            // Read with the GIL held: the request's thread writes the slot only while it
            // holds the GIL, so the ident is the one running the request now.
            let ident = (self.0).0.load(Ordering::SeqCst);
            if ident == 0 {
                return "  (no Python stack: the request is not running Python code now)".into();
            }
            match format(py, ident) {
                Ok(Some(text)) => text,
                Ok(None) => format!("  (no Python stack: thread {ident} has no frame)"),
                Err(e) => format!("  (Python stack not taken: {e})"),
            }
        })
    }
}

/// The stack of the thread `ident`, most recent call last, at most [`MAX_STACK_FRAMES`]
/// frames and [`MAX_STACK_BYTES`] bytes, every line indented by two more spaces.
fn format(py: Python<'_>, ident: u64) -> PyResult<Option<String>> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let Some(frame) = frames.cast::<PyDict>()?.get_item(ident)? else {
        return Ok(None);
    };
    let mut depth = 0;
    let mut f = frame.clone();
    while !f.is_none() && depth < MAX_COUNTED_DEPTH {
        depth += 1;
        f = f.getattr("f_back")?;
    }
    let counted_all = f.is_none();
    // One entry per frame: format_stack() would fold a recursion's repeated frames into one
    // "[Previous line repeated N more times]" entry, and the count of frames left out, which
    // is the depth less the entries kept, would be off by those.
    let traceback = py.import("traceback")?;
    let entries = traceback
        .call_method1("extract_stack", (&frame, MAX_STACK_FRAMES))?
        .try_iter()?
        .map(|summary| {
            traceback
                .call_method1("format_list", (PyList::new(py, [summary?])?,))?
                .get_item(0)?
                .extract::<String>()
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Some(render(ident, depth, counted_all, &entries)))
}

/// The text of the stack: a header, then the entries (outermost first) that fit in
/// [`MAX_STACK_BYTES`], innermost kept. `depth` is the stack's depth, or where counting it
/// stopped when `counted_all` is false.
fn render(ident: u64, depth: usize, counted_all: bool, entries: &[String]) -> String {
    let mut kept: Vec<String> = Vec::new();
    let mut bytes = 0;
    for entry in entries.iter().rev() {
        let indented: String = entry.lines().map(|l| format!("  {l}\n")).collect();
        if bytes + indented.len() > MAX_STACK_BYTES {
            if kept.is_empty() {
                // One frame over the whole budget (a huge source line): cut it.
                let mut end = MAX_STACK_BYTES;
                while !indented.is_char_boundary(end) {
                    end -= 1;
                }
                kept.push(format!("{}...\n", &indented[..end]));
            }
            break;
        }
        bytes += indented.len();
        kept.push(indented);
    }
    let left_out = depth.saturating_sub(kept.len());
    let mut text = format!("  Python stack of thread {ident} (most recent call last):\n");
    if left_out > 0 {
        let at_least = if counted_all { "" } else { "at least " };
        text.push_str(&format!(
            "  ... {at_least}{left_out} outer frames left out\n"
        ));
    }
    for entry in kept.iter().rev() {
        text.push_str(entry);
    }
    text.truncate(text.trim_end().len());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> String {
        format!("  File \"/app/m.py\", line {i}, in f{i}\n    call_{i}()\n")
    }

    #[test]
    fn render_indents_and_counts_left_out_frames() {
        let entries: Vec<_> = (0..3).map(entry).collect();
        let text = render(7, 25, true, &entries);
        assert_eq!(
            text,
            "  Python stack of thread 7 (most recent call last):\n  \
             ... 22 outer frames left out\n    \
             File \"/app/m.py\", line 0, in f0\n      call_0()\n    \
             File \"/app/m.py\", line 1, in f1\n      call_1()\n    \
             File \"/app/m.py\", line 2, in f2\n      call_2()"
        );
        assert!(!render(7, 3, true, &entries).contains("left out"));
        assert!(
            render(7, 25, false, &entries).contains("  ... at least 22 outer frames left out\n")
        );
    }

    #[test]
    fn render_keeps_the_innermost_frames_within_the_byte_limit() {
        // Entries of exactly 1 KiB once indented (two lines, two spaces each).
        const ENTRY: usize = 1024;
        let big = |i: usize| {
            let head = format!("  File \"/app/m.py\", line {i:02}, in f{i:02}\n    ");
            format!("{head}{}\n", "x".repeat(ENTRY - 4 - head.len() - 1))
        };
        let fit = MAX_STACK_BYTES / ENTRY;
        // At the limit: every frame kept.
        let exact: Vec<_> = (0..fit).map(big).collect();
        let text = render(1, fit, true, &exact);
        assert!(!text.contains("left out"), "{text}");
        assert_eq!(text.matches("  File ").count(), fit);
        // Over it: the outermost frame is left out, the innermost kept.
        let over: Vec<_> = (0..=fit).map(big).collect();
        let text = render(1, fit + 1, true, &over);
        assert!(text.contains("... 1 outer frames left out"), "{text}");
        assert!(!text.contains("in f00\n"));
        assert!(text.contains(&format!("in f{fit:02}\n")));
        assert_eq!(text.matches("  File ").count(), fit);
        // One frame alone over the limit is cut, not dropped.
        let huge = vec![format!(
            "  File \"/app/m.py\", line 1, in f\n    {}\n",
            "é".repeat(MAX_STACK_BYTES)
        )];
        let text = render(1, 1, true, &huge);
        assert!(
            text.contains("in f\n") && text.ends_with("..."),
            "{}",
            &text[..100]
        );
        assert!(text.len() <= MAX_STACK_BYTES + 100);
    }
}
