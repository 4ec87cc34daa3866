//! Request shapes Pingora 0.9 refuses on its own, before any `ProxyHttp` hook runs, with a bare
//! `Server: Pingora` answer: no `Proxy-Status`, no request id, no access-log line. faultline
//! reads every HTTP/1 request header itself first (in `connections`), so it
//! refuses these from the raw bytes and answers with its own page, header and log line:
//!
//! | shape | Pingora (0.9.1) | faultline |
//! |---|---|---|
//! | `CONNECT` | 405, pingora-proxy `lib.rs` `handle_new_request` | 405 `method_not_allowed`, with `Allow`: it is no forward proxy |
//! | a target longer than the URI parser takes | 400, pingora-http `set_raw_path` (`http`'s 65,534-byte limit) | 414 `http_request_target_size` (RFC 9112 §3) |
//! | an absolute-form target whose authority is ambiguous or not `Host` | 400, pingora-core `protocols/http/authority.rs` `validate_request_authority` | 400 `http_request_error` |
//! | HTTP/1.0 with `Transfer-Encoding` | 400, pingora-core `protocols/http/v1/server.rs` `validate_request` | 400 `http_request_error` (RFC 9112 §6.1: faulty framing) |
//!
//! The common request (an origin-form target, not CONNECT, HTTP/1.1) costs a look at its
//! request line and one parse of its header; the rarer shapes are looked at closely only when
//! the request line has them.

use std::mem::MaybeUninit;

use pingora::http::RequestHeader;
use pingora::protocols::http::authority::validate_request_authority;

use crate::failure::FailureKind;

/// Longest request target Pingora can parse: `http`'s limit on a URI (`u16::MAX - 1`).
pub(crate) const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

/// The request line of a raw HTTP/1 request header, split on its two spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLine<'a> {
    /// The method token, as sent (methods are case-sensitive).
    pub method: &'a [u8],
    /// The request target, as sent.
    pub target: &'a [u8],
    /// The protocol version (`HTTP/1.1`).
    pub version: &'a [u8],
}

/// The request line of `raw`, after any empty lines before it (RFC 9112 §2.2); `None` when it
/// is not three parts split by single spaces (the request checks and Pingora's parser refuse
/// such a line).
pub(crate) fn request_line(raw: &[u8]) -> Option<RequestLine<'_>> {
    let start = raw.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let rest = &raw[start..];
    let end = memchr::memchr(b'\n', rest)?;
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let first = memchr::memchr(b' ', line)?;
    let (method, rest) = (&line[..first], &line[first + 1..]);
    let second = memchr::memchr(b' ', rest)?;
    let (target, version) = (&rest[..second], &rest[second + 1..]);
    if method.is_empty() || target.is_empty() || version.contains(&b' ') {
        return None;
    }
    Some(RequestLine {
        method,
        target,
        version,
    })
}

/// The values of the header fields named `name` (lowercase) in `raw`, whitespace trimmed.
pub(crate) fn fields<'a>(raw: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    let start = raw
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(raw.len());
    raw[start..]
        .split(|b| *b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(move |line| {
            let colon = memchr::memchr(b':', line)?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| line[colon + 1..].trim_ascii())
        })
}

/// Why Pingora would refuse the raw HTTP/1 request header `raw` before faultline's hooks, as
/// the kind faultline answers it with instead; `None` when Pingora takes it (or when the
/// request line is malformed, which is the request checks' and the parser's to refuse).
pub(crate) fn check(raw: &[u8]) -> Option<FailureKind> {
    let line = request_line(raw)?;
    if line.method == b"CONNECT" {
        return Some(FailureKind::MethodNotAllowed);
    }
    // Pingora drops a fragment before parsing the target.
    let target = line
        .target
        .split(|b| *b == b'#')
        .next()
        .unwrap_or(line.target);
    if target.len() > MAX_TARGET_BYTES {
        return Some(FailureKind::HttpRequestTargetSize);
    }
    if line.version == b"HTTP/1.0" && fields(raw, "transfer-encoding").next().is_some() {
        return Some(FailureKind::HttpRequestError);
    }
    // Origin-form and asterisk-form carry no authority that could disagree with `Host`.
    if !target.starts_with(b"/") && target != b"*" && !authority_accepted(raw, line) {
        return Some(FailureKind::HttpRequestError);
    }
    parse_refusal(raw)
}

/// Headers Pingora parses at most (pingora-core `protocols/http/v1/common.rs` `MAX_HEADERS`).
const MAX_HEADERS: usize = 256;

