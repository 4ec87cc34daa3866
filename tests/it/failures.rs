//! One test per row of the failure table (DESIGN §1): what the client sees, in every body format,
//! and what the access log records. The rows that share a shape are data, one table for the
//! failures before any response byte and one for those after the header went downstream, each
//! run by one driver.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::client::{self, Client, Response};
use crate::harness::{Proxy, access_entry, backend_status, find_metric, one_upstream, status_now};
use crate::origin::{Behavior, Blackhole, Origin, refused_addr, runtime};

/// The three body formats and how each must look.
const FORMATS: [&str; 3] = ["text/html", "application/json", "*/*"];

fn detail_of(kind: &str) -> &'static str {
    faultline::FailureKind::ALL
        .iter()
        .find(|k| k.as_str() == kind)
        .map(|k| k.detail())
        .unwrap_or_else(|| panic!("unknown kind {kind}"))
}

/// Asserts a proxy-generated error response, exactly.
fn assert_generated(
    resp: &Response,
    status: u16,
    reason: &str,
    kind: &str,
    rid: &str,
    accept: &str,
) {
    let detail = detail_of(kind);
    assert_eq!(
        resp.status,
        status,
        "status for {kind}; body {:?}",
        resp.text()
    );
    assert_eq!(
        resp.header("proxy-status"),
        Some(format!("faultline; error={kind}; details=\"{detail}\"").as_str())
    );
    assert_eq!(resp.header("x-request-id"), Some(rid));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert!(resp.complete, "error page must be complete");
    let body = resp.text();
    match accept {
        "text/html" => {
            assert_eq!(
                resp.header("content-type"),
                Some("text/html; charset=utf-8")
            );
            assert!(
                body.contains(&format!("<title>{status} {reason}</title>")),
                "{body}"
            );
            let html_detail = detail.replace('\'', "&#39;");
            assert!(body.contains(&format!("Sorry, {html_detail}.")), "{body}");
            assert!(body.contains(&format!("<code>{rid}</code>")), "{body}");
        }
        "application/json" => {
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json")
            );
            let v: serde_json::Value = serde_json::from_str(&body).expect("problem+json parses");
            assert_eq!(v["type"], "about:blank");
            assert_eq!(v["title"], reason);
            assert_eq!(v["status"], status);
            assert_eq!(v["detail"], detail);
            assert_eq!(v["proxy_status"], kind);
            assert_eq!(v["request_id"], rid);
        }
        _ => {
            assert_eq!(
                resp.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(
                body,
                format!("{status} {reason}: {detail}.\nrequest id: {rid}\n")
            );
        }
    }
}

fn proxy_for(backend: SocketAddr, timeouts: &str) -> Proxy {
    let extra = if timeouts.is_empty() {
        String::new()
    } else {
        format!("    timeouts: {{ {timeouts} }}\n")
    };
    Proxy::start(&one_upstream(&[backend], &extra, ""))
}

/// Where a row's one backend is.
enum Backend {
    /// A port where connecting is refused.
    Refused,
    /// A listener whose accept queue is full: a connect gets no answer.
    Blackhole,
    /// An origin that behaves so.
    Origin(Behavior),
}

/// A row of the failure table (DESIGN §1) that fails before any response byte reached the
/// client: what the backend does, and what the client and the access log must show.
struct Row {
    backend: Backend,
    /// The upstream's `timeouts` (YAML flow-map body), none when empty.
    timeouts: &'static str,
    method: &'static str,
    status: u16,
    reason: &'static str,
    kind: &'static str,
    /// How far the one attempt got, as the access log says.
    progress: &'static str,
    /// Bounds on the time the three requests (one per body format) take together.
    took: Range<Duration>,
}

impl Row {
    /// A GET to `backend` with the default timeouts, answered `status reason` for `kind`.
    fn new(
        backend: Backend,
        status: u16,
        reason: &'static str,
        kind: &'static str,
        progress: &'static str,
    ) -> Row {
        Row {
            backend,
            timeouts: "",
            method: "GET",
            status,
            reason,
            kind,
            progress,
            took: Duration::ZERO..Duration::MAX,
        }
    }

