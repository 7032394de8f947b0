//! `appserver status ADDRESS [--watch]`: a running server's status as a table, like
//! uwsgitop. It reads the JSON status through the `metrics=` listener (HTTP, with hyper), or
//! with `--path` through the gateway listener's `status_path=` (FastCGI, SCGI or AJP, with
//! the `appserver probe` client), so it works wherever either is reachable.
//!
//! ```text
//! appserver prefork fcgi unix:/run/site.sock  up 2h03m  reloads 1
//! connections  accepted 10234  active 3
//! requests     10230 (1xx 0  2xx 10101  3xx 87  4xx 40  5xx 2)  in flight 3  overloaded 0
//! listen queue 0 (max 7, limit 1024)   bytes in 5.1M  out 92.3M
//!
//!     PID STATE       REQS  INFL      RSS  ELAPSED  REQUEST
//!    4242 handling     512     1    31.2M     3.1s  GET /report?year=2026
//!    4243 idle         498     0    30.9M        -  -
//! ```

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

/// What `appserver status` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `metrics=` address, or with `path` the gateway listener's.
    pub address: String,
    /// The `status_path=` to ask the gateway listener for.
    pub path: Option<String>,
    /// The gateway protocol with `path`.
    pub protocol: String,
    /// Refresh period, when watching.
    pub watch: Option<Duration>,
    /// Print the JSON instead of the table.
    pub json: bool,
    /// How long to wait for the server.
    pub timeout: Duration,
}

/// Runs the command: 0 when the status was shown, 1 when it could not be read.
pub fn main(options: &Options) -> ExitCode {
    loop {
        match fetch(options) {
            Ok(status) => {
                let out = if options.json {
                    format!("{status:#}\n")
                } else {
                    table(&status)
                };
                let mut stdout = std::io::stdout().lock();
                if options.watch.is_some() {
                    // Home and clear, as top does.
                    let _ = stdout.write_all(b"\x1b[H\x1b[2J");
                }
                let _ = stdout.write_all(out.as_bytes());
                let _ = stdout.flush();
            }
            Err(e) => {
                eprintln!("appserver status: {}: {e}", options.address);
                if options.watch.is_none() {
                    return ExitCode::FAILURE;
                }
            }
        }
        match options.watch {
            Some(period) => std::thread::sleep(period.max(Duration::from_millis(100))),
            None => return ExitCode::SUCCESS,
        }
    }
}

/// The JSON status of the server at `options.address`.
pub fn fetch(options: &Options) -> Result<Value, String> {
    let body = match &options.path {
        Some(path) => {
            let probe = crate::probe::Probe {
                address: options.address.clone(),
                path: format!("{path}?json&full"),
                timeout: options.timeout,
            };
            let resp = probe.send(&options.protocol).map_err(|e| e.to_string())?;
            if resp.status != 200 {
                return Err(format!(
                    "{path} answered {} (is status_path={path} set?)",
                    resp.status
                ));
            }
            let at = resp
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or("response without a head")?;
            resp.stdout[at + 4..].to_vec()
        }
        None => http_get(&options.address, "/status", options.timeout)?,
    };
    serde_json::from_slice(&body).map_err(|e| format!("not a status: {e}"))
}

/// `GET path` from the metrics listener at `address` (HOST:PORT or a unix socket path).
fn http_get(address: &str, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let get = async {
            let req = http::Request::get(path)
                .header(http::header::HOST, "localhost")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = if address.contains('/') {
                let io = tokio::net::UnixStream::connect(address)
                    .await
                    .map_err(|e| e.to_string())?;
                send(io, req).await?
            } else {
                let io = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(|e| e.to_string())?;
                send(io, req).await?
            };
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != http::StatusCode::OK {
                return Err(format!("{path} answered {status}"));
            }
            Ok(body.to_vec())
        };
        tokio::time::timeout(timeout, get)
            .await
            .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
    })
}

