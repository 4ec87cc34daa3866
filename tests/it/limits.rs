//! Client limits: a request header must arrive in time (408), a body must fit its route (413),
//! and connections beyond `clients.max_connections` are answered 503 and closed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::client::{self, Client};
use crate::harness::{Proxy, access_entry, backend_status, one_upstream, status_now};
use crate::origin::{Behavior, Origin};

/// Reads until the peer closes (or 5 s pass) and returns everything read.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the proxy did not close the connection: {e}"),
        }
    }
}

/// Sends `raw`, then the bytes of `trickle` one at a time every `every`, stopping as soon as
/// the proxy answers or closes; returns what came back and when.
fn trickle_until_answered(
    s: &mut TcpStream,
    raw: &[u8],
    trickle: &[u8],
    every: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.write_all(raw).expect("write");
    s.set_read_timeout(Some(every)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for b in trickle.iter().cycle().take(200) {
        match s.read(&mut buf) {
            Ok(0) => return (out, started.elapsed()),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let rest = read_to_close(s);
                out.extend_from_slice(&rest);
                return (out, started.elapsed());
            }
            Err(_) => {}
        }
        if s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
    }
    let rest = read_to_close(s);
    out.extend_from_slice(&rest);
    (out, started.elapsed())
}

/// Asserts that an answer that a `setting` deadline caused came after it, and not much later:
/// the 15 s default must not pass for a setting of milliseconds, nor an instant close. The
/// margin above the setting absorbs a loaded 2-core machine.
/// Asserts that the backend of `origin` takes traffic: nothing ejected it.
fn assert_backend_up(proxy: &Proxy, origin: &Origin, why: &str) {
    let series = format!(
        "faultline_backend_up{{upstream=\"app\",backend=\"{}\"}}",
        origin.addr
    );
    assert_eq!(proxy.metric(&series), 1, "{why}");
}

fn assert_deadline(took: Duration, setting: Duration, what: &str) {
    assert!(
        took >= setting,
        "{what}: after {took:?}, before its {setting:?}"
    );
    assert!(
        took < setting + Duration::from_secs(5),
        "{what}: after {took:?}, long past its {setting:?}"
    );
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response
        .split("\r\n\r\n")
        .next()?
        .split("\r\n")
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

#[test]
fn a_header_trickled_past_the_deadline_gets_408_and_the_connection_closes() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&format!(
        "clients: {{ header_timeout: 400ms }}\n{}",
        one_upstream(&[origin.addr], "", "")
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    // A byte every 50 ms: each read is quick, only the whole header is late (slowloris).
    let (out, took) = trickle_until_answered(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"X-Slow: yes\r\n",
        Duration::from_millis(50),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "got: {text}"
    );
    // The deadline is for the whole header, not each read (each read is quick).
    assert_deadline(took, Duration::from_millis(400), "408 to a trickled header");
    assert_eq!(
        header_of(&text, "proxy-status"),
        Some(
            "faultline; error=http_request_error; details=\"the request was not received in time\""
        )
    );
    assert_eq!(header_of(&text, "connection"), Some("close"));
    let id = header_of(&text, "x-request-id").expect("a request id");
    let entry = access_entry(id);
    assert_eq!(entry["status"], 408);
    assert_eq!(entry["failure"], "http_request_timeout");
    assert_eq!(origin.requests(), 0);
    assert_eq!(proxy.metric("faultline_client_header_timeouts_total"), 1);
    assert_eq!(
        proxy.metric("faultline_requests_total{route=\"none\",status=\"408\",source=\"proxy\"}"),
        1
    );
}

#[test]
fn a_connection_that_sends_nothing_is_closed_without_a_word() {
    let proxy = Proxy::start(&format!(
        "clients: {{ header_timeout: 300ms }}\n{}",
        one_upstream(&[crate::origin::refused_addr()], "", "")
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    let started = Instant::now();
    let out = read_to_close(&mut s);
    assert!(out.is_empty(), "got: {}", String::from_utf8_lossy(&out));
    assert_deadline(
        started.elapsed(),
        Duration::from_millis(300),
        "close of a silent connection",
    );
    assert_eq!(proxy.metric("faultline_client_header_timeouts_total"), 0);
}

#[test]
fn on_a_kept_alive_connection_the_next_header_has_its_own_deadline() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&format!(
        "clients: {{ header_timeout: 300ms, keepalive_timeout: 5s }}\n{}",
        one_upstream(&[origin.addr], "", "")
    ));
    let mut c = Client::connect(proxy.addr);
    c.send(&client::request("GET", "/", "a", &[]));
    assert_eq!(c.read_response("GET").status, 200);
    // Idle longer than the header timeout: idle time between requests is the keep-alive's.
    std::thread::sleep(Duration::from_millis(600));
    c.send(&client::request("GET", "/", "a", &[]));
    assert_eq!(c.read_response("GET").status, 200);
    // Then a header that starts and stalls.
    let mut s = c.into_stream();
    let (out, took) = trickle_until_answered(
        &mut s,
        b"GET / HTTP/1.1\r\n",
        b"X",
        Duration::from_millis(100),
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "),
        "got: {}",
        String::from_utf8_lossy(&out)
    );
    assert_deadline(took, Duration::from_millis(300), "408 to the second header");
    assert_eq!(origin.requests(), 2);
}

#[test]
fn a_kept_alive_connection_closes_at_the_keepalive_timeout_counted_from_its_last_request() {
    let origin = Origin::start(Behavior::named("o"));
    let keepalive = Duration::from_millis(800);
    let proxy = Proxy::start(&format!(
        "clients: {{ keepalive_timeout: 800ms }}\n{}",
        one_upstream(&[origin.addr], "", "")
    ));
    let mut c = Client::connect(proxy.addr);
    // Requests at a third of the timeout for over two timeouts: the connection's idle timer,
    // set at the first wait, fires during later ones and must move on, not close.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < keepalive * 2 + keepalive / 2 {
        c.send(&client::request("GET", "/", "a", &[]));
        assert_eq!(c.read_response("GET").status, 200, "request {sent}");
        sent += 1;
        std::thread::sleep(keepalive / 3);
    }
    // Then silence: closed one timeout after the last answer, without a word. The clock
    // starts before the last request goes: the proxy's starts once it has written the answer,
    // before this client has read it, so a clock started on receipt can read a few hundred
    // microseconds short of the timeout on a loaded machine.
    let last = Instant::now();
    c.send(&client::request("GET", "/", "a", &[]));
    assert_eq!(c.read_response("GET").status, 200);
    let mut s = c.into_stream();
    let out = read_to_close(&mut s);
    assert_deadline(last.elapsed(), keepalive, "the idle connection's close");
    assert!(out.is_empty(), "got: {}", String::from_utf8_lossy(&out));
    assert_eq!(origin.requests(), sent + 1);
}

