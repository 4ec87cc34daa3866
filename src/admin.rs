//! The admin listener: `/metrics` (Prometheus text), `/status` (JSON state of every upstream and
//! backend) and `/healthz` (the proxy itself is up). Read-only; bind it to a private address.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::failure::FailureKind;
use crate::metrics::{self, RouteTable};
use crate::upstream::health::State;
use crate::upstream::{Pool, Upstreams};

/// The admin application, sharing the gateway's pools and counters.
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) routes: Arc<RouteTable>,
}

impl Admin {
    /// Every metric series in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let views: Vec<_> = self.upstreams.iter().map(Pool::view).collect();
        metrics::render(&self.routes, &views)
    }

    /// The state of every upstream and backend, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let upstreams: Vec<_> = self
            .upstreams
            .iter()
            .map(|pool| {
                let backends: Vec<_> = pool
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut outcomes = serde_json::Map::new();
                        let responses = b.metrics.attempts(None);
                        outcomes.insert("response".into(), responses.into());
                        for kind in FailureKind::ALL {
                            let n = b.metrics.attempts(Some(*kind));
                            if n > 0 {
                                outcomes.insert(kind.as_str().into(), n.into());
                            }
                        }
                        let state = pool.health.state(i);
                        let ejected_for_ms = match state {
                            State::Ejected(left) => {
                                Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
                            }
                            _ => None,
                        };
                        json!({
                            "backend": b.name,
                            "up": pool.is_up(i),
                            "state": state.as_str(),
                            "ejected_for_ms": ejected_for_ms,
                            "active_check": if pool.has_active_checks() {
                                if pool.actively_healthy(i) { "up" } else { "down" }
                            } else {
                                "off"
                            },
                            "consecutive_failures": pool.health.consecutive_failures(i),
                            "ejections": pool.health.ejections_total(i),
                            "attempts": outcomes,
                        })
                    })
                    .collect();
                json!({ "upstream": pool.name(), "backends": backends })
            })
            .collect();
        json!({ "upstreams": upstreams })
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header(http::header::ALLOW, "GET, HEAD");
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            );
        }
        match req.uri.path() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics().into_bytes(),
            ),
            "/status" => {
                let mut body = self.status().to_string().into_bytes();
                body.push(b'\n');
                reply(StatusCode::OK, "application/json", body)
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
