//! Hostile clients: request shapes that two HTTP parsers may frame differently are refused with
//! 400 before anything reaches an origin; oversized header sections get 431; TLS handshakes and
//! HTTP/2 connections that stall are closed at the client deadlines, and failed handshakes are
//! counted and logged at a bounded rate; a missing or malformed host and paths without a single
//! reading are refused, other paths are routed and forwarded normalised; pipelined requests are
//! answered in order.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::{Client, Response};
use crate::harness::{Binary, Proxy, access_entry, find_metric, one_upstream};
use crate::origin::{Behavior, Gate, Origin, runtime};
use crate::tls::{Pki, connector, h2_body, h2_request, tls_connect, tls_proxy};

/// What came back for a raw request.
struct Exchange {
    /// The status line ("" when the connection closed without an answer).
    status_line: String,
    /// The header fields, names lowercase.
    headers: Vec<(String, String)>,
    /// Whether the proxy closed the connection after its answer.
    closed: bool,
}

impl Exchange {
    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes, reads the answer, and waits (5 s at most) to see whether the proxy closes the
/// connection after it.
fn raw_exchange(proxy: &Proxy, raw: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&out);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Exchange {
        status_line,
        headers,
        closed,
    }
}

#[test]
fn ambiguous_framing_is_refused_and_never_forwarded() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "content-length with transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: smug1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "differing duplicate content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "transfer-encoding other than chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: smug2\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "bare LF line ends",
            b"GET / HTTP/1.1\nHost: a\nX-Request-Id: smug3\n\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "NUL inside a header value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0X-Injected: c\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "CR inside a header value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rX-Injected: c\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (name, raw, want) in cases {
        let answer = raw_exchange(&proxy, raw);
        assert_eq!(answer.status_line, *want, "{name}");
        // The bytes after a request that cannot be framed cannot be trusted either.
        assert!(answer.closed, "{name}: the connection stayed open");
    }
    assert_eq!(origin.requests(), 0, "a refused request reached the origin");
    assert_eq!(origin.connections(), 0);
    let entry = access_entry("smug1");
    assert_eq!(entry["status"], 400);
    assert_eq!(entry["failure"], "http_request_error");
}

#[test]
fn a_broken_chunked_body_is_400() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let answer = raw_exchange(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(answer.status_line, "HTTP/1.1 400 Bad Request");
    assert!(answer.closed);
    assert_eq!(
        origin.requests(),
        0,
        "the origin never saw a complete request"
    );
}

#[test]
fn an_oversized_header_section_is_431() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: big431\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(
        b'a',
        faultline::internals::request_checks::MAX_HEADER_BYTES,
    ));
    raw.extend_from_slice(b"\r\n\r\n");
    let answer = raw_exchange(&proxy, &raw);
    assert_eq!(
        answer.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert!(answer.closed);
    assert_eq!(origin.requests(), 0);
    assert_eq!(
        access_entry("big431")["failure"],
        "http_request_header_section_size"
    );
}

#[test]
fn an_upstream_at_its_in_flight_limit_answers_503_at_once() {
    let gate = Gate::new();
    let slow = Origin::start(Behavior::held(
        gate.clone(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow".to_vec(),
    ));
    let proxy = Proxy::start(&one_upstream(&[slow.addr], "    max_in_flight: 2\n", ""));
    let addr = proxy.addr;
    let held: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || crate::client::get(addr, "/", &[])))
        .collect();
    slow.wait_for_requests(2);
    let started = std::time::Instant::now();
    let refused = crate::client::get(addr, "/", &[("x-request-id", "limit1")]);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a refusal must not wait"
    );
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("proxy-status"),
        Some(
            "faultline; error=connection_limit_reached; details=\"the upstream servers are at their request limit\""
        )
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        slow.requests(),
        2,
        "the refused request never reached the origin"
    );
    gate.open();
    for h in held {
        assert_eq!(h.join().expect("held").status, 200);
    }
    // The places are given back.
    assert_eq!(crate::client::get(addr, "/", &[]).status, 200);
    assert_eq!(
        access_entry("limit1")["failure"],
        "connection_limit_reached"
    );
}

