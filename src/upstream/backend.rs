//! One backend: where it is, how to reach it, and everything faultline learns of it (its
//! counters, its breaker, its outstanding attempts), held in one place and shared by `Arc`.
//!
//! A pool is a list of backends. A new generation of the pool (a reload, and membership changes
//! at run time) builds each backend anew from its configuration, and a backend whose address the
//! previous generation also had takes over that one's counters, breaker and outstanding
//! attempts: what is learnt of a backend lasts as long as its address stays in the pool.
//! Requests that started on the previous generation keep theirs and report into the same state.
//! So does the admin's drain flag: a backend drained for a rolling deploy stays drained across
//! reloads and refreshes for as long as it stays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pingora::upstreams::peer::HttpPeer;

use super::answering::{Answers, Progress};
use super::health::{Breaker, PassiveHealth, State};
use crate::metrics::BackendMetrics;

/// One backend of a pool.
#[derive(Debug)]
pub(crate) struct Backend {
    address: SocketAddr,
    /// Its label in logs and metrics (the configured address).
    name: String,
    /// The peer with the pool's timeouts.
    peer: HttpPeer,
    /// Its entry in Pingora's `Backends`, which runs the active checks and the Ketama ring.
    pub(super) selection: pingora::lb::Backend,
    /// The pool's answers it may lag by.
    lag: u64,
    /// The pool's answer count, shared by its backends.
    answers: Answers,
    metrics: Arc<BackendMetrics>,
    breaker: Arc<Breaker>,
    progress: Arc<Progress>,
    /// Drained from the admin listener: it takes no new request.
    draining: Arc<AtomicBool>,
    /// Where it came from: `static`, or its `dns:`/`srv:` entry.
    source: Arc<str>,
    /// Its SRV priority group, ranked (0 for every other backend).
    tier: u16,
}

/// Where a backend of a new generation comes from.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    /// `static`, or its `dns:`/`srv:` entry.
    pub(super) source: Arc<str>,
    /// Its SRV priority group, ranked.
    pub(super) tier: u16,
}

impl Backend {
    /// A backend of a new pool generation: it takes over the state of `previous` (the same
    /// address in the generation before) or starts afresh.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        address: SocketAddr,
        origin: Origin,
        peer: HttpPeer,
        selection: pingora::lb::Backend,
        lag: u64,
        answers: &Answers,
        health: &PassiveHealth,
        previous: Option<&Backend>,
    ) -> Backend {
        Backend {
            address,
            name: address.to_string(),
            peer,
            selection,
            lag,
            answers: answers.clone(),
            metrics: previous.map_or_else(Default::default, |p| p.metrics.clone()),
            breaker: previous.map_or_else(|| Arc::new(health.breaker()), |p| p.breaker.clone()),
            progress: previous.map_or_else(Default::default, |p| p.progress.clone()),
            draining: previous.map_or_else(Default::default, |p| p.draining.clone()),
            source: origin.source,
            tier: origin.tier,
        }
    }

    /// Where it came from: `static`, or its `dns:`/`srv:` entry.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Its SRV priority group, ranked (0 for every other backend).
    pub(crate) fn tier(&self) -> u16 {
        self.tier
    }

    /// Whether it is drained: it takes no new request.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drains it (`true`) or returns it to service (`false`).
    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Its address.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its label in logs and metrics.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The peer, with the pool's timeouts.
    pub(crate) fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Its counters.
    pub(crate) fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }

    /// Its passive-health breaker.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Where it stands in passive health.
    pub(crate) fn state(&self) -> State {
        self.breaker.state()
    }

    /// An attempt on it starts.
    pub(crate) fn started(&self) {
        self.progress.started(&self.answers);
    }

    /// An attempt on it was answered.
    pub(crate) fn answered(&self) {
        self.progress.answered(&self.answers);
    }

    /// An attempt on it ended without an answer.
    pub(crate) fn ended(&self) {
        self.progress.ended();
    }

    /// Whether it has work outstanding and made no progress while its pool answered more than
    /// its share allows.
    pub(crate) fn lagging(&self) -> bool {
        self.progress.lagging(&self.answers, self.lag)
    }

    /// Attempts outstanding on it.
    pub(crate) fn pending(&self) -> u32 {
        self.progress.pending()
    }
}
