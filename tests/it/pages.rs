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
