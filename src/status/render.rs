//! The scoreboard's [`Snapshot`] as a person reads it (text, as php-fpm's status page), as a
//! program reads it (JSON) and as Prometheus scrapes it (OpenMetrics, or the older
//! Prometheus text format for scrapers that do not ask for OpenMetrics).
//!
//! Metric names follow Prometheus conventions: an `appserver_` prefix, base units (seconds,
//! bytes), `_total` on counters. `docs/operations.md` defines each one.

use std::fmt::Write as _;
use std::time::Duration;

use super::scoreboard::{Snapshot, WorkerState, DURATION_BUCKETS};

/// The formats a status page can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Plain text, `key: value` lines.
    Text,
    /// A JSON object.
    Json,
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The `Content-Type` to answer with.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; charset=utf-8",
            Self::Json => "application/json",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Renders `snap` in `format`; `full` adds the per-worker table (text and JSON always have
/// the worker counts; metrics never list workers one by one: a pid label would make a new
/// series per worker).
pub(crate) fn render(snap: &Snapshot, format: Format, full: bool) -> String {
    match format {
        Format::Text => text(snap, full),
        Format::Json => json(snap, full).to_string() + "\n",
        Format::OpenMetrics => metrics(snap, true),
        Format::Prometheus => metrics(snap, false),
    }
}

fn requests_total(snap: &Snapshot) -> u64 {
    snap.requests.iter().map(|r| r.2).sum()
}

fn by_class(snap: &Snapshot, class: &str) -> u64 {
    snap.requests
        .iter()
        .filter(|r| r.1 == class)
        .map(|r| r.2)
        .sum()
}

fn worker_states(snap: &Snapshot) -> Vec<(&'static str, usize)> {
    [
        WorkerState::Idle,
        WorkerState::Reading,
        WorkerState::Handling,
        WorkerState::Writing,
        WorkerState::Stopping,
    ]
    .iter()
    .map(|s| {
        (
            s.name(),
            snap.workers.iter().filter(|w| w.state == *s).count(),
        )
    })
    .collect()
}

fn text(snap: &Snapshot, full: bool) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{:<24}{v}", format!("{k}:"));
    };
    line("process model", &snap.method);
    line("protocol", &snap.protocol);
    line("listen", &snap.listen);
    line("start time", &snap.created_unix);
    line("uptime seconds", &snap.uptime.as_secs());
    line("reloads", &snap.reloads);
    line("accepted conn", &snap.accepted);
    line("active conn", &snap.active_connections);
    for (reason, n) in &snap.close_reasons {
        line(&format!("closed {reason}"), n);
    }
    line("requests", &requests_total(snap));
    for class in super::scoreboard::CODE_CLASSES {
        line(&format!("requests {class}"), &by_class(snap, class));
    }
    line("requests in flight", &snap.in_flight);
    line("overloaded", &snap.overloaded);
    line("bytes in", &snap.bytes_in);
    line("bytes out", &snap.bytes_out);
    match &snap.listen_queue {
        Some(q) => {
            line("listen queue", &q.waiting);
            line("max listen queue", &q.max_seen);
            line("listen queue len", &q.limit);
        }
        None => line("listen queue", &"unknown"),
    }
    line("workers", &snap.workers.len());
    for (state, n) in worker_states(snap) {
        line(&format!("workers {state}"), &n);
    }
    if full {
        for w in &snap.workers {
            out.push('\n');
            let _ = writeln!(out, "{:<24}{}", "pid:", w.pid);
            let _ = writeln!(out, "{:<24}{}", "state:", w.state.name());
            let _ = writeln!(out, "{:<24}{}", "start time:", w.started_unix);
            let _ = writeln!(out, "{:<24}{}", "requests:", w.served);
            let _ = writeln!(out, "{:<24}{}", "in flight:", w.in_flight);
            if let Some(rss) = w.rss_bytes {
                let _ = writeln!(out, "{:<24}{rss}", "rss bytes:");
            }
            if let Some(r) = &w.request {
                let _ = writeln!(out, "{:<24}{}", "request method:", r.method);
                let _ = writeln!(out, "{:<24}{}", "request uri:", r.uri);
                let _ = writeln!(
                    out,
                    "{:<24}{:.3}",
                    "request duration:",
                    r.elapsed.as_secs_f64()
                );
            }
        }
    }
    out
}

