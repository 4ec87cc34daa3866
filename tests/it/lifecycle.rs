//! The `faultline` binary as an operator runs it: reload on `SIGHUP`, drain on `SIGTERM`, stop
//! at once on `SIGINT`, hand the listeners over on `SIGQUIT`.

use std::io::{ErrorKind, Read};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::client;
use crate::harness::{Binary as Running, proxy_yaml};
use crate::origin::{Behavior, Origin};

/// Waits for the process to exit, at most `within`.
fn exit_status(running: &mut Running, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/readyz`'s status, or why there was none.
fn readyz(admin: std::net::SocketAddr) -> Result<u16, String> {
    let mut c = client::Client::try_connect(admin, Duration::from_secs(2))?;
    let request = client::request("GET", "/readyz", "admin", &[]);
    c.exchange(&request, "GET", Duration::from_secs(2))
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// Waits (5 s at most) until `/readyz` answers `status`; a refused probe is no answer yet.
fn wait_for_readyz(admin: std::net::SocketAddr, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = readyz(admin);
        if got == Ok(status) {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never {status}: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn route_to(origin: &Origin) -> String {
    format!(
        "upstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ upstream: app }}\n",
        origin.addr
    )
}

#[test]
fn sighup_reloads_the_file() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let running = Running::start("hup", "server: { threads: 1 }", &route_to(&a));
    assert_eq!(client::get(running.addr, "/", &[]).text(), "origin a");

    // A broken file: reported, counted, nothing changes.
    std::fs::write(running.file(), "listeners: [").expect("write");
    running.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.metric("faultline_config_reloads_total{result=\"failure\"}") == 0 {
        assert!(Instant::now() < deadline, "the reload was not attempted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client::get(running.addr, "/", &[]).text(), "origin a");

    let yaml = proxy_yaml(running.addr, running.admin, &route_to(&b));
    std::fs::write(running.file(), yaml).expect("write");
    running.signal(Signal::SIGHUP);
    while running.metric("faultline_config_reloads_total{result=\"success\"}") == 0 {
        assert!(Instant::now() < deadline, "the reload did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client::get(running.addr, "/", &[]).text(), "origin b");
}

#[test]
fn sigterm_on_an_idle_proxy_exits_within_two_seconds() {
    let origin = Origin::start(Behavior::named("idle"));
    // No grace period configured: faultline's default (25 s) bounds the drain, and nothing
    // is open to drain.
    let mut running = Running::start("idle", "server: { threads: 1 }", &route_to(&origin));
    assert_eq!(client::get(running.admin, "/readyz", &[]).status, 200);
    running.signal(Signal::SIGTERM);
    let sent = Instant::now();
    let status = exit_status(
        &mut running,
        Duration::from_secs(2),
        "an idle faultline did not exit within 2 s of SIGTERM",
    );
    assert!(status.success(), "{status}");
    assert!(sent.elapsed() < Duration::from_secs(2));
}

#[test]
fn sigterm_stops_accepting_lets_slow_requests_finish_then_exits() {
    let slow = Origin::start(Behavior::delayed(
        Duration::from_secs(3),
        b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfinished".to_vec(),
    ));
    // A grace period far longer than the requests: the exit must not wait it out.
    let mut running = Running::start(
        "term",
        "server: { threads: 1, grace_period_seconds: 20 }",
        &route_to(&slow),
    );
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let addr = running.addr;
            std::thread::spawn(move || client::get(addr, "/", &[]))
        })
        .collect();
    slow.wait_for_requests(3);
    wait_for_readyz(running.admin, 200);
    running.signal(Signal::SIGTERM);
    // Pingora 0.9 on SIGTERM (`Server::main_loop`) broadcasts its shutdown watch; each accept
    // loop (`services::listening::Service::run_endpoint`) then breaks and drops its endpoint,
    // the last owner of the listening socket. The socket closes and the kernel refuses a new
    // connection; a socket left open but no longer accepted from would still complete the
    // handshake and leave the client hanging. Only a refusal ends the wait.
    wait_until_refused(running.addr);
    // Pingora closed the admin listener too; faultline serves it again for the drain.
    wait_for_readyz(running.admin, 503);
    assert!(
        clients.iter().all(|c| !c.is_finished()),
        "the listener closed (and /readyz turned 503) only after the slow requests were answered"
    );
    for c in clients {
        let resp = c.join().expect("client thread");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "finished");
        assert!(resp.complete);
        // Answered during the drain: the client must not reuse the connection.
        assert_eq!(resp.header("connection"), Some("close"));
    }
    let answered = Instant::now();
    // The process exits as soon as the last connection has closed, not at the grace period.
    let status = exit_status(
        &mut running,
        Duration::from_secs(3),
        "faultline did not exit once the requests in flight were answered",
    );
    assert!(status.success(), "{status}");
    assert!(answered.elapsed() < Duration::from_secs(3));
}

#[test]
fn sigint_exits_at_once_and_closes_requests_in_flight() {
    let hang = Origin::start(Behavior::Hang);
    let mut running = Running::start(
        "int",
        "server: { threads: 1, grace_period_seconds: 30, graceful_shutdown_timeout_seconds: 30 }",
        &route_to(&hang),
    );
    let mut client = client::Client::connect(running.addr);
    client.send(&client::request("GET", "/", "app.test", &[]));
    hang.wait_for_requests(1);
    running.signal(Signal::SIGINT);
    // Pingora's fast shutdown: no grace period, the runtimes are shut down without waiting for
    // their tasks, and `run_forever` exits with 0.
    let status = exit_status(
        &mut running,
        Duration::from_secs(3),
        "faultline did not exit promptly on SIGINT",
    );
    assert_eq!(status.code(), Some(0), "{status}");
    // The client in flight gets no response at all: the connection just ends.
    let mut rest = Vec::new();
    let read = client
        .into_stream()
        .read_to_end(&mut rest)
        .map_err(|e| e.kind());
    assert_eq!(read, Ok(0), "got {:?}", String::from_utf8_lossy(&rest));
}

/// Waits (3 s at most) until the listener at `addr` refuses connections: the accept loops have
/// seen the shutdown watch and dropped the listening socket.
fn wait_until_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("a new connection failed otherwise than refused: {e}"),
            // The accept loop has not seen the watch yet.
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the listener still takes connections 3 s after the shutdown"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_connection_accepted_before_sigterm_gets_its_first_request_answered() {
    let origin = Origin::start(Behavior::named("pre"));
    let mut running = Running::start(
        "preread",
        "server: { threads: 1, grace_period_seconds: 3, graceful_shutdown_timeout_seconds: 1 }",
        &route_to(&origin),
    );
    // A keep-alive connection idle after its first answer, and one accepted whose first
    // request header faultline awaits.
    let mut idle = client::Client::connect(running.addr);
    let request = client::request("GET", "/", "app.test", &[]);
    let first = idle
        .exchange(&request, "GET", Duration::from_secs(5))
        .expect("an answer before the shutdown");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    let mut client = client::Client::connect(running.addr);
    running.wait_for_metric(
        "faultline_client_connections",
        |n| n == 2,
        "the connections were not accepted",
    );
    running.signal(Signal::SIGTERM);
    wait_until_refused(running.addr);
    // The request comes after the shutdown: still read and answered, and the connection then
    // closes.
    client.send(&client::request("GET", "/", "app.test", &[]));
    let resp = client.read_response("GET");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.text(), "origin pre");
    assert!(resp.complete);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        client.is_closed(),
        "the connection stayed open after the shutdown"
    );
    // The idle keep-alive connection is closed without an answer.
    assert!(
        idle.is_closed(),
        "an idle keep-alive connection stayed open"
    );
    let status = exit_status(
        &mut running,
        Duration::from_secs(15),
        "faultline did not exit after SIGTERM",
    );
    assert!(status.success(), "{status}");
}

/// Keeps `threads` CPUs busy until `stop` is set (60 s at most), so that connection tasks wait
/// for a thread as they do on a loaded host.
fn load_cpu(threads: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
            })
        })
        .collect()
}

#[test]
fn upgrade_hands_the_listeners_over_without_a_failed_request() {
    const UPGRADES: usize = 3;
    const CLIENTS: usize = 6;
    let origin = Origin::start(Behavior::named("up"));
    let mut running = Running::start(
        "upgrade",
        "server: { threads: 1, pid_file: \"{dir}/pid\", upgrade_sock: \"{dir}/upgrade.sock\", grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 1 }",
        &route_to(&origin),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_cpu(2, &stop);
    // Steady streams of requests, each on a new connection, bounded in count and time, that
    // run until the last upgrade is done.
    let addr = running.addr;
    let streams: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(90);
                let request = client::request("GET", "/", "app.test", &[]);
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        break;
                    }
                    let answered = client::Client::try_connect(addr, Duration::from_secs(10))
                        .map_err(|e| e.to_string())
                        .and_then(|mut c| {
                            c.exchange(&request, "GET", Duration::from_secs(10))
                                .map_err(|e| e.to_string())
                        });
                    match answered {
                        Ok(r) if r.status == 200 && r.complete => ok += 1,
                        Ok(r) => failed.push(format!("client {c} #{i}: {}", r.describe())),
                        Err(e) => failed.push(format!("client {c} #{i}: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let sock = running.dir.join("upgrade.sock");
    for round in 0..UPGRADES {
        // The new process waits on the upgrade socket for the old one's listeners; it removes
        // the socket once it has them.
        let new = Running::spawn(&running.dir, &["-u"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the new process never opened the upgrade socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        running.signal(Signal::SIGQUIT);
        let mut old = std::mem::replace(&mut running.child, new);
        let deadline = Instant::now() + Duration::from_secs(20);
        let exited = loop {
            if let Some(status) = old.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the old process did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exited.success(), "round {round}: {exited}");
    }
    // A few more requests, all to the last process.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.join().expect("load thread");
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for s in streams {
        let (o, f) = s.join().expect("stream");
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "failed during the upgrades: {failed:?}");
    assert!(ok > 300, "only {ok} requests during the upgrades");
    // The last process serves on the same address.
    assert_eq!(client::get(addr, "/", &[]).text(), "origin up");
}

#[test]
fn version_and_validation_print_one_line() {
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(args)
            .output()
            .expect("run faultline")
    };
    let out = run(&["--version".as_ref()]);
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("faultline {}\n", env!("CARGO_PKG_VERSION"))
    );

    let dir = std::env::temp_dir().join(format!("faultline-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("faultline.yaml");
    let (addr, admin) = (crate::harness::free_addr(), crate::harness::free_addr());
    let body = "upstreams:\n  app: { backends: [{ address: \"127.0.0.1:9\" }, { address: \"127.0.0.1:10\" }] }\nroutes:\n  - { upstream: app }\n";
    std::fs::write(&file, proxy_yaml(addr, admin, body)).expect("write");
    let out = run(&["-t".as_ref(), "-c".as_ref(), file.as_os_str()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "faultline: {} is valid: 1 listeners (0 TLS), 1 upstreams (2 backends), 1 routes, admin on {admin}, drain up to 25s\n",
            file.display()
        )
    );
}

#[test]
fn an_h2c_connection_accepted_before_sigterm_gets_its_first_stream_answered() {
    let origin = Origin::start(Behavior::named("h2"));
    let mut running = Running::start_with_listener(
        "h2term",
        "server: { threads: 1, grace_period_seconds: 5 }",
        ", h2c: true",
        &route_to(&origin),
    );
    let addr = running.addr;
    let rt = crate::origin::runtime();
    // Accepted, nothing sent yet.
    let tcp = rt
        .block_on(tokio::net::TcpStream::connect(addr))
        .expect("connect");
    running.wait_for_metric(
        "faultline_client_connections",
        |n| n == 1,
        "the connection was not accepted",
    );
    running.signal(Signal::SIGTERM);
    wait_until_refused(addr);
    // The preface, the settings and the first stream all come after the shutdown.
    let (status, body, closed) = rt.block_on(async {
        let (mut send, mut conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
        let mut ping = conn.ping_pong().expect("ping");
        let conn = tokio::spawn(conn);
        // One round trip first: a server that sent GOAWAY at once, and a PING to settle the
        // last stream, has that PING acknowledged before the request leaves, and refuses it.
        ping.ping(h2::Ping::opaque()).await.expect("pong");
        let req = http::Request::get(format!("http://{addr}/"))
            .body(())
            .expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("a response in time")
            .expect("a response, not a refused stream");
        let status = resp.status().as_u16();
        let (bytes, _) = crate::tls::h2_body(&mut resp.into_body(), usize::MAX).await;
        // Then GOAWAY: the server ends the connection while the client still holds it.
        let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
        drop(send);
        (status, bytes, closed.is_ok())
    });
    assert_eq!(status, 200);
    assert_eq!(body, b"origin h2");
    assert!(closed, "the connection was not closed after its stream");
    let status = exit_status(
        &mut running,
        Duration::from_secs(5),
        "faultline did not exit after SIGTERM",
    );
    assert!(status.success(), "{status}");
}

#[test]
fn a_listener_address_already_taken_exits_at_once_naming_it() {
    // Held for the test: the binary's listener cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let admin = crate::harness::free_addr();
    let dir = std::env::temp_dir().join(format!("faultline-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let body = "upstreams:\n  app: { backends: [{ address: \"127.0.0.1:9\" }] }\nroutes:\n  - { upstream: app }\n";
    std::fs::write(dir.join("faultline.yaml"), proxy_yaml(addr, admin, body)).expect("write");
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("-c")
        .arg(dir.join("faultline.yaml"))
        .env("RUST_LOG", "error")
        .output()
        .expect("run faultline");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("cannot listen on {addr}: Address already in use")),
        "{log}"
    );
    // The address was never taken from its holder.
    drop(taken);
}
