//! Upstream pools: weighted round robin and random selection of faultline's own (Pingora's Ketama
//! ring for consistent hashing), filtered by passive health, Pingora's active health checks and
//! whether a backend is answering; the peers built with the pool's timeouts, the retry budget,
//! and the per-request attempt history.

pub(crate) mod active;
pub(crate) mod answering;
pub(crate) mod attempt;
pub(crate) mod backend;
pub(crate) mod budget;
pub(crate) mod health;
pub(crate) mod lease;
pub(crate) mod membership;
pub(crate) mod window;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backends, LoadBalancer, discovery};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{BackendSource, HeaderCase, Protocol, Selection, UpstreamConfig};
use crate::failure::FailureKind;
use crate::metrics::{BackendView, UpstreamMetrics, UpstreamView};
use answering::Answers;
use backend::{Backend, Origin};
use budget::RetryBudget;
use health::{Census, PassiveHealth, Reason, State, Verdict};
use lease::{InFlight, Pending, Probe};
use membership::{Refreshes, Resolved};

/// The position of a backend in its pool, stored in the Pingora `Backend`'s extensions so a
/// selection maps back to faultline's own per-backend state without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendIndex(pub(crate) usize);

/// The index of a Pingora backend in its pool.
pub(crate) fn index_of(b: &pingora::lb::Backend) -> Option<usize> {
    b.ext.get::<BackendIndex>().map(|i| i.0)
}

/// Upper bound on backends examined per selection (Pingora's `max_iterations`).
const MAX_SELECT_ITERATIONS: usize = 256;

/// How a pool picks backends. Round robin and random run over faultline's own list of backend
/// positions (each repeated by its weight): one atomic step and no allocation per selection.
/// Pingora's selector would build a de-duplicating iterator (a hash set) for every request and
/// hash each candidate for its readiness. Consistent hashing keeps Pingora's Ketama ring. Every
/// pool keeps a Pingora `LoadBalancer`: its `Backends` run the active health checks.
enum Balancer {
    Own {
        /// Backend positions, each repeated by its weight, in configuration order.
        order: Box<[usize]>,
        /// Backends in the pool.
        backends: usize,
        next: AtomicUsize,
        random: bool,
        lb: Arc<LoadBalancer<RoundRobin>>,
    },
    Consistent(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    /// The first backend `accept`s (given its index and whether its active check passes), in
    /// the pool's order from this request's starting point.
    fn select_with(
        &self,
        key: &[u8],
        ready: impl Fn(usize) -> bool,
        accept: impl Fn(usize, bool) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::Own {
                order,
                backends,
                next,
                random,
                ..
            } => {
                if order.is_empty() {
                    return None;
                }
                let at = if *random {
                    rand::random::<usize>()
                } else {
                    next.fetch_add(1, Ordering::Relaxed)
                };
                let first = order[at % order.len()];
                // Then every other backend once, in order after the first.
                (0..(*backends).min(MAX_SELECT_ITERATIONS))
                    .map(|k| (first + k) % backends)
                    .find(|&i| accept(i, ready(i)))
            }
            Balancer::Consistent(lb) => lb
                .select_with(key, MAX_SELECT_ITERATIONS, |b, healthy| {
                    index_of(b).is_some_and(|i| accept(i, healthy))
                })
                .and_then(|b| index_of(&b)),
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Balancer::Own { lb, .. } => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
}

/// A selected backend.
#[derive(Debug)]
pub struct Selected {
    /// Its index in the pool.
    pub index: usize,
    /// When this request is its half-open probe, the permit to report the outcome with.
    pub probe: Option<Probe>,
}

/// A pool of backends.
pub struct Pool {
    name: String,
    balancer: Balancer,
    backends: Box<[Arc<Backend>]>,
    hash_key: bool,
    /// The passive-health policy of its backends.
    health: PassiveHealth,
    /// Retries may be at most a share of this upstream's recent requests.
    pub budget: Arc<RetryBudget>,
    /// Upstream-wide counters.
    pub metrics: Arc<UpstreamMetrics>,
    /// The pool's answers, for which backends are answering.
    answers: Answers,
    active_interval: Option<Duration>,
    in_flight: Arc<AtomicU32>,
    max_in_flight: Option<u32>,
    header_case: HeaderCase,
    tunnel_idle: Duration,
    /// The configuration it was built from, for the next generation a changed answer builds.
    config: UpstreamConfig,
    /// The last good answer of each `dns:`/`srv:` entry.
    discovered: BTreeMap<BackendSource, Arc<[Resolved]>>,
    /// The highest SRV priority tier among its backends.
    max_tier: u16,
    /// Refreshes of its entries, shared by every generation.
    refreshes: Arc<Refreshes>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backends.len())
            .finish()
    }
}