/// A request shape Pingora refuses on its own, and the answer faultline must give instead.
struct Refused {
    name: &'static str,
    raw: Vec<u8>,
    /// The request id the request carries.
    rid: &'static str,
    status_line: &'static str,
    proxy_status: &'static str,
    /// The access log's method and path.
    method: &'static str,
    path: &'static str,
}

const BAD_REQUEST: &str =
    "faultline; error=http_request_error; details=\"the request could not be forwarded\"";

#[test]
fn shapes_pingora_refuses_get_faultlines_page_request_id_and_log_line() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let mut long_target = b"GET /".to_vec();
    long_target.extend(std::iter::repeat_n(b'a', 70_000));
    long_target
        .extend_from_slice(b" HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: long-target\r\n\r\n");
    let mut many_headers =
        b"GET /many HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: many-headers\r\n".to_vec();
    for i in 0..256 {
        many_headers.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    let cases = [
        Refused {
            name: "absolute-form target whose authority is not Host",
            raw: b"GET http://other.test/admin HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: abs-host\r\n\r\n"
                .to_vec(),
            rid: "abs-host",
            status_line: "HTTP/1.1 400 Bad Request",
            proxy_status: BAD_REQUEST,
            method: "GET",
            path: "http://other.test/admin",
        },
        Refused {
            name: "a target over 64 KiB",
            raw: long_target,
            rid: "long-target",
            status_line: "HTTP/1.1 414 URI Too Long",
            proxy_status: "faultline; error=http_request_denied; details=\"the request target is longer than the proxy takes\"",
            method: "GET",
            // The log keeps a bounded prefix of what it cannot route.
            path: "",
        },
        Refused {
            name: "HTTP/1.0 with Transfer-Encoding",
            raw: b"POST /up HTTP/1.0\r\nHost: app.test\r\nX-Request-Id: te-10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            rid: "te-10",
            status_line: "HTTP/1.1 400 Bad Request",
            proxy_status: BAD_REQUEST,
            method: "POST",
            path: "/up",
        },
        Refused {
            name: "CONNECT",
            raw: b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\nX-Request-Id: connect-1\r\n\r\n"
                .to_vec(),
            rid: "connect-1",
            status_line: "HTTP/1.1 405 Method Not Allowed",
            proxy_status: "faultline; error=http_request_denied; details=\"the proxy does not serve this method\"",
            method: "CONNECT",
            path: "app.test:443",
        },
        Refused {
            name: "a header name with a space",
            raw: b"GET /sp HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: name-space\r\nBad Name: x\r\n\r\n".to_vec(),
            rid: "name-space",
            status_line: "HTTP/1.1 400 Bad Request",
            proxy_status: BAD_REQUEST,
            method: "GET",
            path: "/sp",
        },
        Refused {
            name: "differing Content-Length values",
            raw: b"POST /cl HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: two-lengths\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            rid: "two-lengths",
            status_line: "HTTP/1.1 400 Bad Request",
            proxy_status: BAD_REQUEST,
            method: "POST",
            path: "/cl",
        },
        Refused {
            name: "more header fields than Pingora parses",
            raw: many_headers,
            rid: "many-headers",
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            proxy_status: "faultline; error=http_request_header_section_size; details=\"the request header section is too large\"",
            method: "GET",
            path: "/many",
        },
    ];
    let mut allow = None;
    for case in &cases {
        let name = case.name;
        let answer = raw_exchange(&proxy, &case.raw);
        if case.method == "CONNECT" {
            allow = answer.header("allow").map(str::to_string);
        }
        assert_eq!(answer.status_line, case.status_line, "{name}");
        assert_eq!(
            answer.header("proxy-status"),
            Some(case.proxy_status),
            "{name}"
        );
        assert_eq!(answer.header("x-request-id"), Some(case.rid), "{name}");
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{name}");
        assert_eq!(
            answer.header("server"),
            None,
            "{name}: Pingora's own answer"
        );
        assert!(answer.closed, "{name}: the connection stayed open");
        let entry = access_entry(case.rid);
        let status: u16 = case.status_line[9..12].parse().expect("status");
        assert_eq!(entry["status"], status, "{name}: {entry}");
        assert_eq!(entry["source"], "proxy", "{name}: {entry}");
        assert_eq!(entry["method"], case.method, "{name}: {entry}");
        if !case.path.is_empty() {
            assert_eq!(entry["path"], case.path, "{name}: {entry}");
        }
        assert_eq!(entry["attempts"], serde_json::json!([]), "{name}: {entry}");
    }
    assert_eq!(
        allow.as_deref(),
        Some("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
        "a 405 says what is allowed"
    );
    // Each answer counted once, under no route (the log line follows the count).
    let metrics = proxy.metrics();
    let requests = |status: &str| {
        let series = format!(
            "faultline_requests_total{{route=\"none\",status=\"{status}\",source=\"proxy\"}}"
        );
        find_metric(&metrics, &series).unwrap_or(0)
    };
    assert_eq!(requests("400"), 4);
    assert_eq!(requests("431"), 1);
    assert_eq!(requests("414"), 1);
    assert_eq!(requests("405"), 1);
    assert_eq!(origin.requests(), 0, "a refused request reached the origin");
    assert_eq!(origin.connections(), 0);
}

#[test]
fn http2_connect_is_405_from_faultline() {
    let pki = crate::tls::Pki::new("h2connect");
    let origin = Origin::start(Behavior::named("o"));
    let proxy = crate::tls::tls_proxy(&pki, &one_upstream(&[origin.addr], "", ""));
    let connector = crate::tls::connector(&pki, b"h2");
    let (status, headers) = runtime().block_on(async {
        let tls = crate::tls::tls_connect(&connector, proxy.addr)
            .await
            .expect("handshake");
        let mut send = crate::tls::h2_client(tls).await;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("localhost:443")
            .header("x-request-id", "h2-connect")
            .body(())
            .expect("request");
        let (resp, _stream) = send.send_request(req, false).expect("send");
        let resp = resp.await.expect("response");
        (resp.status().as_u16(), resp.headers().clone())
    });
    assert_eq!(status, 405);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        header("proxy-status"),
        Some(
            "faultline; error=http_request_denied; details=\"the proxy does not serve this method\""
        )
    );
    assert_eq!(header("x-request-id"), Some("h2-connect"));
    assert_eq!(
        header("allow"),
        Some("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH")
    );
    let entry = access_entry("h2-connect");
    assert_eq!(entry["status"], 405);
    assert_eq!(entry["failure"], "method_not_allowed");
    assert_eq!(origin.requests(), 0);
}

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";

