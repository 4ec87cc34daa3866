//! The per-request state the proxy hooks share: request id, route, attempt history, the phase
//! of the current attempt, what has been decided about the response, and what the request holds
//! of its upstream (each hold gives itself back when dropped).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error_page::Cause;
use crate::failure::{FailureKind, Phase};
use crate::metrics::RouteMetrics;
use crate::routing::Route;
use crate::state::Snapshot;
use crate::upstream::attempt::{Attempts, Outcome};
use crate::upstream::lease::{InFlight, Pending, Probe};
use crate::upstream::{Pool, Selected};

/// What has been decided about the response. Hooks that unwind Pingora's flow with an error
/// record here why; the hooks that run next (retry, failure, logging) read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet: the request is being proxied.
    Open,
    /// A failure decided the response, or ended it once its header was out.
    Failed(FailureKind),
    /// The route intercepts this origin status: the proxy's page replaces it.
    Intercepted(u16),
    /// This origin status is retried, after the pause.
    RetryStatus(Duration),
    /// The proxy wrote its own response, for this cause.
    Generated(Cause),
}

impl Decision {
    /// The failure the request ended with, if one did.
    pub fn failure(self) -> Option<FailureKind> {
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
    pub snapshot: Arc<Snapshot>,
    /// The route's pool in the snapshot.
    pub pool_index: Option<usize>,
    /// When the request header was read.
    pub started: Instant,
    /// The request id.
    pub request_id: String,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// A backend chosen while filtering the request, used by the first attempt.
    pub preselected: Option<Selected>,
    /// Every attempt.
    pub attempts: Attempts,
    /// Phase of the current attempt.
    pub phase: Phase,
    /// What has been decided about the response.
    pub decision: Decision,
    /// The counters of the route (or of `none`).
    pub metrics: Option<Arc<RouteMetrics>>,
    /// The request's place among its upstream's requests in flight.
    pub in_flight: Option<InFlight>,
    /// The current attempt, while its backend owes an answer.
    pub pending: Option<Pending>,
    /// The current attempt's half-open probe, until its outcome is reported.
    pub probe: Option<Probe>,
    /// Request body bytes the current attempt has forwarded.
    pub body_bytes: u64,
}

impl RequestCtx {
    /// A request starting now on `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            pool_index: None,
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            preselected: None,
            attempts: Attempts::default(),
            phase: Phase::Select,
            decision: Decision::Open,
            metrics: None,
            in_flight: None,
            pending: None,
            probe: None,
            body_bytes: 0,
        }
    }

    /// Gives back everything the request holds of its upstream now, at its end: they would go
    /// with the context anyway, a moment later, but the client's next request, and the access
    /// log, must see them given back.
    pub fn release(&mut self) {
        self.in_flight = None;
        self.pending = None;
        self.probe = None;
        self.preselected = None;
    }

    /// The route's upstream pool.
    pub fn pool(&self) -> Option<&Pool> {
        self.snapshot.upstreams.get(self.pool_index?)
    }

    /// The failure the request ended with, if one did.
    pub fn failure(&self) -> Option<FailureKind> {
        self.decision.failure()
    }

    /// Time left before the route's deadline, if it has one.
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = self.route.as_ref()?.deadline?;
        Some(deadline.saturating_sub(self.started.elapsed()))
    }

    /// The backend to name in `next-hop`, when the configuration allows it: the one of the last
    /// attempt, if that attempt ended with `outcome`, the one the client is told about. A
    /// request that failed without reaching a backend again (none left to select after a failed
    /// attempt) names none: the last backend tried is not the one that failed it.
    pub fn next_hop(&self, outcome: Outcome) -> Option<&str> {
        if !self.snapshot.pages.reveal_backends() {
            return None;
        }
        let a = self.attempts.last().filter(|a| a.outcome == outcome)?;
        Some(self.pool()?.backends().get(a.backend)?.name.as_str())
    }

    /// Seconds until the first ejected backend of the pool comes back, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        let d = self.pool()?.health.next_return()?;
        Some(d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }
}