/// Why a pool could not be built.
#[derive(Debug)]
pub struct PoolError(String);

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PoolError {}

impl Pool {
    /// Builds the pool, its selector and, when configured, its active health check. Backends
    /// that `previous` (the same upstream before a reload) also had keep their counters and
    /// passive-health state; the upstream keeps its retry budget. Its `dns:`/`srv:` entries
    /// that `previous` also had keep their last good answer until the next refresh.
    pub fn new(config: &UpstreamConfig, previous: Option<&Pool>) -> Result<Pool, PoolError> {
        let discovered = previous
            .map(|p| {
                config
                    .discovered
                    .iter()
                    .filter_map(|d| {
                        let set = p.discovered.get(&d.source)?;
                        Some((d.source.clone(), set.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Pool::build(config, discovered, previous)
    }

    /// The next generation of this pool, with `set` as the answer of `source`: the backends
    /// that stay keep their state, the ones it no longer lists leave, new ones are selectable
    /// at once. `None` when the pool has no such entry.
    pub(crate) fn with_answer(
        &self,
        source: &BackendSource,
        set: Arc<[Resolved]>,
    ) -> Option<Result<Pool, PoolError>> {
        if !self.config.discovered.iter().any(|d| &d.source == source) {
            return None;
        }
        let mut discovered = self.discovered.clone();
        discovered.insert(source.clone(), set);
        Some(Pool::build(&self.config, discovered, Some(self)))
    }

    /// The current answer of `source`, if it has had one.
    pub(crate) fn answer(&self, source: &BackendSource) -> Option<&[Resolved]> {
        self.discovered.get(source).map(|s| &**s)
    }

    /// Its `dns:`/`srv:` entries.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &BackendSource> {
        self.config.discovered.iter().map(|d| &d.source)
    }

    /// Refreshes of its entries.
    pub(crate) fn refreshes(&self) -> &Refreshes {
        &self.refreshes
    }

    fn build(
        config: &UpstreamConfig,
        discovered: BTreeMap<BackendSource, Arc<[Resolved]>>,
        previous: Option<&Pool>,
    ) -> Result<Pool, PoolError> {
        let health = PassiveHealth::new(config.passive_health.clone());
        let answers = previous.map_or_else(Default::default, |p| p.answers.clone());
        // Static backends first, then each entry's addresses in configuration order; an address
        // already listed is one backend (the first listing wins).
        let statics: Arc<str> = Arc::from("static");
        let mut members: Vec<(SocketAddr, usize, Origin)> = config
            .backends
            .iter()
            .map(|b| {
                let origin = Origin {
                    source: statics.clone(),
                    tier: 0,
                };
                (b.address, b.weight, origin)
            })
            .collect();
        for d in &config.discovered {
            let Some(set) = discovered.get(&d.source) else {
                continue;
            };
            let label: Arc<str> = Arc::from(d.source.to_string());
            for r in set.iter() {
                if members.iter().any(|(a, _, _)| *a == r.address) {
                    continue;
                }
                let weight = match d.source {
                    BackendSource::Dns { .. } => d.weight,
                    BackendSource::Srv { .. } => r.weight,
                };
                let origin = Origin {
                    source: label.clone(),
                    tier: r.tier,
                };
                members.push((r.address, weight.max(1), origin));
            }
        }
        let total_weight = members.iter().map(|(_, w, _)| *w).sum();
        let mut set = std::collections::BTreeSet::new();
        let mut backends = Vec::with_capacity(members.len());
        for (i, (address, weight, origin)) in members.iter().enumerate() {
            let mut selection =
                pingora::lb::Backend::new_with_weight(&address.to_string(), *weight).map_err(
                    |e| PoolError(format!("upstream {}: backend {address}: {e}", config.name)),
                )?;
            selection.ext.insert(BackendIndex(i));
            set.insert(selection.clone());
            backends.push(Arc::new(Backend::new(
                *address,
                origin.clone(),
                peer(config, *address),
                selection,
                answering::allowed_lag(*weight, total_weight),
                &answers,
                &health,
                previous.and_then(|p| p.backend_at(*address)),
            )));
        }
        let backends: Box<[Arc<Backend>]> = backends.into();
        let max_tier = members.iter().map(|(_, _, o)| o.tier).max().unwrap_or(0);
        let discovery = discovery::Static::new(set);
        let balancer = match config.selection {
            Selection::RoundRobin | Selection::Random => Balancer::Own {
                // The weighted order covers the first tier; the others are reached only by the
                // walk past unselectable backends.
                order: members
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, _, o))| o.tier == 0)
                    .flat_map(|(i, (_, w, _))| std::iter::repeat_n(i, *w))
                    .collect(),
                backends: members.len(),
                next: AtomicUsize::new(0),
                random: config.selection == Selection::Random,
                lb: build(discovery, config, &backends)?,
            },
            Selection::ConsistentHash => Balancer::Consistent(build(discovery, config, &backends)?),
        };
        Ok(Pool {
            name: config.name.clone(),
            balancer,
            backends,
            hash_key: config.selection == Selection::ConsistentHash,
            health,
            budget: previous.map_or_else(Default::default, |p| p.budget.clone()),
            metrics: previous.map_or_else(Default::default, |p| p.metrics.clone()),
            answers,
            active_interval: config.active_health.as_ref().map(|a| a.interval),
            in_flight: previous.map_or_else(Default::default, |p| p.in_flight.clone()),
            max_in_flight: config.max_in_flight,
            header_case: config.header_case,
            tunnel_idle: config.timeouts.tunnel_idle,
            config: config.clone(),
            discovered,
            max_tier,
            refreshes: previous.map_or_else(Default::default, |p| p.refreshes.clone()),
        })
    }

    /// The backend at `address`, if the pool has one.
    fn backend_at(&self, address: SocketAddr) -> Option<&Backend> {
        self.backends
            .iter()
            .find(|b| b.address() == address)
            .map(|b| &**b)
    }

    /// How header names are spelled towards the backends.
    pub(crate) fn header_case(&self) -> HeaderCase {
        self.header_case
    }

    /// How long a tunnel through this upstream may be idle (`timeouts.tunnel_idle`).
    pub(crate) fn tunnel_idle(&self) -> Duration {
        self.tunnel_idle
    }

    /// The upstream's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The backends, by index.
    pub(crate) fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Backend `i`.
    pub(crate) fn backend(&self, i: usize) -> Option<&Arc<Backend>> {
        self.backends.get(i)
    }

    /// Whether selection uses the request key (consistent hashing).
    pub(crate) fn uses_key(&self) -> bool {
        self.hash_key
    }

    /// Whether passive health ejects its failing backends (it is configured).
    pub(crate) fn passive_health(&self) -> bool {
        self.health.enabled()
    }

    /// How often the active health checks run, when configured.
    pub(crate) fn active_interval(&self) -> Option<Duration> {
        self.active_interval
    }

    /// Runs one round of active health checks on every backend, in parallel.
    pub async fn run_active_checks(&self) {
        self.balancer.backends().run_health_check(true).await;
    }

    /// Whether backend `i` passes its active health check (always, without one).
    pub(crate) fn actively_healthy(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_none_or(|b| self.balancer.backends().ready(&b.selection))
    }

    /// Picks a backend that both health views admit, preferring one for which `tried` is
    /// false; falls back to a tried one only when every admitted backend was tried.
    pub fn select(&self, key: &[u8], tried: impl Fn(usize) -> bool) -> Option<Selected> {
        (0..=self.max_tier).find_map(|tier| self.select_in(key, &tried, tier))
    }

    /// [`select`](Self::select) among the backends of SRV priority tiers up to `max_tier`.
    fn select_in(
        &self,
        key: &[u8],
        tried: &impl Fn(usize) -> bool,
        max_tier: u16,
    ) -> Option<Selected> {
        let probe = Cell::new(false);
        let admit = |i: usize, healthy: bool, fresh_only: bool, answering_only: bool| {
            let Some(b) = self.backends.get(i) else {
                return false;
            };
            if (fresh_only && tried(i)) || (answering_only && b.lagging()) {
                return false;
            }
            Self::admits(b, healthy, max_tier, &probe)
        };
        let ready = |i: usize| self.ready(i);
        // Consistent hashing keeps its affinity: only health moves a key elsewhere.
        let avoid_lagging = !self.hash_key;
        let chosen = self
            .balancer
            .select_with(key, ready, |i, healthy| {
                admit(i, healthy, true, avoid_lagging)
            })
            .or_else(|| {
                if !avoid_lagging {
                    return None;
                }
                self.balancer
                    .select_with(key, ready, |i, healthy| admit(i, healthy, true, false))
            })
            .or_else(|| {
                self.balancer
                    .select_with(key, ready, |i, healthy| admit(i, healthy, false, false))
            })?;
        Some(Selected {
            index: chosen,
            probe: probe
                .get()
                .then(|| self.backends.get(chosen).map(Probe::granted))
                .flatten(),
        })
    }

    /// Backend `index` for a request that prefers it (a sticky session), when it can take one
    /// now: both health views admit it, it is not draining, and it is in the first SRV tier.
    pub(crate) fn select_backend(&self, index: usize) -> Option<Selected> {
        let b = self.backends.get(index)?;
        let probe = Cell::new(false);
        if !Self::admits(b, self.ready(index), 0, &probe) {
            return None;
        }
        Some(Selected {
            index,
            probe: probe.get().then(|| Probe::granted(b)),
        })
    }

    /// The index of the backend named `name` (its configured address), if the pool has it.
    pub(crate) fn backend_named(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name() == name)
    }

    /// Readiness by active check; without active checks every backend is ready.
    fn ready(&self, i: usize) -> bool {
        self.active_interval.is_none() || self.actively_healthy(i)
    }

    /// Whether `b` takes a request now: healthy by active check, not draining, within
    /// `max_tier`, and let through by its breaker (which may make the request its probe, told
    /// by `probe`).
    fn admits(b: &Backend, healthy: bool, max_tier: u16, probe: &Cell<bool>) -> bool {
        if !healthy || b.draining() || b.tier() > max_tier {
            return false;
        }
        match b.breaker().admit() {
            Some(is_probe) => {
                probe.set(is_probe);
                true
            }
            None => false,
        }
    }

    /// Takes a place among the requests in flight, given back when dropped; `None` when the
    /// upstream is at its limit.
    pub(crate) fn enter(&self) -> Option<InFlight> {
        InFlight::take(&self.in_flight, self.max_in_flight)
    }

    /// Whether some backend has not been tried yet.
    pub(crate) fn has_untried(&self, tried: impl Fn(usize) -> bool) -> bool {
        (0..self.backends.len()).any(|i| !tried(i))
    }

    /// The peer for backend `index`, with the pool's timeouts, each cut to `time_left` so that
    /// no single wait outlasts the request's deadline.
    pub(crate) fn peer(&self, index: usize, time_left: Option<Duration>) -> Option<Box<HttpPeer>> {
        let mut peer = Box::new(self.backends.get(index)?.peer().clone());
        if let Some(left) = time_left {
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.total_connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = t.map(|t| t.min(left));
            }
        }
        Some(peer)
    }

