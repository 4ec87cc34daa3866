//! The request's `Host` (HTTP/2: `:authority`, which Pingora keeps as the URI's authority):
//! present, one, and well-formed, as RFC 9112 §3.2 requires of a server.
//!
//! Routing, the access log and the backend all read `Host`; one that is missing, or that is not
//! a host name, an address or an IP literal (`a"b<c>`, `x y`, `x/../y`), is refused with 400
//! rather than forwarded for the origin to read as it likes. Pingora itself refuses, before any
//! hook runs, a second `Host` and an absolute-form target whose authority differs from `Host`
//! (`pingora-core` `protocols/http/authority.rs`, `validate_request_authority`); the same is
//! checked here for any session it did not come through.
//!
//! HTTP/1.0 does not require `Host`. Such a request is taken, and given the `Host` of the
//! address it reached (the listener's, as RFC 9112 §3.3 reconstructs a target URI without an
//! authority; nginx's `$host` falls back to the server's name the same way): Pingora forwards
//! it as HTTP/1.1, which without `Host` an origin must refuse.

use http::Version;
use http::header::HOST;
use pingora::http::RequestHeader;
use pingora_http::authority::raw_target_authority;

/// Why a request's host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    /// HTTP/1.1 (or later) without `Host` or an authority.
    Missing,
    /// More than one `Host` field line.
    Duplicate,
    /// Not a reg-name, IPv4 address or IP literal with an optional port (RFC 3986 §3.2.2).
    Invalid,
    /// `Host` names another authority than the request target.
    Mismatch,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostError::Missing => "no Host",
            HostError::Duplicate => "more than one Host",
            HostError::Invalid => "an invalid Host",
            HostError::Mismatch => "a Host that differs from the request target's authority",
        })
    }
}

impl std::error::Error for HostError {}

/// What the request's host needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    /// A well-formed host: nothing to do.
    Valid,
    /// HTTP/1.0 without one: it gets the listener's.
    Absent,
}

/// Checks `req`'s `Host` and authority.
pub(crate) fn check(req: &RequestHeader) -> Result<Host, HostError> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(HostError::Duplicate);
    }
    // HTTP/2's `:authority` is the URI's; an HTTP/1 absolute-form target keeps its authority
    // in the raw target only.
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| raw_target_authority(req.raw_path()).authority());
    let value = match (host.map(|h| h.as_bytes()), authority) {
        (Some(host), Some(authority)) if !host.eq_ignore_ascii_case(authority) => {
            return Err(HostError::Mismatch);
        }
        (Some(value), _) | (None, Some(value)) => value,
        (None, None) => {
            return match req.version {
                Version::HTTP_09 | Version::HTTP_10 => Ok(Host::Absent),
                _ => Err(HostError::Missing),
            };
        }
    };
    if valid(value) {
        Ok(Host::Valid)
    } else {
        Err(HostError::Invalid)
    }
}

/// Whether `value` is `host [ ":" port ]` with a non-empty host (RFC 3986 §3.2.2, §3.2.3; an
/// `http` URI may not have an empty host, RFC 9110 §4.2.1). Percent-escapes are refused, though
/// the grammar has them: DNS names never need them, and a host that decodes to another is the
/// ambiguity this check exists to remove.
pub(crate) fn valid(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = memchr::memchr(b']', value) else {
            return false;
        };
        let port = match &value[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return false,
        };
        if !ip_literal(&value[1..end]) {
            return false;
        }
        (None, port)
    } else {
        match memchr::memrchr(b':', value) {
            Some(colon) => (Some(&value[..colon]), Some(&value[colon + 1..])),
            None => (Some(value), None),
        }
    };
    let host_ok = host.is_none_or(|h| !h.is_empty() && h.iter().all(|b| reg_name_byte(*b)));
    // port = *DIGIT; a number no port can have is refused too.
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok())
    });
    host_ok && port_ok
}

/// unreserved / sub-delims (RFC 3986 §2.2, §2.3).
fn reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// [`reg_name_byte`] as a table: every request's `Host` goes through it byte by byte.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    table
};

/// IPv6address / IPvFuture, between the brackets.
fn ip_literal(inner: &[u8]) -> bool {
    match inner {
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = memchr::memchr(b'.', rest) else {
                return false;
            };
            let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
            !version.is_empty()
                && version.iter().all(u8::is_ascii_hexdigit)
                && !tail.is_empty()
                && tail.iter().all(|b| reg_name_byte(*b) || *b == b':')
        }
        _ => std::str::from_utf8(inner)
            .ok()
            .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_syntax() {
        let good = [
            "a",
            "example.com",
            "example.com.",
            "EXAMPLE.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::7]",
            "[v1.fe80::a+en1]",
            "a.com:",
            "x_y-z~",
        ];
        for g in good {
            assert!(valid(g.as_bytes()), "{g}");
        }
        let bad = [
            "", ":80", "a\"b<c>", "x y", "x/../y", "a\\b", "a%2fb", "a@b", "a:b", "a:99999",
            "a:123456", "[::1", "[::1]x", "[nope]", "[v.x]", "a\tb", "a?b", "a#b",
        ];
        for b in bad {
            assert!(!valid(b.as_bytes()), "{b}");
        }
    }

    fn req(version: Version, target: &str, hosts: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        r.set_version(version);
        for h in hosts {
            r.append_header("host", *h).expect("host");
        }
        r
    }

    #[test]
    fn presence_and_agreement() {
        let v11 = Version::HTTP_11;
        assert_eq!(check(&req(v11, "/", &["a.com"])), Ok(Host::Valid));
        assert_eq!(check(&req(v11, "/", &[])), Err(HostError::Missing));
        assert_eq!(
            check(&req(v11, "/", &["a", "a"])),
            Err(HostError::Duplicate)
        );
        assert_eq!(check(&req(v11, "/", &["x y"])), Err(HostError::Invalid));
        assert_eq!(check(&req(Version::HTTP_10, "/", &[])), Ok(Host::Absent));
        assert_eq!(
            check(&req(Version::HTTP_10, "/", &["a/b"])),
            Err(HostError::Invalid)
        );
        // Absolute form: the authority is the host, and Host must agree with it.
        assert_eq!(
            check(&req(v11, "http://a.com/x", &["A.com"])),
            Ok(Host::Valid)
        );
        assert_eq!(
            check(&req(v11, "http://a.com/x", &["b.com"])),
            Err(HostError::Mismatch)
        );
        assert_eq!(check(&req(v11, "http://a.com/x", &[])), Ok(Host::Valid));
    }
}
