//! Active health checks: Pingora's `HttpHealthCheck` (a `GET` of the configured path, expecting
//! the configured status) or `TcpHealthCheck` (a connect), wrapped so that every success also
//! ends a passive ejection early.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::Backend;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};

use super::backend::Backend as PoolBackend;
use super::index_of;
use crate::config::ActiveHealth;

/// The check for one pool.
pub(crate) fn check(
    settings: &ActiveHealth,
    upstream: &str,
    backends: Box<[Arc<PoolBackend>]>,
) -> Box<dyn HealthCheck + Send + Sync> {
    let inner: Box<dyn HealthCheck + Send + Sync> = match &settings.path {
        Some(path) => {
            let mut http = HttpHealthCheck::new(upstream, false);
            http.peer_template.options.connection_timeout = Some(settings.timeout);
            http.peer_template.options.total_connection_timeout = Some(settings.timeout);
            http.peer_template.options.read_timeout = Some(settings.timeout);
            http.peer_template.options.write_timeout = Some(settings.timeout);
            http.consecutive_success = settings.healthy_after;
            http.consecutive_failure = settings.unhealthy_after;
            if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                // The Host header names the upstream; backends that route by host see a name
                // they can recognise, never an address.
                if req.insert_header(http::header::HOST, upstream).is_ok()
                    && req
                        .insert_header(http::header::USER_AGENT, "faultline-health")
                        .is_ok()
                {
                    http.req = req;
                }
            }
            let expected = settings.expected_status;
            http.validator = Some(Box::new(move |resp: &ResponseHeader| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        ErrorType::CustomCode("unexpected health status", resp.status.as_u16()),
                        "during the active health check",
                    )
                }
            }));
            Box::new(http)
        }
        None => {
            let mut tcp = TcpHealthCheck::new();
            tcp.peer_template.options.connection_timeout = Some(settings.timeout);
            tcp.peer_template.options.total_connection_timeout = Some(settings.timeout);
            tcp.consecutive_success = settings.healthy_after;
            tcp.consecutive_failure = settings.unhealthy_after;
            tcp
        }
    };
    Box::new(Observed { inner, backends })
}

/// Passes every result through, and tells the checked backend's breaker about each success.
struct Observed {
    inner: Box<dyn HealthCheck + Send + Sync>,
    /// The pool's backends, by the position each Pingora backend carries.
    backends: Box<[Arc<PoolBackend>]>,
}

#[async_trait]
impl HealthCheck for Observed {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner.check(target).await;
        if result.is_ok()
            && let Some(b) = index_of(target).and_then(|i| self.backends.get(i))
        {
            b.breaker().active_success();
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        log::info!(
            "active health check: backend {} is {}",
            target.addr,
            if healthy { "up" } else { "down" }
        );
        self.inner.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}
