//! The runtime state a request runs on, and its atomic replacement on reload.
//!
//! A [`Snapshot`] holds everything built from one configuration: the router, the pools, the
//! route counters and the page settings. Each request takes the current snapshot when it starts
//! and keeps it to the end, so a reload never changes a request in flight. A reload builds a new
//! snapshot from a fully validated file, carrying over the counters and health state of routes,
//! upstreams and backends that stay, and swaps it in; any error leaves the old one in place.
//! The TLS listeners' certificates are part of it: a reload re-reads them, new handshakes get
//! the new ones at once, and connections already open keep the session they made.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;

use crate::config::{BackendSource, ClientLimits, Config, Discovery, IpNet, ListenerTls};
use crate::error_page::ErrorPages;
use crate::extension::Extensions;
use crate::metrics::{ClientCounters, RouteTable};
use crate::routing::ConfigRouter;
use crate::upstream::membership::Resolved;
use crate::upstream::{PoolError, Upstreams};

/// Everything built from one configuration.
pub struct Snapshot {
    /// The configuration's routes.
    pub router: Arc<ConfigRouter>,
    /// The pools.
    pub upstreams: Upstreams,
    /// Route counters.
    pub routes: RouteTable,
    /// Proxy-generated responses.
    pub pages: ErrorPages,
    /// Peers trusted to send `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    /// Limits on client connections.
    pub clients: ClientLimits,
    /// The TLS listeners, with their certificates as this configuration read them.
    pub(crate) tls: Vec<TlsListener>,
    /// How `dns:` and `srv:` backends are resolved.
    pub(crate) discovery: Discovery,
}