    /// Records a failed attempt on backend `i`: its counters and, when the kind is the
    /// backend's fault, its passive health.
    /// `was_probe`: the attempt was the backend's half-open probe, already reported by its
    /// response header.
    pub fn record_failure(
        &self,
        i: usize,
        probe: Option<Probe>,
        was_probe: bool,
        kind: FailureKind,
    ) {
        if let Some(b) = self.backends.get(i) {
            b.metrics().failure(kind);
        }
        let verdict = if kind.counts_against_backend() {
            Verdict::Failure
        } else {
            Verdict::Neutral
        };
        self.record_health(i, probe, was_probe, verdict);
    }

    /// Passive health learns the verdict of an attempt on backend `i`: through its probe
    /// permit when it holds one, else as a probe only when `was_probe`.
    fn record_health(&self, i: usize, probe: Option<Probe>, was_probe: bool, verdict: Verdict) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        debug_assert!(
            probe
                .as_ref()
                .is_none_or(|p| p.backend().is_some_and(|p| std::ptr::eq(p, &**b))),
            "a probe reported for another backend"
        );
        let census = || Census {
            out: self
                .backends
                .iter()
                .filter(|b| b.breaker().is_out())
                .count(),
            size: self.backends.len(),
        };
        self.health
            .record(b.breaker(), verdict, probe.is_some() || was_probe, census);
        if let Some(p) = probe {
            p.reported();
        }
    }

    /// Records a response header from backend `i`: its counters and its passive health (a
    /// status listed in `failure_statuses` is a failure, any other a success).
    pub(crate) fn record_response(
        &self,
        i: usize,
        probe: Option<Probe>,
        status: u16,
        header_time: Option<Duration>,
    ) {
        if let Some(b) = self.backends.get(i) {
            b.metrics().response(status);
            if let Some(t) = header_time {
                b.metrics().header.observe(t);
            }
        }
        let verdict = if self.health.is_failure_status(status) {
            Verdict::Failure
        } else {
            Verdict::Success
        };
        self.record_health(i, probe, false, verdict);
    }

    /// An attempt on backend `i` starts: it is outstanding until it is answered or dropped.
    pub(crate) fn start_attempt(&self, i: usize) -> Option<Pending> {
        self.backends.get(i).map(Pending::start)
    }

    /// Records that an attempt on backend `i` ended with its response (see
    /// [`BackendMetrics::answered`](crate::metrics::BackendMetrics::answered)).
    pub(crate) fn record_answered(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.metrics().answered();
        }
    }

    /// Records the connect time of a new connection to backend `i`.
    pub(crate) fn record_connect(&self, i: usize, connect: Duration) {
        if let Some(b) = self.backends.get(i) {
            b.metrics().connect.observe(connect);
        }
    }

    /// Whether backend `i` takes traffic now (not ejected, and passing its active check).
    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| !matches!(b.state(), State::Ejected(_)))
            && self.actively_healthy(i)
    }

    /// Time until the first ejected backend comes back, if any is ejected.
    pub(crate) fn next_return(&self) -> Option<Duration> {
        self.backends
            .iter()
            .filter_map(|b| match b.state() {
                State::Ejected(left) => Some(left),
                _ => None,
            })
            .min()
    }

    /// This pool for the metrics exposition.
    pub(crate) fn view(&self) -> UpstreamView<'_> {
        UpstreamView {
            name: &self.name,
            metrics: &self.metrics,
            backends: self
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendView {
                    name: b.name(),
                    metrics: b.metrics(),
                    up: self.is_up(i),
                    ejections: Reason::ALL.map(|r| (r.as_str(), b.breaker().ejections(r))),
                })
                .collect(),
        }
    }
}

