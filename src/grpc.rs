//! gRPC calls (DESIGN §9): what makes a request one, its deadline (`grpc-timeout`), and the
//! answers the proxy gives one itself.
//!
//! A gRPC client reads the call's outcome from `grpc-status`, not from the HTTP status, so a
//! proxy page would reach it as an unhelpful `UNKNOWN`/`INTERNAL`. Before the response started,
//! the proxy answers Trailers-Only (HTTP 200, `content-type: application/grpc`, `grpc-status`,
//! `grpc-message`: one HEADERS frame with END_STREAM); after it started, over HTTP/2, trailers
//! carrying the status end the stream. The code comes from [`FailureKind::grpc_status`].

use std::time::Duration;

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::failure::FailureKind;

/// The request header carrying a call's deadline.
pub(crate) const TIMEOUT: &str = "grpc-timeout";

/// Whether `req` is a gRPC call: its `content-type` is `application/grpc` or a subtype
/// (`application/grpc+proto`, `application/grpc-web`…).
pub(crate) fn is_call(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
        })
}

/// The deadline a call carries in `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). A malformed value is ignored, as gRPC servers do.
pub(crate) fn timeout(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get(TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value, rounded down (the backend must not outlive the proxy's
/// wait) in the finest unit whose count fits the eight digits allowed.
pub(crate) fn timeout_value(left: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let (n, unit) = if left.as_micros() <= MAX {
        (left.as_micros(), 'u')
    } else if left.as_millis() <= MAX {
        (left.as_millis(), 'm')
    } else {
        (u128::from(left.as_secs()).min(MAX), 'S')
    };
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0u"))
}

/// `grpc-message` text: percent-encoded, every byte outside printable ASCII and `%` itself
/// (gRPC over HTTP/2, "Responses").
pub(crate) fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `grpc-status` and `grpc-message` of a call the proxy failed with `kind`.
pub(crate) fn status_fields(kind: FailureKind) -> [(&'static str, HeaderValue); 2] {
    let message = HeaderValue::from_str(&percent_encode(kind.detail()))
        .unwrap_or(HeaderValue::from_static(""));
    [
        (
            "grpc-status",
            HeaderValue::from(u16::from(kind.grpc_status())),
        ),
        ("grpc-message", message),
    ]
}

/// The Trailers-Only answer to a call the proxy failed with `kind`: HTTP 200 and the gRPC
/// status in the header section, which ends the stream. `Proxy-Status` and `X-Request-Id` as on
/// every proxy answer.
pub(crate) fn trailers_only(
    kind: FailureKind,
    request_id: &str,
    proxy_status: Option<String>,
) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(200, Some(6))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    for (name, value) in status_fields(kind) {
        header.insert_header(name, value)?;
    }
    header.insert_header("X-Request-Id", request_id)?;
    if let Some(proxy_status) = proxy_status {
        header.insert_header("Proxy-Status", proxy_status)?;
    }
    // Over HTTP/1 (where gRPC does not run) the answer still needs its framing.
    header.insert_header(http::header::CONTENT_LENGTH, "0")?;
    Ok(header)
}

/// The `grpc-status` code in a response header section or trailers, when well-formed.
pub(crate) fn status_in(headers: &http::HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse().ok().filter(|code| *code <= 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/a.B/C", None).expect("request");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn recognises_calls_by_content_type() {
        assert!(is_call(&req(&[("content-type", "application/grpc")])));
        assert!(is_call(&req(&[("content-type", "application/grpc+proto")])));
        assert!(is_call(&req(&[("content-type", "Application/GRPC-web")])));
        assert!(!is_call(&req(&[("content-type", "application/json")])));
        assert!(!is_call(&req(&[])));
    }

    #[test]
    fn parses_and_writes_grpc_timeout() {
        let t = |v| timeout(&req(&[(TIMEOUT, v)]));
        assert_eq!(t("500m"), Some(Duration::from_millis(500)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("123456789m"), None, "nine digits");
        assert_eq!(t("5x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("-5m"), None);
        assert_eq!(timeout_value(Duration::from_millis(498)), "498000u");
        assert_eq!(timeout_value(Duration::from_secs(1000)), "1000000m");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(timeout_value(Duration::ZERO), "0u");
    }

    #[test]
    fn percent_encodes_the_message() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("100% é\n"), "100%25 %C3%A9%0A");
    }

    #[test]
    fn answers_trailers_only() {
        let h = trailers_only(FailureKind::ConnectionRefused, "rid", Some("ps".into()))
            .expect("header");
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["content-type"], "application/grpc");
        assert_eq!(h.headers["grpc-status"], "14");
        assert_eq!(
            h.headers["grpc-message"],
            "the upstream server refused the connection"
        );
        assert_eq!(h.headers["x-request-id"], "rid");
        assert_eq!(h.headers["proxy-status"], "ps");
        assert_eq!(status_in(&h.headers), Some(14));
    }
}