#[test]
fn a_declared_body_over_the_route_limit_is_413_before_any_byte_is_forwarded() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    max_request_body: 1KiB\n",
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nX-Request-Id: big413\r\nAccept: application/problem+json\r\nContent-Length: 2048\r\n\r\n",
    )
    .expect("write");
    let _ = s.write_all(&[b'x'; 2048]);
    let out = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n")
            || text.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "got: {text}"
    );
    assert_eq!(
        header_of(&text, "proxy-status"),
        Some(
            "faultline; error=http_request_denied; details=\"the request body is larger than this address takes\""
        )
    );
    assert!(text.contains("\"status\":413"), "got: {text}");
    assert_eq!(
        origin.connections(),
        0,
        "nothing was forwarded, not even a connect"
    );
    assert_eq!(origin.requests(), 0);
    let entry = access_entry("big413");
    assert_eq!(entry["failure"], "http_request_body_size");
    assert_eq!(entry["route"], "main");
    // A body that fits goes through.
    let mut c = Client::connect(proxy.addr);
    let mut fits = client::request("POST", "/upload", "a", &[("content-length", "5")]);
    fits.extend_from_slice(b"hello");
    c.send(&fits);
    assert_eq!(c.read_response("POST").status, 200);
}

#[test]
fn a_chunked_body_growing_past_the_limit_is_413_and_not_the_backends_fault() {
    // The origin reads the request head and waits, so the only possible answer is the proxy's.
    let origin = Origin::start(Behavior::Hang);
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "    health: { passive: { consecutive_failures: 1 } }\n",
        "    max_request_body: 1000\n",
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: chunk413\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .expect("write");
    for _ in 0..3 {
        let mut chunk = b"258\r\n".to_vec(); // 600 bytes
        chunk.extend_from_slice(&[b'y'; 600]);
        chunk.extend_from_slice(b"\r\n");
        if s.write_all(&chunk).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let out = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413 "), "got: {text}");
    let entry = access_entry("chunk413");
    assert_eq!(entry["status"], 413);
    assert_eq!(entry["failure"], "http_request_body_size");
    assert_eq!(entry["attempts"][0]["outcome"], "http_request_body_size");
    let status = status_now(&proxy);
    let backend = backend_status(&status, origin.addr);
    assert_eq!(backend["pending"], 0, "the attempt ended: {backend}");
    assert_eq!(backend["lagging"], false);
    assert_backend_up(
        &proxy,
        &origin,
        "a client's oversized body never ejects a backend",
    );
}

#[test]
fn connections_beyond_the_limit_get_503_and_are_closed() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&format!(
        "clients: {{ max_connections: 2 }}\n{}",
        one_upstream(&[origin.addr], "", "")
    ));
    // The harness's readiness probes were connections too; wait until they are gone.
    proxy.wait_for_metric(
        "faultline_client_connections",
        |n| n == 0,
        "probe connections stayed open",
    );
    let mut held: Vec<Client> = (0..2).map(|_| Client::connect(proxy.addr)).collect();
    for c in &mut held {
        c.send(&client::request("GET", "/", "a", &[]));
        assert_eq!(c.read_response("GET").status, 200);
    }
    assert_eq!(proxy.metric("faultline_client_connections"), 2);

    let mut extra = Client::connect(proxy.addr);
    extra.send(&client::request(
        "GET",
        "/",
        "a",
        &[("x-request-id", "connlimit1")],
    ));
    let refused = extra.read_response("GET");
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("proxy-status"),
        Some(
            "faultline; error=connection_limit_reached; details=\"the proxy holds as many connections as it takes\""
        )
    );
    assert!(refused.header("retry-after").is_some());
    assert!(extra.is_closed(), "the connection over the limit is closed");
    assert_eq!(
        origin.requests(),
        2,
        "the refused request was not forwarded"
    );
    assert_eq!(
        access_entry("connlimit1")["failure"],
        "client_connection_limit"
    );
    assert_eq!(
        proxy.metric("faultline_client_connections_over_limit_total"),
        1
    );

    // The held connections still work, and a place freed is a place taken.
    held[0].send(&client::request("GET", "/", "a", &[]));
    assert_eq!(held[0].read_response("GET").status, 200);
    drop(held.pop());
    proxy.wait_for_metric(
        "faultline_client_connections",
        |n| n <= 1,
        "the closed connection was not counted out",
    );
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
}

