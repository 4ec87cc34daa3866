//! The gateway's side of gRPC calls ([`crate::grpc`]): recognising one and its deadline,
//! passing the time left upstream, reading the origin's status, and answering a call the proxy
//! failed as gRPC.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;

use crate::context::{Decision, RequestCtx};
use crate::error_page::{self, Cause};
use crate::failure::FailureKind;
use crate::grpc;
use crate::upstream::attempt::Outcome;

/// Notes whether `req` is a gRPC call, and the deadline its client set.
pub(super) fn recognise(req: &RequestHeader, ctx: &mut RequestCtx) {
    ctx.grpc = grpc::is_call(req);
    if ctx.grpc {
        ctx.grpc_deadline = grpc::timeout(req);
    }
}

/// Tells the backend of a call how long it has: the time left before the request's deadline
/// (the route's, or the client's `grpc-timeout` when sooner).
pub(super) fn pass_deadline(upstream: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    match ctx.time_left() {
        Some(left) if ctx.grpc => upstream.insert_header(grpc::TIMEOUT, grpc::timeout_value(left)),
        _ => Ok(()),
    }
}

/// Records the status an origin gave a call, from its header section (Trailers-Only) or
/// trailers.
pub(super) fn origin_status(headers: &http::HeaderMap, ctx: &mut RequestCtx) {
    if ctx.grpc
        && let Some(code) = grpc::status_in(headers)
    {
        ctx.grpc_status = Some(code);
    }
}

/// Answers a call the proxy failed with `kind` before the response started: Trailers-Only, the
/// header section ending the stream. With `keep_alive` false an HTTP/1 connection closes after
/// it.
pub(super) async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    kind: FailureKind,
    keep_alive: bool,
) -> Result<()> {
    let proxy_status = ctx
        .snapshot
        .pages
        .proxy_status_enabled()
        .then(|| error_page::proxy_status_error(kind, ctx.next_hop(Outcome::Failed(kind))));
    let header = grpc::trailers_only(kind, &ctx.request_id, proxy_status)?;
    counted(ctx, kind);
    ctx.decision = Decision::Generated(Cause::Failure(kind));
    if !keep_alive {
        session.set_keepalive(None);
    }
    // Straight to the client session: Pingora's `Session::write_response_header` drops its
    // end-of-stream flag and always leaves an HTTP/2 stream open for a body (pingora-core
    // `protocols/http/server.rs`, `write_response_header`: `Self::H2(s) => s.write_response_header(resp, false)`),
    // which is no Trailers-Only response. A header task with `end` ends the stream with it.
    let task = HttpTask::Header(Box::new(header), true);
    session
        .as_downstream_mut()
        .response_duplex_vec(vec![task])
        .await
        .map(|_| ())
}

/// Ends a call whose response had started when it failed with `kind`: over HTTP/2, trailers
/// carrying the gRPC status (they end the stream cleanly, so the client reads the status, not a
/// reset). Over HTTP/1 nothing can be added: the connection is cut.
pub(super) async fn fail_started(session: &mut Session, ctx: &mut RequestCtx, kind: FailureKind) {
    if !ctx.grpc || !session.as_downstream().is_http2() || kind == FailureKind::ClientAborted {
        return;
    }
    let mut trailers = http::HeaderMap::with_capacity(2);
    for (name, value) in grpc::status_fields(kind) {
        trailers.insert(name, value);
    }
    let task = HttpTask::Trailer(Some(Box::new(trailers)));
    match session
        .as_downstream_mut()
        .response_duplex_vec(vec![task])
        .await
    {
        Ok(_) => counted(ctx, kind),
        Err(e) => log::debug!("writing gRPC trailers after a failure: {e}"),
    }
}

/// The call's status is the proxy's: logged and counted.
fn counted(ctx: &mut RequestCtx, kind: FailureKind) {
    let code = kind.grpc_status();
    ctx.grpc_status = Some(code);
    if let Some(m) = &ctx.metrics {
        m.grpc_answer(code);
    }
}
