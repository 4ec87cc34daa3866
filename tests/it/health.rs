//! Per-backend health: passive ejection with half-open probes, the ejection cap, active checks,
//! what counts as a failure, and what `/metrics`, `/status` and the access log say about it.

use std::time::Duration;

use crate::client;
use crate::harness::{
    Proxy, access_entry, all_access_entries, backend_status, metric_value, one_upstream,
    status_now, wait_for_status,
};
use crate::origin::{Behavior, Origin, refused_addr};

fn passive(consecutive: u32, base: &str, percent: u8, statuses: &str) -> String {
    format!(
        "    health:\n      passive: {{ consecutive_failures: {consecutive}, base_ejection: {base}, max_ejection: 10s, max_ejected_percent: {percent}, failure_statuses: [{statuses}] }}\n"
    )
}

#[test]
fn failing_backend_is_ejected_then_probed_then_ejected_for_longer() {
    let bad = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[bad.addr, good.addr],
        &passive(3, "1500ms", 50, ""),
        "",
    ));
    // Every request succeeds (failover) while the bad backend collects its three failures.
    for _ in 0..20 {
        if bad.requests() == 3 {
            break;
        }
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    assert_eq!(bad.requests(), 3);
    let status = wait_for_status(&proxy, "ejection", |s| {
        backend_status(s, bad.addr)["state"] == "ejected"
    });
    let first = backend_status(&status, bad.addr);
    assert_eq!(first["ejections"], 1);
    assert_eq!(first["up"], false);
    let first_ms = first["ejected_for_ms"].as_u64().expect("ms");
    assert!(first_ms <= 1650, "1500ms plus at most a tenth: {first_ms}");

    // Ejected: it receives nothing at all.
    let connections = bad.connections();
    for _ in 0..10 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    assert_eq!(bad.requests(), 3);
    assert_eq!(bad.connections(), connections);

    // When the ejection ends, exactly one probe goes through; it fails, and the next ejection
    // is longer (base × 2 = 3 s).
    wait_for_status(&proxy, "half-open", |s| {
        backend_status(s, bad.addr)["state"] == "half_open"
    });
    for _ in 0..10 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    assert_eq!(bad.requests(), 4, "one probe");
    let second = backend_status(
        &wait_for_status(&proxy, "second ejection", |s| {
            backend_status(s, bad.addr)["ejections"] == 2
        }),
        bad.addr,
    );
    assert_eq!(second["state"], "ejected");
    assert_eq!(second["ejections"], 2);
    assert!(
        second["ejected_for_ms"].as_u64().expect("ms") > 2000,
        "{second}"
    );

    let m = proxy.metrics();
    let labels = format!("upstream=\"app\",backend=\"{}\"", bad.addr);
    for (reason, n) in [
        ("consecutive_failures", 1),
        ("probe_failed", 1),
        ("failure_rate", 0),
    ] {
        let series = format!("faultline_backend_ejections_total{{{labels},reason=\"{reason}\"}}");
        assert_eq!(metric_value(&m, &series), n, "{series}");
    }
    assert_eq!(
        metric_value(&m, &format!("faultline_backend_up{{{labels}}}")),
        0
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "faultline_upstream_attempts_total{{{labels},outcome=\"connection_terminated\"}}"
            )
        ),
        4
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "faultline_backend_up{{upstream=\"app\",backend=\"{}\"}}",
                good.addr
            )
        ),
        1
    );
}

#[test]
fn a_successful_probe_brings_the_backend_back() {
    let flaky = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[flaky.addr, good.addr],
        &passive(2, "300ms", 50, ""),
        "",
    ));
    for _ in 0..20 {
        if flaky.requests() == 2 {
            break;
        }
        client::get(proxy.addr, "/", &[]);
    }
    wait_for_status(&proxy, "ejection", |s| {
        backend_status(s, flaky.addr)["state"] == "ejected"
    });
    flaky.set(Behavior::named("flaky"));
    wait_for_status(&proxy, "half-open", |s| {
        backend_status(s, flaky.addr)["state"] == "half_open"
    });
    let mut probed = false;
    for i in 0..10 {
        let rid = format!("probe-{i}");
        let resp = client::get(proxy.addr, "/", &[("x-request-id", &rid)]);
        assert_eq!(resp.status, 200);
        if resp.text() == "origin flaky" {
            probed = true;
            assert_eq!(access_entry(&rid)["attempts"][0]["probe"], true);
            break;
        }
    }
    assert!(probed, "the probe never reached the recovered backend");
    let s = backend_status(
        &wait_for_status(&proxy, "healthy", |s| {
            backend_status(s, flaky.addr)["state"] == "healthy"
        }),
        flaky.addr,
    );
    assert_eq!(s["state"], "healthy");
    assert_eq!(s["up"], true);
}

