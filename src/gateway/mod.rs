//! The Pingora `ProxyHttp` implementation, a dispatcher: each hook records what happened in the
//! request's [`RequestCtx`] and hands the decision to the module that owns it: admission
//! ([`admission`]), selection, [`classify`], [`retry`], error pages,
//! metrics and the access log. What the request holds of its upstream gives itself back when
//! dropped ([`lease`](crate::upstream::lease)); what has been decided is a
//! [`Decision`].

mod builder;
mod grpc_calls;

pub use builder::GatewayBuilder;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::admin::Admin;
use crate::admission::{self, Refusal};
use crate::completion::Completion;
use crate::config::HeaderCase;
use crate::context::{Decision, RequestCtx};
use crate::error_page::{self, Cause};
use crate::extension::ResponseContext;
use crate::failure::{FailureKind, Phase, Progress, classify};
use crate::forwarding;
use crate::request_id;
use crate::retry::{self, Trigger};
use crate::routing::request_host;
use crate::state::Shared;
use crate::tunnel::{self, Tunnel};
use crate::upstream::Pool;
use crate::upstream::attempt::Outcome;

/// The error type used to unwind Pingora's flow when faultline already decided what happens.
const DECIDED: ErrorType = ErrorType::new("FaultlineDecided");

/// The faultline proxy: routing, per-backend failure semantics, retries, error pages.
///
/// Build one with [`Gateway::new`] (the configuration's routes) or [`Gateway::builder`] (a
/// custom [`Router`](crate::extension::Router) and filters), then hand it to Pingora's
/// `http_proxy_service`.
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

impl Gateway {
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

    /// Records a failed attempt and decides whether Pingora may retry it.
    fn attempt_failed(session: &mut Session, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
        let kind = classify(&e, ctx.phase).given_request_body(session.is_body_done());
        Self::attempt_failed_with(session, ctx, kind, e)
    }

    /// Records an attempt failed with `kind` and decides whether Pingora may retry it.
    fn attempt_failed_with(
        session: &Session,
        ctx: &mut RequestCtx,
        kind: FailureKind,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let progress = ctx.phase.progress();
        ctx.attempt_failed(kind, progress);
        let retry =
            kind.is_upstream() && retry::may_retry(session, ctx, Trigger::Failure(kind, progress));
        // Pingora panics on an undecided `ReusedOnly` retry: always decide.
        e.set_retry(retry);
        e
    }

    /// Runs the filters on a response header about to be written.
    fn filter_response(&self, session: &Session, ctx: &RequestCtx, header: &mut ResponseHeader) {
        let extensions = self.shared.extensions();
        if !extensions.filters_responses() {
            return;
        }
        let response = ResponseContext {
            request: session.req_header(),
            request_id: &ctx.request_id,
            route: ctx.route.as_deref(),
            from_proxy: matches!(ctx.decision, Decision::Generated(_)),
            failure: match ctx.decision {
                Decision::Generated(Cause::Failure(kind)) => Some(kind),
                _ => None,
            },
        };
        extensions.filter_response(header, &response);
    }

    /// Unwinds Pingora's upstream flow with `decision` recorded.
    fn decide(ctx: &mut RequestCtx, decision: Decision, why: &'static str) -> Box<Error> {
        ctx.decision = decision;
        let mut e = Error::explain(DECIDED, why);
        e.set_retry(false);
        e
    }

