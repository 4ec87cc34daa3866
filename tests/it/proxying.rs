//! The plain proxying path: balancing, routing, connection reuse, forwarded headers, 404.

use crate::client::{self, Client};
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Origin};

#[test]
fn round_robin_spreads_across_two_backends() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let proxy = Proxy::start(&one_upstream(&[a.addr, b.addr], "", ""));
    let mut seen = Vec::new();
    for _ in 0..10 {
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(resp.status, 200);
        seen.push(resp.text());
    }
    assert_eq!(a.requests(), 5);
    assert_eq!(b.requests(), 5);
    // Strict alternation.
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1]);
    }
}

#[test]
fn weights_shape_the_share() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let body = format!(
        "upstreams:\n  app:\n    backends:\n      - {{ address: \"{}\", weight: 3 }}\n      - {{ address: \"{}\" }}\nroutes:\n  - upstream: app\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&body);
    for _ in 0..40 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    assert_eq!(a.requests(), 30);
    assert_eq!(b.requests(), 10);
}

#[test]
fn host_and_longest_prefix_routing() {
    let api = Origin::start(Behavior::named("api"));
    let api_v2 = Origin::start(Behavior::named("api-v2"));
    let wild = Origin::start(Behavior::named("wild"));
    let fallback = Origin::start(Behavior::named("fallback"));
    let body = format!(
        "upstreams:
  api: {{ backends: [{{ address: \"{}\" }}] }}
  api2: {{ backends: [{{ address: \"{}\" }}] }}
  wild: {{ backends: [{{ address: \"{}\" }}] }}
  fallback: {{ backends: [{{ address: \"{}\" }}] }}
routes:
  - {{ match: {{ host: api.example.com, path_prefix: /v1 }}, upstream: api }}
  - {{ match: {{ host: api.example.com, path_prefix: /v1/v2 }}, upstream: api2 }}
  - {{ match: {{ host: \"*.example.com\" }}, upstream: wild }}
  - {{ match: {{ path_prefix: /static }}, upstream: fallback }}
",
        api.addr, api_v2.addr, wild.addr, fallback.addr
    );
    let proxy = Proxy::start(&body);
    let cases = [
        ("api.example.com", "/v1/users", "origin api", 200),
        ("API.example.com:8080", "/v1/v2/x", "origin api-v2", 200),
        ("api.example.com", "/other", "origin wild", 200),
        ("shop.example.com", "/", "origin wild", 200),
        ("else.org", "/static/app.css", "origin fallback", 200),
    ];
    for (host, path, want, status) in cases {
        let mut c = Client::connect(proxy.addr);
        c.send(&client::request("GET", path, host, &[]));
        let resp = c.read_response("GET");
        assert_eq!(resp.status, status, "{host}{path}");
        assert_eq!(resp.text(), want, "{host}{path}");
    }
}

#[test]
fn no_route_is_a_404_from_the_proxy_and_keeps_the_connection() {
    let a = Origin::start(Behavior::named("a"));
    let body = format!(
        "upstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ match: {{ host: app.test, path_prefix: /api }}, upstream: app }}\n",
        a.addr
    );
    let proxy = Proxy::start(&body);
    let mut c = Client::connect(proxy.addr);
    c.send(&client::request(
        "GET",
        "/nothing",
        "app.test",
        &[("accept", "application/json"), ("x-request-id", "nf1")],
    ));
    let resp = c.read_response("GET");
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.header("proxy-status"),
        Some("faultline; error=destination_not_found; details=\"no route serves this address\"")
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["status"], 404);
    assert_eq!(v["proxy_status"], "destination_not_found");
    assert_eq!(v["request_id"], "nf1");
    // Same connection, next request is served.
    c.send(&client::request("GET", "/api/x", "app.test", &[]));
    let resp = c.read_response("GET");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "origin a");
    assert_eq!(a.requests(), 1);
    let entry = access_entry("nf1");
    assert_eq!(entry["status"], 404);
    assert_eq!(entry["source"], "proxy");
    assert_eq!(entry["failure"], "destination_not_found");
    assert_eq!(entry["attempts"].as_array().map(Vec::len), Some(0));
}

#[test]
fn upstream_connections_are_reused() {
    let a = Origin::start(Behavior::named("a"));
    let proxy = Proxy::start(&one_upstream(&[a.addr], "", ""));
    for _ in 0..20 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    assert_eq!(a.requests(), 20);
    assert!(
        a.connections() < 20,
        "20 requests used {} connections",
        a.connections()
    );
    assert!(
        a.connections() <= 2,
        "keep-alive pool barely used: {}",
        a.connections()
    );
}

#[test]
fn forwarded_headers_and_hop_by_hop() {
    let a = Origin::start(Behavior::named("a"));
    let proxy = Proxy::start(&one_upstream(&[a.addr], "", ""));
    let mut c = Client::connect(proxy.addr);
    c.send(&client::request(
        "GET",
        "/fw",
        "Site.Example:8443",
        &[
            ("x-forwarded-for", "192.0.2.9"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-request-id", "fw1"),
            ("forwarded", "for=192.0.2.9"),
            ("x-real-ip", "192.0.2.9"),
            ("x-forwarded-host", "admin.internal"),
        ],
    ));
    assert_eq!(c.read_response("GET").status, 200);
    let heads = a.heads();
    let head = heads.last().expect("a request").to_ascii_lowercase();
    assert!(head.contains("\r\nhost: site.example:8443\r\n"), "{head}");
    // The client is not a trusted proxy: its claim is replaced by the real peer address.
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(head.contains("\r\nvia: 1.1 faultline\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: fw1\r\n"), "{head}");
    assert!(!head.contains("x-drop-me"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("\r\nte:"), "{head}");
    // Nor may it claim another address, host or scheme in the headers origins also read.
    assert!(!head.contains("192.0.2.9"), "{head}");
    assert!(!head.contains("admin.internal"), "{head}");
}

#[test]
fn header_names_reach_the_origin_lowercase_unless_case_is_preserved() {
    let a = Origin::start(Behavior::named("a"));
    let cases = [
        (
            "",
            [
                "\r\nHost: app.test\r\n",
                "\r\nx-api-key: k\r\n",
                "\r\nx-forwarded-for: 127.0.0.1\r\n",
                "\r\nvia: 1.1 faultline\r\n",
            ],
        ),
        (
            "    preserve_header_case: true\n",
            [
                "\r\nhost: app.test\r\n",
                "\r\nX-Api-Key: k\r\n",
                "\r\nX-Forwarded-For: 127.0.0.1\r\n",
                "\r\nVia: 1.1 faultline\r\n",
            ],
        ),
    ];
    for (upstream, lines) in cases {
        let proxy = Proxy::start(&one_upstream(&[a.addr], upstream, ""));
        let resp = client::get(proxy.addr, "/case?q=1", &[("X-Api-Key", "k")]);
        assert_eq!(resp.status, 200);
        let heads = a.heads();
        let head = heads.last().expect("a request");
        assert!(head.starts_with("GET /case?q=1 HTTP/1.1\r\n"), "{head}");
        for line in lines {
            assert!(head.contains(line), "{upstream:?}: {line:?} in {head}");
        }
    }
}

#[test]
fn trusted_proxies_extend_x_forwarded_for() {
    let a = Origin::start(Behavior::named("a"));
    let body = format!(
        "trusted_proxies: [\"127.0.0.0/8\"]\n{}",
        one_upstream(&[a.addr], "", "")
    );
    let proxy = Proxy::start(&body);
    let resp = client::get(proxy.addr, "/", &[("x-forwarded-for", "192.0.2.9")]);
    assert_eq!(resp.status, 200);
    let heads = a.heads();
    let head = heads.last().expect("a request").to_ascii_lowercase();
    assert!(
        head.contains("\r\nx-forwarded-for: 192.0.2.9, 127.0.0.1\r\n"),
        "{head}"
    );
}
