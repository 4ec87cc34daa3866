//! Whether a request is taken, before any upstream work: the
//! method (faultline is no forward proxy: CONNECT is refused), the request checks (framing, then
//! host and path, which may rewrite the request), routing, the route's body limit, the upstream's
//! limit of requests in flight,
//! and a backend to send it to. A refusal names its failure kind and whether the client
//! connection may stay open after the answer.

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::context::RequestCtx;
use crate::failure::FailureKind;
use crate::request_checks::{self, TargetError, host::Host, path::PathError};
use crate::state::Shared;

/// A request that is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Why, and so the answer.
    pub kind: FailureKind,
    /// Whether the client connection stays open after the answer: only when everything the
    /// client sent was read and can be trusted. After a refusal of the request's framing or of
    /// its body, what follows on the connection is never read.
    pub keep_alive: bool,
}

impl Refusal {
    const fn closing(kind: FailureKind) -> Refusal {
        Refusal {
            kind,
            keep_alive: false,
        }
    }

    const fn keeping(kind: FailureKind) -> Refusal {
        Refusal {
            kind,
            keep_alive: true,
        }
    }
}

/// Admits the request or says why not. On admission the context holds the route, its pool,
/// the request's place among the upstream's requests in flight and the backend of the first
/// attempt.
pub(crate) async fn admit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    shared: &Shared,
) -> Result<(), Refusal> {
    let refused = if session.req_header().method == http::Method::CONNECT {
        // HTTP/1 CONNECT is refused before Pingora parses it (`request_head`); an HTTP/2 one
        // reaches here (`server` lets Pingora pass it on).
        Some(FailureKind::MethodNotAllowed)
    } else if session.as_downstream().as_http1().is_some() {
        request_checks::check(&session.as_downstream().to_h1_raw())
    } else {
        None
    };
    if let Some(kind) = refused {
        ctx.metrics = Some(ctx.snapshot.routes.get(None));
        return Err(Refusal::closing(kind));
    }
    if let Err(refusal) = check_target(session) {
        ctx.metrics = Some(ctx.snapshot.routes.get(None));
        return Err(refusal);
    }
    if shared.extensions().any() {
        extended::route_and_filter(session, ctx, shared).await?;
    } else {
        let route = ctx.snapshot.router.route(session.req_header());
        ctx.metrics = Some(
            ctx.snapshot
                .routes
                .get(route.as_deref().map(|r| r.name.as_str())),
        );
        let route = route.ok_or(Refusal::keeping(FailureKind::DestinationNotFound))?;
        ctx.pool_index = ctx.snapshot.upstreams.index_of(&route.upstream);
        ctx.route = Some(route);
        check_body_limit(session, ctx)?;
    }
    let pool = ctx
        .pool()
        .ok_or(Refusal::keeping(FailureKind::ProxyConfigurationError))?;
    let place = pool
        .enter()
        .ok_or(Refusal::keeping(FailureKind::ConnectionLimitReached))?;
    // Selecting here lets "no backend" answer on a connection that stays open.
    pool.budget.record_request();
    let selected = ctx.select(session.req_header());
    ctx.in_flight = Some(place);
    ctx.preselected = Some(selected.ok_or(Refusal::keeping(FailureKind::DestinationUnavailable))?);
    Ok(())
}

/// Admission's steps with extensions installed: the custom router (or the configuration's),
/// then the filters.
mod extended {
    use pingora::proxy::Session;

    use super::Refusal;
    use crate::context::RequestCtx;
    use crate::extension::{Connection, RequestContext, Routing};
    use crate::failure::FailureKind;
    use crate::state::Shared;

    /// Routes the request and runs the filters on it. The context holds the route (and its
    /// counters) whenever one was chosen, even when a filter then refused the request.
    pub(super) async fn route_and_filter(
        session: &mut Session,
        ctx: &mut RequestCtx,
        shared: &Shared,
    ) -> Result<(), Refusal> {
        let extensions = shared.extensions();
        let connection = Connection::of(session, shared.listeners());
        let snapshot = ctx.snapshot.clone();
        let routed = match extensions.router() {
            Some(router) => {
                let request = RequestContext {
                    header: session.req_header_mut(),
                    connection: &connection,
                    request_id: &ctx.request_id,
                    route: None,
                    configured: &snapshot.router,
                };
                extensions.route(router.as_ref(), &request).await
            }
            None => Ok(snapshot.router.route(session.req_header()).map(Routing::to)),
        };
        let routing = match routed {
            Ok(routing) => routing,
            Err(kind) => {
                ctx.metrics = Some(snapshot.routes.get(None));
                return Err(Refusal::keeping(kind));
            }
        };
        let name = routing.as_ref().map(|r| r.route.name.as_str());
        ctx.metrics = Some(snapshot.routes.get(name));
        let routing = routing.ok_or(Refusal::keeping(FailureKind::DestinationNotFound))?;
        ctx.pool_index = snapshot.upstreams.index_of(&routing.route.upstream);
        let pool = ctx.pool();
        ctx.preferred = match (&routing.backend, pool) {
            (Some(name), Some(pool)) => {
                let found = pool.backend_named(name);
                if found.is_none() {
                    log::debug!(
                        "request {}: the preferred backend {name} is not in upstream {}",
                        ctx.request_id,
                        routing.route.upstream
                    );
                }
                found
            }
            _ => None,
        };
        ctx.hash_key = routing.hash_key;
        ctx.route = Some(routing.route.clone());
        super::check_body_limit(session, ctx)?;
        let mut request = RequestContext {
            header: session.req_header_mut(),
            connection: &connection,
            request_id: &ctx.request_id,
            route: Some(&routing.route),
            configured: &snapshot.router,
        };
        if let Err(stopped) = extensions.filter_request(&mut request).await {
            ctx.answer_headers = stopped.headers;
            return Err(Refusal::keeping(stopped.kind));
        }
        Ok(())
    }
}

/// The host and path checks: the request is routed and forwarded with its normalised path, and
/// an HTTP/1.0 request without a host gets the listener's address as its `Host`.
fn check_target(session: &mut Session) -> Result<(), Refusal> {
    match request_checks::check_target(session.req_header_mut()) {
        Ok(Host::Valid) => Ok(()),
        Ok(Host::Absent) => {
            let listener = session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map_or_else(|| "localhost".to_string(), ToString::to_string);
            session
                .req_header_mut()
                .insert_header(http::header::HOST, listener)
                .map_err(|_| Refusal::closing(FailureKind::ProxyInternalError))
        }
        Err(e) => {
            log::debug!("request refused: {e}");
            // A control character means the request line itself was broken (Pingora escapes
            // raw ones): what follows it is not trusted. Otherwise the request was read whole.
            Err(match e {
                TargetError::Path(PathError::Control) => {
                    Refusal::closing(FailureKind::HttpRequestError)
                }
                _ => Refusal::keeping(FailureKind::HttpRequestError),
            })
        }
    }
}

/// Refuses a request whose declared body is over its route's limit.
fn check_body_limit(session: &Session, ctx: &RequestCtx) -> Result<(), Refusal> {
    let limit = ctx.route.as_ref().and_then(|r| r.max_request_body);
    if limit.is_some_and(|limit| declared_body_length(session.req_header()) > Some(limit)) {
        return Err(Refusal::closing(FailureKind::HttpRequestBodySize));
    }
    Ok(())
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
