//! Hostile clients: request shapes that two HTTP parsers may frame differently are refused with
//! 400 before anything reaches an origin; oversized header sections get 431.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Proxy, access_entry, find_metric, one_upstream};
use crate::origin::{Behavior, Gate, Origin, runtime};

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
    assert_eq!(requests("400"), 2);
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
        let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
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