#[test]
fn an_unsolicited_101_is_502_over_http2_and_counts_against_the_backend() {
    let pki = crate::tls::Pki::new("h2-101");
    let origin = Origin::start(Behavior::Raw(SWITCHING.to_vec()));
    let proxy = crate::tls::tls_proxy(&pki, &one_upstream(&[origin.addr], "", ""));
    let connector = crate::tls::connector(&pki, b"h2");
    let (status, headers, body) = runtime().block_on(async {
        let tls = crate::tls::tls_connect(&connector, proxy.addr)
            .await
            .expect("handshake");
        let (_send, resp) = crate::tls::h2_get(tls, "/", &[("x-request-id", "h2-101")])
            .await
            .expect("h2 GET");
        let resp = resp.await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (body, _) = crate::tls::h2_body(&mut resp.into_body(), usize::MAX).await;
        (status, headers, String::from_utf8_lossy(&body).to_string())
    });
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        headers.get("proxy-status").and_then(|v| v.to_str().ok()),
        Some(
            "faultline; error=http_protocol_error; details=\"the upstream server sent an invalid response\""
        )
    );
    assert_eq!(
        headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("h2-101")
    );
    let entry = access_entry("h2-101");
    assert_eq!(entry["failure"], "http_protocol_error");
    assert_eq!(entry["attempts"][0]["outcome"], "http_protocol_error");
    let series = |outcome: &str| {
        format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"{outcome}\"}}",
            origin.addr
        )
    };
    assert_eq!(proxy.metric(&series("http_protocol_error")), 1);
    assert_eq!(proxy.metric(&series("response")), 0);
}