/// The peer of the backend at `address`, with the upstream's TLS and timeouts.
fn peer(config: &UpstreamConfig, address: SocketAddr) -> HttpPeer {
    let mut peer = match &config.tls {
        Some(tls) => {
            let mut p = HttpPeer::new(address, true, tls.sni.clone());
            p.options.verify_cert = tls.verify_cert;
            p.options.verify_hostname = tls.verify_cert;
            // For backends that require one (mTLS); Pingora's connector presents it.
            p.client_cert_key = tls.client_cert.clone();
            p
        }
        None => HttpPeer::new(address, false, String::new()),
    };
    let t = &config.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.response_header);
    peer.options.write_timeout = Some(t.write_idle);
    peer.options.idle_timeout = Some(t.keepalive_idle);
    // `ALPN::H2` makes Pingora's connector speak HTTP/2 only: over TLS by ALPN, over plain TCP
    // with prior knowledge (pingora-core `connectors/http/v2.rs`, `new_http_session`).
    match config.protocol {
        Protocol::Http1 => {}
        Protocol::H2 | Protocol::H2c => {
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = config.h2_max_streams;
        }
    }
    peer
}

fn build<S>(
    discovery: Box<discovery::Static>,
    config: &UpstreamConfig,
    backends: &[Arc<Backend>],
) -> Result<Arc<LoadBalancer<S>>, PoolError>
where
    S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery));
    // Static discovery completes without awaiting anything.
    match lb.update().now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(PoolError(format!("building the selector: {e}"))),
        None => return Err(PoolError("building the selector did not complete".into())),
    }
    if let Some(active) = &config.active_health {
        lb.set_health_check(active::check(active, &config.name, backends.into()));
    }
    Ok(Arc::new(lb))
}