    fn timeouts(self, timeouts: &'static str) -> Row {
        Row { timeouts, ..self }
    }

    fn took(self, took: Range<Duration>) -> Row {
        Row { took, ..self }
    }
}

/// The driver: one request per body format, each on a new connection with the request id
/// `<tag>-<n>`. Each gets the exact page, then the connection closes; the access log has one
/// attempt with the row's outcome and progress; an origin saw each request once.
fn run(tag: &str, row: Row) {
    let (mut origin, mut _hole) = (None, None);
    let backend = match row.backend {
        Backend::Refused => refused_addr(),
        Backend::Blackhole => _hole.insert(Blackhole::start()).addr,
        Backend::Origin(behavior) => origin.insert(Origin::start(behavior)).addr,
    };
    let proxy = proxy_for(backend, row.timeouts);
    let started = Instant::now();
    for (i, accept) in FORMATS.iter().enumerate() {
        let rid = format!("{tag}-{i}");
        let mut c = Client::connect(proxy.addr);
        c.send(&client::request(
            row.method,
            "/row",
            "app.test",
            &[("accept", accept), ("x-request-id", &rid)],
        ));
        let resp = c.read_response(row.method);
        assert_generated(&resp, row.status, row.reason, row.kind, &rid, accept);
        // Pingora 0.9 cannot keep the client connection after an upstream attempt failed: the
        // page says so with `Connection: close`, and the connection really closes.
        assert_eq!(resp.header("connection"), Some("close"), "{rid}");
        assert!(c.is_closed(), "{rid}: the connection stayed open");
        let entry = access_entry(&rid);
        assert_eq!(entry["status"], row.status);
        assert_eq!(entry["source"], "proxy");
        assert_eq!(entry["failure"], row.kind);
        assert_eq!(entry["route"], "main");
        assert_eq!(entry["upstream"], "app");
        let attempts = entry["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{entry}");
        assert_eq!(attempts[0]["outcome"], row.kind, "{entry}");
        assert_eq!(attempts[0]["progress"], row.progress, "{entry}");
    }
    let took = started.elapsed();
    assert!(
        row.took.contains(&took),
        "{tag}: {took:?} is outside {:?}",
        row.took
    );
    if let Some(origin) = origin {
        assert_eq!(
            origin.requests(),
            FORMATS.len(),
            "each request reached the origin once"
        );
    }
}

/// One `#[test]` per row, named after the behaviour, running `driver` on its row with the
/// test's name as the request-id tag.
macro_rules! rows {
    ($driver:ident; $($name:ident: $row:expr;)*) => {
        $(
            #[test]
            fn $name() {
                $driver(stringify!($name), $row);
            }
        )*
    };
}

rows! { run;
    refused_connection_is_502:
        Row::new(Backend::Refused, 502, "Bad Gateway", "connection_refused", "not_sent");
    connect_timeout_is_504:
        Row::new(Backend::Blackhole, 504, "Gateway Timeout", "connection_timeout", "not_sent")
            .timeouts("connect: 200ms")
            // Three connect timeouts of 200 ms.
            .took(Duration::ZERO..Duration::from_secs(5));
    reset_before_any_byte_is_502:
        Row::new(origin(Behavior::Reset), 502, "Bad Gateway", "connection_terminated", "sent");
    close_before_any_byte_is_502:
        Row::new(origin(Behavior::Close), 502, "Bad Gateway", "connection_terminated", "sent");
    close_after_partial_header_is_502:
        Row::new(
            origin(Behavior::WriteThenClose(b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec())),
            502, "Bad Gateway", "http_response_incomplete", "sent",
        );
    garbage_status_line_is_502:
        Row::new(
            origin(Behavior::Raw(b"THIS IS NOT HTTP AT ALL\r\n\r\n".to_vec())),
            502, "Bad Gateway", "http_protocol_error", "sent",
        );
    malformed_content_length_is_502:
        Row::new(
            origin(Behavior::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
            )),
            502, "Bad Gateway", "http_protocol_error", "sent",
        );
    too_many_response_headers_is_502:
        Row::new(
            origin(Behavior::Raw(head_with(300, 1))),
            502, "Bad Gateway", "http_response_header_section_size", "sent",
        );
    oversized_response_header_section_is_502:
        Row::new(
            origin(Behavior::WriteThenClose(head_with(1, 1_200_000))),
            502, "Bad Gateway", "http_response_header_section_size", "sent",
        );
    // RFC 9110 §15.2.2: a server sends 101 only to a request that asked for an upgrade.
    unsolicited_101_is_502:
        Row::new(
            origin(Behavior::Raw(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
                    .to_vec(),
            )),
            502, "Bad Gateway", "http_protocol_error", "sent",
        );
    no_response_header_in_time_is_504:
        Row::new(origin(Behavior::Hang), 504, "Gateway Timeout", "http_response_timeout", "sent")
            .timeouts("response_header: 300ms")
            // Three waits of 300 ms.
            .took(Duration::from_millis(900)..Duration::MAX);
}

