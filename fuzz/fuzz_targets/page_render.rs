//! `ErrorPages::render` with an arbitrary cause, `Accept` header, request id and next hop, for
//! the settings of a minimal config file and for custom settings with a template.
//!
//! Input layout: 4 header bytes (flags, kind, status high, status low), then `Accept`, the raw
//! request id and the next hop, separated by 0xFF (a byte that never occurs in UTF-8).
//!
//! - The raw id is rendered as given (as if it bypassed `request_id`): whatever it holds, the
//!   HTML body gets no markup from it: it has exactly as many `<`, `>` and `"` as the page for
//!   a harmless id.
//! - The id faultline really uses (`request_id::for_request`) must always render for an error
//!   status, with the id in `X-Request-Id` and verbatim in the body, and a problem+json body
//!   that parses and carries the id.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use faultline::internals::error_page::{Cause, ErrorPages, Format, Request, negotiate};
use faultline::internals::request_id;
use faultline::{Config, FailureKind};
use libfuzzer_sys::fuzz_target;

const MINIMAL: &str = r#"
listeners:
  - { address: "127.0.0.1:8080" }
upstreams:
  app:
    backends:
      - { address: "127.0.0.1:9001" }
error_pages:
  support_url: "https://example.com/support?a=1&b=2"
"#;

fn renderers() -> &'static [ErrorPages; 2] {
    static PAGES: OnceLock<[ErrorPages; 2]> = OnceLock::new();
    PAGES.get_or_init(|| {
        let config = Config::from_yaml(MINIMAL).unwrap_or_else(|e| panic!("minimal config: {e}"));
        let custom = faultline::config::ErrorPages {
            support_url: None,
            proxy_status: true,
            reveal_backends: true,
            templates: BTreeMap::from([
                (
                    502,
                    "<html><p>{{status}} {{reason}}</p><p>{{detail}}</p>\
                     <code>{{request_id}}</code><code>{{request_id}}</code></html>"
                        .to_string(),
                ),
                (
                    504,
                    "<b>{{request_id}}</b> <a href=\"{{support_url}}\">x</a>".to_string(),
                ),
            ]),
        };
        [ErrorPages::new(config.error_pages), ErrorPages::new(custom)]
    })
}

fn count(body: &[u8]) -> [usize; 3] {
    [b'<', b'>', b'"'].map(|c| body.iter().filter(|b| **b == c).count())
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(4));
    let mut head = head.to_vec();
    head.resize(4, 0);
    let pages = &renderers()[usize::from(head[0] & 1)];
    let is_head = head[0] & 2 != 0;
    let cause = if head[1] & 0x80 == 0 {
        Cause::Failure(FailureKind::ALL[usize::from(head[1]) % FailureKind::ALL.len()])
    } else {
        Cause::Intercepted(u16::from_be_bytes([head[2], head[3]]))
    };
    let mut parts = rest.split(|b| *b == 0xFF);
    let accept = parts.next().filter(|a| !a.is_empty() || head[0] & 4 != 0);
    let raw_id = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let hop = parts.next().map(String::from_utf8_lossy);
    let next_hop = hop.as_deref();
    let error_status = (400..=599).contains(&cause.status());

    let request = |id: &'static str| Request {
        request_id: id,
        accept,
        head: false,
        next_hop,
        retry_after: None,
    };

    // 1. A raw id, whatever it holds, adds no markup to an HTML page.
    let raw = pages.render(
        cause,
        Request {
            request_id: &raw_id,
            ..request("x")
        },
    );
    if let Ok(raw) = raw
        && negotiate(accept) == Format::Html
    {
        let body = String::from_utf8_lossy(&raw.body);
        assert!(
            !body.to_ascii_lowercase().contains("<script"),
            "<script in page: {body}"
        );
        let plain = pages
            .render(cause, request("x"))
            .unwrap_or_else(|e| panic!("benign id does not render: {e}"));
        assert_eq!(
            count(&raw.body),
            count(&plain.body),
            "markup from the id {raw_id:?}: {body}"
        );
    }

    // 2. The id faultline really uses always renders, and appears as given.
    let id = request_id::for_request(Some(raw_id.as_bytes()));
    let rendered = pages.render(
        cause,
        Request {
            request_id: &id,
            head: is_head,
            ..request("x")
        },
    );
    let rendered = match rendered {
        Ok(r) => r,
        Err(_) if !error_status => return,
        Err(e) => panic!("{cause:?} with id {id:?} and next hop {next_hop:?} fails: {e}"),
    };
    let header_id = rendered.header.headers.get("x-request-id");
    assert_eq!(
        header_id.map(|v| v.as_bytes()),
        Some(id.as_bytes()),
        "X-Request-Id"
    );
    if is_head {
        assert!(rendered.body.is_empty(), "HEAD with a body");
        return;
    }
    let body = std::str::from_utf8(&rendered.body).unwrap_or_else(|e| panic!("body: {e}"));
    match negotiate(accept) {
        Format::Html => assert!(body.contains(&escape_html(&id)), "id {id:?} not in {body}"),
        Format::Text => assert!(body.contains(&id), "id {id:?} not in {body}"),
        Format::ProblemJson => {
            let doc: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("problem+json {e}: {body}"));
            assert_eq!(doc["request_id"].as_str(), Some(id.as_str()), "{body}");
            assert_eq!(doc["status"].as_u64(), Some(u64::from(cause.status())));
        }
    }
    let length = rendered.header.headers.get("content-length");
    assert_eq!(
        length.map(|v| v.as_bytes()),
        Some(body.len().to_string().as_bytes()),
        "Content-Length"
    );
});
