//! Proxy-generated responses: status, `Proxy-Status` (RFC 9209), `X-Request-Id`, and a body
//! chosen from `Accept`: an HTML page, `application/problem+json` (RFC 9457) or plain text.
//!
//! Nothing here knows about backends beyond an optional `next-hop` name, which the caller passes
//! only when the configuration allows revealing it.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::config;
use crate::failure::{FailureKind, reason_phrase};

/// The `Proxy-Status` member name of this proxy.
pub(crate) const PROXY_NAME: &str = "faultline";

/// The methods faultline forwards, for `Allow` on its 405 (every method but CONNECT; the
/// common ones are named).
pub(crate) const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// Seconds a client should wait before retrying when no backend is available and no ejection
/// end is known.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 1;

/// What happened, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The proxy failed to get a response.
    Failure(FailureKind),
    /// The origin answered with this status and the route intercepts it.
    Intercepted(u16),
}

impl Cause {
    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            Cause::Failure(kind) => kind.status(),
            Cause::Intercepted(status) => status,
        }
    }
}

/// Body formats the proxy can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/html`.
    Html,
    /// `application/problem+json`.
    ProblemJson,
    /// `text/plain`.
    Text,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::ProblemJson => "application/problem+json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }

    /// Media types that select this format, most specific first, and the tie-break rank
    /// (plain text wins a tie among wildcards: curl and scripts send `*/*`).
    fn matches(self) -> (&'static [(&'static str, &'static str)], u8) {
        match self {
            Format::Html => (&[("text", "html")], 1),
            Format::ProblemJson => (
                &[("application", "problem+json"), ("application", "json")],
                0,
            ),
            Format::Text => (&[("text", "plain")], 2),
        }
    }
}

/// Picks the body format from an `Accept` header value, honouring q-values and specificity
/// (RFC 9110 §12.5.1). No header, or nothing acceptable, gives plain text.
pub fn negotiate(accept: Option<&[u8]>) -> Format {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return Format::Text;
    };
    let mut best: Option<((u16, u8, u8), Format)> = None;
    for format in [Format::Html, Format::ProblemJson, Format::Text] {
        let (types, rank) = format.matches();
        // The most specific range that matches decides this format's quality.
        let mut chosen: Option<(u8, u16)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let Some((r_type, r_sub)) = media.split_once('/') else {
                continue;
            };
            let specificity = types
                .iter()
                .filter_map(|(t, s)| match (r_type == *t, r_sub == *s) {
                    (true, true) => Some(2),
                    (true, false) if r_sub == "*" => Some(1),
                    _ if r_type == "*" && r_sub == "*" => Some(0),
                    _ => None,
                })
                .max();
            let Some(specificity) = specificity else {
                continue;
            };
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("q")).then(|| parse_q(v.trim()))
                })
                .unwrap_or(1000);
            if chosen.is_none_or(|(s, _)| specificity > s) {
                chosen = Some((specificity, q));
            }
        }
        if let Some((specificity, q)) = chosen
            && q > 0
        {
            let score = (q, specificity, rank);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, format));
            }
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

/// q-value in thousandths; malformed values count as 0 (not acceptable).
fn parse_q(v: &str) -> u16 {
    match v.parse::<f32>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 0,
    }
}

