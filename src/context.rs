//! The per-request state the proxy hooks share: request id, route, attempt history, the phase
//! of the current attempt, what has been decided about the response, and what the request holds
//! of its upstream (each hold gives itself back when dropped).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::error_page::Cause;
use crate::failure::{FailureKind, Phase, Progress, Source};
use crate::metrics::RouteMetrics;
use crate::routing::Route;
use crate::state::Snapshot;
use crate::tunnel::Tunnel;
use crate::upstream::attempt::{Attempts, Outcome};
use crate::upstream::lease::{InFlight, Pending, Probe};
use crate::upstream::{Pool, Selected};

/// What has been decided about the response. Hooks that unwind Pingora's flow with an error
/// record here why; the hooks that run next (retry, failure, logging) read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing yet: the request is being proxied.
    Open,
    /// The current attempt failed with this kind, or the request was refused or stopped with
    /// it; at the end of the request, the failure that decided the response (or ended it once
    /// its header was out).
    Failed(FailureKind),
    /// The route intercepts this origin status: the proxy's page replaces it.
    Intercepted(u16),
    /// This origin status is retried, after the pause.
    RetryStatus(Duration),
    /// The proxy wrote its own response, for this cause.
    Generated(Cause),
}

impl Decision {
    /// The failure of the decision so far; at the end of the request, the one it ended with.
    pub(crate) fn failure(self) -> Option<FailureKind> {
        match self {
            Decision::Failed(kind) | Decision::Generated(Cause::Failure(kind)) => Some(kind),
            _ => None,
        }
    }
}

/// One request's state (Pingora's `CTX`).
#[derive(Debug)]
pub struct RequestCtx {
    /// The configuration the request runs on, from start to end.
    pub(crate) snapshot: Arc<Snapshot>,
    /// The route's pool in the snapshot.
    pub(crate) pool_index: Option<usize>,
    /// When the request header was read.
    pub(crate) started: Instant,
    /// The request id.
    pub(crate) request_id: String,
    /// The matched route.
    pub(crate) route: Option<Arc<Route>>,
    /// A backend chosen while filtering the request, used by the first attempt.
    pub(crate) preselected: Option<Selected>,
    /// The key a router chose to hash on instead of the route's.
    pub(crate) hash_key: Option<Bytes>,
    /// The backend a router prefers for the first attempt.
    pub(crate) preferred: Option<usize>,
    /// Headers an extension's refusal adds to the proxy's answer.
    pub(crate) answer_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Every attempt.
    pub(crate) attempts: Attempts,
    /// Phase of the current attempt.
    pub(crate) phase: Phase,
    /// What has been decided about the response.
    pub(crate) decision: Decision,
    /// The counters of the route (or of `none`).
    pub(crate) metrics: Option<Arc<RouteMetrics>>,
    /// The request's place among its upstream's requests in flight.
    pub(crate) in_flight: Option<InFlight>,
    /// The current attempt, while its backend owes an answer.
    pub(crate) pending: Option<Pending>,
    /// The current attempt's half-open probe, until its outcome is reported.
    pub(crate) probe: Option<Probe>,
    /// Request body bytes the current attempt has forwarded.
    pub(crate) body_bytes: u64,
    /// The tunnel the request became, once its upgrade was answered `101`.
    pub(crate) tunnel: Option<Tunnel>,
    /// The request is a gRPC call.
    pub(crate) grpc: bool,
    /// The deadline the gRPC client set (`grpc-timeout`), from the request's start.
    pub(crate) grpc_deadline: Option<Duration>,
    /// The call's gRPC status: the proxy's answer, or what the origin sent.
    pub(crate) grpc_status: Option<u8>,
}