#[test]
fn a_requested_upgrade_still_switches_protocols() {
    // The origin answers every "request" with the 101: the second one comes through the tunnel.
    let origin = Origin::start(Behavior::Raw(SWITCHING.to_vec()));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: ws-1\r\n\r\n",
    )
    .expect("write");
    let read_head = |s: &mut TcpStream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!(
                    "no head: {other:?} after {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
        }
        String::from_utf8_lossy(&head).to_string()
    };
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.write_all(b"tunnelled\r\n\r\n")
        .expect("write into the tunnel");
    let echoed = read_head(&mut s);
    assert!(
        echoed.starts_with("HTTP/1.1 101 "),
        "through the tunnel: {echoed}"
    );
    assert_eq!(origin.requests(), 2, "both went through");
}

/// The HTTP/2 connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame on stream `stream`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("frame length")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The GOAWAY frames (last stream id, error code) in what a server sent.
fn goaways(mut bytes: &[u8]) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        if bytes[3] == 0x7 && payload.len() >= 8 {
            let word = |at: usize| {
                u32::from_be_bytes([
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                ])
            };
            found.push((word(0) & 0x7fff_ffff, word(4)));
        }
        bytes = &bytes[9 + len..];
    }
    found
}

/// Asserts that a close a `setting` deadline caused came after it, and not much later.
fn assert_deadline(took: Duration, setting: Duration, what: &str) {
    assert!(
        took >= setting,
        "{what}: after {took:?}, before its {setting:?}"
    );
    assert!(
        took < setting + Duration::from_secs(3),
        "{what}: after {took:?}, long past its {setting:?}"
    );
}

/// Reads until the peer closes; fails after 10 s (a connection held open is the bug).
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) => out,
        // A close without TLS close_notify, or a reset after the close, ends it too.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            out
        }
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("the connection is still open after 10 s"),
    }
}

fn std_read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Err(e) => panic!("the connection is still open after 10 s: {e}"),
    }
}

fn handshake_failures(proxy: &Proxy, protocol: &str) -> u64 {
    proxy.metric(&handshake_series(protocol))
}

fn handshake_series(protocol: &str) -> String {
    format!("faultline_client_handshake_failures_total{{protocol=\"{protocol}\"}}")
}

/// Waits until `n` failed handshakes of `protocol` are counted (the count follows the end of
/// Pingora's handshake, which may come just after the client saw the close), then asserts that
/// exactly `n` are.
fn assert_handshake_failures(proxy: &Proxy, protocol: &str, n: u64) {
    let series = handshake_series(protocol);
    proxy.wait_for_metric(&series, |v| v >= n, "failed handshakes counted");
    assert_eq!(proxy.metric(&series), n);
}

fn tls_limits_proxy(pki: &Pki, clients: &str) -> (Origin, Proxy) {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = tls_proxy(
        pki,
        &format!(
            "clients: {clients}\n{}",
            one_upstream(&[origin.addr], "", "")
        ),
    );
    (origin, proxy)
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_the_header_deadline_and_counted() {
    let pki = Pki::new("tlsstall");
    let (origin, proxy) = tls_limits_proxy(&pki, "{ header_timeout: 1s }");
    let setting = Duration::from_secs(1);

    // The start of a ClientHello record (512 bytes announced, one sent), then nothing.
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let out = std_read_until_closed(&mut s);
    assert!(out.is_empty(), "got {out:?}");
    assert_deadline(
        started.elapsed(),
        setting,
        "close of a stalled TLS handshake",
    );
    assert_handshake_failures(&proxy, "tls", 1);

    // Not TLS at all: refused at once (a TLS alert, then the close), counted.
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    let _ = std_read_until_closed(&mut s);
    assert!(started.elapsed() < setting, "took {:?}", started.elapsed());
    assert_handshake_failures(&proxy, "tls", 2);

    // A connection that sends nothing started no handshake: closed at the deadline, not counted.
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).expect("connect");
    assert!(std_read_until_closed(&mut s).is_empty());
    assert_deadline(
        started.elapsed(),
        setting,
        "close of a silent TLS connection",
    );
    assert_eq!(handshake_failures(&proxy, "tls"), 2);
    assert_eq!(handshake_failures(&proxy, "h2"), 0);
    assert_eq!(origin.connections(), 0);
}

