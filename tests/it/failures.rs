//! One test per row of the failure table (DESIGN §1): what the client sees, in every body format,
//! and what the access log records.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{self, Client, Response};
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Blackhole, Origin, refused_addr};

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

/// Sends one request per body format and checks the response and the access-log entry.
fn expect_failure(proxy: &Proxy, method: &str, status: u16, reason: &str, kind: &str, tag: &str) {
    for (i, accept) in FORMATS.iter().enumerate() {
        let rid = format!("{tag}-{i}");
        let resp = client::send_one(
            proxy.addr,
            method,
            "/row",
            &[("accept", accept), ("x-request-id", &rid)],
        );
        assert_generated(&resp, status, reason, kind, &rid, accept);
        let entry = access_entry(&rid);
        assert_eq!(entry["status"], status);
        assert_eq!(entry["source"], "proxy");
        assert_eq!(entry["failure"], kind);
        assert_eq!(entry["route"], "main");
        assert_eq!(entry["upstream"], "app");
        let attempts = entry["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{entry}");
        assert_eq!(attempts[0]["outcome"], kind);
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

#[test]
fn refused_connection_is_502() {
    let proxy = proxy_for(refused_addr(), "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "connection_refused",
        "refused",
    );
    let entry = access_entry("refused-0");
    assert_eq!(entry["attempts"][0]["progress"], "not_sent");
    // Pingora 0.9 cannot keep the client connection after an upstream attempt failed: the page
    // says so with `Connection: close`, and the connection really closes.
    let mut c = Client::connect(proxy.addr);
    c.send(&client::request("GET", "/", "app.test", &[]));
    let resp = c.read_response("GET");
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn connect_timeout_is_504() {
    let hole = Blackhole::start();
    let proxy = proxy_for(hole.addr, "connect: 200ms");
    let started = Instant::now();
    expect_failure(
        &proxy,
        "GET",
        504,
        "Gateway Timeout",
        "connection_timeout",
        "ctimeout",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "three connect timeouts of 200ms"
    );
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
fn reset_before_any_byte_is_502() {
    let origin = Origin::start(Behavior::Reset);
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "connection_terminated",
        "reset",
    );
    assert_eq!(origin.requests(), 3, "each request reached the origin once");
}

#[test]
fn close_before_any_byte_is_502() {
    let origin = Origin::start(Behavior::Close);
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "connection_terminated",
        "close",
    );
}

#[test]
fn close_after_partial_header_is_502() {
    let origin = Origin::start(Behavior::WriteThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec(),
    ));
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "http_response_incomplete",
        "partial",
    );
}

#[test]
fn garbage_status_line_is_502() {
    let origin = Origin::start(Behavior::Raw(b"THIS IS NOT HTTP AT ALL\r\n\r\n".to_vec()));
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "http_protocol_error",
        "garbage",
    );
}

#[test]
fn malformed_content_length_is_502() {
    let origin = Origin::start(Behavior::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
    ));
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "http_protocol_error",
        "badcl",
    );
}

#[test]
fn too_many_response_headers_is_502() {
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..300 {
        raw.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"content-length: 0\r\n\r\n");
    let origin = Origin::start(Behavior::Raw(raw));
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "http_response_header_section_size",
        "manyhdr",
    );
}

#[test]
fn oversized_response_header_section_is_502() {
    let mut raw = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 1_200_000));
    raw.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let origin = Origin::start(Behavior::WriteThenClose(raw));
    let proxy = proxy_for(origin.addr, "");
    expect_failure(
        &proxy,
        "GET",
        502,
        "Bad Gateway",
        "http_response_header_section_size",
        "bighdr",
    );
}

#[test]
fn no_response_header_in_time_is_504() {
    let origin = Origin::start(Behavior::Hang);
    let proxy = proxy_for(origin.addr, "response_header: 300ms");
    let started = Instant::now();
    expect_failure(
        &proxy,
        "GET",
        504,
        "Gateway Timeout",
        "http_response_timeout",
        "hang",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "three waits of 300ms"
    );
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

#[test]
fn close_mid_body_aborts_the_client_stream() {
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'z', 100));
    let origin = Origin::start(Behavior::WriteThenClose(raw));
    let proxy = proxy_for(origin.addr, "");
    let resp = client::get(proxy.addr, "/b", &[("x-request-id", "midbody")]);
    assert_eq!(resp.status, 200, "the status was already sent");
    assert!(
        !resp.complete,
        "client must see an aborted body, got {} bytes",
        resp.body.len()
    );
    assert_eq!(resp.body.len(), 100);
    let entry = access_entry("midbody");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["failure"], "http_response_incomplete");
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["attempts"][0]["outcome"], "http_response_incomplete");
    assert_eq!(entry["attempts"][0]["progress"], "response_started");
}

#[test]
fn close_mid_chunked_body_aborts_the_client_stream() {
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n".to_vec();
    let origin = Origin::start(Behavior::WriteThenClose(raw));
    let proxy = proxy_for(origin.addr, "");
    let resp = client::get(proxy.addr, "/c", &[("x-request-id", "midchunk")]);
    assert_eq!(resp.status, 200);
    assert!(!resp.complete, "no terminating chunk may reach the client");
    assert_eq!(resp.body, b"0123456789abcdef");
    let entry = access_entry("midchunk");
    assert_eq!(entry["failure"], "http_response_incomplete");
}

#[test]
fn origin_stalling_mid_body_aborts_the_client_stream_after_the_read_timeout() {
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b's', 100));
    let origin = Origin::start(Behavior::WriteThenHang(raw));
    let proxy = proxy_for(origin.addr, "response_header: 400ms");
    let started = Instant::now();
    let resp = client::get(proxy.addr, "/s", &[("x-request-id", "midstall")]);
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "the status was already sent");
    assert!(!resp.complete, "the client must see an aborted body");
    assert_eq!(resp.body, vec![b's'; 100]);
    // The read timeout (the upstream's `response_header`) ends the wait for the rest.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let entry = access_entry("midstall");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["failure"], "connection_read_timeout");
    assert_eq!(entry["attempts"][0]["outcome"], "connection_read_timeout");
    assert_eq!(entry["attempts"][0]["progress"], "response_started");
    assert_eq!(
        proxy.metric(&format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"connection_read_timeout\"}}",
            origin.addr
        )),
        1
    );
    // One outcome per attempt: the response header that came first is not counted as one.
    assert_eq!(
        proxy.metric(&format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"response\"}}",
            origin.addr
        )),
        0
    );
}

#[test]
fn a_broken_chunk_in_the_response_aborts_the_client_stream() {
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngood\r\nzz\r\nbad\r\n0\r\n\r\n"
            .to_vec();
    let origin = Origin::start(Behavior::WriteThenHang(raw));
    let proxy = proxy_for(origin.addr, "");
    let resp = client::get(proxy.addr, "/t", &[("x-request-id", "badchunk")]);
    assert_eq!(resp.status, 200, "the status was already sent");
    assert!(!resp.complete, "no terminating chunk may reach the client");
    assert_eq!(resp.body, b"good");
    let entry = access_entry("badchunk");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["failure"], "http_response_transfer_coding");
    assert_eq!(
        entry["attempts"][0]["outcome"],
        "http_response_transfer_coding"
    );
    assert_eq!(entry["attempts"][0]["progress"], "response_started");
    assert_eq!(
        proxy.metric(&format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"http_response_transfer_coding\"}}",
            origin.addr
        )),
        1
    );
    // One outcome per attempt: the response header that came first is not counted as one.
    assert_eq!(
        proxy.metric(&format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"response\"}}",
            origin.addr
        )),
        0
    );
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the origin"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
