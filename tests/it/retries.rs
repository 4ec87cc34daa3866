//! Failover between backends as far as the failure kinds make it safe: a request that never
//! reached a backend goes to another; one that may have been processed goes again only when
//! it is idempotent.

use crate::client;
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Blackhole, Origin, refused_addr};

/// A pool of a backend that never answers and a healthy one, with this response-header timeout
/// (milliseconds) and these extra route lines.
fn hanging_and_good(timeout_ms: u64, route: &str) -> (Origin, Origin, Proxy) {
    let hang = Origin::start(Behavior::Hang);
    let good = Origin::start(Behavior::named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[hang.addr, good.addr],
        &format!("    timeouts: {{ response_header: {timeout_ms}ms }}\n"),
        route,
    ));
    (hang, good, proxy)
}

/// The outcomes of every attempt of a request, from the access log.
fn outcomes(rid: &str) -> Vec<String> {
    access_entry(rid)["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn refused_backend_is_failed_over_for_every_method() {
    let good = Origin::start(Behavior::named("good"));
    let dead = refused_addr();
    let proxy = Proxy::start(&one_upstream(&[dead, good.addr], "", ""));
    let mut failed_over = 0;
    for i in 0..10 {
        for method in ["GET", "POST"] {
            let rid = format!("fo-{method}-{i}");
            let resp = client::send_one(
                proxy.addr,
                method,
                "/",
                &[("x-request-id", &rid), ("content-length", "0")],
            );
            assert_eq!(resp.status, 200, "{rid}");
            assert_eq!(resp.text(), "origin good");
            match outcomes(&rid).as_slice() {
                [one] => assert_eq!(one, "response"),
                [first, second] => {
                    assert_eq!(
                        (first.as_str(), second.as_str()),
                        ("connection_refused", "response")
                    );
                    failed_over += 1;
                }
                other => panic!("{rid}: {other:?}"),
            }
        }
    }
    assert_eq!(good.requests(), 20);
    assert!(
        failed_over > 0,
        "round robin never picked the dead backend first"
    );
}

#[test]
fn post_to_a_hanging_backend_is_not_sent_twice() {
    let (hang, good, proxy) = hanging_and_good(300, "");
    let mut timed_out = 0;
    for i in 0..4 {
        let rid = format!("post-hang-{i}");
        let (hang_before, good_before) = (hang.requests(), good.requests());
        let resp = client::send_one(
            proxy.addr,
            "POST",
            "/",
            &[("x-request-id", &rid), ("content-length", "0")],
        );
        match resp.status {
            504 => {
                timed_out += 1;
                assert_eq!(hang.requests(), hang_before + 1);
                assert_eq!(
                    good.requests(),
                    good_before,
                    "a POST that may have been processed must not be repeated"
                );
                assert_eq!(outcomes(&rid), ["http_response_timeout"]);
            }
            200 => {
                assert_eq!(hang.requests(), hang_before);
                assert_eq!(outcomes(&rid), ["response"]);
            }
            other => panic!("{rid}: status {other}"),
        }
    }
    assert!(
        timed_out > 0,
        "round robin never picked the hanging backend"
    );
}

#[test]
fn get_to_a_hanging_backend_fails_over() {
    let (hang, good, proxy) = hanging_and_good(300, "");
    for i in 0..4 {
        let rid = format!("get-hang-{i}");
        let resp = client::get(proxy.addr, "/", &[("x-request-id", &rid)]);
        assert_eq!(resp.status, 200);
        let o = outcomes(&rid);
        assert!(
            o == ["response"] || o == ["http_response_timeout", "response"],
            "{o:?}"
        );
    }
    assert!(
        hang.requests() > 0,
        "round robin never picked the hanging backend"
    );
    assert_eq!(good.requests(), 4);
}

#[test]
fn attempts_one_means_no_retry() {
    let good = Origin::start(Behavior::named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[refused_addr(), good.addr],
        "",
        "    retry: { attempts: 1 }\n",
    ));
    let statuses: Vec<u16> = (0..6)
        .map(|_| client::get(proxy.addr, "/", &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(good.requests(), 3);
}

fn ok_response(tag: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{tag}",
        tag.len()
    )
    .into_bytes()
}

const ORIGIN_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nX-Origin: busy\r\nContent-Length: 9\r\n\r\ntoo busy\n";

#[test]
fn three_backends_one_refusing_every_request_succeeds() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let dead = refused_addr();
    let proxy = Proxy::start(&one_upstream(&[a.addr, dead, b.addr], "", ""));
    for i in 0..100 {
        for method in ["GET", "POST"] {
            let rid = format!("three-{method}-{i}");
            let resp = client::send_one(
                proxy.addr,
                method,
                "/",
                &[("content-length", "0"), ("x-request-id", &rid)],
            );
            assert_eq!(resp.status, 200, "{method} #{i}");
            // Request counters move when the request is logged, just after the response.
            access_entry(&rid);
        }
    }
    assert_eq!(a.requests() + b.requests(), 200);
    let m = proxy.metrics();
    let refused = crate::harness::metric_value(
        &m,
        &format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{dead}\",outcome=\"connection_refused\"}}"
        ),
    );
    assert!(refused > 0, "the dead backend was never tried");
    assert_eq!(
        crate::harness::metric_value(
            &m,
            "faultline_retries_total{route=\"main\",reason=\"connection_refused\"}"
        ),
        refused,
        "every refused attempt was failed over"
    );
    assert_eq!(
        crate::harness::metric_value(
            &m,
            "faultline_requests_total{route=\"main\",status=\"200\",source=\"origin\"}"
        ),
        200
    );
}