fn json(snap: &Snapshot, full: bool) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut requests = Map::new();
    for (proto, class, n) in &snap.requests {
        let entry = requests
            .entry((*proto).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert((*class).to_owned(), json!(n));
        }
    }
    let closes: Map<String, Value> = snap
        .close_reasons
        .iter()
        .map(|(r, n)| ((*r).to_owned(), json!(n)))
        .collect();
    let states: Map<String, Value> = worker_states(snap)
        .into_iter()
        .map(|(s, n)| (s.to_owned(), json!(n)))
        .collect();
    let mut value = json!({
        "method": snap.method,
        "protocol": snap.protocol,
        "listen": snap.listen,
        "start_time": snap.created_unix,
        "uptime_seconds": snap.uptime.as_secs(),
        "reloads": snap.reloads,
        "last_reload_time": snap.last_reload_unix,
        "accepted_connections": snap.accepted,
        "active_connections": snap.active_connections,
        "closed_early": closes,
        "requests_total": requests_total(snap),
        "requests": requests,
        "requests_in_flight": snap.in_flight,
        "overloaded": snap.overloaded,
        "bytes_in": snap.bytes_in,
        "bytes_out": snap.bytes_out,
        "listen_queue": snap.listen_queue.map(|q| json!({
            "waiting": q.waiting, "max_seen": q.max_seen, "limit": q.limit
        })),
        "duration": {
            "count": snap.duration_count,
            "sum_seconds": snap.duration_sum.as_secs_f64(),
        },
        "workers_total": snap.workers.len(),
        "workers_by_state": states,
        "workers_unslotted": snap.unslotted,
    });
    if full {
        let workers: Vec<Value> = snap
            .workers
            .iter()
            .map(|w| {
                json!({
                    "pid": w.pid,
                    "state": w.state.name(),
                    "start_time": w.started_unix,
                    "requests": w.served,
                    "in_flight": w.in_flight,
                    "rss_bytes": w.rss_bytes,
                    "request": w.request.as_ref().map(|r| json!({
                        "method": r.method,
                        "uri": r.uri,
                        "elapsed_seconds": r.elapsed.as_secs_f64(),
                    })),
                })
            })
            .collect();
        if let Value::Object(m) = &mut value {
            m.insert("workers".to_owned(), Value::Array(workers));
        }
    }
    value
}