#[test]
fn the_ejection_cap_holds_when_every_backend_fails() {
    let a = Origin::start(Behavior::Reset);
    let b = Origin::start(Behavior::Reset);
    let proxy = Proxy::start(&one_upstream(
        &[a.addr, b.addr],
        &passive(2, "10s", 50, ""),
        "",
    ));
    for _ in 0..20 {
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(resp.status, 502, "the pool is never emptied: no 503");
    }
    let status = status_now(&proxy);
    let states: Vec<_> = [a.addr, b.addr]
        .iter()
        .map(|x| backend_status(&status, *x)["state"].clone())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "ejected").count(),
        1,
        "{states:?}"
    );
}

#[test]
fn an_empty_pool_answers_503_with_retry_after() {
    let a = Origin::start(Behavior::Reset);
    let proxy = Proxy::start(&one_upstream(&[a.addr], &passive(1, "5s", 100, ""), ""));
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 502);
    let mut c = client::Client::connect(proxy.addr);
    c.send(&client::request(
        "GET",
        "/",
        "app.test",
        &[("accept", "application/json"), ("x-request-id", "empty")],
    ));
    let resp = c.read_response("GET");
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.header("proxy-status"),
        Some(
            "faultline; error=destination_unavailable; details=\"no upstream server is available right now\""
        )
    );
    let after: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (4..=6).contains(&after),
        "the ejection ends in about 5s: {after}"
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["proxy_status"], "destination_unavailable");
    assert_eq!(a.requests(), 1);
    // Decided before any upstream was chosen: the connection stays open.
    c.send(&client::request("GET", "/", "app.test", &[]));
    assert_eq!(c.read_response("GET").status, 503);
    let entry = access_entry("empty");
    assert_eq!(entry["failure"], "destination_unavailable");
    assert_eq!(entry["attempts"].as_array().map(Vec::len), Some(0));
}

#[test]
fn origin_503_counts_only_when_listed() {
    let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec();
    for (listed, expect_ejection) in [("503", true), ("", false)] {
        let sick = Origin::start(Behavior::Raw(busy.clone()));
        let good = Origin::start(Behavior::named("good"));
        let proxy = Proxy::start(&one_upstream(
            &[sick.addr, good.addr],
            &passive(2, "10s", 50, listed),
            "",
        ));
        for _ in 0..12 {
            let status = client::get(proxy.addr, "/", &[]).status;
            assert!(status == 200 || status == 503);
        }
        let s = backend_status(&status_now(&proxy), sick.addr);
        if expect_ejection {
            assert_eq!(s["state"], "ejected", "{s}");
            assert_eq!(sick.requests(), 2);
        } else {
            assert_eq!(s["state"], "healthy", "{s}");
            assert_eq!(s["consecutive_failures"], 0);
            assert_eq!(sick.requests(), 6);
        }
    }
}

#[test]
fn client_aborts_never_count_against_a_backend() {
    let slow = Origin::start(Behavior::Hang);
    let proxy = Proxy::start(&one_upstream(&[slow.addr], &passive(1, "10s", 100, ""), ""));
    for i in 0..3 {
        let mut c = client::Client::connect(proxy.addr);
        let rid = format!("gone-{i}");
        c.send(&client::request(
            "GET",
            "/",
            "app.test",
            &[("x-request-id", &rid)],
        ));
        slow.wait_for_requests(i + 1);
        drop(c);
        assert_eq!(access_entry(&rid)["status"], 499);
    }
    let s = backend_status(&status_now(&proxy), slow.addr);
    assert_eq!(s["state"], "healthy");
    assert_eq!(s["consecutive_failures"], 0);
    assert_eq!(
        proxy.metric("faultline_client_aborts_total{route=\"main\"}"),
        3
    );
    assert_eq!(
        proxy.metric("faultline_requests_total{route=\"main\",status=\"499\",source=\"client\"}"),
        3
    );
}

#[test]
fn active_check_marks_a_stalled_backend_down_and_back_up() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let proxy = Proxy::start(&one_upstream(
        &[a.addr, b.addr],
        "    health:\n      active: { path: /healthz, interval: 100ms, timeout: 100ms }\n",
        "",
    ));
    wait_for_status(&proxy, "first checks", |s| {
        backend_status(s, a.addr)["active_check"] == "up"
    });
    a.set(Behavior::Hang);
    wait_for_status(&proxy, "a down", |s| {
        backend_status(s, a.addr)["active_check"] == "down"
    });
    let before = a.requests();
    for _ in 0..6 {
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "origin b");
    }
    // Only health checks reached `a`, and they carry the check's user agent.
    let heads = a.heads();
    assert!(
        heads[before..]
            .iter()
            .all(|h| h.contains("faultline-health"))
    );
    a.set(Behavior::named("a"));
    wait_for_status(&proxy, "a up", |s| {
        backend_status(s, a.addr)["active_check"] == "up"
    });
    let served: Vec<String> = (0..6)
        .map(|_| client::get(proxy.addr, "/", &[]).text())
        .collect();
    assert!(served.iter().any(|t| t == "origin a"), "{served:?}");
    assert_eq!(
        proxy.metric(&format!(
            "faultline_backend_up{{upstream=\"app\",backend=\"{}\"}}",
            a.addr
        )),
        1
    );
}