/// A TLS listener of one configuration: its settings, and the acceptor of the handshakes that
/// start while the configuration is current. A handshake keeps the acceptor it started with,
/// and a connection its TLS session, so a reload changes neither.
#[derive(Clone)]
pub(crate) struct TlsListener {
    /// The listener's address.
    pub(crate) address: std::net::SocketAddr,
    /// Its certificates and policy.
    pub(crate) settings: Arc<ListenerTls>,
    /// Its handshakes' rustls configuration.
    pub(crate) acceptor: Arc<Acceptor>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    fn build(
        config: &Config,
        route_names: &[String],
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, PoolError> {
        Ok(Snapshot {
            router: Arc::new(ConfigRouter::new(&config.routes)),
            upstreams: Upstreams::new(&config.upstreams, previous.map(|p| &p.upstreams))?,
            routes: RouteTable::new(
                config
                    .routes
                    .iter()
                    .map(|r| r.route.name.as_str())
                    .chain(route_names.iter().map(String::as_str)),
                previous.map(|p| &p.routes),
            ),
            pages: ErrorPages::new(config.error_pages.clone()),
            trusted_proxies: config.trusted_proxies.clone(),
            clients: config.clients,
            tls: tls_listeners(config, previous),
            discovery: config.discovery.clone(),
        })
    }

    /// This snapshot with other pools: a membership change, nothing else.
    fn with_upstreams(&self, upstreams: Upstreams) -> Snapshot {
        Snapshot {
            router: self.router.clone(),
            upstreams,
            routes: self.routes.clone(),
            pages: self.pages.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            clients: self.clients,
            tls: self.tls.clone(),
            discovery: self.discovery.clone(),
        }
    }
}

/// The TLS listeners of `config`, each with an acceptor of its own. A listener the file no
/// longer has is still bound until a restart or an upgrade: it keeps its previous TLS
/// settings, so that a socket serving TLS never turns to plain text on a reload.
fn tls_listeners(config: &Config, previous: Option<&Snapshot>) -> Vec<TlsListener> {
    let mut listeners: Vec<TlsListener> = config
        .listeners
        .iter()
        .filter_map(|l| {
            let settings = l.tls.clone()?;
            Some(TlsListener {
                address: l.address,
                acceptor: Arc::new(Acceptor::from_server_config(settings.server_config.clone())),
                settings,
            })
        })
        .collect();
    let gone = |address| !config.listeners.iter().any(|l| l.address == address);
    for old in previous.into_iter().flat_map(|p| &p.tls) {
        if gone(old.address) {
            listeners.push(TlsListener {
                address: old.address,
                settings: old.settings.clone(),
                acceptor: old.acceptor.clone(),
            });
        }
    }
    listeners
}

/// Why a reload did not happen.
#[derive(Debug)]
pub enum ReloadError {
    /// No file to reload from (an embedded gateway built from a `Config` value).
    NoSource,
    /// The file is unreadable or invalid.
    Config(crate::config::ConfigError),
    /// The pools could not be built.
    Pools(PoolError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoSource => f.write_str("no configuration file to reload from"),
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Pools(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReloadError {}

/// The gateway's state, shared with the admin listener and the background services.
pub struct Shared {
    current: ArcSwap<Snapshot>,
    extensions: Extensions,
    route_names: Vec<String>,
    source: Option<PathBuf>,
    listeners: Vec<std::net::SocketAddr>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Whether the last reload succeeded (true before any: the file started with was valid).
    last_reload_ok: AtomicBool,
    clients: ClientCounters,
    /// Held by whoever builds the next snapshot from the current one (a reload, a membership
    /// change), so that neither loses the other's.
    writer: std::sync::Mutex<()>,
    lifecycle: crate::lifecycle::Lifecycle,
    /// The backends' recent attempts, for the status page.
    history: crate::history::History,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// State built from `config`, run with `extensions`; a custom router's `route_names` get
    /// their own counters; `source` is the file reloads read.
    pub(crate) fn new(
        config: &Config,
        extensions: Extensions,
        route_names: Vec<String>,
        source: Option<PathBuf>,
    ) -> Result<Shared, PoolError> {
        let snapshot = Snapshot::build(config, &route_names, None)?;
        Ok(Shared {
            current: ArcSwap::from_pointee(snapshot),
            extensions,
            route_names,
            source,
            listeners: config.listeners.iter().map(|l| l.address).collect(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(true),
            clients: ClientCounters::default(),
            writer: std::sync::Mutex::new(()),
            lifecycle: Default::default(),
            history: Default::default(),
        })
    }

    /// The custom router and filters.
    pub(crate) fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The configured listener addresses.
    pub(crate) fn listeners(&self) -> &[std::net::SocketAddr] {
        &self.listeners
    }

    /// The snapshot new requests run on.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a snapshot built from `config`, keeping the state of what stays.
    pub fn apply(&self, config: &Config) -> Result<(), PoolError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.current();
        let next = Snapshot::build(config, &self.route_names, Some(&old))?;
        if !config
            .listeners
            .iter()
            .map(|l| l.address)
            .eq(self.listeners.iter().copied())
        {
            log::warn!(
                "reload: listener addresses added or removed take effect on a restart or an upgrade (-u), not now; the TLS settings and certificates of listeners that stay apply now"
            );
        }
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Swaps in a snapshot whose pool `upstream` has `set` as the answer of `source`, when that
    /// differs from the one it has: the same path as a reload, so backends that stay keep their
    /// state. Whether anything changed.
    pub(crate) fn apply_answer(
        &self,
        upstream: &str,
        source: &BackendSource,
        set: Arc<[Resolved]>,
    ) -> Result<bool, PoolError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.current();
        let Some(pool) = old.upstreams.named(upstream) else {
            return Ok(false);
        };
        if pool.answer(source) == Some(&*set) {
            return Ok(false);
        }
        let Some(next) = pool.with_answer(source, set) else {
            return Ok(false);
        };
        let upstreams = old.upstreams.with_pool(next?);
        self.current.store(Arc::new(old.with_upstreams(upstreams)));
        Ok(true)
    }

    /// The configuration file reloads read, if any.
    pub(crate) fn source(&self) -> Option<&std::path::Path> {
        self.source.as_deref()
    }

    /// Re-reads the configuration file, validates it fully, and applies it; on any error the
    /// running configuration stays. Counted either way.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = match &self.source {
            None => Err(ReloadError::NoSource),
            Some(path) => Config::load(path)
                .map_err(ReloadError::Config)
                .and_then(|c| self.apply(&c).map_err(ReloadError::Pools)),
        };
        match &result {
            Ok(()) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.last_reload_ok.store(true, Ordering::Relaxed);
                log::info!("configuration reloaded");
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.last_reload_ok.store(false, Ordering::Relaxed);
                log::error!("configuration reload failed, the running configuration stays:\n{e}");
            }
        }
        result
    }

    /// Whether there is a file to reload from.
    pub fn reloadable(&self) -> bool {
        self.source.is_some()
    }

    /// Counters of client connections.
    pub fn clients(&self) -> &ClientCounters {
        &self.clients
    }

    /// Readiness and shutdown.
    pub fn lifecycle(&self) -> &crate::lifecycle::Lifecycle {
        &self.lifecycle
    }

    /// The backends' recent attempts.
    pub(crate) fn history(&self) -> &crate::history::History {
        &self.history
    }

    /// Reloads so far: (succeeded, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Whether the last reload succeeded; true before any reload (the running configuration is
    /// the file's), false from a failed reload until the next one succeeds.
    pub fn last_reload_successful(&self) -> bool {
        self.last_reload_ok.load(Ordering::Relaxed)
    }
}
