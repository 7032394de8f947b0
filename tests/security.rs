//! The seven findings of the attack review in issue 12, one test (or two) each, against the
//! real `appserver` binary: every test here failed on the code the review attacked and
//! passes now. `docs/security.md` names each test next to the threat it covers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use appserver_proto::ajp::{
    encode_forward_request, ClientDecoder, ContainerPacket, ForwardRequest,
};
use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::util::client::{cgi_params, fcgi_get, Stream, IO_TIMEOUT};
use crate::util::command::{Server, TestCommand};

/// How long a one-shot run that must be refused may take to exit: it exits before serving,
/// so only a server that wrongly serves reaches this.
const REFUSED_WITHIN: Duration = Duration::from_secs(15);

/// `KILL_GRACE` (2 s) plus scheduling slack on a loaded machine.
const GROUP_GONE_WITHIN: Duration = Duration::from_secs(8);

/// A docroot with one executable script `name` holding `body`.
fn docroot(name: &str, body: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `appserver runfcgi app=cgi docroot=ROOT` on a unix socket, plus `args`.
fn cgi_server(root: &Path, args: &[&str]) -> Server {
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("cgi.sock").display());
    let docroot = format!("docroot={}", root.display());
    cmd.args(["runfcgi", "app=cgi", "daemonize=false", &socket, &docroot])
        .args(args);
    cmd.start()
}

/// A FastCGI GET of `/name` with `extra` variables; returns the status and body.
fn get(server: &Server, name: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut stream = Stream::connect(server.listen());
    let uri = format!("/{name}");
    let resp = fcgi_get(&mut stream, &cgi_params("GET", &uri, extra), false);
    (resp.status, resp.text())
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone: it only waits for its parent (init) to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        // Polling /proc: the kernel tells no outsider when a process ends.
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

// --- finding 1: any command, for anyone who can connect

#[test]
fn unconfined_cgi_on_a_public_address_is_refused() {
    let out = TestCommand::appserver()
        .args([
            "runfcgi",
            "app=cgi",
            "host=0.0.0.0",
            "port=0",
            "daemonize=false",
        ])
        .output(REFUSED_WITHIN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("runfcgi: option \"cgi_unconfined\": app=cgi without docroot= or script=")
            && stderr.contains("accept it with cgi_unconfined=true"),
        "{stderr}"
    );
}

#[test]
fn opting_in_serves_and_scripts_as_root_are_warned_about() {
    let mut cmd = TestCommand::appserver();
    cmd.args([
        "runfcgi",
        "app=cgi",
        "host=0.0.0.0",
        "port=0",
        "daemonize=false",
        "method=threaded",
        "cgi_unconfined=true",
    ]);
    let mut server = cmd.start();
    let root = nix::unistd::geteuid().is_root();
    server.signal(Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).expect("stops");
    assert_eq!(
        server.log().contains("app=cgi runs CGI scripts as root"),
        root,
        "{}",
        server.log()
    );
}

// --- finding 2: code execution through the environment

#[test]
fn peer_variables_off_the_allowlist_never_reach_a_script() {
    let root = docroot(
        "env.sh",
        "#!/bin/bash\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nenv\n",
    );
    let marker = root.path().join("ran");
    let server = cgi_server(root.path(), &[]);
    let ps4 = format!("$(touch {})", marker.display());
    let hostile = [
        ("SHELLOPTS", "xtrace"),
        ("PS4", ps4.as_str()),
        ("http_proxy", "http://192.0.2.1:3128"),
        ("HTTPS_PROXY", "http://192.0.2.1:3128"),
        ("PERL5OPT", "-Mhostile"),
        ("PERL5LIB", "/tmp/hostile"),
        ("NODE_OPTIONS", "--require /tmp/hostile.js"),
        ("PYTHONPATH", "/tmp/hostile"),
        ("PYTHONSTARTUP", "/tmp/hostile.py"),
        ("GCONV_PATH", "/tmp/hostile"),
        ("IFS", "hostile"),
        ("LD_PRELOAD", "/tmp/hostile.so"),
        ("HTTP_PROXY", "http://192.0.2.1:3128"),
    ];
    let mut extra = hostile.to_vec();
    extra.push(("HTTP_X_FINE", "yes"));
    let (status, body) = get(&server, "env.sh", &extra);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("HTTP_X_FINE=yes\n"), "{body}");
    for (name, _) in hostile {
        assert!(
            !body.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} reached the script:\n{body}"
        );
    }
    assert!(!marker.exists(), "PS4 ran a command");
    assert!(
        server.wait_log(
            "request variable \"SHELLOPTS\" not passed to CGI scripts",
            1
        ),
        "{}",
        server.log()
    );
}