    /// Writes a proxy-generated response. With `keep_alive` the client connection stays open
    /// (only possible before an upstream was chosen); otherwise it is closed after the response.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        cause: Cause,
        keep_alive: bool,
    ) -> Result<()> {
        if let (true, Cause::Failure(kind)) = (ctx.grpc, cause) {
            return grpc_calls::answer(session, ctx, kind, keep_alive).await;
        }
        let req = session.req_header();
        let rendered = ctx.snapshot.pages.render(
            cause,
            error_page::Request {
                request_id: &ctx.request_id,
                accept: req.headers.get(http::header::ACCEPT).map(|v| v.as_bytes()),
                head: req.method == http::Method::HEAD,
                next_hop: ctx.next_hop(match cause {
                    Cause::Failure(kind) => Outcome::Failed(kind),
                    Cause::Intercepted(status) => Outcome::Response(status),
                }),
                retry_after: ctx.retry_after(),
            },
        )?;
        ctx.decision = Decision::Generated(cause);
        let mut header = rendered.header;
        for (name, value) in ctx.answer_headers.drain(..) {
            header.append_header(name, value)?;
        }
        self.filter_response(session, ctx, &mut header);
        // Shutting down: the client is told to take its next request elsewhere.
        let keep_alive = keep_alive && !self.shared.lifecycle().draining();
        if !keep_alive {
            return session
                .as_downstream_mut()
                .write_error_response(header, rendered.body)
                .await;
        }
        let end = rendered.body.is_empty();
        session.write_response_header(Box::new(header), end).await?;
        if !end {
            session
                .write_response_body(Some(rendered.body), true)
                .await?;
        }
        Ok(())
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
        let incoming = session.req_header().headers.get(request_id::HEADER);
        ctx.request_id = request_id::for_request(incoming.map(|v| v.as_bytes()));
        grpc_calls::recognise(session.req_header(), ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Err(Refusal { kind, keep_alive }) = admission::admit(session, ctx, &self.shared).await
        else {
            return Ok(false);
        };
        // Decided before the page is written: if writing fails, the failure stays this one.
        ctx.decision = Decision::Failed(kind);
        self.respond(session, ctx, Cause::Failure(kind), keep_alive)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Decision::RetryStatus(pause) = ctx.decision {
            tokio::time::sleep(pause).await;
        }
        let time_left = ctx.time_left();
        if time_left.is_some_and(|t| t.is_zero()) {
            let spent = Decision::Failed(FailureKind::HttpResponseTimeout);
            return Err(Self::decide(ctx, spent, "the route's deadline passed"));
        }
        let preselected = ctx.preselected.take();
        let selected = preselected.or_else(|| ctx.select(session.req_header()));
        let upgrade = forwarding::asks_for_upgrade(session.req_header());
        let Some((selected, peer)) = selected.and_then(|s| {
            let pool = ctx.pool()?;
            let mut peer = pool.peer(s.index, time_left)?;
            if upgrade {
                tunnel::upgrade_peer(&mut peer, pool.tunnel_idle(), time_left);
            }
            Some((s, peer))
        }) else {
            ctx.phase = Phase::Select;
            let none = Decision::Failed(FailureKind::DestinationUnavailable);
            return Err(Self::decide(ctx, none, "no backend can be selected"));
        };
        ctx.start_attempt(selected);
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
        ctx.connected(reused);
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
                let over = Decision::Failed(FailureKind::HttpRequestBodySize);
                return Err(Self::decide(
                    ctx,
                    over,
                    "the body is over the route's limit",
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
        let trusted =
            ip.is_some_and(|ip| ctx.snapshot.trusted_proxies.iter().any(|n| n.contains(ip)));
        forwarding::apply(
            upstream_request,
            forwarding::Client {
                ip,
                trusted,
                proto: if tls { "https" } else { "http" },
                version: session.req_header().version,
                request_id: &ctx.request_id,
            },
            ctx.pool()
                .map_or_else(HeaderCase::default, Pool::header_case),
        )?;
        grpc_calls::pass_deadline(upstream_request, ctx)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        grpc_calls::origin_status(upstream_trailers, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if !forwarding::asks_for_upgrade(session.req_header()) {
                // Relayed, it would turn the client's connection into a tunnel it never asked
                // for.
                let invalid = Decision::Failed(FailureKind::HttpProtocolError);
                return Err(Self::decide(
                    ctx,
                    invalid,
                    "a 101 to a request without Upgrade",
                ));
            }
            if let Some(pool) = ctx.pool() {
                let tunnel = Tunnel::open(session, &pool.metrics, pool.tunnel_idle());
                ctx.switched(tunnel);
            }
            return Ok(());
        }
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        ctx.responded(status);
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if route.retry.on_status.contains(&status) {
            let asked = upstream_response.headers.get(http::header::RETRY_AFTER);
            let pause = retry::status_pause(
                ctx.attempts.count(),
                asked.map(|v| v.as_bytes()),
                ctx.time_left(),
            );
            if let Some(pause) = pause
                && retry::may_retry(session, ctx, Trigger::Status(status))
            {
                let again = Decision::RetryStatus(pause);
                return Err(Self::decide(ctx, again, "retrying an origin status"));
            }
        }
        if route.intercept_origin_errors.contains(&status) {
            let intercepted = Decision::Intercepted(status);
            return Err(Self::decide(ctx, intercepted, "origin status intercepted"));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Shutting down: the client is told to take its next request elsewhere.
        if self.shared.lifecycle().draining() {
            session.set_keepalive(None);
        }
        grpc_calls::origin_status(&upstream_response.headers, ctx);
        ctx.snapshot
            .pages
            .mark_passed_through(upstream_response, |status| {
                ctx.next_hop(Outcome::Response(status))
            })?;
        self.filter_response(session, ctx, upstream_response);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        Self::attempt_failed(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        if let Some(tunnel) = &mut ctx.tunnel {
            // The attempt ended with its `101`: the tunnel's end is neither a failure of the
            // backend nor retried.
            tunnel.ended_by(classify(&e, ctx.phase));
            e.set_retry(false);
            return e;
        }
        match ctx.decision {
            // Decided in `upstream_response_filter`.
            Decision::RetryStatus(_) => {
                e.set_retry(true);
                e
            }
            Decision::Intercepted(_) => {
                e.set_retry(false);
                e
            }
            Decision::Failed(FailureKind::HttpRequestBodySize) => {
                // The client's fault, not the backend's (the kind never counts against it): the
                // attempt ends with it, and is never retried.
                ctx.attempt_failed(FailureKind::HttpRequestBodySize, Progress::Sent);
                e.set_retry(false);
                e
            }
            // An invalid response found in `upstream_response_filter`: the backend's failure,
            // as if Pingora's parser had found it.
            Decision::Failed(kind) if e.etype() == &DECIDED && kind.is_upstream() => {
                Self::attempt_failed_with(session, ctx, kind, e)
            }
            _ => Self::attempt_failed(session, ctx, e),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(tunnel) = &ctx.tunnel {
            // A tunnel that ended with an error (its end is in its log entry, not a failure of
            // the request): the client's connection closes, as after any tunnel.
            if tunnel.end() == tunnel::End::Idle {
                tunnel::close_idle(session).await;
            }
            session.set_keepalive(None);
            return FailToProxy {
                error_code: 101,
                can_reuse_downstream: false,
            };
        }
        let cause = match ctx.decision {
            Decision::Intercepted(status) => Cause::Intercepted(status),
            Decision::Failed(kind) => Cause::Failure(kind),
            // Writing the proxy's own page failed.
            Decision::Generated(cause) => cause,
            _ => {
                let kind = classify(e, ctx.phase);
                ctx.decision = Decision::Failed(kind);
                Cause::Failure(kind)
            }
        };
        let written = session.response_written().map(|w| w.status.as_u16());
        let error_code = if let Some(written) = written {
            // The status is already out: the only honest signal left is an aborted stream,
            // which Pingora gives by dropping the connection without finishing the body; a gRPC
            // call over HTTP/2 gets its status in trailers instead.
            session.set_keepalive(None);
            if let Cause::Failure(kind) = cause {
                grpc_calls::fail_started(session, ctx, kind).await;
            }
            written
        } else if cause == Cause::Failure(FailureKind::ClientAborted) {
            0
        } else {
            if let Err(write_error) = self.respond(session, ctx, cause, false).await {
                log::debug!("writing the error response failed: {write_error}");
            }
            cause.status()
        };
        FailToProxy {
            error_code,
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
        let tunnel = ctx
            .tunnel
            .as_ref()
            .map(|t| t.summary(session.body_bytes_read(), session.body_bytes_sent()));
        ctx.end();
        let failure = ctx.failure();
        if let (Some(kind), Some(e)) = (failure, e)
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
        let (status, source) = ctx.final_status(written);
        let req = session.req_header();
        Completion {
            metrics: ctx.metrics.as_deref(),
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
            status,
            source,
            failure,
            route: ctx.route.as_deref().map(|r| r.name.as_str()),
            pool: ctx.pool(),
            attempts: &ctx.attempts,
            grpc_status: ctx.grpc_status,
            duration: ctx.started.elapsed(),
            tunnel,
        }
        .record();
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