/// Replaces each `{{name}}` of `template` that `value` knows, in one pass: a value is never
/// scanned for placeholders itself. Unknown names stay as they are.
fn fill_template(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 128);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after
            .find("}}")
            .and_then(|end| Some((end, value(&after[..end])?)))
        {
            Some((end, v)) => {
                out.push_str(&v);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `Proxy-Status` for a response the proxy generated.
pub fn proxy_status_error(kind: FailureKind, next_hop: Option<&str>) -> String {
    let mut v = format!(
        "{PROXY_NAME}; error={}; details=\"{}\"",
        kind.proxy_status_type(),
        kind.detail()
    );
    push_next_hop(&mut v, next_hop);
    v
}

/// `Proxy-Status` for an origin response passed through (or intercepted).
pub fn proxy_status_received(status: u16, next_hop: Option<&str>) -> String {
    let mut v = format!("{PROXY_NAME}; received-status={status}");
    push_next_hop(&mut v, next_hop);
    v
}

fn push_next_hop(v: &mut String, next_hop: Option<&str>) {
    if let Some(hop) = next_hop {
        // sf-string: printable ASCII, with '"' and '\' escaped.
        v.push_str("; next-hop=\"");
        for c in hop.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
            if c == '"' || c == '\\' {
                v.push('\\');
            }
            v.push(c);
        }
        v.push('"');
    }
}

/// A rendered response: header and body (empty for HEAD).
#[derive(Debug)]
pub struct Rendered {
    /// The response header, complete with `Content-Length`.
    pub header: ResponseHeader,
    /// The body.
    pub body: Bytes,
}

/// Renders proxy-generated responses with the configured look.
#[derive(Debug, Clone, Default)]
pub struct ErrorPages {
    settings: config::ErrorPages,
}

/// One request's side of a rendering.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// Its `Accept` header.
    pub accept: Option<&'a [u8]>,
    /// Whether it was a HEAD request.
    pub head: bool,
    /// The backend that failed, when the config allows naming it.
    pub next_hop: Option<&'a str>,
    /// Seconds until a backend is expected back, for `Retry-After` on a 503.
    pub retry_after: Option<u64>,
}

impl ErrorPages {
    /// Renderer for these settings.
    pub fn new(settings: config::ErrorPages) -> Self {
        ErrorPages { settings }
    }

    /// Whether backend names may be shown to clients.
    pub fn reveal_backends(&self) -> bool {
        self.settings.reveal_backends
    }

    /// Whether `Proxy-Status` is sent.
    pub fn proxy_status_enabled(&self) -> bool {
        self.settings.proxy_status
    }

    /// Adds faultline's member to the `Proxy-Status` of an origin error response passed through
    /// (status 400 and up), after the members of the intermediaries before it (RFC 9209), when
    /// `Proxy-Status` is enabled. `next_hop` names the backend for a status; it is asked only
    /// when the member is written.
    pub fn mark_passed_through<'a>(
        &self,
        response: &mut ResponseHeader,
        next_hop: impl FnOnce(u16) -> Option<&'a str>,
    ) -> pingora::Result<()> {
        let status = response.status.as_u16();
        if status < 400 || !self.proxy_status_enabled() {
            return Ok(());
        }
        let ours = proxy_status_received(status, next_hop(status));
        let value = match response
            .headers
            .get("proxy-status")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {ours}"),
            None => ours,
        };
        response.insert_header("Proxy-Status", value)
    }

    /// Renders the response for `cause`.
    pub fn render(&self, cause: Cause, req: Request<'_>) -> pingora::Result<Rendered> {
        let status = cause.status();
        let reason = reason_phrase(status);
        let (detail, proxy_status, kind_name) = match cause {
            Cause::Failure(kind) => (
                kind.detail().to_string(),
                proxy_status_error(kind, req.next_hop),
                Some(kind.as_str()),
            ),
            Cause::Intercepted(s) => (
                format!("the upstream server answered {s} {}", reason_phrase(s)),
                proxy_status_received(s, req.next_hop),
                None,
            ),
        };
        // RFC 9110 §10.2.3: a 503 the proxy answers says when to come back.
        let retry_after = (status == 503 && matches!(cause, Cause::Failure(_)))
            .then(|| req.retry_after.unwrap_or(RETRY_AFTER_SECONDS).max(1));
        let format = negotiate(req.accept);
        let body = match format {
            Format::Html => self.html(status, reason, &detail, req.request_id, retry_after),
            Format::ProblemJson => {
                self.problem_json(status, reason, &detail, kind_name, req.request_id)
            }
            Format::Text => format!(
                "{status} {reason}: {detail}.\nrequest id: {}\n",
                req.request_id
            ),
        };
        let mut header = ResponseHeader::build(status, Some(8))?;
        header.insert_header(http::header::CONTENT_TYPE, format.content_type())?;
        header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        header.insert_header("X-Request-Id", req.request_id)?;
        if self.settings.proxy_status {
            header.insert_header("Proxy-Status", proxy_status)?;
        }
        if cause == Cause::Failure(FailureKind::MethodNotAllowed) {
            // RFC 9110 §15.5.6: a 405 says what is allowed.
            header.insert_header(http::header::ALLOW, ALLOWED_METHODS)?;
        }
        if let Some(seconds) = retry_after {
            header.insert_header(http::header::RETRY_AFTER, seconds.to_string())?;
        }
        let body = if req.head {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        Ok(Rendered { header, body })
    }

    fn html(
        &self,
        status: u16,
        reason: &str,
        detail: &str,
        request_id: &str,
        retry_after: Option<u64>,
    ) -> String {
        let support = self.settings.support_url.as_deref().unwrap_or("");
        let (headline, advice) = for_visitors(status, retry_after);
        let fill = |template: &str| {
            fill_template(template, |name| match name {
                "status" => Some(status.to_string()),
                "reason" => Some(escape_html(reason)),
                "detail" => Some(escape_html(detail)),
                "request_id" => Some(escape_html(request_id)),
                "support_url" => Some(escape_html(support)),
                "headline" => Some(headline.to_string()),
                "advice" => Some(escape_html(&advice)),
                _ => None,
            })
        };
        if let Some(template) = self.settings.templates.get(&status) {
            return fill(template);
        }
        let support_line = if support.is_empty() {
            ""
        } else {
            "<p>If this keeps happening, <a href=\"{{support_url}}\">contact support</a> and quote the request id.</p>\n"
        };
        fill(&DEFAULT_PAGE.replacen("{{support}}", support_line, 1))
    }

    fn problem_json(
        &self,
        status: u16,
        reason: &str,
        detail: &str,
        kind: Option<&str>,
        request_id: &str,
    ) -> String {
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": reason,
            "status": status,
            "detail": detail,
            "proxy_status": kind,
            "request_id": request_id,
        });
        if let (Some(url), Some(map)) = (&self.settings.support_url, doc.as_object_mut()) {
            map.insert("support_url".into(), serde_json::Value::String(url.clone()));
        }
        let mut text = doc.to_string();
        text.push('\n');
        text
    }
}