// --- finding 3: scripts outlive their request

/// A script that leaves `sleep 60` running in its group, writes its pid, and exits.
const LEAVES_A_CHILD: &str = "#!/bin/sh\n\
     sleep 60 </dev/null >/dev/null 2>&1 &\n\
     echo $! > bg.pid\n\
     printf 'Content-Type: text/plain\\r\\n\\r\\nbye\\n'\n";

fn background_pid(root: &Path) -> i32 {
    let text = std::fs::read_to_string(root.join("bg.pid")).expect("bg.pid written");
    text.trim().parse().expect("a pid")
}

#[test]
fn what_a_script_leaves_in_its_group_is_ended_when_it_exits() {
    let root = docroot("leave.sh", LEAVES_A_CHILD);
    let server = cgi_server(root.path(), &[]);
    assert_eq!(get(&server, "leave.sh", &[]), (200, "bye\n".to_owned()));
    let pid = background_pid(root.path());
    let gone = eventually(GROUP_GONE_WITHIN, || !alive(pid));
    if !gone {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(gone, "the script's background process {pid} outlived it");
    assert!(server.wait_log("the script exited leaving processes in its group", 1));
}

#[test]
fn cgi_background_leaves_them_running() {
    let root = docroot("leave.sh", LEAVES_A_CHILD);
    let server = cgi_server(root.path(), &["cgi_background=true"]);
    assert_eq!(get(&server, "leave.sh", &[]), (200, "bye\n".to_owned()));
    let pid = background_pid(root.path());
    // Nothing announces that a kill did not happen: give it longer than KILL_GRACE would.
    std::thread::sleep(Duration::from_secs(3));
    let still = alive(pid);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    assert!(still, "cgi_background=true: {pid} was stopped");
    drop(server);
}

// --- finding 4: AJP without a secret on an inherited socket

#[test]
fn ajp_without_secret_on_an_inherited_public_socket_is_refused() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let out = TestCommand::appserver()
        .args(["runfcgi", "protocol=ajp", "daemonize=false"])
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .output(REFUSED_WITHIN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("runfcgi: option \"secret\": protocol=ajp on fd0 (0.0.0.0:"),
        "{stderr}"
    );
}

// --- finding 5: header spoofing through AJP