/// Writes metric families; `om` picks OpenMetrics over the Prometheus text format (they
/// differ in counter `TYPE` names, the info type and the final `# EOF`).
struct Metrics {
    out: String,
    om: bool,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Prometheus text names a counter family with its `_total`; OpenMetrics without.
        let family = match (kind, self.om) {
            ("counter", false) => format!("{name}_total"),
            ("info", false) => format!("{name}_info"),
            _ => name.to_owned(),
        };
        let kind = if kind == "info" && !self.om {
            "gauge"
        } else {
            kind
        };
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
        let _ = writeln!(self.out, "# HELP {family} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(&format!("{name}_total"), &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn metrics(snap: &Snapshot, om: bool) -> String {
    let mut m = Metrics {
        out: String::new(),
        om,
    };
    m.family("appserver_server", "info", "What this server is.");
    m.sample(
        "appserver_server_info",
        &[
            ("method", snap.method),
            ("protocol", snap.protocol),
            ("listen", &snap.listen),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    m.gauge(
        "appserver_start_time_seconds",
        "When the server first started, in seconds since the epoch; kept across reloads.",
        snap.created_unix,
    );
    m.counter(
        "appserver_reloads",
        "Reloads (re-executions) since the server started.",
        snap.reloads,
    );
    m.counter(
        "appserver_connections_accepted",
        "Connections accepted from the web server.",
        snap.accepted,
    );
    m.gauge(
        "appserver_connections_active",
        "Connections open now.",
        snap.active_connections,
    );
    m.family(
        "appserver_connections_closed_early",
        "counter",
        "Connections closed before their natural end, by reason.",
    );
    for (reason, n) in &snap.close_reasons {
        m.sample(
            "appserver_connections_closed_early_total",
            &[("reason", reason)],
            n,
        );
    }
    m.family(
        "appserver_requests",
        "counter",
        "Requests answered, by gateway protocol and status class.",
    );
    for (proto, class, n) in &snap.requests {
        m.sample(
            "appserver_requests_total",
            &[("protocol", proto), ("code_class", class)],
            n,
        );
    }
    m.gauge(
        "appserver_requests_in_flight",
        "Requests being handled now.",
        snap.in_flight,
    );
    m.counter(
        "appserver_overloaded",
        "Requests refused because a process ran all the requests it may at once.",
        snap.overloaded,
    );
    m.counter(
        "appserver_received_bytes",
        "Bytes read from web server connections.",
        snap.bytes_in,
    );
    m.counter(
        "appserver_sent_bytes",
        "Bytes written to web server connections.",
        snap.bytes_out,
    );
    if let Some(q) = &snap.listen_queue {
        m.gauge(
            "appserver_listen_queue",
            "Connections waiting in the listen queue at the last measurement.",
            q.waiting,
        );
        m.gauge(
            "appserver_listen_queue_max",
            "Most connections seen waiting in the listen queue since the server started.",
            q.max_seen,
        );
        m.gauge(
            "appserver_listen_queue_limit",
            "The listen queue's limit (the effective backlog).",
            q.limit,
        );
    }
    m.family(
        "appserver_request_duration_seconds",
        "histogram",
        "Time from the request's start to the end of its response body.",
    );
    for (i, n) in snap.duration_buckets.iter().enumerate() {
        let le = DURATION_BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
        m.sample(
            "appserver_request_duration_seconds_bucket",
            &[("le", &le)],
            n,
        );
    }
    m.sample(
        "appserver_request_duration_seconds_count",
        &[],
        snap.duration_count,
    );
    m.sample(
        "appserver_request_duration_seconds_sum",
        &[],
        seconds(snap.duration_sum),
    );
    m.family("appserver_workers", "gauge", "Worker processes, by state.");
    for (state, n) in worker_states(snap) {
        m.sample("appserver_workers", &[("state", state)], n);
    }
    m.counter(
        "appserver_workers_unslotted",
        "Workers that found no free scoreboard slot (counted, not shown one by one).",
        snap.unslotted,
    );
    if om {
        m.out.push_str("# EOF\n");
    }
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::scoreboard::{ListenQueue, Scoreboard};

    fn sample() -> Snapshot {
        let board = Scoreboard::create().unwrap().board;
        let slot = board.claim_slot(99).unwrap();
        slot.request_started(b"GET", b"/slow?\"quoted\"");
        board.request_started();
        board.request_finished("fcgi", 200, Duration::from_millis(3));
        let mut snap = board.snapshot();
        snap.method = "prefork";
        snap.protocol = "fcgi";
        snap.listen = "unix:/run/a \"b\".sock".to_owned();
        snap.listen_queue = Some(ListenQueue {
            waiting: 2,
            max_seen: 5,
            limit: 128,
        });
        snap
    }

    #[test]
    fn openmetrics_has_counters_histogram_and_eof() {
        let out = render(&sample(), Format::OpenMetrics, false);
        assert!(out.ends_with("# EOF\n"), "{out}");
        assert!(out.contains("# TYPE appserver_requests counter\n"), "{out}");
        assert!(out.contains("appserver_requests_total{protocol=\"fcgi\",code_class=\"2xx\"} 1\n"));
        assert!(out.contains("appserver_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(out.contains("appserver_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(
            out.contains("listen=\"unix:/run/a \\\"b\\\".sock\""),
            "{out}"
        );
        assert!(out.contains("appserver_listen_queue_max 5\n"));
        let prom = render(&sample(), Format::Prometheus, false);
        assert!(prom.contains("# TYPE appserver_requests_total counter\n"));
        assert!(!prom.contains("# EOF"));
    }

    #[test]
    fn json_and_text_show_the_current_request() {
        let snap = sample();
        let v: serde_json::Value =
            serde_json::from_str(&render(&snap, Format::Json, true)).unwrap();
        assert_eq!(v["requests_total"], 1);
        assert_eq!(v["requests"]["fcgi"]["2xx"], 1);
        assert_eq!(v["workers"][0]["pid"], 99);
        assert_eq!(v["workers"][0]["request"]["uri"], "/slow?\"quoted\"");
        assert_eq!(v["listen_queue"]["limit"], 128);
        let short: serde_json::Value =
            serde_json::from_str(&render(&snap, Format::Json, false)).unwrap();
        assert!(short.get("workers").is_none());
        let text = render(&snap, Format::Text, true);
        assert!(text.contains("requests 2xx:           1\n"), "{text}");
        assert!(
            text.contains("request uri:            /slow?\"quoted\"\n"),
            "{text}"
        );
    }
}