fn origin(behavior: Behavior) -> Backend {
    Backend::Origin(behavior)
}

/// A `200` head with `count` headers of `size` bytes of value each, and an empty body.
fn head_with(count: usize, size: usize) -> Vec<u8> {
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..count {
        raw.extend_from_slice(format!("x-h{i}: ").as_bytes());
        raw.extend(std::iter::repeat_n(b'v', size));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"content-length: 0\r\n\r\n");
    raw
}

#[test]
fn tls_handshake_with_a_server_not_speaking_tls_is_502_retried_for_any_method() {
    // Two plain HTTP servers behind an upstream configured for TLS: each answers the ClientHello
    // as the bad request it is, which no TLS record parser takes.
    let plain = [(); 2].map(|_| {
        Origin::start(Behavior::AnswerFirstBytes(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
        ))
    });
    let proxy = Proxy::start(&one_upstream(
        &[plain[0].addr, plain[1].addr],
        "    tls: true\n    sni: origin.test\n",
        "    retry: { attempts: 2 }\n",
    ));
    let rid = "tls-protocol";
    let resp = client::send_one(
        proxy.addr,
        "POST",
        "/row",
        &[
            ("content-length", "0"),
            ("accept", "*/*"),
            ("x-request-id", rid),
        ],
    );
    assert_generated(&resp, 502, "Bad Gateway", "tls_protocol_error", rid, "*/*");
    let entry = access_entry(rid);
    assert_eq!(entry["status"], 502);
    assert_eq!(entry["source"], "proxy");
    assert_eq!(entry["failure"], "tls_protocol_error");
    // Nothing was sent, so even a POST went on to the other backend.
    let attempts = entry["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{entry}");
    assert_ne!(attempts[0]["backend"], attempts[1]["backend"], "{entry}");
    for attempt in attempts {
        assert_eq!(attempt["outcome"], "tls_protocol_error", "{entry}");
        assert_eq!(attempt["progress"], "not_sent", "{entry}");
    }
    for origin in &plain {
        assert_eq!(origin.connections(), 1, "one handshake each");
        assert_eq!(origin.requests(), 0, "no HTTP request reached a backend");
        let series = format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"tls_protocol_error\"}}",
            origin.addr
        );
        assert_eq!(proxy.metric(&series), 1, "{series}");
    }
}