/// Every pool, indexed like `Config::upstreams`.
#[derive(Debug, Default, Clone)]
pub struct Upstreams {
    /// Shared by `Arc`: a membership change of one pool builds a new `Upstreams` that keeps the
    /// others as they are.
    pools: Vec<Arc<Pool>>,
    /// Name → index, built once: routes name their upstream and every request looks it up.
    by_name: HashMap<String, usize, ahash::RandomState>,
}

impl Upstreams {
    /// Builds every pool, carrying over the state of `previous` for upstreams and backends that
    /// stay.
    pub fn new(
        configs: &[UpstreamConfig],
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, PoolError> {
        let pools = configs
            .iter()
            .map(|c| Pool::new(c, previous.and_then(|p| p.by_name(&c.name))).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok(Upstreams { pools, by_name })
    }

    /// The pool at `index`.
    pub(crate) fn get(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index).map(|p| &**p)
    }

    /// These pools with `pool` in place of the one of the same name.
    pub(crate) fn with_pool(&self, pool: Pool) -> Upstreams {
        let mut next = self.clone();
        if let Some(i) = self.index_of(&pool.name) {
            next.pools[i] = Arc::new(pool);
        }
        next
    }

    /// The index of the pool named `name`.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn by_name(&self, name: &str) -> Option<&Pool> {
        self.get(self.index_of(name)?)
    }