#[test]
fn a_body_that_stalls_mid_way_is_408_and_not_the_backends_fault() {
    let origin = Origin::start(Behavior::Hang);
    let proxy = Proxy::start(&format!(
        "clients: {{ body_timeout: 300ms }}\n{}",
        one_upstream(
            &[origin.addr],
            "    health: { passive: { consecutive_failures: 1 } }\n",
            ""
        )
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: stall408\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .expect("write");
    let started = Instant::now();
    let out = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "got: {text}");
    assert_deadline(
        started.elapsed(),
        Duration::from_millis(300),
        "408 to a stalled body",
    );
    let entry = access_entry("stall408");
    assert_eq!(entry["failure"], "http_request_timeout");
    assert_backend_up(&proxy, &origin, "a slow client never ejects a backend");
}

/// The defaults wait longer for a body (`body_timeout` 60 s) than for a response header
/// (`response_header` 15 s): a client that stops sending mid-body used to be answered 504 with
/// the backend blamed, and six such clients ejected a healthy backend.
#[test]
fn a_body_stalled_past_the_response_timeout_is_the_clients_408_and_ejects_nothing() {
    let origin = Origin::start(Behavior::Hang);
    let proxy = Proxy::start(&format!(
        "clients: {{ body_timeout: 30s }}\n{}",
        one_upstream(
            &[origin.addr],
            "    timeouts: { response_header: 300ms }\n    health: { passive: { consecutive_failures: 2 } }\n",
            ""
        )
    ));
    for n in 0..3 {
        let rid = format!("stall-past-header-{n}");
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: {rid}\r\nContent-Length: 100\r\n\r\nonly ten b"
            )
            .as_bytes(),
        )
        .expect("write");
        let started = Instant::now();
        let out = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408 "), "got: {text}");
        assert!(
            text.contains("\r\nProxy-Status: faultline; error=http_request_error; details=\"the request was not received in time\"\r\n"),
            "got: {text}"
        );
        assert_deadline(
            started.elapsed(),
            Duration::from_millis(300),
            "408 to a body stalled past the response timeout",
        );
        let entry = access_entry(&rid);
        assert_eq!(entry["status"], 408);
        assert_eq!(entry["failure"], "http_request_timeout");
        assert_eq!(entry["source"], "proxy", "the 408 is the proxy's answer");
        assert_eq!(entry["attempts"][0]["outcome"], "http_request_timeout");
    }
    let backend = |series: &str| {
        proxy.metric(&format!(
            "{series}{{upstream=\"app\",backend=\"{}\"}}",
            origin.addr
        ))
    };
    assert_eq!(backend("faultline_backend_up"), 1, "never ejected");
    let attempts = |outcome: &str| {
        crate::harness::find_metric(
            &proxy.metrics(),
            &format!(
                "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"{outcome}\"}}",
                origin.addr
            ),
        )
    };
    assert_eq!(attempts("http_request_timeout"), Some(3));
    assert_eq!(
        attempts("http_response_timeout"),
        None,
        "no response timeout is counted against the backend"
    );
    let status = crate::client::get(proxy.admin, "/status", &[]).text();
    assert!(
        status.contains("\"consecutive_failures\":0"),
        "the backend's breaker saw no failure: {status}"
    );
}

