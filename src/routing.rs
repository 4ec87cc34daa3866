//! The router built from the configuration, and the request's host as routing sees it.
//!
//! It looks at the request header and returns the route (upstream and policy) or nothing, in
//! which case the proxy answers 404 with `Proxy-Status: faultline; error=destination_not_found`.
//! The gateway calls it directly; a custom router (the extension API) reaches it through its
//! request context's `configured()`.

use std::collections::HashMap;
use std::sync::Arc;

use pingora::http::RequestHeader;

pub(crate) use crate::config::Route;
use crate::config::{HostMatch, RouteConfig};

/// The request's host: the `Host` header, or the URI authority (HTTP/2), without port.
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Routes from the configuration: the most specific host match wins (exact, then the longest
/// `*.suffix`, then any host); within it, the longest matching `path_prefix`.
#[derive(Debug, Default)]
pub struct ConfigRouter {
    exact: HashMap<String, Vec<Arc<RouteConfig>>>,
    /// By suffix with its leading dot (`.example.com`).
    suffix: HashMap<String, Vec<Arc<RouteConfig>>>,
    any: Vec<Arc<RouteConfig>>,
}

impl ConfigRouter {
    /// Builds the lookup tables from routes in file order.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut router = ConfigRouter::default();
        for route in routes {
            let route = Arc::new(route.clone());
            match &route.host {
                Some(HostMatch::Exact(h)) => router.exact.entry(h.clone()).or_default().push(route),
                Some(HostMatch::Suffix(s)) => {
                    router.suffix.entry(s.clone()).or_default().push(route)
                }
                None => router.any.push(route),
            }
        }
        // Longest prefix first; a stable sort keeps file order among equals.
        let by_prefix = |list: &mut Vec<Arc<RouteConfig>>| {
            list.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        };
        router.exact.values_mut().for_each(by_prefix);
        router.suffix.values_mut().for_each(by_prefix);
        by_prefix(&mut router.any);
        router
    }

    /// The first route of `list` (longest prefix first) whose prefix, methods and headers
    /// all match.
    fn first_match<'a>(
        list: &'a [Arc<RouteConfig>],
        req: &RequestHeader,
    ) -> Option<&'a Arc<Route>> {
        let path = req.uri.path();
        list.iter()
            .find(|r| {
                path.starts_with(r.path_prefix.as_str())
                    && (r.methods.is_empty() || r.methods.contains(&req.method))
                    && r.headers
                        .iter()
                        .all(|(name, value)| match (req.headers.get(name), value) {
                            (Some(_), None) => true,
                            (Some(got), Some(want)) => got == want,
                            (None, _) => false,
                        })
            })
            .map(|r| &r.route)
    }
}

impl ConfigRouter {
    /// The route for `req`, or `None` for a 404 from the proxy.
    pub fn route(&self, req: &RequestHeader) -> Option<Arc<Route>> {
        let by_host = !self.exact.is_empty() || !self.suffix.is_empty();
        if by_host && let Some(host) = request_host(req) {
            let lower;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            if let Some(r) = self
                .exact
                .get(host)
                .and_then(|list| Self::first_match(list, req))
            {
                return Some(r.clone());
            }
            // Longest suffix first: one lookup per label boundary, whatever the route count.
            for (i, _) in host.match_indices('.') {
                if let Some(r) = self
                    .suffix
                    .get(&host[i..])
                    .and_then(|list| Self::first_match(list, req))
                {
                    return Some(r.clone());
                }
            }
        }
        Self::first_match(&self.any, req).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<HostMatch>, prefix: &str) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.into(),
            methods: Vec::new(),
            headers: Vec::new(),
            route: Arc::new(Route::to_upstream(name, "app")),
        }
    }

    fn req(host: &str, path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        if !host.is_empty() {
            r.insert_header("host", host).unwrap();
        }
        r
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let router = ConfigRouter::new(&[
            route("any-root", None, "/"),
            route(
                "api-v1",
                Some(HostMatch::Exact("api.example.com".into())),
                "/v1",
            ),
            route(
                "api-root",
                Some(HostMatch::Exact("api.example.com".into())),
                "/",
            ),
            route("wild", Some(HostMatch::Suffix(".example.com".into())), "/"),
            route(
                "deep-wild",
                Some(HostMatch::Suffix(".eu.example.com".into())),
                "/",
            ),
            route("any-static", None, "/static"),
        ]);
        let name = |h: &str, p: &str| router.route(&req(h, p)).map(|r| r.name.clone());
        assert_eq!(
            name("api.example.com", "/v1/users").as_deref(),
            Some("api-v1")
        );
        assert_eq!(
            name("API.Example.com:8080", "/v1").as_deref(),
            Some("api-v1")
        );
        assert_eq!(name("api.example.com", "/v2").as_deref(), Some("api-root"));
        assert_eq!(name("www.example.com", "/x").as_deref(), Some("wild"));
        assert_eq!(name("a.eu.example.com", "/x").as_deref(), Some("deep-wild"));
        assert_eq!(
            name("example.com", "/static/a.css").as_deref(),
            Some("any-static")
        );
        assert_eq!(name("", "/").as_deref(), Some("any-root"));
        assert_eq!(name("api.example.com.", "/v1").as_deref(), Some("api-v1"));
    }

    #[test]
    fn no_match_is_none() {
        let router = ConfigRouter::new(&[route(
            "api",
            Some(HostMatch::Exact("api.example.com".into())),
            "/v1",
        )]);
        assert!(router.route(&req("api.example.com", "/v2")).is_none());
        assert!(router.route(&req("other.com", "/v1")).is_none());
    }

    #[test]
    fn methods_and_headers_narrow_a_route() {
        let writes = RouteConfig {
            methods: vec![http::Method::POST, http::Method::PUT],
            ..route("writes", None, "/api")
        };
        let beta = RouteConfig {
            headers: vec![(
                http::HeaderName::from_static("x-beta"),
                Some(http::HeaderValue::from_static("1")),
            )],
            ..route("beta", None, "/api/v2")
        };
        let tenant = RouteConfig {
            headers: vec![(http::HeaderName::from_static("x-tenant"), None)],
            ..route("tenant", None, "/api")
        };
        let router = ConfigRouter::new(&[writes, beta, tenant, route("reads", None, "/api")]);
        let name = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
            for (n, v) in headers {
                r.insert_header(n.to_string(), *v).unwrap();
            }
            router.route(&r).map(|r| r.name.clone())
        };
        assert_eq!(name("POST", "/api/x", &[]).as_deref(), Some("writes"));
        assert_eq!(name("GET", "/api/x", &[]).as_deref(), Some("reads"));
        assert_eq!(
            name("GET", "/api/v2/x", &[("x-beta", "1")]).as_deref(),
            Some("beta")
        );
        assert_eq!(
            name("GET", "/api/v2/x", &[("x-beta", "2")]).as_deref(),
            Some("reads")
        );
        assert_eq!(
            name("GET", "/api/x", &[("x-tenant", "acme")]).as_deref(),
            Some("tenant")
        );
    }

    #[test]
    fn ports_and_ipv6() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
