//! The Pingora `ProxyHttp` implementation. Thin on purpose: each hook records what happened in
//! the request's [`RequestCtx`] and hands the decision to the module that owns it: routing,
//! selection, [`classify`](crate::failure::classify), retry, error pages, the access log.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::{self, Source};
use crate::config::Config;
use crate::context::RequestCtx;
use crate::error_page::{self, Cause, ErrorPages};
use crate::failure::{FailureKind, Phase, classify};
use crate::forwarding;
use crate::request_id;
use crate::retry;
use crate::routing::{ConfigRouter, Router, request_host};
use crate::upstream::{Pool, PoolError, Upstreams};

/// The error type used to unwind Pingora's flow when faultline already decided the response.
const DECIDED: ErrorType = ErrorType::new("FaultlineDecided");

/// The faultline proxy: routing, per-backend failure semantics, error pages.
pub struct Gateway {
    router: Arc<dyn Router>,
    upstreams: Arc<Upstreams>,
    pages: ErrorPages,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway routing with the configuration's own routes.
    pub fn new(config: &Config) -> Result<Gateway, PoolError> {
        Self::with_router(config, Arc::new(ConfigRouter::new(&config.routes)))
    }

    /// A gateway with a custom router; the routes it returns refer to the configured upstreams
    /// by index.
    pub fn with_router(config: &Config, router: Arc<dyn Router>) -> Result<Gateway, PoolError> {
        Ok(Gateway {
            router,
            upstreams: Arc::new(Upstreams::new(&config.upstreams)?),
            pages: ErrorPages::new(config.error_pages.clone()),
        })
    }

    fn pool(&self, ctx: &RequestCtx) -> Option<&Pool> {
        ctx.route
            .as_ref()
            .and_then(|r| self.upstreams.get(r.upstream))
    }

    fn select(&self, pool: &Pool, req: &RequestHeader, ctx: &RequestCtx) -> Option<usize> {
        let key = if pool.uses_key() {
            req.uri
                .path_and_query()
                .map_or(&b""[..], |p| p.as_str().as_bytes())
        } else {
            b""
        };
        pool.select(key, |i| ctx.attempts.tried(i))
    }

    /// Records a failed attempt and decides whether Pingora may retry it.
    fn attempt_failed(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
        phase: Phase,
    ) -> Box<Error> {
        let kind = classify(&e, phase);
        let progress = phase.progress();
        ctx.attempts.failed(kind, progress);
        ctx.failure = Some(kind);
        let retry = match (ctx.route.as_deref(), self.pool(ctx)) {
            (Some(route), Some(pool)) => {
                let req = session.req_header();
                let untried = (0..pool.backends().len()).any(|i| !ctx.attempts.tried(i));
                untried
                    && retry::should_retry(retry::Facts {
                        kind,
                        progress,
                        method: &req.method,
                        idempotency_key: route.retry.idempotency_key
                            && req.headers.contains_key("idempotency-key"),
                        body_truncated: session.as_ref().retry_buffer_truncated(),
                        attempts_made: u32::try_from(ctx.attempts.count()).unwrap_or(u32::MAX),
                        attempts_allowed: route.retry.attempts,
                    })
            }
            _ => false,
        };
        // Pingora panics on an undecided `ReusedOnly` retry: always decide.
        e.set_retry(retry);
        e
    }