#[test]
fn stalled_request_write_is_504() {
    let origin = Origin::start_no_read();
    let proxy = proxy_for(origin.addr, "write_idle: 300ms");
    let rid = "wstall";
    let body_len: usize = 64 * 1024 * 1024;
    let mut c = Client::connect(proxy.addr);
    let head = client::request(
        "POST",
        "/upload",
        "app.test",
        &[
            ("accept", "application/json"),
            ("x-request-id", rid),
            ("content-length", &body_len.to_string()),
        ],
    );
    c.send(&head);
    let mut writer = c.into_stream();
    let reader = writer.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'x'; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(20);
        for _ in 0..(body_len / chunk.len()) {
            if Instant::now() > deadline || writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut c = Client::from_stream(reader);
    let resp = c.read_response("POST");
    assert_generated(
        &resp,
        504,
        "Gateway Timeout",
        "connection_write_timeout",
        rid,
        "application/json",
    );
    let entry = access_entry(rid);
    assert_eq!(entry["failure"], "connection_write_timeout");
    assert_eq!(entry["attempts"][0]["progress"], "sent");
    drop(c);
    let _ = sender.join();
}

/// An origin error response passed through untouched: status, every header, the body.
fn expect_pass_through(status_line: &str, status: u16) {
    let body = format!("<h1>origin says {status}</h1>\n");
    let raw = format!(
        "HTTP/1.1 {status_line}\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Type: text/html\r\nX-Origin-Trace: abc123\r\nRetry-After: 7\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let origin = Origin::start(Behavior::Raw(raw.into_bytes()));
    let proxy = proxy_for(origin.addr, "");
    for (i, accept) in FORMATS.iter().enumerate() {
        let rid = format!("pass{status}-{i}");
        let resp = client::get(
            proxy.addr,
            "/p",
            &[("accept", accept), ("x-request-id", &rid)],
        );
        assert_eq!(resp.status, status);
        assert_eq!(resp.body, body.as_bytes(), "body byte for byte");
        assert!(resp.complete);
        assert_eq!(resp.header("content-type"), Some("text/html"));
        assert_eq!(resp.header("x-origin-trace"), Some("abc123"));
        assert_eq!(resp.header("retry-after"), Some("7"));
        // Pingora 0.9 rewrites `Date` on every HTTP/1 response it writes and offers no hook to
        // keep the origin's; every other header is the origin's own.
        assert!(resp.header("date").is_some());
        assert_eq!(
            resp.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(
            resp.header("proxy-status"),
            Some(format!("faultline; received-status={status}").as_str())
        );
        // Nothing else was added but the hop-by-hop connection header.
        for (name, _) in &resp.headers {
            assert!(
                [
                    "date",
                    "content-type",
                    "x-origin-trace",
                    "retry-after",
                    "content-length",
                    "proxy-status",
                    "connection"
                ]
                .contains(&name.as_str()),
                "unexpected header {name}"
            );
        }
        let entry = access_entry(&rid);
        assert_eq!(entry["status"], status);
        assert_eq!(entry["source"], "origin");
        assert_eq!(entry["failure"], serde_json::Value::Null);
        assert_eq!(entry["attempts"][0]["outcome"], "response");
        assert_eq!(entry["attempts"][0]["status"], status);
    }
    // The origin saw the request id.
    assert!(origin.heads().iter().any(|h| {
        h.to_ascii_lowercase()
            .contains(&format!("x-request-id: pass{status}-0"))
    }));
}

#[test]
fn origin_500_passes_through() {
    expect_pass_through("500 Internal Server Error", 500);
}

#[test]
fn origin_503_passes_through() {
    expect_pass_through("503 Service Unavailable", 503);
}

#[test]
fn origin_404_passes_through() {
    expect_pass_through("404 Not Found", 404);
}

/// A row of the failure table whose failure comes after the response header went downstream:
/// the status cannot change, so the client's stream is aborted after the bytes that came.
struct BodyRow {
    behavior: Behavior,
    timeouts: &'static str,
    /// The body bytes the client gets before the abort.
    body: Vec<u8>,
    kind: &'static str,
    /// Bounds on the time the request takes.
    took: Range<Duration>,
}

impl BodyRow {
    fn new(behavior: Behavior, body: &[u8], kind: &'static str) -> BodyRow {
        BodyRow {
            behavior,
            timeouts: "",
            body: body.to_vec(),
            kind,
            took: Duration::ZERO..Duration::MAX,
        }
    }
}

/// The driver of the body rows: a `200` whose body is cut after the row's bytes; the access
/// log says the origin answered and the attempt failed with the row's kind once the response
/// had started; the attempt counts once, under that kind and not as a response.
fn run_body(tag: &str, row: BodyRow) {
    let origin = Origin::start(row.behavior);
    let proxy = proxy_for(origin.addr, row.timeouts);
    let started = Instant::now();
    let resp = client::get(proxy.addr, "/b", &[("x-request-id", tag)]);
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "the status was already sent");
    assert!(
        !resp.complete,
        "the client must see an aborted body, got {} bytes",
        resp.body.len()
    );
    assert_eq!(resp.body, row.body);
    assert!(
        row.took.contains(&took),
        "{took:?} is outside {:?}",
        row.took
    );
    let entry = access_entry(tag);
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["failure"], row.kind);
    assert_eq!(entry["attempts"][0]["outcome"], row.kind);
    assert_eq!(entry["attempts"][0]["progress"], "response_started");
    let series = |outcome: &str| {
        format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"{outcome}\"}}",
            origin.addr
        )
    };
    assert_eq!(proxy.metric(&series(row.kind)), 1);
    // One outcome per attempt: the response header that came first is not counted as one.
    assert_eq!(proxy.metric(&series("response")), 0);
}