    /// The pool named `name`.
    pub(crate) fn named(&self, name: &str) -> Option<&Pool> {
        self.by_name(name)
    }

    /// Every pool, in configuration order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter().map(|p| &**p)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

    /// A pool of `backends` (YAML), with `extra` lines under the upstream.
    pub(crate) fn pool(backends: &str, extra: &str) -> Pool {
        let yaml = format!(
            "listeners: [{{ address: \"127.0.0.1:8080\" }}]\nupstreams:\n  app:\n    backends: {backends}\n{extra}routes: [{{ upstream: app }}]\n"
        );
        let config = Config::from_yaml(&yaml).expect("config");
        Pool::new(&config.upstreams[0], None).expect("pool")
    }

    #[test]
    fn round_robin_follows_the_weights() {
        let p = pool(
            "[{ address: \"127.0.0.1:9001\", weight: 3 }, { address: \"127.0.0.1:9002\" }]",
            "",
        );
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[p.select(b"", |_| false).expect("a backend").index] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn a_retry_reaches_every_other_backend_once() {
        let p = pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }, { address: \"127.0.0.1:9003\" }]",
            "",
        );
        let first = p.select(b"", |_| false).expect("a backend").index;
        let second = p.select(b"", |i| i == first).expect("another").index;
        assert_ne!(first, second);
        let third = p
            .select(b"", |i| i == first || i == second)
            .expect("the last");
        assert!(third.index != first && third.index != second);
        // All tried: the fresh pass finds none, the second pass takes any.
        assert!(p.select(b"", |_| true).is_some());
    }