#[test]
fn an_http2_preface_not_sent_in_time_closes_the_connection_and_is_counted() {
    let pki = Pki::new("h2preface");
    let (origin, proxy) = tls_limits_proxy(&pki, "{ header_timeout: 1s, keepalive_timeout: 30s }");
    let setting = Duration::from_secs(1);
    let h2 = connector(&pki, b"h2");
    runtime().block_on(async {
        // Half a preface after ALPN chose h2: counted when the deadline (from the connection's
        // start) passes.
        let started = Instant::now();
        let mut tls = tls_connect(&h2, proxy.addr).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(&PREFACE[..16]).await.expect("write");
        let _ = read_until_closed(&mut tls).await;
        assert_deadline(started.elapsed(), setting, "close of a half preface");

        // Nothing at all after the TLS handshake: closed at the deadline, not counted.
        let started = Instant::now();
        let mut tls = tls_connect(&h2, proxy.addr).await.expect("handshake");
        let _ = read_until_closed(&mut tls).await;
        assert_deadline(
            started.elapsed(),
            setting,
            "close of a silent h2 connection",
        );
    });
    assert_handshake_failures(&proxy, "h2", 1);
    assert_eq!(handshake_failures(&proxy, "tls"), 0);
    assert_eq!(origin.requests(), 0);
}

#[test]
fn an_http2_header_block_left_open_ends_the_connection_with_protocol_error() {
    let pki = Pki::new("h2block");
    let (origin, proxy) = tls_limits_proxy(&pki, "{ header_timeout: 1s, keepalive_timeout: 30s }");
    let h2 = connector(&pki, b"h2");
    let (took, sent) = runtime().block_on(async {
        let mut tls = tls_connect(&h2, proxy.addr).await.expect("handshake");
        let mut start = PREFACE.to_vec();
        start.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        // HEADERS on stream 1 with END_STREAM but without END_HEADERS: :method GET, :scheme
        // https, :path / (HPACK static table), and the CONTINUATION never comes.
        start.extend(frame(0x1, 0x1, 1, &[0x82, 0x87, 0x84]));
        tls.write_all(&start).await.expect("write");
        let started = Instant::now();
        let sent = read_until_closed(&mut tls).await;
        (started.elapsed(), sent)
    });
    assert_deadline(
        took,
        Duration::from_secs(1),
        "close of an open header block",
    );
    // GOAWAY PROTOCOL_ERROR (0x1); no stream was processed.
    assert_eq!(goaways(&sent), vec![(0, 0x1)], "{sent:?}");
    assert_eq!(origin.requests(), 0);
    assert_eq!(handshake_failures(&proxy, "h2"), 0);
}

