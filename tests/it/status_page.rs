//! The admin status page (`GET /`): every backend named with its state in words, failures by
//! kind after they happened, every configured name escaped, nothing loaded from elsewhere.

use std::net::SocketAddr;

use crate::client::{self, Response};
use crate::harness::{Proxy, backend_status, metric_value, one_upstream, wait_for_status};
use crate::origin::{Behavior, Origin, refused_addr};

/// The status page, with the headers every answer of it must have.
fn page(proxy: &Proxy) -> String {
    let resp = client::get(proxy.admin, "/", &[]);
    assert_page_headers(&resp);
    let body = resp.text();
    assert_self_contained(&body);
    body
}

fn assert_page_headers(resp: &Response) {
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
}

/// No script, and nothing fetched from anywhere: the only links are to the admin's own
/// `/status` and `/metrics`.
fn assert_self_contained(body: &str) {
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert!(body.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(body.contains("prefers-color-scheme:dark"), "a dark look");
    for banned in [
        "<script", "src=", "url(", "@import", "<link", "http://", "https://",
    ] {
        assert!(!body.contains(banned), "{banned} in the page:\n{body}");
    }
    let hrefs: Vec<&str> = body.split("href=\"").skip(1).collect();
    for h in hrefs {
        assert!(
            h.starts_with("/status\"") || h.starts_with("/metrics\""),
            "a link elsewhere: {h:.40}"
        );
    }
}

/// The table row of `backend` in the section of `upstream`.
fn row<'a>(page: &'a str, upstream: &str, backend: SocketAddr) -> &'a str {
    let section = page
        .split("<section class=\"upstream\"")
        .find(|s| s.starts_with(&format!(" data-upstream=\"{upstream}\"")))
        .unwrap_or_else(|| panic!("no section for {upstream}:\n{page}"));
    let start = section
        .find(&format!("<tr class=\"backend\" data-backend=\"{backend}\""))
        .unwrap_or_else(|| panic!("{backend} not on the page:\n{section}"));
    let rest = &section[start..];
    &rest[..rest.find("</tr>").expect("row end")]
}

/// The state badges of a row, in order.
fn badges(row: &str) -> Vec<&str> {
    row.split("<span class=\"badge ")
        .skip(1)
        .map(|b| {
            let text = &b[b.find('>').expect("badge")..];
            &text[1..text.find("</span>").expect("badge end")]
        })
        .collect()
}

/// The figure over the last minutes for `kind` in a row, when the row lists it.
fn kind_figure(row: &str, kind: &str) -> Option<u64> {
    let item = row.split(&format!("<li data-kind=\"{kind}\">")).nth(1)?;
    let figure = item.split(&format!("<code>{kind}</code> <b>")).nth(1)?;
    figure[..figure.find("</b>")?].parse().ok()
}