    #[test]
    fn ejected_and_lagging_backends_are_passed_over() {
        let p = pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }]",
            "    health: { passive: { consecutive_failures: 1, max_ejected_percent: 50 } }\n",
        );
        p.record_failure(0, None, false, FailureKind::ConnectionRefused);
        for _ in 0..10 {
            assert_eq!(p.select(b"", |_| false).expect("a backend").index, 1);
        }
        // Random selection over a pool whose first backend never answers.
        let r = pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }]",
            "    selection: random\n",
        );
        let [slow, fast] = [0, 1].map(|i| r.backend(i).expect("a backend"));
        slow.started();
        for _ in 0..5 {
            fast.started();
            fast.answered();
        }
        for _ in 0..20 {
            assert_eq!(r.select(b"", |_| false).expect("a backend").index, 1);
        }
    }

    #[test]
    fn a_new_generation_keeps_what_it_learnt_of_the_backends_that_stay() {
        let passive =
            "    health: { passive: { consecutive_failures: 1, max_ejected_percent: 50 } }\n";
        let before = pool(
            "[{ address: \"127.0.0.1:9001\" }, { address: \"127.0.0.1:9002\" }]",
            passive,
        );
        before.record_failure(0, None, false, FailureKind::ConnectionRefused);
        let held = before.start_attempt(1).expect("an attempt");
        let yaml = format!(
            "listeners: [{{ address: \"127.0.0.1:8080\" }}]\nupstreams:\n  app:\n    backends: [{{ address: \"127.0.0.1:9003\" }}, {{ address: \"127.0.0.1:9002\" }}, {{ address: \"127.0.0.1:9001\" }}]\n{passive}routes: [{{ upstream: app }}]\n"
        );
        let config = Config::from_yaml(&yaml).expect("config");
        let after = Pool::new(&config.upstreams[0], Some(&before)).expect("pool");
        let by_address = |port: u16| {
            after
                .backends()
                .iter()
                .find(|b| b.address().port() == port)
                .expect("a backend")
        };
        let (new, stays_busy, stays_out) = (by_address(9003), by_address(9002), by_address(9001));
        assert!(
            matches!(stays_out.state(), State::Ejected(_)),
            "still ejected"
        );
        assert_eq!(
            stays_out
                .metrics()
                .attempts(Some(FailureKind::ConnectionRefused)),
            1
        );
        assert_eq!(
            stays_busy.pending(),
            1,
            "its outstanding attempt is still counted"
        );
        assert_eq!(new.state(), State::Healthy);
        assert_eq!(
            new.metrics().attempts(Some(FailureKind::ConnectionRefused)),
            0
        );
        // The attempt started on the old generation ends in the state both generations share.
        drop(held);
        assert_eq!(stays_busy.pending(), 0);
    }

    #[test]
    fn a_higher_srv_priority_group_takes_traffic_only_when_no_lower_one_is_selectable() {
        let p = pool(
            "[{ srv: \"_http._tcp.api.test\" }]",
            "    health: { passive: { consecutive_failures: 1, max_ejected_percent: 100 } }\n",
        );
        assert!(p.select(b"", |_| false).is_none(), "no answer yet: empty");
        let source = BackendSource::Srv {
            name: "_http._tcp.api.test".into(),
        };
        let at = |port: u16, tier: u16| Resolved {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            tier,
        };
        let p = p
            .with_answer(&source, vec![at(9001, 0), at(9002, 0), at(9003, 1)].into())
            .expect("the entry")
            .expect("pool");
        let pick = || {
            p.backends()[p.select(b"", |_| false).expect("a backend").index]
                .address()
                .port()
        };
        for _ in 0..10 {
            assert_ne!(pick(), 9003);
        }
        p.record_failure(0, None, false, FailureKind::ConnectionRefused);
        for _ in 0..10 {
            assert_eq!(pick(), 9002, "the rest of the first group");
        }
        p.backends()[1].set_draining(true);
        assert_eq!(
            pick(),
            9003,
            "the next group once none of the first is selectable"
        );
        p.backends()[1].set_draining(false);
        assert_eq!(pick(), 9002);
    }
}