async fn send<S>(
    io: S,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Bytes for people: `512`, `31.2K`, `92.3M`, `1.1G`.
fn human_bytes(n: u64) -> String {
    let units = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in units {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    n.to_string()
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The status as a table.
pub fn table(s: &Value) -> String {
    let mut out = String::new();
    let str_of = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    out.push_str(&format!(
        "appserver {} {} {}  up {}  reloads {}\n",
        str_of(&s["method"]),
        str_of(&s["protocol"]),
        str_of(&s["listen"]),
        human_secs(num(&s["uptime_seconds"])),
        num(&s["reloads"]),
    ));
    out.push_str(&format!(
        "connections  accepted {}  active {}\n",
        num(&s["accepted_connections"]),
        num(&s["active_connections"]),
    ));
    let class = |c: &str| -> u64 {
        s["requests"]
            .as_object()
            .map_or(0, |protos| protos.values().map(|p| num(&p[c])).sum())
    };
    out.push_str(&format!(
        "requests     {} (1xx {}  2xx {}  3xx {}  4xx {}  5xx {})  in flight {}  overloaded {}\n",
        num(&s["requests_total"]),
        class("1xx"),
        class("2xx"),
        class("3xx"),
        class("4xx"),
        class("5xx"),
        num(&s["requests_in_flight"]),
        num(&s["overloaded"]),
    ));
    let queue = match &s["listen_queue"] {
        Value::Object(q) => format!(
            "{} (max {}, limit {})",
            num(&q["waiting"]),
            num(&q["max_seen"]),
            num(&q["limit"])
        ),
        _ => "unknown".to_owned(),
    };
    out.push_str(&format!(
        "listen queue {queue}   bytes in {}  out {}\n\n",
        human_bytes(num(&s["bytes_in"])),
        human_bytes(num(&s["bytes_out"])),
    ));
    out.push_str(&format!(
        "{:>7} {:<10} {:>6} {:>5} {:>8} {:>8}  REQUEST\n",
        "PID", "STATE", "REQS", "INFL", "RSS", "ELAPSED"
    ));
    for w in s["workers"].as_array().into_iter().flatten() {
        let (elapsed, request) = match &w["request"] {
            Value::Object(r) => (
                format!("{:.1}s", r["elapsed_seconds"].as_f64().unwrap_or(0.0)),
                format!("{} {}", str_of(&r["method"]), str_of(&r["uri"])),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let rss = w["rss_bytes"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), human_bytes);
        out.push_str(&format!(
            "{:>7} {:<10} {:>6} {:>5} {:>8} {:>8}  {request}\n",
            num(&w["pid"]),
            str_of(&w["state"]),
            num(&w["requests"]),
            num(&w["in_flight"]),
            rss,
            elapsed,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_workers_and_totals() {
        let s = serde_json::json!({
            "method": "prefork", "protocol": "fcgi", "listen": "unix:/s", "uptime_seconds": 3700,
            "reloads": 1, "accepted_connections": 10, "active_connections": 2,
            "requests_total": 9, "requests": {"fcgi": {"2xx": 8, "5xx": 1}},
            "requests_in_flight": 1, "overloaded": 0, "bytes_in": 2048, "bytes_out": 5_000_000,
            "listen_queue": {"waiting": 0, "max_seen": 3, "limit": 128},
            "workers": [{"pid": 42, "state": "handling", "requests": 5, "in_flight": 1,
                          "rss_bytes": 1_048_576,
                          "request": {"method": "GET", "uri": "/slow", "elapsed_seconds": 3.12}}]
        });
        let t = table(&s);
        assert!(t.contains("up 1h01m  reloads 1"), "{t}");
        assert!(t.contains("2xx 8  3xx 0  4xx 0  5xx 1"), "{t}");
        assert!(
            t.contains("listen queue 0 (max 3, limit 128)   bytes in 2.0K  out 4.8M"),
            "{t}"
        );
        assert!(
            t.contains("     42 handling        5     1     1.0M     3.1s  GET /slow"),
            "{t}"
        );
    }
}