#[test]
fn post_with_idempotency_key_is_retried_when_the_route_allows() {
    let (hang, good, proxy) =
        hanging_and_good(300, "    retry: { attempts: 3, idempotency_key: true }\n");
    for i in 0..4 {
        let rid = format!("idem-{i}");
        let resp = client::send_one(
            proxy.addr,
            "POST",
            "/",
            &[
                ("x-request-id", &rid),
                ("idempotency-key", &rid),
                ("content-length", "0"),
            ],
        );
        assert_eq!(resp.status, 200, "{rid}");
        let o = outcomes(&rid);
        assert!(
            o == ["response"] || o == ["http_response_timeout", "response"],
            "{o:?}"
        );
    }
    assert!(hang.requests() > 0);
    assert_eq!(good.requests(), 4);
}

#[test]
fn hanging_backend_fails_over_within_the_timeout() {
    let (hang, _good, proxy) = hanging_and_good(500, "");
    for _ in 0..4 {
        let started = std::time::Instant::now();
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
        // One timeout, then the healthy backend; a second full wait would mean no failover.
        assert!(
            started.elapsed() < std::time::Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(hang.requests() > 0);
}

#[test]
fn status_503_then_200_gives_200() {
    let origin = Origin::start(Behavior::Cycle(vec![
        Behavior::Raw(ORIGIN_503.to_vec()),
        Behavior::Raw(ok_response("second try")),
    ]));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    retry: { attempts: 3, on_status: [503] }\n",
    ));
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "s503")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "second try");
    assert_eq!(origin.requests(), 2);
    assert_eq!(outcomes("s503"), ["response", "response"]);
    let entry = access_entry("s503");
    assert_eq!(entry["attempts"][0]["status"], 503);
    assert_eq!(entry["attempts"][1]["status"], 200);
    assert_eq!(
        proxy.metric("faultline_retries_total{route=\"main\",reason=\"status\"}"),
        1
    );
}

#[test]
fn status_retries_exhausted_give_the_last_origin_response() {
    let a = Origin::start(Behavior::Raw(ORIGIN_503.to_vec()));
    let b = Origin::start(Behavior::Raw(ORIGIN_503.to_vec()));
    let proxy = Proxy::start(&one_upstream(
        &[a.addr, b.addr],
        "",
        "    retry: { attempts: 3, on_status: [503] }\n",
    ));
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "text/html"), ("x-request-id", "all503")],
    );
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body, b"too busy\n", "the origin's body, byte for byte");
    assert_eq!(resp.header("x-origin"), Some("busy"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(
        resp.header("proxy-status"),
        Some("faultline; received-status=503")
    );
    assert_eq!(a.requests() + b.requests(), 3);
    assert!(
        a.requests() >= 1 && b.requests() >= 1,
        "both backends were tried"
    );
    let entry = access_entry("all503");
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["attempts"].as_array().map(Vec::len), Some(3));
}

#[test]
fn status_retries_never_repeat_a_post() {
    let origin = Origin::start(Behavior::Cycle(vec![
        Behavior::Raw(ORIGIN_503.to_vec()),
        Behavior::Raw(ok_response("second")),
    ]));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    retry: { attempts: 3, on_status: [503] }\n",
    ));
    let resp = client::send_one(proxy.addr, "POST", "/", &[("content-length", "0")]);
    assert_eq!(resp.status, 503);
    assert_eq!(origin.requests(), 1);
}

/// An origin that answers 503 with `Retry-After: seconds`, then 200 with `then`, behind a route
/// that retries 503.
fn busy_then_ok(seconds: u64, then: &str) -> (Origin, Proxy) {
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {seconds}\r\nContent-Length: 4\r\n\r\nbusy"
    );
    let origin = Origin::start(Behavior::Cycle(vec![
        Behavior::Raw(busy.into_bytes()),
        Behavior::Raw(ok_response(then)),
    ]));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    retry: { attempts: 3, on_status: [503] }\n",
    ));
    (origin, proxy)
}

