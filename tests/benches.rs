//! The peer benchmark (`benches/peers.sh`) is not run in CI, but what it is made of is
//! checked here: its usage text and option errors, the nginx config it generates (`nginx -t`),
//! the bench example's three pages through a real nginx, and the floor (`floor.c`) built and
//! answering through nginx.

use std::path::Path;
use std::process::Command;

use crate::util::client::http_request;
use crate::util::command::{Listen, TestCommand};
use crate::util::webserver::{nginx_bin, FcgiPass, Nginx};

const SCRIPT: &str = "benches/peers.sh";

/// Every backend the script knows, as `--only` takes them.
const BACKENDS: &[&str] = &[
    "nginx-direct",
    "uwsgi-fcgi",
    "uwsgi-scgi",
    "php-fpm",
    "go-fcgi",
    "fcgi-floor",
    "fcgi-floor-kc",
    "appserver-{threaded,prefork,prefork-wr25}-{fcgi,fcgi-kc,scgi}",
];

fn peers(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DURATION")
        .env_remove("ROUNDS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash benches/peers.sh")
}

#[test]
fn peers_help_prints_usage_and_installs_nothing() {
    let out = peers(&["--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--help: {}\n{text}", out.status);
    assert!(text.starts_with("usage: benches/peers.sh"), "{text}");
    for needle in ["--duration", "--rounds", "--json", "--markdown", "--only"]
        .iter()
        .chain(BACKENDS)
    {
        assert!(text.contains(needle), "usage lacks {needle:?}:\n{text}");
    }
    // --help answers before the install and build steps, which would print here.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn peers_bad_options_exit_2_naming_them() {
    for (args, env, needle) in [
        (&["--bogus"][..], &[][..], "--bogus"),
        (&["--rounds"][..], &[][..], "--rounds needs a value"),
        (&["--duration", "0"][..], &[][..], "--duration"),
        (&[][..], &[("ROUNDS", "three")][..], "'three'"),
        (
            &["--only", "uwsgi-fcgi,gunicorn"][..],
            &[][..],
            "no backend 'gunicorn'",
        ),
    ] {
        let out = peers(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
}

#[test]
fn peers_nginx_conf_passes_nginx_t() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("python3")
        .arg("benches/peers/run.py")
        .arg("--nginx-conf")
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("python3 (scripts/test's machines have it)");
    assert!(status.success(), "run.py --nginx-conf: {status}");
    let conf = dir.path().join("nginx.conf");
    let out = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("nginx-error.log"))
        .output()
        .expect("nginx -t");
    assert!(
        out.status.success(),
        "nginx -t on {}:\n{}\n{}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&conf).unwrap_or_default()
    );
    for file in ["app.py", "hello.php", "big.php", "upload.php", "go/main.go"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/peers")
            .join(file);
        assert!(path.is_file(), "{} is missing", path.display());
    }
}

/// The three pages the benchmark checks before it loads a backend, here through nginx with
/// and without keep-conn.
#[test]
fn bench_example_serves_the_peer_contract() {
    const BIG: usize = 10 * 1024 * 1024;
    let mut cmd = TestCommand::bench();
    cmd.args([
        "runfcgi",
        "method=threaded",
        "daemonize=false",
        "host=127.0.0.1",
        "port=0",
    ]);
    let server = cmd.start();
    for pass in [FcgiPass::Close, FcgiPass::KeepConn] {
        let nginx = Nginx::fastcgi(server.listen(), pass);
        let hello = http_request(nginx.port(), "GET", "/some/prefix/", &[], &[]);
        assert_eq!(hello.status, 200, "{pass:?}");
        assert_eq!(hello.body, b"Hello, world\n", "{pass:?}");
        assert_eq!(hello.header("content-type"), Some("text/plain"), "{pass:?}");

        let big = http_request(nginx.port(), "GET", "/prefix/big", &[], &[]);
        assert_eq!(big.status, 200, "{pass:?}");
        assert_eq!(big.body.len(), BIG, "{pass:?}");
        assert!(
            big.body.iter().all(|&b| b == b'x'),
            "{pass:?}: /big content"
        );

        // Not a multiple of a record or a chunk, so a lost or doubled tail would show.
        let body = vec![b'u'; 3 * 65_536 + 1_234];
        let upload = http_request(nginx.port(), "POST", "/prefix/upload", &[], &body);
        assert_eq!(upload.status, 200, "{pass:?}");
        assert_eq!(upload.text(), format!("{}\n", body.len()), "{pass:?}");
    }
}

/// The floor backend (`benches/peers/floor.c`) builds with gcc and answers `/` exactly as the
/// contract says, through nginx with and without keep-conn, several requests per connection
/// with it.
#[test]
fn fcgi_floor_builds_and_serves_hello() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("fcgi-floor");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/floor.c");
    let built = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc (the machine's C compiler)");
    assert!(built.success(), "gcc {}: {built}", src.display());
    let sock = dir.path().join("floor.sock");
    let mut child = Command::new(&bin)
        .arg(&sock)
        .spawn()
        .expect("start fcgi-floor");
    // Ready when its socket accepts a connection.
    let ready = (0..200).any(|_| {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    });
    let result = std::panic::catch_unwind(|| {
        assert!(ready, "fcgi-floor did not listen on {}", sock.display());
        for pass in [FcgiPass::Close, FcgiPass::KeepConn] {
            let nginx = Nginx::fastcgi(&Listen::Unix(sock.clone()), pass);
            for _ in 0..3 {
                let hello = http_request(nginx.port(), "GET", "/", &[], &[]);
                assert_eq!(hello.status, 200, "{pass:?}");
                assert_eq!(hello.body, b"Hello, world\n", "{pass:?}");
                assert_eq!(hello.header("content-type"), Some("text/plain"), "{pass:?}");
            }
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