impl RequestCtx {
    /// A request starting now on `snapshot`.
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            pool_index: None,
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            preselected: None,
            hash_key: None,
            preferred: None,
            answer_headers: Vec::new(),
            attempts: Attempts::default(),
            phase: Phase::Select,
            decision: Decision::Open,
            metrics: None,
            in_flight: None,
            pending: None,
            probe: None,
            body_bytes: 0,
            tunnel: None,
            grpc: false,
            grpc_deadline: None,
            grpc_status: None,
        }
    }

    /// A backend for the next attempt: the router's preferred one for the first attempt if it
    /// can take it, else one the request has not tried.
    pub(crate) fn select(&self, req: &RequestHeader) -> Option<Selected> {
        let pool = self.pool()?;
        if let (Some(i), 0) = (self.preferred, self.attempts.count())
            && let Some(selected) = pool.select_backend(i)
        {
            return Some(selected);
        }
        let header = self.route.as_ref().and_then(|r| r.hash_header.as_ref());
        let key = match (pool.uses_key(), &self.hash_key, header) {
            (false, ..) => &b""[..],
            (true, Some(key), _) => key,
            (true, None, Some(header)) => {
                req.headers.get(header).map_or(&b""[..], |v| v.as_bytes())
            }
            (true, None, None) => req
                .uri
                .path_and_query()
                .map_or(&b""[..], |p| p.as_str().as_bytes()),
        };
        pool.select(key, |i| self.attempts.tried(i))
    }

    /// An attempt on `selected` starts: it is outstanding on its backend until answered or
    /// ended, and holds the backend's probe if it is one.
    pub(crate) fn start_attempt(&mut self, selected: Selected) {
        self.count_answered_attempt();
        self.attempts
            .start(selected.index, selected.probe.is_some());
        self.pending = self
            .pool()
            .and_then(|pool| pool.start_attempt(selected.index));
        self.probe = selected.probe;
        self.body_bytes = 0;
        self.phase = Phase::Connect;
        self.decision = Decision::Open;
    }

    /// The current attempt's connection is ready (`reused`: from the pool).
    pub(crate) fn connected(&mut self, reused: bool) {
        self.attempts.connected(reused);
        self.phase = Phase::Exchange;
        if let (Some(pool), Some(a)) = (self.pool(), self.attempts.last())
            && let (Some(connect), false) = (a.connect, reused)
        {
            pool.record_connect(a.backend, connect);
        }
    }

    /// The current attempt got a response header with `status`.
    pub(crate) fn responded(&mut self, status: u16) {
        self.attempts.responded(status);
        self.phase = Phase::Body;
        if let Some(pending) = self.pending.take() {
            pending.answered();
        }
        let probe = self.probe.take();
        if let (Some(pool), Some(a)) = (self.pool(), self.attempts.last()) {
            pool.record_response(a.backend, probe, status, a.header);
        }
    }

    /// The current attempt failed with `kind`, having got this far: its outcome, its
    /// backend's counters and health, and the request's decision so far.
    pub(crate) fn attempt_failed(&mut self, kind: FailureKind, progress: Progress) {
        self.attempts.failed(kind, progress);
        self.decision = Decision::Failed(kind);
        self.pending = None;
        let probe = self.probe.take();
        if let (Some(pool), Some(a)) = (self.pool(), self.attempts.last()) {
            // A probe whose header already closed the breaker is judged again by a failure of
            // its body (`a.probe` stays set): a backend that breaks mid-body goes back out.
            pool.record_failure(a.backend, probe, a.probe, kind);
        }
    }

    /// The current attempt's upgrade was answered `101` and the request becomes a tunnel: the
    /// `101` is the attempt's response, and the attempt is over (counted now, not when the
    /// tunnel closes: an idle tunnel is no attempt outstanding on its backend).
    pub(crate) fn switched(&mut self, tunnel: Tunnel) {
        self.responded(101);
        self.count_answered_attempt();
        self.tunnel = Some(tunnel);
    }

    /// Counts the last attempt's outcome when it ended with a response: at the next attempt (a
    /// status retry) or at the end of the request. A failed attempt was counted when it failed,
    /// and one that opened a tunnel when it did.
    fn count_answered_attempt(&self) {
        if self.tunnel.is_some() {
            return;
        }
        if let (Some(a), Some(pool)) = (self.attempts.last(), self.pool())
            && matches!(a.outcome, Outcome::Response(_))
        {
            pool.record_answered(a.backend);
        }
    }

    /// The request ends: the last attempt's outcome is counted, and everything the request
    /// holds of its upstream is given back now. The context itself lives on until Pingora has
    /// finished the client's side (it may still drain the request body), and the client's
    /// next request must find the places given back.
    pub(crate) fn end(&mut self) {
        self.count_answered_attempt();
        self.in_flight = None;
        self.pending = None;
        self.probe = None;
        self.preselected = None;
        self.tunnel = None;
    }

    /// The status the request is logged and counted with, and who produced it, given the
    /// status written to the client, if any.
    pub(crate) fn final_status(&self, written: Option<u16>) -> (u16, Source) {
        let generated = matches!(self.decision, Decision::Generated(_));
        match (self.failure(), written) {
            (Some(FailureKind::ClientAborted), _) => (499, Source::Client),
            (_, Some(s)) if generated => (s, Source::Proxy),
            (_, Some(s)) => (s, Source::Origin),
            (Some(kind), None) => (kind.status(), Source::Proxy),
            (None, None) => (0, Source::Proxy),
        }
    }

    /// The route's upstream pool.
    pub(crate) fn pool(&self) -> Option<&Pool> {
        self.snapshot.upstreams.get(self.pool_index?)
    }

    /// The failure decided so far; at the end of the request, the one it ended with.
    pub(crate) fn failure(&self) -> Option<FailureKind> {
        self.decision.failure()
    }

    /// Time left before the request's deadline: the route's, or the gRPC client's when that is
    /// sooner; `None` without either.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let route = self.route.as_ref().and_then(|r| r.deadline);
        let deadline = match (route, self.grpc_deadline) {
            (Some(r), Some(g)) => r.min(g),
            (r, g) => r.or(g)?,
        };
        Some(deadline.saturating_sub(self.started.elapsed()))
    }

    /// The backend to name in `next-hop`, when the configuration allows it: the one of the last
    /// attempt, if that attempt ended with `outcome`, the one the client is told about. A
    /// request that failed without reaching a backend again (none left to select after a failed
    /// attempt) names none: the last backend tried is not the one that failed it.
    pub(crate) fn next_hop(&self, outcome: Outcome) -> Option<&str> {
        if !self.snapshot.pages.reveal_backends() {
            return None;
        }
        let a = self.attempts.last().filter(|a| a.outcome == outcome)?;
        Some(self.pool()?.backend(a.backend)?.name())
    }

    /// Seconds until the first ejected backend of the pool comes back, for `Retry-After`.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        let d = self.pool()?.next_return()?;
        Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }
}
