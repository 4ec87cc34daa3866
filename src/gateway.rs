//! The Pingora `ProxyHttp` implementation. Thin on purpose: each hook records what happened in
//! the request's [`RequestCtx`] and hands the decision to the module that owns it: routing,
//! selection, [`classify`](crate::failure::classify), [`retry`], error pages, metrics and the
//! access log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::{self, Source};
use crate::admin::Admin;
use crate::config::Config;
use crate::connections;
use crate::context::RequestCtx;
use crate::error_page::{self, Cause};
use crate::failure::{FailureKind, Phase, Progress, classify};
use crate::forwarding::{self, HeaderCase};
use crate::request_checks;
use crate::request_id;
use crate::retry::{self, Trigger};
use crate::routing::{Router, request_host};
use crate::state::Shared;
use crate::upstream::attempt::Outcome;
use crate::upstream::{Pool, PoolError, Selected};

/// The error type used to unwind Pingora's flow when faultline already decided what happens.
const DECIDED: ErrorType = ErrorType::new("FaultlineDecided");

/// The faultline proxy: routing, per-backend failure semantics, retries, error pages.
///
/// Build one with [`Gateway::new`] (the configuration's routes) or [`Gateway::builder`] (a
/// custom [`Router`]), then hand it to Pingora's `http_proxy_service`.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("shared", &self.shared)
            .finish()
    }
}

/// Builds a [`Gateway`]: the configuration, and optionally a custom router and the file that
/// reloads read.
pub struct GatewayBuilder<'a> {
    config: &'a Config,
    router: Option<Arc<dyn Router>>,
    route_names: Vec<String>,
    source: Option<PathBuf>,
}

impl GatewayBuilder<'_> {
    /// Routes with `router` instead of the configuration's routes. Its routes name the
    /// configuration's upstreams; a name that does not exist is answered with a 500
    /// (`proxy_configuration_error`). A closure `Fn(&RequestHeader) -> Option<Arc<Route>>` works.
    pub fn router(mut self, router: impl Router + 'static) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Names of the routes a custom router returns, so that their requests are counted under
    /// their own `route` label (requests of undeclared routes count under `none`, keeping the
    /// label set bounded).
    pub fn route_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.route_names.extend(names.into_iter().map(Into::into));
        self
    }

    /// The file `SIGHUP` and `POST /reload` re-read.
    pub fn reload_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(path.into());
        self
    }

    /// Builds the pools and the gateway.
    pub fn build(self) -> Result<Gateway, PoolError> {
        Ok(Gateway {
            shared: Arc::new(Shared::new(
                self.config,
                self.router,
                self.route_names,
                self.source,
            )?),
        })
    }
}

impl Gateway {
    /// A gateway routing with the configuration's own routes.
    pub fn new(config: &Config) -> Result<Gateway, PoolError> {
        Self::builder(config).build()
    }