/// A client stream that keeps a copy of every byte the server sent.
struct Tap<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.seen
            .lock()
            .expect("tap")
            .extend_from_slice(&buf.filled()[before..]);
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[test]
fn an_idle_http2_connection_gets_goaway_no_error_at_the_keepalive_timeout() {
    let pki = Pki::new("h2idle");
    let gate = Gate::new();
    let origin = Origin::start(Behavior::held(
        gate.clone(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld".to_vec(),
    ));
    let proxy = tls_proxy(
        &pki,
        &format!(
            "clients: {{ header_timeout: 1s, keepalive_timeout: 1s }}\n{}",
            one_upstream(&[origin.addr], "", "")
        ),
    );
    let keepalive = Duration::from_secs(1);
    let h2 = connector(&pki, b"h2");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (status, body, closed, took) = runtime().block_on(async {
        let tls = tls_connect(&h2, proxy.addr).await.expect("handshake");
        let tap = Tap {
            inner: tls,
            seen: seen.clone(),
        };
        let (mut send, conn) = h2::client::handshake(tap).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let resp = h2_request(&mut send, "/", &[]).await.expect("request");
        // A stream open longer than the keep-alive timeout is no idle connection.
        origin.wait_for_requests(1);
        tokio::time::sleep(keepalive + Duration::from_millis(500)).await;
        let released = Instant::now();
        gate.open();
        let resp = resp.await.expect("response");
        let status = resp.status().as_u16();
        let (body, end) = h2_body(&mut resp.into_body(), usize::MAX).await;
        assert!(matches!(end, Some(Ok(()))), "{end:?}");
        // Then nothing: the proxy closes the idle connection.
        let closed = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the idle connection is still open after 10 s")
            .expect("connection task");
        (status, body, closed, released.elapsed())
    });
    assert_eq!((status, body.as_slice()), (200, &b"held"[..]));
    assert!(closed.is_ok(), "{closed:?}");
    // The idle time starts when the response is done, after the gate opened.
    assert_deadline(took, keepalive, "GOAWAY to an idle connection");
    let seen = seen.lock().expect("tap").clone();
    assert_eq!(
        goaways(&seen),
        vec![(1, 0x0)],
        "one GOAWAY NO_ERROR after stream 1"
    );
}

#[test]
fn failed_handshakes_are_counted_and_logged_at_most_once_a_second() {
    let pki = Pki::new("handshakelog");
    let listener_tls = format!(
        ", tls: {{ cert: \"{}\", key: \"{}\" }}",
        pki.path("proxy.pem"),
        pki.path("proxy.key")
    );
    let bin = Binary::start_with_listener(
        "handshakelog",
        "server: { threads: 1 }",
        &listener_tls,
        &format!(
            "clients: {{ header_timeout: 1s }}\n{}",
            one_upstream(&[crate::origin::refused_addr()], "", "")
        ),
    );
    let broken = || {
        let mut s = TcpStream::connect(bin.addr).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("write");
        let _ = std_read_until_closed(&mut s);
    };
    let series = "faultline_client_handshake_failures_total{protocol=\"tls\"}";
    for _ in 0..40 {
        broken();
    }
    // A failure is counted once Pingora's handshake returns, which may be just after the
    // client saw the connection close.
    bin.wait_for_metric(series, |n| n >= 40, "forty failures counted");
    assert_eq!(bin.metric(series), 40);
    // After a quiet second, the next failure is logged with the count held back.
    std::thread::sleep(Duration::from_millis(1100));
    broken();
    bin.wait_for_metric(series, |n| n >= 41, "the next failure counted");
    assert_eq!(bin.metric(series), 41);
    // Every failure is in the log, as a line or in the count of a later line.
    let logged = |log: &str| -> (usize, u64) {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("client TLS handshake from"))
            .collect();
        let held_back = lines
            .iter()
            .filter_map(|l| {
                l.split_once(" failed: ")?
                    .1
                    .rsplit_once(" (")?
                    .1
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (lines.len(), held_back)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (lines, held_back) = loop {
        let (lines, held_back) = logged(&bin.log());
        if lines as u64 + held_back == 41 || Instant::now() > deadline {
            break (lines, held_back);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = bin.log();
    assert_eq!(lines as u64 + held_back, 41, "{log}");
    // 40 failures in well under a few seconds, then one: a line a second at most.
    assert!(lines <= 4, "{lines} lines:\n{log}");
    assert!(!log.contains("Downstream handshake error"), "{log}");
}

/// Sends `raw` on a new connection and reads one answer with the test client.
fn raw_response(proxy: &Proxy, raw: &[u8], method: &str) -> (Response, Client) {
    let mut client = Client::connect(proxy.addr);
    client.send(raw);
    (client.read_response(method), client)
}

/// The request line the origin saw for each request, in order.
fn request_lines(origin: &Origin) -> Vec<String> {
    origin
        .heads()
        .iter()
        .map(|h| h.split("\r\n").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_missing_or_invalid_host_is_400_and_never_forwarded() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    // Refused by faultline, with its page: (name, request, request id).
    let cases: &[(&str, &str)] = &[
        (
            "no Host",
            "GET / HTTP/1.1\r\nX-Request-Id: host-none\r\n\r\n",
        ),
        (
            "quote and angle brackets",
            "GET / HTTP/1.1\r\nHost: a\"b<c>\r\nX-Request-Id: host-quote\r\n\r\n",
        ),
        (
            "a space",
            "GET / HTTP/1.1\r\nHost: x y\r\nX-Request-Id: host-space\r\n\r\n",
        ),
        (
            "a path",
            "GET / HTTP/1.1\r\nHost: x/../y\r\nX-Request-Id: host-path\r\n\r\n",
        ),
        (
            "empty",
            "GET / HTTP/1.1\r\nHost: \r\nX-Request-Id: host-empty\r\n\r\n",
        ),
        (
            "a bad port",
            "GET / HTTP/1.1\r\nHost: a:b\r\nX-Request-Id: host-port\r\n\r\n",
        ),
        (
            "an invalid HTTP/1.0 Host",
            "GET / HTTP/1.0\r\nHost: a b\r\nX-Request-Id: host-10\r\n\r\n",
        ),
    ];
    for (name, raw) in cases {
        let id = raw
            .split("X-Request-Id: ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .unwrap_or("");
        let (resp, _) = raw_response(&proxy, raw.as_bytes(), "GET");
        assert_eq!(resp.status, 400, "{name}: {}", resp.describe());
        assert_eq!(resp.header("proxy-status"), Some(BAD_REQUEST), "{name}");
        assert_eq!(resp.header("x-request-id"), Some(id), "{name}");
        let entry = access_entry(id);
        assert_eq!(entry["status"], 400, "{name}");
        assert_eq!(entry["failure"], "http_request_error", "{name}");
    }
    // Refused by Pingora before any hook runs, with its own bare 400: a second Host, and an
    // absolute-form target naming another authority than Host.
    let pingora_refuses: &[(&str, &str)] = &[
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        (
            "absolute-form and another Host",
            "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
        ),
    ];
    for (name, raw) in pingora_refuses {
        let (resp, mut client) = raw_response(&proxy, raw.as_bytes(), "GET");
        assert_eq!(resp.status, 400, "{name}: {}", resp.describe());
        assert!(client.is_closed(), "{name}: the connection stayed open");
    }
    assert_eq!(
        origin.requests(),
        0,
        "a request with a bad host reached the origin"
    );
}

#[test]
fn an_http10_request_without_host_is_forwarded_with_the_listeners() {
    let origin = Origin::start(Behavior::named("o"));
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    let (resp, _) = raw_response(&proxy, b"GET /old HTTP/1.0\r\n\r\n", "GET");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let heads = origin.heads();
    assert_eq!(heads.len(), 1);
    let want = format!("host: {}", proxy.addr).to_ascii_lowercase();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("\r\n{want}\r\n")),
        "the backend got no Host of the listener: {:?}",
        heads[0]
    );
}

#[test]
fn a_path_is_routed_and_forwarded_normalised() {
    let public = Origin::start(Behavior::named("public"));
    let body = format!(
        "upstreams:\n  public:\n    backends:\n      - {{ address: \"{}\" }}\nroutes:\n  - {{ name: public, match: {{ path_prefix: /public }}, upstream: public }}\n",
        public.addr
    );
    let proxy = Proxy::start(&body);
    // (target, status, Proxy-Status error, closed): the ones the route must not see.
    let refused: &[(&str, u16, &str, bool)] = &[
        // Routed on `/secret`, which no route serves.
        ("/public/%2e%2e/secret", 404, "destination_not_found", false),
        ("/public/../secret", 404, "destination_not_found", false),
        (
            "/public/.%2E/secret?x=1",
            404,
            "destination_not_found",
            false,
        ),
        // No single reading.
        ("/public/..%2fsecret", 400, "http_request_error", false),
        ("/public/..%2Fsecret", 400, "http_request_error", false),
        ("/public\\..\\secret", 400, "http_request_error", false),
        ("/public/%5c..%5csecret", 400, "http_request_error", false),
        ("/public/../../secret", 400, "http_request_error", false),
        ("/public/%zz", 400, "http_request_error", false),
        // A control character, encoded or raw (Pingora escapes a raw one to the same `%00`):
        // the request line may be broken, so the connection closes.
        ("/public/a%00b", 400, "http_request_error", true),
        ("/public/a\0b", 400, "http_request_error", true),
        ("/public/a\x01b", 400, "http_request_error", true),
    ];
    for (target, status, error, closed) in refused {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let (resp, mut client) = raw_response(&proxy, raw.as_bytes(), "GET");
        assert_eq!(resp.status, *status, "{target:?}: {}", resp.describe());
        let proxy_status = resp.header("proxy-status").unwrap_or("");
        assert!(
            proxy_status.starts_with(&format!("faultline; error={error};")),
            "{target:?}: {proxy_status}"
        );
        assert!(resp.header("x-request-id").is_some(), "{target:?}");
        assert_eq!(client.is_closed(), *closed, "{target:?}");
    }
    assert_eq!(
        public.requests(),
        0,
        "a path outside /public reached its backend"
    );

    // Forwarded, normalised; the query as it came.
    let forwarded: &[(&str, &str)] = &[
        ("/public/a", "/public/a"),
        ("/public/./a/../b?x=%2e%2e/../y", "/public/b?x=%2e%2e/../y"),
        ("/public/%7Euser/%41%2e", "/public/~user/A."),
        ("/public/a/b/..", "/public/a/"),
        ("/public/%C3%A9", "/public/%C3%A9"),
    ];
    for (target, _) in forwarded {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let (resp, _) = raw_response(&proxy, raw.as_bytes(), "GET");
        assert_eq!(resp.status, 200, "{target}: {}", resp.describe());
    }
    let want: Vec<String> = forwarded
        .iter()
        .map(|(_, path)| format!("GET {path} HTTP/1.1"))
        .collect();
    assert_eq!(request_lines(&public), want);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start(Behavior::Text {
        status: 200,
        body: "ok".into(),
        echo_request_id: true,
    });
    let proxy = Proxy::start(&one_upstream(&[origin.addr], "", ""));
    // Five requests in one write, a body among them.
    let mut batch = Vec::new();
    for i in 1..=5 {
        if i == 3 {
            batch.extend_from_slice(
                b"POST /3 HTTP/1.1\r\nHost: a\r\nX-Request-Id: pipe-3\r\nContent-Length: 5\r\n\r\nhello",
            );
        } else {
            batch.extend(
                format!("GET /{i} HTTP/1.1\r\nHost: a\r\nX-Request-Id: pipe-{i}\r\n\r\n")
                    .into_bytes(),
            );
        }
    }
    let mut client = Client::connect(proxy.addr);
    client.send(&batch);
    for i in 1..=5 {
        let resp = client.read_response(if i == 3 { "POST" } else { "GET" });
        assert_eq!(resp.status, 200, "request {i}: {}", resp.describe());
        assert_eq!(
            resp.header("x-request-id"),
            Some(format!("pipe-{i}").as_str())
        );
        assert_ne!(resp.header("connection"), Some("close"), "request {i}");
    }
    let want: Vec<String> = (1..=5)
        .map(|i| format!("{} /{i} HTTP/1.1", if i == 3 { "POST" } else { "GET" }))
        .collect();
    assert_eq!(request_lines(&origin), want);
    // The connection is still good for more.
    client.send(b"GET /6 HTTP/1.1\r\nHost: a\r\nX-Request-Id: pipe-6\r\n\r\n");
    assert_eq!(
        client.read_response("GET").header("x-request-id"),
        Some("pipe-6")
    );

    // A request sent while the one before it is still at the origin waits its turn.
    let gate = Gate::new();
    origin.set(Behavior::Held(
        gate.clone(),
        Box::new(Behavior::Text {
            status: 200,
            body: "held".into(),
            echo_request_id: true,
        }),
    ));
    client.send(b"GET /7 HTTP/1.1\r\nHost: a\r\nX-Request-Id: pipe-7\r\n\r\n");
    origin.wait_for_requests(7);
    client.send(b"GET /8 HTTP/1.1\r\nHost: a\r\nX-Request-Id: pipe-8\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    gate.open();
    for i in 7..=8 {
        let resp = client.read_response("GET");
        assert_eq!(resp.status, 200, "request {i}: {}", resp.describe());
        assert_eq!(
            resp.header("x-request-id"),
            Some(format!("pipe-{i}").as_str())
        );
    }
}