#[test]
fn a_client_that_leaves_mid_body_is_a_499_and_not_the_backends_fault() {
    let origin = Origin::start(Behavior::Hang);
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "    health: { passive: { consecutive_failures: 1 } }\n",
        "",
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: left-mid-body\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .expect("write");
    origin.wait_for_connections(1);
    drop(s);
    let entry = access_entry("left-mid-body");
    assert_eq!(entry["status"], 499);
    assert_eq!(entry["failure"], "client_aborted");
    assert_eq!(entry["source"], "client");
    assert_backend_up(
        &proxy,
        &origin,
        "a client that leaves never ejects a backend",
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_at_the_send_timeout_and_not_the_backends_fault() {
    // Far more than the socket buffers on both sides hold: the proxy's writes stall.
    const BODY: usize = 64 << 20;
    let origin = Origin::start(Behavior::Text {
        status: 200,
        body: "x".repeat(BODY),
        echo_request_id: false,
    });
    let proxy = Proxy::start(&format!(
        "clients: {{ send_timeout: 500ms }}\n{}",
        one_upstream(
            &[origin.addr],
            "    health: { passive: { consecutive_failures: 1 } }\n",
            ""
        )
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: stopped-reading\r\n\r\n")
        .expect("write");
    let started = Instant::now();
    // The request ends (and is logged) only when the proxy gives up on the client.
    let entry = access_entry("stopped-reading");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    assert_eq!(entry["status"], 499);
    assert_eq!(entry["failure"], "client_aborted");
    assert_eq!(entry["source"], "client");
    // What the client can still read ends short of the body: the connection was closed.
    let got = read_to_close(&mut s);
    assert!(got.starts_with(b"HTTP/1.1 200 "));
    assert!(got.len() < BODY, "the whole body arrived: {}", got.len());
    assert_backend_up(
        &proxy,
        &origin,
        "a client that stops reading never ejects a backend",
    );
}

#[test]
fn an_http2_client_that_keeps_its_window_shut_is_cut_at_the_send_timeout() {
    use crate::tls::{Pki, connector, h2_request, tls_connect, tls_proxy};
    let pki = Pki::new("zero-window");
    let origin = Origin::start(Behavior::Text {
        status: 200,
        body: "x".repeat(1 << 20),
        echo_request_id: false,
    });
    let proxy = tls_proxy(
        &pki,
        &format!(
            "clients: {{ send_timeout: 500ms }}\n{}",
            one_upstream(
                &[origin.addr],
                "    health: { passive: { consecutive_failures: 1 } }\n",
                ""
            )
        ),
    );
    let connector = connector(&pki, b"h2");
    let took = crate::origin::runtime().block_on(async {
        let tls = tls_connect(&connector, proxy.addr)
            .await
            .expect("handshake");
        // Not a byte of any stream's body may be sent, and the window is never opened.
        let (mut send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = h2_request(&mut send, "/", &[("x-request-id", "shut-window")])
            .await
            .expect("request");
        let resp = resp.await.expect("response header");
        assert_eq!(resp.status(), 200);
        let started = Instant::now();
        let mut body = resp.into_body();
        // The stream ends without its body: reset by the proxy.
        let end = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("the stream ends");
        assert!(
            matches!(end, Some(Err(_))),
            "the stream was reset, not completed: {end:?}"
        );
        started.elapsed()
    });
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    let entry = access_entry("shut-window");
    assert_eq!(entry["status"], 499);
    assert_eq!(entry["failure"], "client_aborted");
    assert_backend_up(
        &proxy,
        &origin,
        "a client that stops reading never ejects a backend",
    );
}

#[test]
fn a_big_header_sent_fast_then_trickled_still_meets_the_deadline() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&format!(
        "clients: {{ header_timeout: 500ms }}\n{}",
        one_upstream(&[origin.addr], "", "")
    ));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    let mut start = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    start.extend(std::iter::repeat_n(b'a', 70 * 1024));
    let (out, took) = trickle_until_answered(&mut s, &start, b"b", Duration::from_millis(50));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "got: {text}");
    assert_deadline(
        took,
        Duration::from_millis(500),
        "408 to a big trickled header",
    );
    assert_eq!(origin.requests(), 0);
}