#[test]
fn an_active_check_success_ends_a_passive_ejection() {
    let flaky = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    // TCP checks: a backend that accepts connections passes, so the checks pass all along while
    // the requests fail; the passive ejection is long, so only a check can end it in time.
    let proxy = Proxy::start(&one_upstream(
        &[flaky.addr, good.addr],
        "    health:\n      active: { interval: 300ms, timeout: 200ms }\n      passive: { consecutive_failures: 2, base_ejection: 60s, max_ejected_percent: 50 }\n",
        "",
    ));
    let ejections = format!(
        "faultline_backend_ejections_total{{upstream=\"app\",backend=\"{}\",reason=\"consecutive_failures\"}}",
        flaky.addr
    );
    for _ in 0..20 {
        if proxy.metric(&ejections) == 1 {
            break;
        }
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200, "failover");
    }
    assert_eq!(
        proxy.metric(&ejections),
        1,
        "the failing backend was ejected"
    );
    let ejected = std::time::Instant::now();
    flaky.set(Behavior::named("flaky"));
    wait_for_status(&proxy, "the ejection to end", |s| {
        backend_status(s, flaky.addr)["state"] == "healthy"
    });
    assert!(
        ejected.elapsed() < Duration::from_secs(10),
        "ended by a check, not by the 60 s ejection"
    );
    let served: Vec<String> = (0..6)
        .map(|_| client::get(proxy.addr, "/", &[]).text())
        .collect();
    assert!(served.iter().any(|t| t == "origin flaky"), "{served:?}");
    assert_eq!(proxy.metric(&ejections), 1);
}