/// Why Pingora would refuse the header: its parser (httparse, as Pingora calls it) or its
/// `Content-Length` rule. A broken method token or version is left alone: Pingora first tries
/// to repair the request line by escaping it, and refuses only what it cannot repair.
///
/// Every HTTP/1 request goes through this, so the header is parsed once, into slots left
/// uninitialised (256 of them), and the `Content-Length` rule reads the parsed fields.
fn parse_refusal(raw: &[u8]) -> Option<FailureKind> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(raw, &mut slots) {
        Ok(httparse::Status::Complete(_)) => {
            let parsed = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
            content_length_refusal(|name| {
                parsed
                    .clone()
                    .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| v.trim_ascii())
            })
        }
        Ok(httparse::Status::Partial) | Err(httparse::Error::Token | httparse::Error::Version) => {
            content_length_refusal(|name| fields(raw, name))
        }
        Err(httparse::Error::TooManyHeaders) => Some(FailureKind::HttpRequestHeaderSectionSize),
        Err(_) => Some(FailureKind::HttpRequestError),
    }
}

/// Differing or unparsable `Content-Length` values (RFC 9110 §8.6), which Pingora refuses;
/// identical repeats are one length. `Transfer-Encoding` overrides them (and the request
/// checks refuse the pair). `fields` gives the values of the fields of a (lowercase) name.
fn content_length_refusal<'a, I>(fields: impl Fn(&'static str) -> I) -> Option<FailureKind>
where
    I: Iterator<Item = &'a [u8]>,
{
    let mut lengths = fields("content-length").flat_map(|v| v.split(|b| *b == b','));
    let first = lengths.next()?.trim_ascii();
    let valid = !first.is_empty() && first.iter().all(u8::is_ascii_digit);
    let agree = lengths.all(|v| v.trim_ascii() == first);
    (fields("transfer-encoding").next().is_none() && !(valid && agree))
        .then_some(FailureKind::HttpRequestError)
}

/// Whether Pingora accepts the authority of a target in another form than origin-form, asked of
/// Pingora's own check so that the two can never disagree (rare requests only: it builds a
/// header).
fn authority_accepted(raw: &[u8], line: RequestLine<'_>) -> bool {
    let Ok(mut req) = RequestHeader::build(line.method, line.target, Some(2)) else {
        return false;
    };
    for host in fields(raw, "host") {
        if req.append_header(http::header::HOST, host).is_err() {
            return false;
        }
    }
    validate_request_authority(&req).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
        let longest = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES - 1)
        );
        let fragment = format!("GET /a#{} HTTP/1.1\r\nHost: a\r\n\r\n", "f".repeat(70_000));
        let bad = Some(FailureKind::HttpRequestError);
        let many_headers = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS)
        );
        let cases: &[(&[u8], Option<FailureKind>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                Some(FailureKind::MethodNotAllowed),
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: b\r\n\r\n",
                Some(FailureKind::MethodNotAllowed),
            ),
            // Methods are case-sensitive: this is an extension method, forwarded.
            (b"connect / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (long.as_bytes(), Some(FailureKind::HttpRequestTargetSize)),
            (longest.as_bytes(), None),
            (fragment.as_bytes(), None),
            (
                b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                bad,
            ),
            (
                b"POST / HTTP/1.0\r\nHost: a\r\ntransfer-encoding:chunked\r\n\r\n",
                bad,
            ),
            (
                b"POST / HTTP/1.0\r\nHost: a\r\nX-Transfer-Encoding: chunked\r\n\r\n",
                None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                None,
            ),
            (b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (b"GET http://a/x HTTP/1.1\r\n\r\n", None),
            (b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", bad),
            (b"GET http://a:80/x HTTP/1.1\r\nHost: a\r\n\r\n", bad),
            (b"GET http://u@a/x HTTP/1.1\r\nHost: u@a\r\n\r\n", bad),
            (b"GET http:/\\a/x HTTP/1.1\r\nHost: a\r\n\r\n", bad),
            // A request line Pingora may repair is left to it.
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            // What Pingora's parser refuses outright.
            (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", bad),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", bad),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", bad),
            (
                many_headers.as_bytes(),
                Some(FailureKind::HttpRequestHeaderSectionSize),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                bad,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                bad,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n",
                bad,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n",
                None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:\t5 \r\nContent-Length: 5\r\n\r\n",
                None,
            ),
            // Transfer-Encoding overrides the lengths (the request checks refuse the pair).
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n",
                None,
            ),
            // A method token the parser refuses (Pingora repairs the request line): the lengths
            // are read from the raw header instead.
            (
                b"G@T / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                bad,
            ),
            (
                b"G@T / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                None,
            ),
            (b"GET\r\n\r\n", None),
            (b"", None),
        ];
        for (raw, want) in cases {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]);
            assert_eq!(check(raw), *want, "{shown}");
        }
    }

    #[test]
    fn fields_stop_at_the_end_of_the_header() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:  r1 \r\n\r\nx-request-id: body";
        assert_eq!(
            fields(raw, "x-request-id").collect::<Vec<_>>(),
            vec![&b"r1"[..]]
        );
        assert_eq!(fields(raw, "host").collect::<Vec<_>>(), vec![&b"a"[..]]);
        assert_eq!(fields(raw, "accept").next(), None);
    }
}