/// An AJP request to app=info with `headers`; returns the body (the CGI variables).
fn ajp_info(server: &Server, headers: &[(&'static str, &'static str)]) -> String {
    let request = ForwardRequest {
        method: Bytes::from_static(b"GET"),
        protocol: Bytes::from_static(b"HTTP/1.1"),
        req_uri: Bytes::from_static(b"/"),
        remote_addr: Bytes::from_static(b"192.0.2.9"),
        server_name: Bytes::from_static(b"localhost"),
        server_port: 80,
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::copy_from_slice(n.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect(),
        ..ForwardRequest::default()
    };
    let mut out = BytesMut::new();
    encode_forward_request(&request, &mut out).expect("fits a packet");
    let mut stream = TcpStream::connect(server.listen().tcp()).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(&out).unwrap();
    let mut decoder = ClientDecoder::new(8192);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    loop {
        while let Some(packet) = decoder.decode(&mut buf).expect("AJP from appserver") {
            match packet {
                ContainerPacket::SendBodyChunk(data) => body.extend_from_slice(&data),
                ContainerPacket::EndResponse { .. } => {
                    return String::from_utf8_lossy(&body).into_owned()
                }
                _ => {}
            }
        }
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before END_RESPONSE");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `appserver runfcgi` (app=info) on loopback TCP, threaded, plus `args`.
fn loopback(args: &[&str]) -> Server {
    let mut cmd = TestCommand::appserver();
    cmd.args([
        "runfcgi",
        "host=127.0.0.1",
        "port=0",
        "daemonize=false",
        "method=threaded",
    ])
    .args(args);
    cmd.start()
}

fn ajp_server(args: &[&str]) -> Server {
    loopback(&[&["protocol=ajp"], args].concat())
}

#[test]
fn ajp_header_names_with_underscores_cannot_forge_a_variable() {
    let server = ajp_server(&[]);
    let body = ajp_info(&server, &[("X-User", "alice"), ("X_User", "forged")]);
    assert!(body.contains("alice"), "{body}");
    assert!(!body.contains("forged"), "{body}");

    let kept = ajp_server(&["underscores_in_headers=true"]);
    let body = ajp_info(&kept, &[("X_User", "kept")]);
    assert!(
        body.contains("HTTP_X_USER") && body.contains("kept"),
        "{body}"
    );
}

// --- finding 6: the pidfile

#[test]
fn a_pidfile_naming_another_program_is_stale_and_a_live_server_s_is_not() {
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pidfile: PathBuf = dir.path().join("app.pid");
    std::fs::write(&pidfile, format!("{}\n", other.id())).unwrap();
    let option = format!("pidfile={}", pidfile.display());
    let first = loopback(&[&option]);
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        first.log().contains("not a running appserver"),
        "{}",
        first.log()
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", first.pid())
    );

    // A second server on the same pidfile finds a live appserver there.
    let out = TestCommand::appserver()
        .args([
            "runfcgi",
            "host=127.0.0.1",
            "port=0",
            "daemonize=false",
            &option,
        ])
        .output(REFUSED_WITHIN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("appserver already running as pid {}", first.pid())),
        "{stderr}"
    );
}

// --- finding 7: log flooding

#[test]
fn a_script_s_stderr_flood_is_bounded_and_summarised() {
    let root = docroot(
        "noisy.sh",
        "#!/bin/sh\ni=0\nwhile [ $i -lt 5000 ]; do echo \"noise $i\" >&2; i=$((i+1)); done\n\
         printf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'\n",
    );
    let server = cgi_server(root.path(), &[]);
    assert_eq!(get(&server, "noisy.sh", &[]), (200, "done\n".to_owned()));
    assert!(
        server.wait_log("stderr lines (", 1),
        "no summary:\n{}",
        server.log()
    );
    let logged = server.log().matches("stderr: noise").count();
    assert!(
        (1..=120).contains(&logged),
        "{logged} of 5000 stderr lines logged"
    );
}

#[test]
fn malformed_connections_from_one_peer_are_rate_limited() {
    let mut server = loopback(&[]);
    for _ in 0..60 {
        let mut s = TcpStream::connect(server.listen().tcp()).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // Version 9: not FastCGI.
        s.write_all(&[9, 1, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    server.signal(Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).expect("stops");
    let warned = server.log().matches("fastcgi connection closed").count();
    assert!(
        (1..=11).contains(&warned),
        "{warned} warnings for 60 malformed connections:\n{}",
        server.log()
    );
}

// --- a unix socket every local user may connect to

#[test]
fn a_world_connectable_socket_is_warned_about() {
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("open.sock").display());
    cmd.args([
        "runfcgi",
        "daemonize=false",
        "method=threaded",
        "umask=000",
        &socket,
    ]);
    let server = cmd.start();
    assert!(
        server
            .log()
            .contains("is mode 0777: every local user can connect"),
        "{}",
        server.log()
    );
    let mut cmd = TestCommand::appserver();
    let socket = format!("socket={}", cmd.path("closed.sock").display());
    cmd.args(["runfcgi", "daemonize=false", "method=threaded", &socket]);
    let server = cmd.start();
    assert!(
        !server.log().contains("every local user"),
        "{}",
        server.log()
    );
}

// --- underscores in header names, through the real web servers

/// `app=info` over `protocol`, on loopback TCP.
fn info_server(protocol: &str) -> Server {
    loopback(&[&format!("protocol={protocol}")])
}

/// A client sends `X-User: alice` and `X_User: forged` through the web server on `port`; the
/// app must see alice and never the forged value. Over FastCGI and SCGI the web server makes
/// the variable names (nginx ignores underscore headers, Apache leaves them out); over AJP
/// Apache forwards both and appserver drops the underscore one (docs/security.md, threat 5).
fn assert_no_forged_header(port: u16, front: &str) {
    let resp = crate::util::client::http_request(
        port,
        "GET",
        "/",
        &[("X-User", "alice"), ("X_User", "forged")],
        b"",
    );
    let body = resp.text();
    assert!(body.contains("alice"), "{front}: {body}");
    assert!(!body.contains("forged"), "{front}: {body}");
}

#[test]
fn no_front_end_lets_an_underscore_header_pose_as_another() {
    use crate::util::apache_proxy::ApacheProxy;
    use crate::util::webserver::{FcgiPass, Nginx};

    let fcgi = info_server("fcgi");
    let nginx = Nginx::fastcgi(fcgi.listen(), FcgiPass::Close);
    assert_no_forged_header(nginx.port(), "nginx fastcgi");
    let apache = ApacheProxy::fcgi(fcgi.listen());
    assert_no_forged_header(apache.port(), "Apache fastcgi");

    let scgi = info_server("scgi");
    let apache = ApacheProxy::scgi(scgi.listen());
    assert_no_forged_header(apache.port(), "Apache scgi");

    let ajp = info_server("ajp");
    let apache = ApacheProxy::ajp(ajp.listen(), "");
    assert_no_forged_header(apache.port(), "Apache ajp");
}
