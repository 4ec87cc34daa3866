//! Requests refused before routing: HTTP/1 framing that a server behind faultline could read
//! differently (request smuggling), header sections too large to be honest, and a host or path
//! that routing and the origin could read differently ([`host`], [`path`]).
//!
//! Pingora already refuses differing duplicate `Content-Length`, obsolete line folding and CR in
//! values. It accepts, and normalizes, `Content-Length` beside `Transfer-Encoding` and bare LF
//! line ends; faultline refuses those outright, from the raw header bytes, because a request that
//! two parsers may frame differently has no safe reading.

pub(crate) mod host;
pub(crate) mod path;

use pingora::http::RequestHeader;
use pingora_http::authority::{RawTargetAuthority, raw_target_authority};

use crate::failure::FailureKind;

/// Largest request header section accepted (request line and headers).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why the raw HTTP/1 request header `raw` must be refused, if it must.
pub fn check(raw: &[u8]) -> Option<FailureKind> {
    if raw.len() > MAX_HEADER_BYTES {
        return Some(FailureKind::HttpRequestHeaderSectionSize);
    }
    // One pass over the line ends (every request pays for it, hence memchr): every LF must end a
    // CRLF, and only lines that may name a framing header are looked at closely.
    let mut content_length = false;
    let mut transfer_encodings = 0usize;
    let mut chunked_last = false;
    let mut start = None;
    for end in memchr::memchr_iter(b'\n', raw) {
        if end == 0 || raw[end - 1] != b'\r' {
            return Some(FailureKind::HttpRequestError);
        }
        // The first line is the request line.
        let Some(from) = start.replace(end + 1) else {
            continue;
        };
        let line = &raw[from..end - 1];
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            // Only plain `chunked` is framing faultline forwards unchanged.
            let value = String::from_utf8_lossy(value);
            chunked_last = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    let bad_framing = (transfer_encodings > 0 && content_length)
        || transfer_encodings > 1
        || (transfer_encodings == 1 && !chunked_last);
    bad_framing.then_some(FailureKind::HttpRequestError)
}

/// Why a request's target (its host and path) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// The host.
    Host(host::HostError),
    /// The path.
    Path(path::PathError),
    /// The normalised path could not be set on the request.
    Unrepresentable,
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Host(e) => e.fmt(f),
            TargetError::Path(e) => e.fmt(f),
            TargetError::Unrepresentable => f.write_str("a path that cannot be forwarded"),
        }
    }
}

impl std::error::Error for TargetError {}

/// Checks the host of `req` and normalises its path in place (the query is kept as it came), so
/// that routing and the backend see the same target. Says whether the request has no host at
/// all (HTTP/1.0), for the caller to give it one.
pub(crate) fn check_target(req: &mut RequestHeader) -> Result<host::Host, TargetError> {
    let host = host::check(req).map_err(TargetError::Host)?;
    let raw = req.raw_path();
    let path_and_query = match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { path_and_query, .. } => path_and_query,
        _ => raw,
    };
    let (path, query) = match memchr::memchr(b'?', path_and_query) {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, &b""[..]),
    };
    if query.iter().any(|b| matches!(b, 0..=0x1f | 0x7f)) {
        return Err(TargetError::Path(path::PathError::Control));
    }
    let Some(mut target) = path::normalize(path).map_err(TargetError::Path)? else {
        return Ok(host);
    };
    target.extend_from_slice(query);
    if req.uri.authority().is_some() {
        // HTTP/2: the authority stays on the URI, where Pingora takes `:authority` (or an
        // HTTP/1 backend's `Host`) from.
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query = Some(
            http::uri::PathAndQuery::try_from(target).map_err(|_| TargetError::Unrepresentable)?,
        );
        let uri = http::Uri::from_parts(parts).map_err(|_| TargetError::Unrepresentable)?;
        req.set_uri(uri);
    } else {
        // HTTP/1: origin-form from here on (an absolute-form authority equals `Host`, checked
        // above), bytes kept as they are.
        req.set_raw_path(&target)
            .map_err(|_| TargetError::Unrepresentable)?;
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&[u8], Option<FailureKind>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", None),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", None),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n", None),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(FailureKind::HttpRequestError),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Some(FailureKind::HttpRequestError),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                Some(FailureKind::HttpRequestError),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
                Some(FailureKind::HttpRequestError),
            ),
            (
                b"POST / HTTP/1.1\r\nX-Transfer-Encoding: gzip\r\nContent-Length: 4\r\nCookie: a\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\nHost: a\n\n", Some(FailureKind::HttpRequestError)),
            (b"\nGET / HTTP/1.1\r\n\r\n", Some(FailureKind::HttpRequestError)),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", Some(FailureKind::HttpRequestError)),
        ];
        for (raw, want) in cases {
            assert_eq!(check(raw), *want, "{}", String::from_utf8_lossy(raw));
        }
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(check(&big), Some(FailureKind::HttpRequestHeaderSectionSize));
    }
}