#[test]
fn long_retry_after_is_not_waited_for() {
    let (origin, proxy) = busy_then_ok(120, "second");
    let resp = client::get(proxy.addr, "/", &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("120"));
    assert_eq!(origin.requests(), 1);
}

#[test]
fn a_short_retry_after_is_waited_for_then_retried() {
    let (origin, proxy) = busy_then_ok(1, "after the pause");
    let started = std::time::Instant::now();
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "ra1")]);
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "after the pause");
    assert_eq!(origin.requests(), 2);
    // The origin asked for a second; the jittered backoff alone is far shorter.
    assert!(
        took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(outcomes("ra1"), ["response", "response"]);
}

#[test]
fn a_post_reset_after_it_was_sent_is_never_delivered_twice() {
    let a = Origin::start(Behavior::Reset);
    let b = Origin::start(Behavior::Reset);
    let proxy = Proxy::start(&one_upstream(
        &[a.addr, b.addr],
        "",
        "    retry: { attempts: 3 }\n",
    ));
    // A GET reset after it was sent is tried again, on the other backend (a failed backend is
    // not tried twice): retries are on.
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "reset-get")]);
    assert_eq!(resp.status, 502);
    assert_eq!((a.requests(), b.requests()), (1, 1), "one attempt on each");
    let after_get = 2;
    // A POST may have been processed before the reset: it is never sent again.
    let mut post = client::request(
        "POST",
        "/",
        "app.test",
        &[("x-request-id", "reset-post"), ("content-length", "5")],
    );
    post.extend_from_slice(b"hello");
    let mut c = client::Client::connect(proxy.addr);
    c.send(&post);
    let resp = c.read_response("POST");
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("proxy-status"),
        Some(
            format!(
                "faultline; error=connection_terminated; details=\"{}\"",
                faultline::FailureKind::ConnectionTerminated.detail()
            )
            .as_str()
        )
    );
    assert_eq!(
        a.requests() + b.requests(),
        after_get + 1,
        "the POST reached a backend once"
    );
    assert_eq!(outcomes("reset-post"), ["connection_terminated"]);
    assert_eq!(
        access_entry("reset-post")["attempts"][0]["progress"],
        "sent"
    );
}

#[test]
fn body_larger_than_the_replay_buffer_is_not_retried_once_sent() {
    let (_hang, good, proxy) =
        hanging_and_good(300, "    retry: { attempts: 3, idempotency_key: true }\n");
    let body = vec![b'b'; 200 * 1024];
    let mut timed_out = 0;
    for i in 0..4 {
        let rid = format!("bigbody-{i}");
        let good_before = good.requests();
        let mut c = crate::client::Client::connect(proxy.addr);
        let len = body.len().to_string();
        c.send(&client::request(
            "PUT",
            "/upload",
            "app.test",
            &[
                ("x-request-id", &rid),
                ("idempotency-key", &rid),
                ("content-length", &len),
            ],
        ));
        c.send(&body);
        let resp = c.read_response("PUT");
        if resp.status == 504 {
            timed_out += 1;
            assert_eq!(
                good.requests(),
                good_before,
                "a body past the replay buffer was sent twice"
            );
            assert_eq!(outcomes(&rid), ["http_response_timeout"]);
        } else {
            assert_eq!(resp.status, 200);
        }
    }
    assert!(
        timed_out > 0,
        "round robin never picked the hanging backend"
    );
}

#[test]
fn no_backend_is_tried_twice_while_another_is_untried() {
    let origins: Vec<Origin> = (0..3).map(|_| Origin::start(Behavior::Reset)).collect();
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let proxy = Proxy::start(&one_upstream(&addrs, "", "    retry: { attempts: 3 }\n"));
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "distinct")]);
    assert_eq!(resp.status, 502);
    for o in &origins {
        assert_eq!(o.requests(), 1, "each backend exactly once");
    }
    let entry = access_entry("distinct");
    let mut backends: Vec<_> = entry["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["backend"].as_str().unwrap_or("").to_string())
        .collect();
    backends.sort();
    backends.dedup();
    assert_eq!(backends.len(), 3);
}