#[test]
fn metrics_tell_which_backend_failed_how() {
    let dead = refused_addr();
    let slow = Origin::start(Behavior::Hang);
    let ok = Origin::start(Behavior::named("ok"));
    let body = format!(
        "upstreams:
  dead: {{ backends: [{{ address: \"{dead}\" }}] }}
  slow: {{ backends: [{{ address: \"{}\" }}], timeouts: {{ response_header: 200ms }} }}
  ok: {{ backends: [{{ address: \"{}\" }}] }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}
  - {{ name: ok, match: {{ path_prefix: /ok }}, upstream: ok }}
",
        slow.addr, ok.addr
    );
    let proxy = Proxy::start(&body);
    for (path, n, status) in [
        ("/dead", 3, 502),
        ("/slow", 2, 504),
        ("/ok", 4, 200),
        ("/nowhere", 1, 404),
    ] {
        for i in 0..n {
            let rid = format!("scripted{path}-{i}").replace('/', "-");
            let resp = client::get(proxy.addr, path, &[("x-request-id", &rid)]);
            assert_eq!(resp.status, status, "{path}");
            // Request counters move when the request is logged, just after the response.
            access_entry(&rid);
        }
    }
    let m = proxy.metrics();
    let expect = [
        (
            format!(
                "faultline_upstream_attempts_total{{upstream=\"dead\",backend=\"{dead}\",outcome=\"connection_refused\"}}"
            ),
            3,
        ),
        (
            format!(
                "faultline_upstream_attempts_total{{upstream=\"dead\",backend=\"{dead}\",outcome=\"response\"}}"
            ),
            0,
        ),
        (
            format!(
                "faultline_upstream_attempts_total{{upstream=\"slow\",backend=\"{}\",outcome=\"http_response_timeout\"}}",
                slow.addr
            ),
            2,
        ),
        (
            format!(
                "faultline_upstream_attempts_total{{upstream=\"ok\",backend=\"{}\",outcome=\"response\"}}",
                ok.addr
            ),
            4,
        ),
        (
            format!(
                "faultline_upstream_responses_total{{upstream=\"ok\",backend=\"{}\",status=\"200\"}}",
                ok.addr
            ),
            4,
        ),
        (
            format!(
                "faultline_upstream_header_seconds_count{{upstream=\"ok\",backend=\"{}\"}}",
                ok.addr
            ),
            4,
        ),
        (
            "faultline_requests_total{route=\"dead\",status=\"502\",source=\"proxy\"}".to_string(),
            3,
        ),
        (
            "faultline_requests_total{route=\"slow\",status=\"504\",source=\"proxy\"}".to_string(),
            2,
        ),
        (
            "faultline_requests_total{route=\"ok\",status=\"200\",source=\"origin\"}".to_string(),
            4,
        ),
        (
            "faultline_requests_total{route=\"none\",status=\"404\",source=\"proxy\"}".to_string(),
            1,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(metric_value(&m, &series), value, "{series}\n{m}");
    }
    // The failure kinds that did not happen are not reported for these backends.
    assert!(!m.contains(&format!(
        "backend=\"{dead}\",outcome=\"http_response_timeout\""
    )));
    let status = status_now(&proxy);
    assert_eq!(
        backend_status(&status, dead)["attempts"]["connection_refused"],
        3
    );
    assert_eq!(
        backend_status(&status, slow.addr)["attempts"]["http_response_timeout"],
        2
    );
    // Every access-log line is JSON with an attempt list.
    let entries = all_access_entries();
    assert!(entries.len() >= 10);
    for e in &entries {
        assert!(e["attempts"].is_array(), "{e}");
        assert!(e["request_id"].is_string() && e["status"].is_u64(), "{e}");
    }
}

#[test]
fn admin_endpoints() {
    let ok = Origin::start(Behavior::named("ok"));
    let proxy = Proxy::start(&one_upstream(&[ok.addr], "", ""));
    let h = client::get(proxy.admin, "/healthz", &[]);
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    let m = client::get(proxy.admin, "/metrics", &[]);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    assert_eq!(client::get(proxy.admin, "/nope", &[]).status, 404);
    assert_eq!(
        client::send_one(proxy.admin, "POST", "/metrics", &[("content-length", "0")]).status,
        405
    );
}

#[test]
fn failure_rate_ejects_a_backend_that_fails_half_the_time() {
    // Never three in a row, but half of all attempts fail.
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let flaky = Origin::start(Behavior::Cycle(vec![Behavior::Raw(ok), Behavior::Reset]));
    let good = Origin::start(Behavior::named("good"));
    let health = "    health:\n      passive: { consecutive_failures: 3, base_ejection: 10s, failure_rate: { percent: 40, window: 30s, min_requests: 6 } }\n";
    let proxy = Proxy::start(&one_upstream(&[flaky.addr, good.addr], health, ""));
    for _ in 0..40 {
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(resp.status, 200, "failover hides every failure");
    }
    let s = backend_status(&status_now(&proxy), flaky.addr);
    assert_eq!(s["state"], "ejected", "{s}");
    let series = format!(
        "faultline_backend_ejections_total{{upstream=\"app\",backend=\"{}\",reason=\"failure_rate\"}}",
        flaky.addr
    );
    assert_eq!(proxy.metric(&series), 1);
    assert!(
        flaky.requests() <= 8,
        "ejected after about 6 attempts: {}",
        flaky.requests()
    );
}

#[test]
fn a_backend_that_stops_answering_is_passed_over_before_its_first_timeout() {
    let good = Origin::start(Behavior::named("good"));
    let silent = Origin::start(Behavior::named("silent"));
    // No passive health: only the answering check keeps requests away from the silent backend.
    let proxy = Proxy::start(&one_upstream(
        &[good.addr, silent.addr],
        "    timeouts: { response_header: 1500ms }\n",
        "",
    ));
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    silent.set(Behavior::Hang);
    let addr = proxy.addr;
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut fast, mut slow) = (0, 0);
                for _ in 0..2000 {
                    if std::time::Instant::now() >= until {
                        break;
                    }
                    let started = std::time::Instant::now();
                    let r = client::get(addr, "/", &[]);
                    assert_eq!(r.status, 200, "a stuck GET is retried on the good backend");
                    if started.elapsed() > Duration::from_millis(1000) {
                        slow += 1;
                    } else {
                        fast += 1;
                    }
                }
                (fast, slow)
            })
        })
        .collect();
    let (fast, slow) = threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .fold((0, 0), |(f, s), (a, b)| (f + a, s + b));
    eprintln!("answered at once: {fast}, stuck first: {slow}");
    // Round robin alone sends every other request to the silent backend until it times out, so
    // within a few requests all 16 clients wait on it and almost nothing is answered for 1.5 s.
    // Passing it over once the good backend has answered a few times keeps most clients going.
    assert!(
        fast >= 300,
        "only {fast} requests answered at once ({slow} stuck)"
    );
    assert!(
        slow < 16 * 2,
        "{slow} requests waited for the silent backend's timeout"
    );
    let status = crate::client::get(proxy.admin, "/status", &[]).text();
    assert!(status.contains("\"pending\":"), "{status}");
}