rows! { run_body;
    close_mid_body_aborts_the_client_stream:
        BodyRow::new(
            Behavior::WriteThenClose(head_then(b"Content-Length: 1000", &[b'z'; 100])),
            &[b'z'; 100], "http_response_incomplete",
        );
    close_mid_chunked_body_aborts_the_client_stream:
        BodyRow::new(
            Behavior::WriteThenClose(head_then(
                b"Transfer-Encoding: chunked", b"10\r\n0123456789abcdef\r\n",
            )),
            b"0123456789abcdef", "http_response_incomplete",
        );
    origin_stalling_mid_body_aborts_the_client_stream_after_the_read_timeout:
        BodyRow {
            timeouts: "response_header: 400ms",
            // The read timeout (the upstream's `response_header`) ends the wait for the rest.
            took: Duration::from_millis(400)..Duration::from_secs(3),
            ..BodyRow::new(
                Behavior::WriteThenHang(head_then(b"Content-Length: 1000", &[b's'; 100])),
                &[b's'; 100], "connection_read_timeout",
            )
        };
    a_broken_chunk_in_the_response_aborts_the_client_stream:
        BodyRow::new(
            Behavior::WriteThenHang(head_then(
                b"Transfer-Encoding: chunked", b"4\r\ngood\r\nzz\r\nbad\r\n0\r\n\r\n",
            )),
            b"good", "http_response_transfer_coding",
        );
}

/// A `200` head with one framing header, then these body bytes.
fn head_then(framing: &[u8], body: &[u8]) -> Vec<u8> {
    [b"HTTP/1.1 200 OK\r\n", framing, b"\r\n\r\n", body].concat()
}

#[test]
fn client_abort_is_499_and_not_an_upstream_failure() {
    let origin = Origin::start(Behavior::Hang);
    let proxy = proxy_for(origin.addr, "response_header: 10s");
    let mut c = Client::connect(proxy.addr);
    c.send(&client::request(
        "GET",
        "/slow",
        "app.test",
        &[("x-request-id", "abort")],
    ));
    // Readiness: the origin has the request.
    origin.wait_for_requests(1);
    let started = Instant::now();
    drop(c);
    let entry = access_entry("abort");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "abort noticed before the upstream timeout"
    );
    assert_eq!(entry["status"], 499);
    assert_eq!(entry["source"], "client");
    assert_eq!(entry["failure"], "client_aborted");
    // The one attempt ended with the client's abort, not with a failure of the backend's.
    let attempts = entry["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{entry}");
    assert_eq!(attempts[0]["outcome"], "client_aborted", "{entry}");
    assert_eq!(attempts[0]["progress"], "sent", "{entry}");
}