    /// A builder, to embed faultline with a custom router.
    pub fn builder(config: &Config) -> GatewayBuilder<'_> {
        GatewayBuilder {
            config,
            router: None,
            route_names: Vec::new(),
            source: None,
        }
    }

    /// The state shared with the admin listener and the background services.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The admin application over this gateway's pools and counters.
    pub fn admin(&self) -> Admin {
        Admin {
            shared: self.shared.clone(),
        }
    }

    fn pool(ctx: &RequestCtx) -> Option<&Pool> {
        ctx.snapshot.upstreams.get(ctx.pool_index?)
    }

    fn select(pool: &Pool, req: &RequestHeader, ctx: &RequestCtx) -> Option<Selected> {
        let key = match (
            pool.uses_key(),
            ctx.route.as_ref().and_then(|r| r.hash_header.as_ref()),
        ) {
            (false, _) => &b""[..],
            (true, Some(header)) => req.headers.get(header).map_or(&b""[..], |v| v.as_bytes()),
            (true, None) => req
                .uri
                .path_and_query()
                .map_or(&b""[..], |p| p.as_str().as_bytes()),
        };
        pool.select(key, |i| ctx.attempts.tried(i))
    }

    /// Time left before the route's deadline, if it has one.
    fn time_left(ctx: &RequestCtx) -> Option<Duration> {
        let deadline = ctx.route.as_ref()?.deadline?;
        Some(deadline.saturating_sub(ctx.started.elapsed()))
    }

    /// Whether to make another attempt: the policy must allow it, then, for a request a backend
    /// may have processed, the upstream's retry budget must have room. Counts the retry, or the
    /// refusal by the budget.
    fn may_retry(&self, session: &Session, ctx: &RequestCtx, trigger: Trigger) -> bool {
        let (Some(route), Some(pool)) = (ctx.route.as_deref(), Self::pool(ctx)) else {
            return false;
        };
        let req = session.req_header();
        let allowed = retry::allowed(retry::Facts {
            trigger,
            policy: &route.retry,
            method: &req.method,
            has_idempotency_key: req.headers.contains_key("idempotency-key"),
            body_truncated: session.as_ref().retry_buffer_truncated(),
            attempts_made: ctx.attempts.count(),
            untried_backend: pool.has_untried(|i| ctx.attempts.tried(i)),
        });
        if !allowed {
            return false;
        }
        // A failover before anything was sent adds no work to the fleet, so only retries of
        // requests a backend may have processed spend the budget (Finagle's requeues vs retries).
        let spends_budget = !matches!(trigger, Trigger::Failure(_, Progress::NotSent));
        if spends_budget && !pool.budget.try_withdraw(route.retry.budget_percent) {
            pool.metrics
                .budget_exhausted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        if let Some(m) = &ctx.metrics {
            m.retry(match trigger {
                Trigger::Failure(kind, _) => Some(kind),
                Trigger::Status(_) => None,
            });
        }
        true
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
        Self::settle_attempt(ctx, kind, progress);
        let retry =
            kind.is_upstream() && self.may_retry(session, ctx, Trigger::Failure(kind, progress));
        // Pingora panics on an undecided `ReusedOnly` retry: always decide.
        e.set_retry(retry);
        e
    }

    /// Records the failure of the current attempt, with the backend's health and progress.
    fn settle_attempt(ctx: &mut RequestCtx, kind: FailureKind, progress: Progress) {
        let was_pending = ctx
            .attempts
            .last()
            .is_some_and(|a| a.outcome == Outcome::Pending);
        ctx.attempts.failed(kind, progress);
        ctx.failure = Some(kind);
        if let (Some(pool), Some(a)) = (Self::pool(ctx), ctx.attempts.last()) {
            pool.record_failure(a.backend, a.probe, kind);
            if was_pending {
                pool.answering.ended(a.backend);
            }
        }
    }

    /// Counts the last attempt's outcome when it ended with a response: at the next attempt (a
    /// status retry) or at the end of the request. A failed attempt was counted when it failed.
    fn end_answered_attempt(ctx: &RequestCtx) {
        if let (Some(a), Some(pool)) = (ctx.attempts.last(), Self::pool(ctx))
            && matches!(a.outcome, Outcome::Response(_))
        {
            pool.record_answered(a.backend);
        }
    }

    /// Ends the request with `kind` from inside Pingora's upstream flow.
    fn decide(ctx: &mut RequestCtx, kind: FailureKind, why: &'static str) -> Box<Error> {
        ctx.failure = Some(kind);
        let mut e = Error::explain(DECIDED, why);
        e.set_retry(false);
        e
    }

    /// The backend to name in `next-hop`, when the configuration allows it: the one of the last
    /// attempt, if that attempt ended with `outcome`, the one the client is told about. A
    /// request that failed without reaching a backend again (none left to select after a failed
    /// attempt) names none: the last backend tried is not the one that failed it.
    fn next_hop(ctx: &RequestCtx, outcome: Outcome) -> Option<&str> {
        if !ctx.snapshot.pages.reveal_backends() {
            return None;
        }
        let a = ctx.attempts.last().filter(|a| a.outcome == outcome)?;
        Some(Self::pool(ctx)?.backends().get(a.backend)?.name.as_str())
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
        let next_hop = Self::next_hop(
            ctx,
            match cause {
                Cause::Failure(kind) => Outcome::Failed(kind),
                Cause::Intercepted(status) => Outcome::Response(status),
            },
        );
        let rendered = ctx.snapshot.pages.render(
            cause,
            error_page::Request {
                request_id: &ctx.request_id,
                accept: req.headers.get(http::header::ACCEPT).map(|v| v.as_bytes()),
                head: req.method == http::Method::HEAD,
                next_hop,
                retry_after: Self::pool(ctx)
                    .and_then(|p| p.health.next_return())
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
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

    /// Answers in `request_filter` with a proxy page. With `keepalive` the connection stays
    /// open; without, it closes after the page, so that what the client sent next (a body, or
    /// whatever follows framing that could be read two ways) is never read.
    async fn answer_early(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kind: FailureKind,
        keepalive: bool,
    ) -> Result<bool> {
        ctx.failure = Some(kind);
        self.respond(session, ctx, Cause::Failure(kind), keepalive)
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.current())
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
        let refused = if connections::over_limit() {
            Some(FailureKind::ClientConnectionLimit)
        } else if session.as_downstream().as_http1().is_some() {
            request_checks::check(&session.as_downstream().to_h1_raw())
        } else {
            None
        };
        if let Some(kind) = refused {
            ctx.metrics = Some(ctx.snapshot.routes.get(None));
            return self.answer_early(session, ctx, kind, false).await;
        }
        let route = ctx.snapshot.router.route(session.req_header());
        ctx.metrics = Some(
            ctx.snapshot
                .routes
                .get(route.as_deref().map(|r| r.name.as_str())),
        );
        let Some(route) = route else {
            return self
                .answer_early(session, ctx, FailureKind::DestinationNotFound, true)
                .await;
        };
        let too_large = route
            .max_request_body
            .is_some_and(|limit| declared_body_length(session.req_header()) > Some(limit));
        ctx.pool_index = ctx.snapshot.upstreams.index_of(&route.upstream);
        ctx.route = Some(route);
        if too_large {
            return self
                .answer_early(session, ctx, FailureKind::HttpRequestBodySize, false)
                .await;
        }
        let Some(pool) = Self::pool(ctx) else {
            return self
                .answer_early(session, ctx, FailureKind::ProxyConfigurationError, true)
                .await;
        };
        if !pool.enter() {
            return self
                .answer_early(session, ctx, FailureKind::ConnectionLimitReached, true)
                .await;
        }
        // Selecting here lets "no backend" answer on a connection that stays open.
        pool.budget.record_request();
        let selected = Self::select(pool, session.req_header(), ctx);
        ctx.in_flight = true;
        match selected {
            Some(backend) => {
                ctx.preselected = Some(backend);
                Ok(false)
            }
            None => {
                self.answer_early(session, ctx, FailureKind::DestinationUnavailable, true)
                    .await
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(pause) = ctx.pause.take() {
            tokio::time::sleep(pause).await;
        }
        let time_left = Self::time_left(ctx);
        if time_left.is_some_and(|t| t.is_zero()) {
            return Err(Self::decide(
                ctx,
                FailureKind::HttpResponseTimeout,
                "the route's deadline passed",
            ));
        }
        let preselected = ctx.preselected.take();
        let pool = Self::pool(ctx);
        let chosen = match (preselected, pool) {
            (Some(backend), _) => Some(backend),
            (None, Some(pool)) => Self::select(pool, session.req_header(), ctx),
            (None, None) => None,
        };
        let peer = chosen.and_then(|b| Some((b, pool?.peer(b.index, time_left)?)));
        let Some((chosen, peer)) = peer else {
            ctx.phase = Phase::Select;
            return Err(Self::decide(
                ctx,
                FailureKind::DestinationUnavailable,
                "no backend can be selected",
            ));
        };
        Self::end_answered_attempt(ctx);
        ctx.attempts.start(chosen.index, chosen.probe);
        if let Some(pool) = Self::pool(ctx) {
            pool.answering.started(chosen.index);
        }
        ctx.body_bytes = 0;
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
        if let (Some(pool), Some(a)) = (Self::pool(ctx), ctx.attempts.last())
            && let (Some(connect), false) = (a.connect, reused)
        {
            pool.record_connect(a.backend, connect);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A body without a declared length (chunked, or HTTP/2) is measured as it streams.
        let limit = ctx.route.as_ref().and_then(|r| r.max_request_body);
        if let (Some(limit), Some(chunk)) = (limit, body.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                return Err(Self::decide(
                    ctx,
                    FailureKind::HttpRequestBodySize,
                    "the request body is over the route's limit",
                ));
            }
        }
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
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        forwarding::apply(
            upstream_request,
            forwarding::Client {
                ip,
                trusted: ip.is_some_and(|ip| {
                    ctx.snapshot
                        .trusted_proxies
                        .iter()
                        .any(|net| net.contains(ip))
                }),
                proto: if tls { "https" } else { "http" },
                version: session.req_header().version,
                request_id: &ctx.request_id,
            },
            Self::pool(ctx).map_or_else(HeaderCase::default, Pool::header_case),
        )
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        ctx.attempts.responded(status);
        ctx.phase = Phase::Body;
        if let (Some(pool), Some(a)) = (Self::pool(ctx), ctx.attempts.last()) {
            pool.record_response(a.backend, a.probe, status, a.header);
            pool.answering.answered(a.backend);
        }
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if route.retry.on_status.contains(&status) {
            let pause = retry::status_pause(
                ctx.attempts.count(),
                upstream_response
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .map(|v| v.as_bytes()),
                Self::time_left(ctx),
            );
            if let Some(pause) = pause
                && self.may_retry(session, ctx, Trigger::Status(status))
            {
                ctx.retrying_status = true;
                ctx.pause = Some(pause);
                return Err(Error::explain(DECIDED, "retrying an origin status"));
            }
        }
        if route.intercept_origin_errors.contains(&status) {
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
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status >= 400 && ctx.snapshot.pages.proxy_status_enabled() {
            // RFC 9209: each intermediary appends its member to the list.
            let ours = error_page::proxy_status_received(
                status,
                Self::next_hop(ctx, Outcome::Response(status)),
            );
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
        if std::mem::take(&mut ctx.retrying_status) {
            e.set_retry(true);
            return e;
        }
        if ctx.intercepted.is_some() {
            e.set_retry(false);
            return e;
        }
        if ctx.failure == Some(FailureKind::HttpRequestBodySize) {
            // The client's fault, not the backend's (the kind never counts against it): the
            // attempt ends with it, and is never retried.
            Self::settle_attempt(ctx, FailureKind::HttpRequestBodySize, Progress::Sent);
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
        if let (Some(i), Some(pool)) = (ctx.unreported_probe(), Self::pool(ctx)) {
            pool.health.release_probe(i);
        }
        Self::end_answered_attempt(ctx);
        if let (Some(a), Some(pool)) = (ctx.attempts.last(), Self::pool(ctx))
            && a.outcome == Outcome::Pending
        {
            // An attempt that never got an outcome (the request ended another way).
            pool.answering.ended(a.backend);
        }
        if std::mem::take(&mut ctx.in_flight)
            && let Some(pool) = Self::pool(ctx)
        {
            pool.leave();
        }
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
        if let Some(m) = &ctx.metrics {
            m.request(status, source);
        }
        if !access_log::enabled() {
            return;
        }
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
            pool: Self::pool(ctx),
            attempts: &ctx.attempts,
            duration: ctx.started.elapsed(),
        }
        .emit();
    }
}

/// The body length a request declares with `Content-Length`, when it does.
fn declared_body_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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