#[test]
fn names_every_backend_with_its_state() {
    let bad = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    let drained = Origin::start(Behavior::named("drained"));
    let proxy = Proxy::start(&one_upstream(
        &[bad.addr, good.addr, drained.addr],
        "    health:\n      passive: { consecutive_failures: 3, base_ejection: 30s, max_ejection: 60s, max_ejected_percent: 50 }\n",
        "",
    ));
    for _ in 0..30 {
        if bad.requests() == 3 {
            break;
        }
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    wait_for_status(&proxy, "the ejection", |s| {
        backend_status(s, bad.addr)["state"] == "ejected"
    });
    let drain = format!("/upstreams/app/backends/{}/drain", drained.addr);
    assert_eq!(
        client::send_one(proxy.admin, "POST", &drain, &[]).status,
        200
    );

    let page = page(&proxy);
    assert!(page.contains("<title>faultline status</title>"));
    let ejected = row(&page, "app", bad.addr);
    assert!(ejected.contains("data-state=\"ejected\""), "{ejected}");
    let [state] = badges(ejected)[..] else {
        panic!("one state: {ejected}")
    };
    let left = state
        .strip_prefix("ejected, ")
        .and_then(|s| s.strip_suffix(" s left"))
        .unwrap_or_else(|| panic!("ejected with the time left: {state}"));
    let left: f64 = left.parse().expect("seconds");
    assert!(
        left > 20.0 && left <= 33.0,
        "30 s plus at most a tenth: {left}"
    );
    let healthy = row(&page, "app", good.addr);
    assert!(healthy.contains("data-state=\"healthy\""), "{healthy}");
    assert_eq!(badges(healthy), ["healthy"]);
    let draining = row(&page, "app", drained.addr);
    assert!(draining.contains("data-state=\"draining\""), "{draining}");
    assert_eq!(badges(draining), ["draining"]);
    assert!(page.contains("1 of 3 taking traffic"), "{page}");
    // The JSON beside it stays as it was.
    let status = client::get(proxy.admin, "/status", &[]);
    assert_eq!(status.header("content-type"), Some("application/json"));
    // HEAD has the page's header and no body; other methods are refused.
    let head = client::send_one(proxy.admin, "HEAD", "/", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = client::send_one(proxy.admin, "POST", "/", &[]);
    assert_eq!(post.status, 405);
}

#[test]
fn shows_failure_counts_by_kind_after_failures() {
    let refused = refused_addr();
    let reset = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[refused, reset.addr, good.addr],
        "",
        "    retry: { attempts: 3 }\n",
    ));
    for _ in 0..9 {
        assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    }
    let metrics = proxy.metrics();
    let page = page(&proxy);
    for (backend, kind) in [
        (refused, "connection_refused"),
        (reset.addr, "connection_terminated"),
    ] {
        let counted = metric_value(
            &metrics,
            &format!(
                "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{backend}\",outcome=\"{kind}\"}}"
            ),
        );
        assert!(counted > 0, "{kind} happened");
        let row = row(&page, "app", backend);
        assert_eq!(
            kind_figure(row, kind),
            Some(counted),
            "{kind}: all of them in the last minutes\n{row}"
        );
        assert!(
            row.contains(&format!("<span class=\"sub\">/ {counted}</span>")),
            "and since start: {row}"
        );
    }
    let good_row = row(&page, "app", good.addr);
    assert!(
        good_row.contains("<span class=\"sub\">none</span>"),
        "{good_row}"
    );
    assert!(good_row.contains("<b>0</b> failures"), "{good_row}");
    // The upstream's chart has bars for both.
    assert!(page.contains("<path class=\"sr\""), "responses drawn");
    assert!(page.contains("<path class=\"sf\""), "failures drawn");
}

#[test]
fn escapes_every_name() {
    let good = Origin::start(Behavior::named("good"));
    let hostile = "<script>alert(\"x\")</script> & 'q'";
    let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;";
    // A route name and the configuration file's directory, both names a person chose.
    let dir = std::env::temp_dir().join(format!("faultline-status-<b>&\"{}\"", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("faultline.yaml");
    let (addr, admin) = (crate::harness::free_addr(), crate::harness::free_addr());
    let body = format!(
        "upstreams:\n  app:\n    backends: [{{ address: \"{}\" }}]\nroutes:\n  - {{ upstream: app, name: '{}' }}\n",
        good.addr,
        hostile.replace('\'', "''")
    );
    std::fs::write(&file, crate::harness::proxy_yaml(addr, admin, &body)).expect("write");
    let proxy = Proxy::start_file(addr, admin, &file);
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);

    let page = page(&proxy);
    assert!(
        page.contains(&format!("<td><code>{escaped}</code></td>")),
        "{page}"
    );
    let shown_dir = format!(
        "faultline-status-&lt;b&gt;&amp;&quot;{}&quot;",
        std::process::id()
    );
    assert!(page.contains(&shown_dir), "{page}");
    assert!(!page.contains("<b>&"), "{page}");
    // The same name in the Prometheus exposition: its quotes escaped, so the line still parses.
    proxy.wait_for_metric(
        "faultline_requests_total{route=\"<script>alert(\\\"x\\\")</script> & 'q'\",status=\"200\",source=\"origin\"}",
        |v| v == 1,
        "the hostile route's request",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