#[test]
fn http2_stream_cancelled_by_the_client_is_499_and_not_an_upstream_failure() {
    let pki = crate::tls::Pki::new("h2cancel");
    let origin = Origin::start(Behavior::Hang);
    let proxy = crate::tls::tls_proxy(
        &pki,
        &one_upstream(
            &[origin.addr],
            "    timeouts: { response_header: 10s }\n",
            "",
        ),
    );
    let requests = |status: &str, source: &str| {
        let series = format!(
            "faultline_requests_total{{route=\"main\",status=\"{status}\",source=\"{source}\"}}"
        );
        find_metric(&proxy.metrics(), &series).unwrap_or(0)
    };
    // Only outcomes that happened are exported; `client_aborted` must be, under this spelling.
    let attempts = |outcome: &str| {
        let series = format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"{outcome}\"}}",
            origin.addr
        );
        find_metric(&proxy.metrics(), &series).unwrap_or(0)
    };
    let aborts = "faultline_client_aborts_total{route=\"main\"}";
    let before = (proxy.metric(aborts), requests("499", "client"));
    let connector = crate::tls::connector(&pki, b"h2");
    let started = runtime().block_on(async {
        let tls = crate::tls::tls_connect(&connector, proxy.addr)
            .await
            .expect("handshake");
        let mut send = crate::tls::h2_client(tls).await;
        let req = http::Request::get("https://localhost/slow")
            .header("x-request-id", "h2cancel")
            .body(())
            .expect("request");
        let (_resp, mut stream) = send.send_request(req, true).expect("send");
        // Readiness: the origin has the request. (Blocking here holds only the test's thread;
        // the connection and the origin run on the runtime's workers.)
        origin.wait_for_requests(1);
        let started = Instant::now();
        stream.send_reset(h2::Reason::CANCEL);
        // The connection stays open while the proxy notices.
        let entry = access_entry("h2cancel");
        drop(send);
        (started, entry)
    });
    let (started, entry) = started;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the cancel was noticed before the upstream timeout"
    );
    assert_eq!(entry["status"], 499, "{entry}");
    assert_eq!(entry["source"], "client", "{entry}");
    assert_eq!(entry["failure"], "client_aborted", "{entry}");
    let attempt = &entry["attempts"][0];
    assert_eq!(attempt["outcome"], "client_aborted", "{entry}");
    assert_eq!(attempt["progress"], "sent", "{entry}");
    // Counted once as the client's abort, never as a request error or the backend's failure.
    assert_eq!(proxy.metric(aborts), before.0 + 1);
    assert_eq!(requests("499", "client"), before.1 + 1);
    assert_eq!(requests("400", "proxy"), 0);
    assert_eq!(attempts("client_aborted"), 1);
    assert_eq!(attempts("http_request_error"), 0);
    let backend = backend_status(&status_now(&proxy), origin.addr);
    assert_eq!(backend["consecutive_failures"], 0, "{backend}");
    assert_eq!(backend["state"], "healthy", "{backend}");
    assert_eq!(origin.requests(), 1, "the request was not repeated");
}

#[test]
fn head_error_has_no_body() {
    let proxy = proxy_for(refused_addr(), "");
    let resp = client::send_one(
        proxy.addr,
        "HEAD",
        "/h",
        &[("accept", "text/html"), ("x-request-id", "head1")],
    );
    assert_eq!(resp.status, 502);
    // The client reads whatever follows the header: nothing may.
    assert!(resp.body.is_empty(), "a body after HEAD: {:?}", resp.text());
    // The header is the one a GET would get, its length included.
    assert!(resp.header("content-length").is_some_and(|l| l != "0"));
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("x-request-id"), Some("head1"));
}

#[test]
fn request_ids_are_generated_when_missing_or_malformed() {
    let proxy = proxy_for(refused_addr(), "");
    for incoming in [None, Some("bad id with spaces"), Some("<script>")] {
        let extra: Vec<(&str, &str)> = incoming.iter().map(|v| ("x-request-id", *v)).collect();
        let resp = client::get(proxy.addr, "/", &extra);
        let id = resp.header("x-request-id").expect("an id").to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(resp.text().contains(&id));
        assert_eq!(access_entry(&id)["status"], 502);
    }
}
