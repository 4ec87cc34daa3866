//! What a reverse proxy changes on the way to the upstream: hop-by-hop headers removed,
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Via` set, the request id passed on. `Host` stays
//! as the client sent it, so no `X-Forwarded-Host` is needed.

use std::net::IpAddr;

use http::HeaderValue;
use http::header::{self, HeaderName};
use pingora::ErrorType::InvalidHTTPHeader;
use pingora::OrErr;
use pingora::http::RequestHeader;

use crate::config::HeaderCase;

/// The `Via` pseudonym (RFC 9110 §7.6.3): never a host name or address.
pub(crate) const VIA_NAME: &str = "faultline";

/// Hop-by-hop headers (RFC 9110 §7.6.1). `Transfer-Encoding` is framing and left to Pingora.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// What the proxy knows of the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The peer's IP, when the connection has one.
    pub ip: Option<IpAddr>,
    /// The peer is a trusted proxy: its `X-Forwarded-For` is extended, not replaced.
    pub trusted: bool,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The request id.
    pub request_id: &'a str,
    /// The HTTP version the client spoke (the upstream request may use another).
    pub version: http::Version,
}

/// Rewrites the upstream request header in place.
///
/// This runs on every request: one pass over the names finds what needs removing or reading
/// (most requests carry none of it), and the four headers the proxy sets are computed first and
/// written in one step (see [`HeaderCase`]).
pub fn apply(req: &mut RequestHeader, client: Client<'_>, case: HeaderCase) -> pingora::Result<()> {
    let present = Present::scan(&req.headers);
    if present.hop_by_hop {
        strip_hop_by_hop(req);
    }
    if present.proxy_status {
        // A client cannot speak for this proxy.
        req.remove_header(&PROXY_STATUS);
    }
    if present.claims && !client.trusted {
        // Nor, unless it is a trusted proxy, for where the request came from: origins that
        // believe these would take a client's word for its address, host or scheme.
        for name in &CLIENT_CLAIMS {
            req.remove_header(*name);
        }
    }

    let forwarded_for = match client.ip {
        Some(ip) => {
            // Only a trusted proxy may say who the client was; anyone else could claim any
            // address.
            let prior = present
                .forwarded_for
                .then(|| req.headers.get(&X_FORWARDED_FOR))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .filter(|p| client.trusted && !p.trim().is_empty());
            Some(match prior {
                Some(prior) => value(format!("{prior}, {ip}"))?,
                None => ip_value(ip)?,
            })
        }
        None => {
            if present.forwarded_for {
                req.remove_header(&X_FORWARDED_FOR);
            }
            None
        }
    };
    let proto = if client.proto == "https" {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    };
    let (version, ours) = match client.version {
        http::Version::HTTP_10 => ("1.0", HeaderValue::from_static("1.0 faultline")),
        http::Version::HTTP_2 => ("2", HeaderValue::from_static("2 faultline")),
        _ => ("1.1", HeaderValue::from_static("1.1 faultline")),
    };
    let prior_via = present
        .via
        .then(|| req.headers.get(header::VIA))
        .flatten()
        .and_then(|v| v.to_str().ok());
    let via = match prior_via {
        Some(prior) => value(format!("{prior}, {version} {VIA_NAME}"))?,
        None => ours,
    };
    // A client's own well-formed id is the request id already: nothing to rewrite.
    let already = present.request_id
        && {
            let mut ids = req.headers.get_all(&X_REQUEST_ID).iter();
            matches!((ids.next(), ids.next()), (Some(v), None) if v.as_bytes() == client.request_id.as_bytes())
        };
    let request_id = if already {
        None
    } else {
        let mut id = value(client.request_id)?;
        // Never indexed by HPACK towards an HTTP/2 upstream (RFC 7541 §7.1.3): a value new on
        // every request would only push the stable headers out of the connection's table,
        // and each one added makes the encoder's search for the name longer.
        id.set_sensitive(true);
        Some(id)
    };

    let set = [
        (&X_FORWARDED_FOR, "X-Forwarded-For", forwarded_for),
        (&X_FORWARDED_PROTO, "X-Forwarded-Proto", Some(proto)),
        (&header::VIA, "Via", Some(via)),
        (&X_REQUEST_ID, "X-Request-Id", request_id),
    ];
    match case {
        HeaderCase::Preserve => {
            for (_, spelled, value) in set {
                if let Some(value) = value {
                    req.insert_header(spelled, value)?;
                }
            }
            Ok(())
        }
        HeaderCase::Canonical => insert_canonical(req, set),
    }
}

/// A header the proxy sets: its name, that name as written when case is preserved, its value.
type Set = (&'static HeaderName, &'static str, Option<HeaderValue>);

/// Inserts `set` into the header map itself. Pingora gives no mutable access to the map of a
/// [`RequestHeader`], but converts one into [`http::request::Parts`] and back: both moves. The
/// case-preserving map is dropped on the way, and room for all four is reserved at once (Pingora
/// sizes the map to the client's header count, so inserting one at a time grows it repeatedly).
fn insert_canonical(req: &mut RequestHeader, set: [Set; 4]) -> pingora::Result<()> {
    // What the conversion back cannot recover from the URI: an absolute-form or non-UTF-8
    // target, and HTTP/2's end-of-stream flag.
    let target = (!target_in_uri(req)).then(|| req.raw_path().to_vec());
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    let inserted = parts
        .headers
        .try_reserve(set.len())
        .and_then(|()| {
            set.into_iter()
                .try_for_each(|(name, _, value)| match value {
                    Some(value) => parts.headers.try_insert(name.clone(), value).map(drop),
                    None => Ok(()),
                })
        })
        .or_err(InvalidHTTPHeader, "too many request headers");
    *req = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    if let Some(target) = target {
        req.set_raw_path(&target)?;
    }
    inserted
}

/// Whether the request target is exactly the URI's path and query, so that a header rebuilt from
/// the URI writes the same target.
fn target_in_uri(req: &RequestHeader) -> bool {
    req.raw_path_is_utf8()
        && req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path())
}

/// A header value, or Pingora's error for an invalid one.
fn value(text: impl TryInto<HeaderValue>) -> pingora::Result<HeaderValue> {
    text.try_into()
        .map_err(|_| pingora::Error::new(InvalidHTTPHeader))
}

/// Which of the names the proxy acts on a request carries, found in one pass over its names.
#[derive(Debug, Default)]
struct Present {
    hop_by_hop: bool,
    proxy_status: bool,
    claims: bool,
    forwarded_for: bool,
    via: bool,
    request_id: bool,
}

impl Present {
    fn scan(headers: &http::HeaderMap) -> Self {
        let mut present = Present::default();
        for (name, value) in headers {
            // One string match per name (by length, then bytes) rather than a comparison with
            // each of the fourteen names; `names_are_scanned` keeps it in step with the lists.
            let flag = match name.as_str() {
                // What every gRPC call carries, and what stripping would put back as it was:
                // no cause to rebuild the header.
                "te" if value.as_bytes() == b"trailers" => continue,
                "x-forwarded-for" => &mut present.forwarded_for,
                "via" => &mut present.via,
                "x-request-id" => &mut present.request_id,
                "proxy-status" => &mut present.proxy_status,
                "forwarded" | "x-real-ip" | "x-forwarded-host" | "x-forwarded-port" => {
                    &mut present.claims
                }
                "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" => {
                    &mut present.hop_by_hop
                }
                _ => continue,
            };
            *flag = true;
        }
        present
    }
}

/// An address as a header value; IPv4 written without the formatting machinery or a heap
/// string (this runs on every request).
fn ip_value(ip: IpAddr) -> pingora::Result<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return value(ip.to_string());
    };
    let mut out = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        for digit in &digits[skip..] {
            out[len] = b'0' + digit;
            len += 1;
        }
    }
    value(&out[..len])
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers in which a client claims where the request came from; only trusted proxies' pass.
/// (`X-Forwarded-For` and `X-Forwarded-Proto` are rewritten for everyone.)
static CLIENT_CLAIMS: [&HeaderName; 4] =
    [&FORWARDED, &X_REAL_IP, &X_FORWARDED_HOST, &X_FORWARDED_PORT];

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `req` asks for a protocol upgrade, which [`apply`] passes on to the backend: an
/// `Upgrade` header and the `upgrade` option in `Connection` (RFC 9110 §7.8). Only such a
/// request may be answered `101 Switching Protocols` (RFC 9110 §15.2.2); a `101` to any other
/// request is an invalid response.
pub(crate) fn asks_for_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::UPGRADE)
        && req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers and those the client named in `Connection`, but keeps a protocol
/// upgrade (WebSocket) intact, which Pingora proxies end to end.
fn strip_hop_by_hop(req: &mut RequestHeader) {
    let fixed: [&HeaderName; 6] = [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::UPGRADE,
    ];
    // The common request has none of them: one pass of lookups, no allocation.
    if !fixed.iter().any(|name| req.headers.contains_key(*name)) {
        return;
    }
    let connection: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let upgrade =
        connection.iter().any(|t| t == "upgrade") && req.headers.contains_key(header::UPGRADE);
    // `TE: trailers` says the client takes trailers: gRPC servers require it, and it is the one
    // `TE` an HTTP/2 request may carry (RFC 9113 §8.2.2). It travels on; any other `TE` is this
    // hop's.
    let trailers = req
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in connection.iter().map(String::as_str).chain(HOP_BY_HOP) {
        let keep = upgrade && (name == "upgrade" || name == "connection");
        // Never let `Connection` smuggle away end-to-end framing or identity headers.
        let protected = matches!(name, "host" | "content-length" | "transfer-encoding");
        if !keep && !protected {
            req.remove_header(name);
        }
    }
    if trailers {
        let _ = req.insert_header(header::TE, "trailers");
    }
    if upgrade {
        // Only the upgrade token travels on.
        let _ = req.insert_header(header::CONNECTION, "upgrade");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_scanned() {
        // [hop_by_hop, proxy_status, claims, forwarded_for, via, request_id]
        let flags = |name: &HeaderName| {
            let mut headers = http::HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            let p = Present::scan(&headers);
            [
                p.hop_by_hop,
                p.proxy_status,
                p.claims,
                p.forwarded_for,
                p.via,
                p.request_id,
            ]
        };
        let only = |i: usize| std::array::from_fn::<bool, 6, _>(|j| i == j);
        for name in HOP_BY_HOP {
            assert_eq!(flags(&HeaderName::from_static(name)), only(0), "{name}");
        }
        assert_eq!(flags(&PROXY_STATUS), only(1));
        for name in CLIENT_CLAIMS {
            assert_eq!(flags(name), only(2), "{name}");
        }
        assert_eq!(flags(&X_FORWARDED_FOR), only(3));
        assert_eq!(flags(&header::VIA), only(4));
        assert_eq!(flags(&X_REQUEST_ID), only(5));
        for name in [
            header::HOST,
            header::ACCEPT,
            X_FORWARDED_PROTO.clone(),
            HeaderName::from_static("x-forwarded-fo"),
        ] {
            assert_eq!(flags(&name), [false; 6], "{name}");
        }
        // `TE: trailers` alone is left as it is; with any other `TE` beside it, the header is
        // rebuilt.
        let te = |values: &[&'static str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(header::TE, HeaderValue::from_static(v));
            }
            Present::scan(&headers).hop_by_hop
        };
        assert!(!te(&["trailers"]));
        assert!(te(&["Trailers"]));
        assert!(te(&["trailers", "gzip"]));
        assert!(te(&["gzip", "trailers"]));
    }

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed).unwrap(), ip);
        }
    }

    const CASES: [HeaderCase; 2] = [HeaderCase::Canonical, HeaderCase::Preserve];

    fn client() -> Client<'static> {
        Client {
            ip: Some("10.1.2.3".parse().unwrap()),
            trusted: true,
            proto: "http",
            request_id: "rid",
            version: http::Version::HTTP_11,
        }
    }

    #[test]
    fn sets_forwarding_headers_and_strips_hop_by_hop() {
        for case in CASES {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("host", "app.example").unwrap();
            r.insert_header("connection", "keep-alive, x-secret")
                .unwrap();
            r.insert_header("keep-alive", "timeout=5").unwrap();
            r.insert_header("x-secret", "1").unwrap();
            r.insert_header("te", "gzip").unwrap();
            r.insert_header("x-forwarded-for", "192.0.2.1").unwrap();
            r.insert_header("proxy-status", "faultline; error=forged")
                .unwrap();
            apply(&mut r, client(), case).unwrap();
            let h = &r.headers;
            assert!(h.get("connection").is_none());
            assert!(h.get("keep-alive").is_none());
            assert!(h.get("x-secret").is_none());
            assert!(h.get("te").is_none());
            assert!(h.get("proxy-status").is_none());
            assert_eq!(h["host"], "app.example");
            assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
            assert_eq!(h["x-forwarded-proto"], "http");
            assert_eq!(h["via"], "1.1 faultline");
            assert_eq!(h["x-request-id"], "rid");
        }
    }

    #[test]
    fn te_trailers_travels_on_and_other_te_does_not() {
        for case in CASES {
            let mut r = RequestHeader::build("POST", b"/a.B/C", None).unwrap();
            r.insert_header("te", "trailers").unwrap();
            r.insert_header("keep-alive", "timeout=5").unwrap();
            apply(&mut r, client(), case).unwrap();
            assert_eq!(r.headers["te"], "trailers");
            assert!(r.headers.get("keep-alive").is_none());
            // Alone, as a gRPC call carries it.
            let mut r = RequestHeader::build("POST", b"/a.B/C", None).unwrap();
            r.insert_header("te", "trailers").unwrap();
            apply(&mut r, client(), case).unwrap();
            let te: Vec<_> = r.headers.get_all("te").iter().collect();
            assert_eq!(te, ["trailers"]);
        }
    }

    #[test]
    fn the_request_id_is_one_header_with_the_id() {
        for case in CASES {
            // The client's own id, once: left as it is.
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("X-Request-Id", "rid").unwrap();
            apply(&mut r, client(), case).unwrap();
            assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
            assert_eq!(r.headers["x-request-id"], "rid");
            // Two values, or another value (a malformed id the proxy replaced): one header, the id.
            for prior in [&["rid", "rid"][..], &["<bad>"][..]] {
                let mut r = RequestHeader::build("GET", b"/", None).unwrap();
                for v in prior {
                    r.append_header("X-Request-Id", *v).unwrap();
                }
                apply(&mut r, client(), case).unwrap();
                let all: Vec<_> = r.headers.get_all("x-request-id").iter().collect();
                assert_eq!(all, ["rid"]);
                // Unique per request: HPACK must not index it.
                assert!(all[0].is_sensitive());
            }
        }
    }

    #[test]
    fn untrusted_peers_cannot_extend_x_forwarded_for() {
        for case in CASES {
            let claims = [
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6;proto=https"),
                ("x-real-ip", "6.6.6.6"),
                ("x-forwarded-host", "admin.internal"),
                ("x-forwarded-port", "443"),
                ("x-forwarded-proto", "https"),
            ];
            let build = || {
                let mut r = RequestHeader::build("GET", b"/", None).unwrap();
                for (n, v) in claims {
                    r.insert_header(n, v).unwrap();
                }
                r
            };
            let mut r = build();
            let untrusted = Client {
                trusted: false,
                ..client()
            };
            apply(&mut r, untrusted, case).unwrap();
            assert_eq!(r.headers["x-forwarded-for"], "10.1.2.3");
            assert_eq!(r.headers["x-forwarded-proto"], "http");
            for name in [
                "forwarded",
                "x-real-ip",
                "x-forwarded-host",
                "x-forwarded-port",
            ] {
                assert!(r.headers.get(name).is_none(), "{name} passed");
            }
            // A trusted proxy's claims pass on.
            let mut r = build();
            apply(&mut r, client(), case).unwrap();
            assert_eq!(r.headers["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
            assert_eq!(r.headers["x-forwarded-host"], "admin.internal");
            assert_eq!(r.headers["forwarded"], "for=6.6.6.6;proto=https");
        }
    }

    #[test]
    fn keeps_websocket_upgrade_and_framing() {
        for case in CASES {
            let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
            r.insert_header("connection", "Upgrade, content-length")
                .unwrap();
            r.insert_header("upgrade", "websocket").unwrap();
            r.insert_header("content-length", "0").unwrap();
            r.insert_header("via", "1.0 edge").unwrap();
            apply(&mut r, client(), case).unwrap();
            assert_eq!(r.headers["upgrade"], "websocket");
            assert_eq!(r.headers["connection"], "upgrade");
            assert_eq!(r.headers["content-length"], "0");
            assert_eq!(r.headers["via"], "1.0 edge, 1.1 faultline");
        }
    }

    fn wire(r: &RequestHeader) -> String {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn header_names_are_spelled_as_the_upstream_case_says() {
        let build = || {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("HOST", "app.example").unwrap();
            r.insert_header("X-Api-Key", "k").unwrap();
            r
        };
        let expected = [
            (
                HeaderCase::Canonical,
                "Host: app.example\r\nx-api-key: k\r\nx-forwarded-for: 10.1.2.3\r\n\
                 x-forwarded-proto: http\r\nvia: 1.1 faultline\r\nx-request-id: rid\r\n",
            ),
            (
                HeaderCase::Preserve,
                "HOST: app.example\r\nX-Api-Key: k\r\nX-Forwarded-For: 10.1.2.3\r\n\
                 X-Forwarded-Proto: http\r\nVia: 1.1 faultline\r\nX-Request-Id: rid\r\n",
            ),
        ];
        for (case, wire_form) in expected {
            let mut r = build();
            apply(&mut r, client(), case).unwrap();
            assert_eq!(wire(&r), wire_form, "{case:?}");
        }
    }

    #[test]
    fn the_request_target_and_method_survive_in_every_case() {
        let targets: [&[u8]; 5] = [
            b"/a/b?c=d",
            b"http://app.example/abs?q=1",
            b"/caf\xc3\xa9?x",
            b"/bad\xff",
            b"*",
        ];
        for case in CASES {
            for target in targets {
                let mut r = RequestHeader::build("OPTIONS", target, None).unwrap();
                let before = (r.raw_path().to_vec(), r.raw_path_is_utf8(), r.uri.clone());
                apply(&mut r, client(), case).unwrap();
                assert_eq!(r.method, http::Method::OPTIONS);
                assert_eq!(
                    (r.raw_path().to_vec(), r.raw_path_is_utf8(), r.uri.clone()),
                    before,
                    "{case:?} {}",
                    String::from_utf8_lossy(target)
                );
            }
            // HTTP/2's end-of-stream flag.
            let mut r = RequestHeader::build_no_case("GET", b"/", None).unwrap();
            r.set_version(http::Version::HTTP_2);
            r.set_send_end_stream(false);
            apply(&mut r, client(), case).unwrap();
            assert_eq!(r.send_end_stream(), Some(false));
            assert_eq!(r.version, http::Version::HTTP_2);
        }
    }
}
