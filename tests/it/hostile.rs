//! Hostile clients: request shapes that two HTTP parsers may frame differently are refused with
//! 400 before anything reaches an origin; oversized header sections get 431; a missing or
//! malformed host and paths without a single reading are refused, other paths are routed and
//! forwarded normalised; pipelined requests are answered in order.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::client::{Client, Response};
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Gate, Origin};

/// What came back for a raw request.
struct Exchange {
    /// The status line ("" when the connection closed without an answer).
    status_line: String,
    /// Whether the proxy closed the connection after its answer.
    closed: bool,
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
    let status_line = String::from_utf8_lossy(&out)
        .split("\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    Exchange {
        status_line,
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
        faultline::request_checks::MAX_HEADER_BYTES,
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

/// The `Proxy-Status` of faultline's 400 for a malformed request.
const REQUEST_ERROR: &str =
    "faultline; error=http_request_error; details=\"the request could not be forwarded\"";

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
        assert_eq!(resp.header("proxy-status"), Some(REQUEST_ERROR), "{name}");
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
