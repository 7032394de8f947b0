//! What observability costs per request: formatting and buffering an access log line
//! (`accesslog=`), and everything one request records in the shared scoreboard.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items
//!
//! Run with `cargo bench --bench status`. The end-to-end figure with and without them is
//! `fcgi_keepalive_hello_unix` against `fcgi_keepalive_hello_unix_observed` in
//! `benches/end_to_end.rs`.

use appserver::status::bench::{Board, Log};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("status");
    group.throughput(Throughput::Elements(1));
    for json in [false, true] {
        let name = if json { "json" } else { "combined" };
        // Formatting, buffering and one 64 KiB write per ~250 lines, to /dev/null: a real
        // file adds the page-cache copy of those bytes (a benchmark writing millions of
        // lines a second to a real file measures the disk's writeback instead).
        let log = Log::open("/dev/null".into(), json).expect("open /dev/null");
        group.bench_function(format!("access_log_{name}_to_dev_null"), |b| {
            b.iter(|| log.log_one());
        });
    }
    let board = Board::new().expect("scoreboard");
    group.bench_function("scoreboard_one_request", |b| b.iter(|| board.one_request()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
