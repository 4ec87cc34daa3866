//! Error-page options: intercepted origin statuses, templates from files, and what may be
//! revealed about backends.

use crate::client;
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Origin, refused_addr};

#[test]
fn intercepted_origin_status_gets_the_proxy_page() {
    let origin = Origin::start(Behavior::Raw(
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 22\r\nX-Internal: 10.0.0.7\r\n\r\nstack trace at 10.0.0.7".to_vec(),
    ));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    intercept_origin_errors: [502]\n",
    ));
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "application/json"), ("x-request-id", "icpt")],
    );
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("proxy-status"),
        Some("faultline; received-status=502")
    );
    assert_eq!(
        resp.header("x-internal"),
        None,
        "origin headers must not leak"
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["status"], 502);
    assert_eq!(v["detail"], "the upstream server answered 502 Bad Gateway");
    assert_eq!(v["proxy_status"], serde_json::Value::Null);
    assert_eq!(v["request_id"], "icpt");
    assert!(!resp.text().contains("10.0.0.7"));
    let entry = access_entry("icpt");
    assert_eq!(entry["status"], 502);
    assert_eq!(entry["source"], "proxy");
    assert_eq!(entry["failure"], serde_json::Value::Null);
    assert_eq!(entry["attempts"][0]["outcome"], "response");
    assert_eq!(entry["attempts"][0]["status"], 502);
}

#[test]
fn statuses_not_listed_are_not_intercepted() {
    let origin = Origin::start(Behavior::Raw(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec(),
    ));
    let proxy = Proxy::start(&one_upstream(
        &[origin.addr],
        "",
        "    intercept_origin_errors: [502]\n",
    ));
    let resp = client::get(proxy.addr, "/", &[("accept", "text/html")]);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.text(), "busy");
}

#[test]
fn templates_are_read_from_files() {
    let dir = std::env::temp_dir().join(format!("faultline-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("502.html");
    std::fs::write(
        &file,
        "<p>{{status}}|{{reason}}|{{detail}}|{{request_id}}|{{support_url}}</p>",
    )
    .expect("write");
    let body = format!(
        "error_pages:\n  support_url: \"https://help.example/x?a=1&b=2\"\n  templates: {{ \"502\": \"{}\" }}\n{}",
        file.display(),
        one_upstream(&[refused_addr()], "", "")
    );
    let proxy = Proxy::start(&body);
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "text/html"), ("x-request-id", "tpl1")],
    );
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.text(),
        "<p>502|Bad Gateway|the upstream server refused the connection|tpl1|https://help.example/x?a=1&amp;b=2</p>"
    );
    // Other formats are unaffected by an HTML template.
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "text/plain"), ("x-request-id", "tpl2")],
    );
    assert!(resp.text().starts_with("502 Bad Gateway: "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backend_addresses_stay_hidden_by_default() {
    let dead = refused_addr();
    let proxy = Proxy::start(&one_upstream(&[dead], "", ""));
    for accept in ["text/html", "application/json", "*/*"] {
        let resp = client::get(proxy.addr, "/", &[("accept", accept)]);
        assert_eq!(resp.status, 502);
        let port = dead.port().to_string();
        assert!(
            !resp.text().contains(&port),
            "backend port in body: {}",
            resp.text()
        );
        for (name, value) in &resp.headers {
            assert!(!value.contains(&port), "backend port in {name}: {value}");
        }
    }
}

#[test]
fn backend_addresses_shown_when_allowed() {
    // A proxy error and a passed-through origin status both name the backend that answered.
    let dead = refused_addr();
    let busy = Origin::start(Behavior::Raw(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec(),
    ));
    let cases = [
        (
            dead,
            "error=connection_refused; details=\"the upstream server refused the connection\"",
        ),
        (busy.addr, "received-status=503"),
    ];
    for (backend, member) in cases {
        let body = format!(
            "error_pages: {{ reveal_backends: true }}\n{}",
            one_upstream(&[backend], "", "")
        );
        let proxy = Proxy::start(&body);
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(
            resp.header("proxy-status"),
            Some(format!("faultline; {member}; next-hop=\"{backend}\"").as_str())
        );
    }
}

#[test]
fn proxy_status_can_be_switched_off() {
    let body = format!(
        "error_pages: {{ proxy_status: false }}\n{}",
        one_upstream(&[refused_addr()], "", "")
    );
    let proxy = Proxy::start(&body);
    let resp = client::get(proxy.addr, "/", &[]);
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("proxy-status"), None);
    assert!(resp.header("x-request-id").is_some());
}

/// Every `href` and `src` of an HTML body, and whether it loads anything by `url(` or `@import`.
fn references(body: &str) -> Vec<String> {
    let mut refs: Vec<String> = ["href=\"", "src=\"", "src='", "href='"]
        .iter()
        .flat_map(|attr| body.split(attr).skip(1))
        .map(|r| r[..r.find(['"', '\'']).unwrap_or(r.len())].to_string())
        .collect();
    for loads in ["src=", "url(", "@import", "<script", "<link", "<img"] {
        if body.contains(loads) {
            refs.push(loads.to_string());
        }
    }
    refs
}

#[test]
fn default_html_page_is_complete_and_self_contained() {
    let body = format!(
        "error_pages:\n  support_url: \"https://help.example/support?a=1&b=2\"\n{}",
        one_upstream(&[refused_addr()], "", "")
    );
    let proxy = Proxy::start(&body);
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "text/html"), ("x-request-id", "page-502")],
    );
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("x-request-id"), Some("page-502"));
    let html = resp.text();
    assert_eq!(
        resp.header("content-length"),
        Some(html.len().to_string().as_str())
    );
    assert!(html.len() < 4096, "a small page: {} bytes", html.len());
    for part in [
        "<title>502 Bad Gateway</title>",
        "<h1>The server behind this site had a problem</h1>",
        "<p>Sorry, the upstream server refused the connection.</p>",
        "<p>This is usually brief. Please try again in a moment.</p>",
        "<p>Request id: <code>page-502</code></p>",
        "<a href=\"https://help.example/support?a=1&amp;b=2\">contact support</a>",
        "@media (prefers-color-scheme:dark)",
    ] {
        assert!(html.contains(part), "{part} missing in\n{html}");
    }
    assert_eq!(
        references(&html),
        ["https://help.example/support?a=1&amp;b=2"],
        "nothing but the support link refers elsewhere"
    );
}

#[test]
fn the_503_page_says_when_to_come_back() {
    let proxy = Proxy::start(&one_upstream(
        &[refused_addr()],
        "    health:\n      passive: { consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 100 }\n",
        "",
    ));
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 502);
    let resp = client::get(
        proxy.addr,
        "/",
        &[("accept", "text/html"), ("x-request-id", "page-503")],
    );
    assert_eq!(resp.status, 503);
    let seconds: u64 = resp
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((25..=33).contains(&seconds), "{seconds}");
    let html = resp.text();
    for part in [
        "<title>503 Service Unavailable</title>".to_string(),
        "<h1>This service is unavailable right now</h1>".to_string(),
        format!("<p>Please try again in {seconds} seconds.</p>"),
        "<code>page-503</code>".to_string(),
    ] {
        assert!(html.contains(&part), "{part} missing in\n{html}");
    }
    assert!(!html.contains("contact support"), "no support URL, no link");
    assert!(references(&html).is_empty(), "{html}");
}