#[test]
fn retries_stay_within_the_budget() {
    let a = Origin::start(Behavior::Reset);
    let b = Origin::start(Behavior::Reset);
    let proxy = Proxy::start(&one_upstream(
        &[a.addr, b.addr],
        "",
        "    retry: { attempts: 2, budget_percent: 20 }\n",
    ));
    // 160 requests within the ten-second window, all failing on both backends: without a budget,
    // 160 retries; with it, the floor of 100 (20% of 160 is less). They take well under a second;
    // the window sliding past the first of them would allow more retries, so that is checked.
    let started = std::time::Instant::now();
    for _ in 0..160 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 502);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the requests took {:?}: the budget window is 10 s",
        started.elapsed()
    );
    let total = a.requests() + b.requests();
    let retries = total - 160;
    assert_eq!(retries, 100, "{retries} retries");
    let m = proxy.metrics();
    assert_eq!(
        crate::harness::metric_value(
            &m,
            "faultline_retries_total{route=\"main\",reason=\"connection_terminated\"}"
        ),
        retries as u64
    );
    assert_eq!(
        crate::harness::metric_value(
            &m,
            "faultline_retry_budget_exhausted_total{upstream=\"app\"}"
        ),
        160 - retries as u64
    );
}

#[test]
fn the_deadline_caps_all_attempts() {
    let origins: Vec<Origin> = (0..3).map(|_| Origin::start(Behavior::Hang)).collect();
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let proxy = Proxy::start(&one_upstream(
        &addrs,
        "    timeouts: { response_header: 2s }\n",
        "    deadline: 1s\n    retry: { attempts: 3 }\n",
    ));
    let started = std::time::Instant::now();
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "deadline")]);
    let took = started.elapsed();
    assert_eq!(resp.status, 504);
    assert!(
        resp.header("proxy-status")
            .is_some_and(|v| v.starts_with("faultline; error=http_response_timeout;")),
        "{:?}",
        resp.header("proxy-status")
    );
    // Without the deadline: three waits of 2s.
    assert!(took < std::time::Duration::from_millis(1900), "{took:?}");
    assert!(took >= std::time::Duration::from_millis(950), "{took:?}");
    assert_eq!(access_entry("deadline")["failure"], "http_response_timeout");
}

/// One row of DESIGN §1's retry column: a backend that fails this way, and whether the request
/// goes to another backend afterwards, for a GET and for a POST.
struct RetryRow {
    kind: &'static str,
    backend: std::net::SocketAddr,
    timeouts: &'static str,
    get_retried: bool,
    post_retried: bool,
}

#[test]
fn the_retry_column_of_the_failure_table_row_by_row() {
    let mut big_header = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..300 {
        big_header.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    big_header.extend_from_slice(b"content-length: 0\r\n\r\n");
    let hole = Blackhole::start();
    let origins = [
        Origin::start(Behavior::Reset),
        Origin::start(Behavior::WriteThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec(),
        )),
        Origin::start(Behavior::Raw(b"NOT HTTP\r\n\r\n".to_vec())),
        Origin::start(Behavior::Raw(big_header)),
        Origin::start(Behavior::Hang),
    ];
    let row = |kind, backend, get_retried, post_retried| RetryRow {
        kind,
        backend,
        timeouts: "connect: 300ms, response_header: 300ms",
        get_retried,
        post_retried,
    };
    let rows = [
        row("connection_refused", refused_addr(), true, true),
        row("connection_timeout", hole.addr, true, true),
        row("connection_terminated", origins[0].addr, true, false),
        row("http_response_incomplete", origins[1].addr, true, false),
        row("http_protocol_error", origins[2].addr, true, false),
        row(
            "http_response_header_section_size",
            origins[3].addr,
            false,
            false,
        ),
        row("http_response_timeout", origins[4].addr, true, false),
    ];
    for r in &rows {
        let good = Origin::start(Behavior::named("good"));
        let proxy = Proxy::start(&one_upstream(
            &[r.backend, good.addr],
            &format!("    timeouts: {{ {} }}\n", r.timeouts),
            "    retry: { attempts: 2 }\n",
        ));
        for (method, retried) in [("GET", r.get_retried), ("POST", r.post_retried)] {
            // Round robin: within two requests one goes to the failing backend first.
            let mut seen = false;
            for i in 0..2 {
                let rid = format!("row-{}-{method}-{i}", r.kind);
                let resp = client::send_one(
                    proxy.addr,
                    method,
                    "/",
                    &[("x-request-id", &rid), ("content-length", "0")],
                );
                let entry = access_entry(&rid);
                if entry["attempts"][0]["backend"] != r.backend.to_string().as_str() {
                    assert_eq!(resp.status, 200, "{entry}");
                    continue;
                }
                seen = true;
                let outcomes = outcomes(&rid);
                if retried {
                    assert_eq!(resp.status, 200, "{} {method}: {entry}", r.kind);
                    assert_eq!(outcomes, [r.kind, "response"], "{method}");
                } else {
                    assert_ne!(resp.status, 200, "{} {method}: {entry}", r.kind);
                    assert_eq!(outcomes, [r.kind], "{method}");
                }
            }
            assert!(
                seen,
                "{} {method}: never sent to the failing backend",
                r.kind
            );
        }
    }
}
