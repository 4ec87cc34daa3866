//! Upstream pools: one Pingora `LoadBalancer` per configured upstream, the peers built from it
//! with the pool's timeouts, and the per-request attempt history.

pub mod attempt;
pub mod budget;

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer, discovery};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Selection, UpstreamConfig};
use crate::metrics::{BackendMetrics, UpstreamMetrics, UpstreamView};
use budget::RetryBudget;

/// The position of a backend in its pool, stored in the Pingora `Backend`'s extensions so a
/// selection maps back to faultline's own per-backend state without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackendIndex(usize);

/// Upper bound on backends examined per selection (Pingora's `max_iterations`).
const MAX_SELECT_ITERATIONS: usize = 256;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

impl Balancer {
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }
}

/// One backend as the rest of faultline sees it.
#[derive(Debug)]
pub struct BackendInfo {
    /// Its address.
    pub address: SocketAddr,
    /// Its label in logs and metrics (the configured address).
    pub name: String,
    /// Its counters.
    pub metrics: BackendMetrics,
    peer: HttpPeer,
}

/// A pool of backends.
pub struct Pool {
    name: String,
    balancer: Balancer,
    backends: Vec<BackendInfo>,
    hash_key: bool,
    /// Retries may be at most a share of this upstream's recent requests.
    pub budget: RetryBudget,
    /// Upstream-wide counters.
    pub metrics: UpstreamMetrics,
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
    /// Builds the pool and its selector from a validated upstream.
    pub fn new(config: &UpstreamConfig) -> Result<Pool, PoolError> {
        let mut set = std::collections::BTreeSet::new();
        let mut backends = Vec::with_capacity(config.backends.len());
        for (i, b) in config.backends.iter().enumerate() {
            let mut backend =
                Backend::new_with_weight(&b.address.to_string(), b.weight).map_err(|e| {
                    PoolError(format!(
                        "upstream {}: backend {}: {e}",
                        config.name, b.address
                    ))
                })?;
            backend.ext.insert(BackendIndex(i));
            set.insert(backend);
            let mut peer = HttpPeer::new(b.address, false, String::new());
            let t = &config.timeouts;
            peer.options.connection_timeout = Some(t.connect);
            peer.options.total_connection_timeout = Some(t.connect);
            peer.options.read_timeout = Some(t.response_header);
            peer.options.write_timeout = Some(t.write_idle);
            peer.options.idle_timeout = Some(t.keepalive_idle);
            backends.push(BackendInfo {
                address: b.address,
                name: b.address.to_string(),
                metrics: BackendMetrics::default(),
                peer,
            });
        }
        let discovery = discovery::Static::new(set);
        let balancer = match config.selection {
            Selection::RoundRobin => Balancer::RoundRobin(build(discovery)?),
            Selection::Random => Balancer::Random(build(discovery)?),
            Selection::ConsistentHash => Balancer::Consistent(build(discovery)?),
        };
        Ok(Pool {
            name: config.name.clone(),
            balancer,
            backends,
            hash_key: config.selection == Selection::ConsistentHash,
            budget: RetryBudget::default(),
            metrics: UpstreamMetrics::default(),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backends, by index.
    pub fn backends(&self) -> &[BackendInfo] {
        &self.backends
    }

    /// Whether selection uses the request key (consistent hashing).
    pub fn uses_key(&self) -> bool {
        self.hash_key
    }

    /// Picks a backend, preferring one for which `tried` is false; falls back to a tried one
    /// only when every selectable backend was tried.
    pub fn select(&self, key: &[u8], tried: impl Fn(usize) -> bool) -> Option<usize> {
        let index = |b: &Backend| b.ext.get::<BackendIndex>().map(|i| i.0);
        self.balancer
            .select_with(key, |b, healthy| {
                healthy && index(b).is_some_and(|i| !tried(i))
            })
            .or_else(|| self.balancer.select_with(key, |_, healthy| healthy))
            .and_then(|b| index(&b))
    }

    /// Whether some backend has not been tried yet.
    pub fn has_untried(&self, tried: impl Fn(usize) -> bool) -> bool {
        (0..self.backends.len()).any(|i| !tried(i))
    }

    /// The peer for backend `index`, with the pool's timeouts, each cut to `time_left` so that
    /// no single wait outlasts the request's deadline.
    pub fn peer(&self, index: usize, time_left: Option<Duration>) -> Option<Box<HttpPeer>> {
        let mut peer = Box::new(self.backends.get(index)?.peer.clone());
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

    /// This pool for the metrics exposition.
    pub fn view(&self) -> UpstreamView<'_> {
        UpstreamView {
            name: &self.name,
            metrics: &self.metrics,
            backends: self
                .backends
                .iter()
                .map(|b| (b.name.as_str(), &b.metrics))
                .collect(),
        }
    }
}

fn build<S>(discovery: Box<discovery::Static>) -> Result<LoadBalancer<S>, PoolError>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let lb = LoadBalancer::<S>::from_backends(Backends::new(discovery));
    // Static discovery completes without awaiting anything.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(PoolError(format!("building the selector: {e}"))),
        None => Err(PoolError("building the selector did not complete".into())),
    }
}

/// Every pool, indexed like `Config::upstreams`.
#[derive(Debug, Default)]
pub struct Upstreams {
    pools: Vec<Pool>,
}

impl Upstreams {
    /// Builds every pool.
    pub fn new(configs: &[UpstreamConfig]) -> Result<Upstreams, PoolError> {
        let pools = configs.iter().map(Pool::new).collect::<Result<_, _>>()?;
        Ok(Upstreams { pools })
    }

    /// The pool at `index`.
    pub fn get(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index)
    }

    /// Every pool, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter()
    }
}
