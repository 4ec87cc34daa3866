//! What an extension sees of a request and of its connection.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::protocols::ALPN;
use pingora::proxy::Session;

use super::Routing;
use crate::config::Route;
use crate::failure::FailureKind;
use crate::routing::{ConfigRouter, request_host};

/// The TLS server name of an HTTP/2 connection, carried in each of its requests' extensions:
/// Pingora gives an HTTP/2 stream no way back to its connection's TLS state.
#[derive(Debug, Clone)]
pub(crate) struct ServerName(pub(crate) Arc<str>);

/// The facts of the connection a request came on.
#[derive(Debug, Default)]
pub(crate) struct Connection {
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    tls: bool,
    server_name: Option<Arc<str>>,
    alpn: Option<&'static str>,
}

impl Connection {
    /// The facts of `session`'s connection; `listeners` are the configured listener addresses.
    pub(crate) fn of(session: &Session, listeners: &[SocketAddr]) -> Connection {
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let local = inet(session.server_addr());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let (server_name, alpn) = match session.as_downstream().stream() {
            // HTTP/1: the stream is at hand.
            Some(stream) => (
                stream
                    .get_ssl()
                    .and_then(|t| t.server_name())
                    .map(Arc::from),
                stream.selected_alpn_proto().and_then(|p| match p {
                    ALPN::H1 => Some("http/1.1"),
                    ALPN::H2 => Some("h2"),
                    _ => None,
                }),
            ),
            // HTTP/2: the connection loop left the server name in the request.
            None => (
                session
                    .req_header()
                    .extensions
                    .get::<ServerName>()
                    .map(|n| n.0.clone()),
                tls.then_some("h2"),
            ),
        };
        Connection {
            client: inet(session.client_addr()),
            local,
            listener: local.and_then(|l| listener_of(listeners, l)),
            tls,
            server_name,
            alpn,
        }
    }
}

/// The configured listener that took a connection to `local`: the one bound to it, else a
/// wildcard one on its port.
fn listener_of(listeners: &[SocketAddr], local: SocketAddr) -> Option<SocketAddr> {
    listeners
        .iter()
        .find(|l| **l == local)
        .or_else(|| {
            listeners
                .iter()
                .find(|l| l.port() == local.port() && l.ip().is_unspecified())
        })
        .copied()
}

/// A request as an extension sees it: its header, its connection, its id, and the
/// configuration's routes.
pub struct RequestContext<'a> {
    pub(crate) header: &'a mut RequestHeader,
    pub(crate) connection: &'a Connection,
    pub(crate) request_id: &'a str,
    pub(crate) route: Option<&'a Route>,
    pub(crate) configured: &'a ConfigRouter,
}

impl std::fmt::Debug for RequestContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("method", &self.header.method)
            .field("uri", &self.header.uri)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl RequestContext<'_> {
    /// The request header (its path already normalised by the proxy's checks).
    pub fn header(&self) -> &RequestHeader {
        self.header
    }

    /// The request header, to change what is forwarded (filters only: a router gets the
    /// context shared).
    pub fn header_mut(&mut self) -> &mut RequestHeader {
        self.header
    }

    /// The host the request is for (`Host`, or the HTTP/2 authority), without port or
    /// trailing dot, lowercase (a copy only when the client sent capitals).
    pub fn host(&self) -> Option<Cow<'_, str>> {
        let host = request_host(self.header)?;
        let host = host.strip_suffix('.').unwrap_or(host);
        Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        })
    }

    /// The value of cookie `name`, from the first `Cookie` field that has it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (n, v) = pair.trim().split_once('=')?;
                (n == name).then(|| v.trim_matches('"'))
            })
    }

    /// The address of the client's end of the connection (the proxy's peer, not
    /// `X-Forwarded-For`).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.connection.client
    }

    /// The address the connection was accepted on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.connection.local
    }

    /// The configured listener address that accepted the connection (a wildcard listener's
    /// own address, such as `0.0.0.0:443`).
    pub fn listener(&self) -> Option<SocketAddr> {
        self.connection.listener
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.connection.tls
    }

    /// The TLS server name (SNI) the client asked for, lowercase.
    pub fn server_name(&self) -> Option<&str> {
        self.connection.server_name.as_deref()
    }

    /// The protocol ALPN chose (`h2`, `http/1.1`), on a TLS connection that negotiated one.
    pub fn alpn(&self) -> Option<&str> {
        self.connection.alpn
    }

    /// The request id, as sent to the backend and written in the access log.
    pub fn request_id(&self) -> &str {
        self.request_id
    }

    /// The route chosen for the request (filters only: `None` while routing).
    pub fn route(&self) -> Option<&Route> {
        self.route
    }

    /// Where the configuration's own routes send this request: for a router that falls back
    /// to them or wraps them. After a reload, this is the reloaded configuration's answer.
    pub fn configured(&self) -> Option<Routing> {
        self.configured.route(self.header).map(Routing::to)
    }
}

/// A response about to be written, as a filter sees it.
#[derive(Debug)]
pub struct ResponseContext<'a> {
    pub(crate) request: &'a RequestHeader,
    pub(crate) request_id: &'a str,
    pub(crate) route: Option<&'a Route>,
    pub(crate) from_proxy: bool,
    pub(crate) failure: Option<FailureKind>,
}

impl ResponseContext<'_> {
    /// The request it answers.
    pub fn request(&self) -> &RequestHeader {
        self.request
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        self.request_id
    }

    /// The request's route, when it had one.
    pub fn route(&self) -> Option<&Route> {
        self.route
    }

    /// Whether the proxy wrote this response itself (its page) rather than the origin.
    pub fn from_proxy(&self) -> bool {
        self.from_proxy
    }

    /// The failure the proxy's own page answers (none for an origin status it intercepted).
    pub fn failure(&self) -> Option<crate::FailureKind> {
        self.failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_takes_what_no_bound_one_does() {
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let bound: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let listeners = [any, bound];
        assert_eq!(listener_of(&listeners, bound), Some(bound));
        assert_eq!(
            listener_of(&listeners, "10.1.2.3:8443".parse().unwrap()),
            Some(any)
        );
        assert_eq!(listener_of(&listeners, "10.1.2.3:9".parse().unwrap()), None);
    }

    #[test]
    fn cookies_are_found_in_any_cookie_field() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; canary=yes").unwrap();
        req.append_header("cookie", "b=\"2\"").unwrap();
        let connection = Connection::default();
        let router = ConfigRouter::default();
        let cx = RequestContext {
            header: &mut req,
            connection: &connection,
            request_id: "r",
            route: None,
            configured: &router,
        };
        assert_eq!(cx.cookie("canary"), Some("yes"));
        assert_eq!(cx.cookie("b"), Some("2"));
        assert_eq!(cx.cookie("c"), None);
    }
}