/// The built-in HTML page: small, self-contained (its CSS inline, light and dark, no external
/// asset, no script). `{{support}}` is the support paragraph, or nothing without a support URL.
const DEFAULT_PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<meta name=\"color-scheme\" content=\"light dark\">
<meta name=\"robots\" content=\"noindex\">
<title>{{status}} {{reason}}</title>
<style>
:root{color-scheme:light dark;--bg:#f5f5f3;--fg:#1c1c1f;--mute:#66666e;--card:#fff;--line:#e2e2de;--accent:#c4372c}
@media (prefers-color-scheme:dark){:root{--bg:#141416;--fg:#ececf0;--mute:#a0a0a8;--card:#1f1f23;--line:#36363d;--accent:#ff7a6e}}
body{margin:0;min-height:100vh;display:grid;place-items:center;background:var(--bg);color:var(--fg);font:16px/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}
main{max-width:34rem;margin:1.5rem;padding:2rem 2.25rem;background:var(--card);border:1px solid var(--line);border-radius:12px}
.status{margin:0;color:var(--accent);font-weight:700;font-size:.8rem;letter-spacing:.06em;text-transform:uppercase}
h1{font-size:1.55rem;line-height:1.25;margin:.4rem 0 1rem}
p{margin:.6rem 0}
.id{margin-top:1.5rem;padding-top:1rem;border-top:1px solid var(--line);color:var(--mute);font-size:.9rem}
code{font:.85rem ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--bg);padding:.1rem .35rem;border-radius:4px;user-select:all}
a{color:inherit}
</style>
</head>
<body>
<main>
<p class=\"status\">Error {{status}} · {{reason}}</p>
<h1>{{headline}}</h1>
<p>Sorry, {{detail}}.</p>
<p>{{advice}}</p>
<div class=\"id\">
<p>Request id: <code>{{request_id}}</code></p>
{{support}}</div>
</main>
</body>
</html>
";

/// What a visitor reads on the page for `status`: what happened, in a headline, and what to
/// do about it. `retry_after`: the seconds of a 503's `Retry-After`.
fn for_visitors(status: u16, retry_after: Option<u64>) -> (&'static str, String) {
    let (headline, advice) = match status {
        400 => (
            "This request could not be handled",
            "Go back and try again from the page you came from.",
        ),
        401 => (
            "You need to sign in to see this",
            "Sign in, or check the key or credentials you sent, then try again.",
        ),
        403 => (
            "You are not allowed to see this",
            "If you think you should have access, ask the site's owner, quoting the request id below.",
        ),
        404 => (
            "There is nothing at this address",
            "Check the address for typos, or start again from the home page.",
        ),
        405 => (
            "This kind of request is not accepted here",
            "Go back and try again from the page you came from.",
        ),
        408 => (
            "Your request took too long to arrive",
            "Check your connection, then try again.",
        ),
        413 => (
            "What you sent is too large",
            "Try again with a smaller file or less data.",
        ),
        414 => (
            "This address is too long",
            "Go back and follow a shorter link, or shorten the address.",
        ),
        429 => ("Too many requests", "Wait a little, then try again."),
        431 => (
            "Your request carried too much information",
            "Clearing this site's cookies usually fixes this. Then try again.",
        ),
        500 => (
            "Something went wrong on our side",
            "Try again in a moment. If it keeps happening, let us know.",
        ),
        502 => (
            "The server behind this site had a problem",
            "This is usually brief. Please try again in a moment.",
        ),
        503 => match retry_after {
            Some(1) => {
                return (
                    "This service is unavailable right now",
                    "Please try again in a second.".to_string(),
                );
            }
            Some(s) => {
                return (
                    "This service is unavailable right now",
                    format!("Please try again in {s} seconds."),
                );
            }
            None => (
                "This service is unavailable right now",
                "Please try again in a little while.",
            ),
        },
        504 => (
            "The server behind this site took too long to answer",
            "Please try again in a moment. If you were sending something, such as a form or a \
             payment, check whether it went through before sending it again.",
        ),
        s if s < 500 => (
            "This request could not be served",
            "Check the address, then try again.",
        ),
        _ => ("Something went wrong", "Please try again in a moment."),
    };
    (headline, advice.to_string())
}

/// `s` as HTML text or attribute value.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/html"), Format::Html),
            (Some("application/json"), Format::ProblemJson),
            (Some("application/problem+json"), Format::ProblemJson),
            (Some("text/plain"), Format::Text),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                Format::Html,
            ),
            (
                Some("application/json;q=0.5, text/html;q=0.4"),
                Format::ProblemJson,
            ),
            (
                Some("text/html;q=0.2, application/json;q=0.9"),
                Format::ProblemJson,
            ),
            (Some("text/html;q=0, */*"), Format::Text),
            (Some("application/*"), Format::ProblemJson),
            (Some("text/*"), Format::Text),
            (Some("image/png"), Format::Text),
            (Some("text/html;q=abc"), Format::Text),
            (Some("TEXT/HTML"), Format::Html),
            (
                Some("text/plain;q=0, text/html;q=0, application/json;q=0"),
                Format::Text,
            ),
            (Some("garbage"), Format::Text),
            (Some(""), Format::Text),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(accept.map(str::as_bytes)), *want, "{accept:?}");
        }
    }

    #[test]
    fn proxy_status_values() {
        assert_eq!(
            proxy_status_error(FailureKind::ConnectionRefused, None),
            "faultline; error=connection_refused; details=\"the upstream server refused the connection\""
        );
        assert_eq!(
            proxy_status_received(503, None),
            "faultline; received-status=503"
        );
        assert_eq!(
            proxy_status_received(503, Some("a\"b\\c\r\n")),
            "faultline; received-status=503; next-hop=\"a\\\"b\\\\c\""
        );
    }

    fn req(accept: &'static str) -> Request<'static> {
        Request {
            request_id: "abc<1>",
            accept: Some(accept.as_bytes()),
            head: false,
            next_hop: None,
            retry_after: None,
        }
    }

    #[test]
    fn html_page_escapes_and_names_the_status() {
        let pages = ErrorPages::new(config::ErrorPages {
            support_url: Some("https://example.com/help?a=1&b=2".into()),
            proxy_status: true,
            ..Default::default()
        });
        let r = pages
            .render(
                Cause::Failure(FailureKind::ConnectionRefused),
                req("text/html"),
            )
            .unwrap();
        let body = std::str::from_utf8(&r.body).unwrap();
        assert!(body.contains("<title>502 Bad Gateway</title>"), "{body}");
        assert!(body.contains("abc&lt;1&gt;"));
        assert!(body.contains("href=\"https://example.com/help?a=1&amp;b=2\""));
        assert_eq!(r.header.status.as_u16(), 502);
        assert_eq!(
            r.header.headers["content-length"],
            body.len().to_string().as_str()
        );
    }

    #[test]
    fn html_page_says_what_happened_and_what_to_do_in_a_few_kib() {
        let pages = ErrorPages::new(config::ErrorPages::default());
        let unavailable = Request {
            retry_after: Some(12),
            ..req("text/html")
        };
        let cases = [
            (
                FailureKind::DestinationUnavailable,
                unavailable,
                "This service is unavailable right now",
                "Please try again in 12 seconds.",
            ),
            (
                FailureKind::HttpResponseTimeout,
                req("text/html"),
                "The server behind this site took too long to answer",
                "check whether it went through",
            ),
            (
                FailureKind::HttpRequestHeaderSectionSize,
                req("text/html"),
                "Your request carried too much information",
                "Clearing this site&#39;s cookies",
            ),
            (
                FailureKind::DestinationNotFound,
                req("text/html"),
                "There is nothing at this address",
                "Check the address",
            ),
            (
                FailureKind::Unauthorized,
                req("text/html"),
                "You need to sign in to see this",
                "check the key or credentials",
            ),
        ];
        for (kind, request, headline, advice) in cases {
            let r = pages.render(Cause::Failure(kind), request).unwrap();
            let body = std::str::from_utf8(&r.body).unwrap();
            assert!(body.contains(&format!("<h1>{headline}</h1>")), "{body}");
            assert!(body.contains(advice), "{body}");
            assert!(body.contains(&format!("Sorry, {}.", kind.detail().replace('\'', "&#39;"))));
            assert!(!body.contains("contact support"), "no support URL, no link");
            assert!(!body.contains("{{"), "every placeholder filled: {body}");
            assert!(body.len() < 3 * 1024, "{} bytes", body.len());
            for external in ["src=", "href=", "url(", "@import", "<script"] {
                assert!(!body.contains(external), "{external} in {body}");
            }
        }
        // An intercepted origin status gets the words of its class.
        let r = pages
            .render(Cause::Intercepted(429), req("text/html"))
            .unwrap();
        assert!(
            std::str::from_utf8(&r.body)
                .unwrap()
                .contains("<h1>Too many requests</h1>")
        );
    }

    #[test]
    fn templates_fill_in_one_pass() {
        let value = |name: &str| match name {
            "request_id" => Some("{{support_url}}".to_string()),
            "support_url" => Some("https://s".to_string()),
            _ => None,
        };
        assert_eq!(
            fill_template("id {{request_id}} at {{support_url}} {{other}} {{", value),
            "id {{support_url}} at https://s {{other}} {{"
        );
    }

    #[test]
    fn problem_json_fields() {
        let pages = ErrorPages::new(config::ErrorPages {
            proxy_status: true,
            ..Default::default()
        });
        let r = pages
            .render(
                Cause::Failure(FailureKind::DestinationUnavailable),
                req("application/json"),
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["title"], "Service Unavailable");
        assert_eq!(v["proxy_status"], "destination_unavailable");
        assert_eq!(v["request_id"], "abc<1>");
        assert_eq!(r.header.headers["retry-after"], "1");
        assert_eq!(r.header.headers["content-type"], "application/problem+json");
    }

    #[test]
    fn templates_and_head() {
        let mut templates = std::collections::BTreeMap::new();
        templates.insert(
            504,
            "<p>{{status}} {{reason}} {{request_id}}</p>".to_string(),
        );
        let pages = ErrorPages::new(config::ErrorPages {
            templates,
            ..Default::default()
        });
        let r = pages
            .render(
                Cause::Failure(FailureKind::HttpResponseTimeout),
                req("text/html"),
            )
            .unwrap();
        assert_eq!(&r.body[..], b"<p>504 Gateway Timeout abc&lt;1&gt;</p>");
        assert!(r.header.headers.get("proxy-status").is_none());
        let head = Request {
            head: true,
            ..req("text/html")
        };
        let r = pages
            .render(Cause::Failure(FailureKind::HttpResponseTimeout), head)
            .unwrap();
        assert!(r.body.is_empty());
        assert_eq!(r.header.headers["content-length"], "39");
    }
}