    /// Writes a proxy-generated response. With `keepalive` the client connection stays open
    /// (only possible before an upstream was chosen); otherwise it is closed after the response.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        cause: Cause,
        keepalive: bool,
    ) -> Result<()> {
        let req = session.req_header();
        let next_hop = if self.pages.reveal_backends() {
            ctx.attempts
                .last()
                .and_then(|a| self.pool(ctx)?.backends().get(a.backend))
                .map(|b| b.name.as_str())
        } else {
            None
        };
        let rendered = self.pages.render(
            cause,
            error_page::Request {
                request_id: &ctx.request_id,
                accept: req.headers.get(http::header::ACCEPT).map(|v| v.as_bytes()),
                head: req.method == http::Method::HEAD,
                next_hop,
            },
        )?;
        ctx.generated = true;
        if keepalive {
            let end = rendered.body.is_empty();
            session
                .write_response_header(Box::new(rendered.header), end)
                .await?;
            if !end {
                session
                    .write_response_body(Some(rendered.body), true)
                    .await?;
            }
            Ok(())
        } else {
            session
                .as_downstream_mut()
                .write_error_response(rendered.header, rendered.body)
                .await
        }
    }

    /// Answers in `request_filter` with a proxy page, keeping the connection.
    async fn answer_early(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kind: FailureKind,
    ) -> Result<bool> {
        ctx.failure = Some(kind);
        self.respond(session, ctx, Cause::Failure(kind), true)
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.request_id = request_id::for_request(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(route) = self.router.route(session.req_header()) else {
            return self
                .answer_early(session, ctx, FailureKind::DestinationNotFound)
                .await;
        };
        ctx.route = Some(route);
        let Some(pool) = self.pool(ctx) else {
            return self
                .answer_early(session, ctx, FailureKind::ProxyConfigurationError)
                .await;
        };
        // Selecting here lets "no backend" answer on a connection that stays open.
        match self.select(pool, session.req_header(), ctx) {
            Some(backend) => {
                ctx.preselected = Some(backend);
                Ok(false)
            }
            None => {
                self.answer_early(session, ctx, FailureKind::DestinationUnavailable)
                    .await
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = self.pool(ctx);
        let chosen = match (ctx.preselected.take(), pool) {
            (Some(backend), _) => Some(backend),
            (None, Some(pool)) => self.select(pool, session.req_header(), ctx),
            (None, None) => None,
        };
        let peer = chosen.and_then(|b| Some((b, pool?.peer(b)?)));
        let Some((backend, peer)) = peer else {
            ctx.phase = Phase::Select;
            ctx.failure = Some(FailureKind::DestinationUnavailable);
            let mut e = Error::explain(DECIDED, "no backend can be selected");
            e.set_retry(false);
            return Err(e);
        };
        ctx.attempts.start(backend);
        ctx.phase = Phase::Connect;
        ctx.failure = None;
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.attempts.connected(reused);
        ctx.phase = Phase::Exchange;
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        forwarding::apply(
            upstream_request,
            forwarding::Client {
                ip,
                proto: "http",
                request_id: &ctx.request_id,
            },
        )
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        ctx.attempts.responded(status);
        ctx.phase = Phase::Body;
        if ctx
            .route
            .as_ref()
            .is_some_and(|r| r.intercept_origin_errors.contains(&status))
        {
            ctx.intercepted = Some(status);
            return Err(Error::explain(
                DECIDED,
                "origin status intercepted by the route",
            ));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status >= 400 && self.pages.proxy_status_enabled() {
            // RFC 9209: each intermediary appends its member to the list.
            let ours = error_page::proxy_status_received(status, None);
            let value = match upstream_response
                .headers
                .get("proxy-status")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ours}"),
                None => ours,
            };
            upstream_response.insert_header("Proxy-Status", value)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_failed(session, ctx, e, Phase::Connect)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        if ctx.intercepted.is_some() {
            e.set_retry(false);
            return e;
        }
        let phase = ctx.phase;
        self.attempt_failed(session, ctx, e, phase)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let cause = match (ctx.intercepted, ctx.failure) {
            (Some(status), _) => Cause::Intercepted(status),
            (None, Some(kind)) => Cause::Failure(kind),
            (None, None) => {
                let kind = classify(e, ctx.phase);
                ctx.failure = Some(kind);
                Cause::Failure(kind)
            }
        };
        if let Some(written) = session.response_written() {
            // The status is already out: the only honest signal left is an aborted stream,
            // which Pingora gives by dropping the connection without finishing the body.
            let code = written.status.as_u16();
            session.set_keepalive(None);
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if matches!(cause, Cause::Failure(FailureKind::ClientAborted)) {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if let Err(write_error) = self.respond(session, ctx, cause, false).await {
            log::debug!("writing the error response failed: {write_error}");
        }
        FailToProxy {
            error_code: cause.status(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Pingora's line prints the whole error, which can carry a megabyte of upstream header
        // bytes; `logging` writes a bounded line of its own instead.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Every retried attempt is in the access log.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(kind), Some(e)) = (ctx.failure, e)
            && kind.is_upstream()
        {
            log::warn!(
                "request {}: {kind} after {} attempt(s): {}",
                ctx.request_id,
                ctx.attempts.count(),
                bounded(&e.to_string(), 300)
            );
        }
        let written = session.response_written().map(|r| r.status.as_u16());
        let (status, source) = match (ctx.failure, written) {
            (Some(FailureKind::ClientAborted), _) => (499, Source::Client),
            (_, Some(s)) if ctx.generated => (s, Source::Proxy),
            (_, Some(s)) => (s, Source::Origin),
            (Some(kind), None) => (kind.status(), Source::Proxy),
            (None, None) => (0, Source::Proxy),
        };
        let req = session.req_header();
        access_log::Entry {
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
            status,
            source,
            failure: ctx.failure,
            route: ctx.route.as_deref().map(|r| r.name.as_str()),
            pool: self.pool(ctx),
            attempts: &ctx.attempts,
            duration: ctx.started.elapsed(),
        }
        .emit();
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
