//! DNS service discovery: faultline's own background service that looks up every `dns:` and
//! `srv:` entry of every pool with `hickory-resolver` (asynchronous, never the system's
//! blocking resolver), against `discovery.resolvers` or the system configuration.
//!
//! Each entry is looked up again when its answer's TTL runs out, bounded by
//! `discovery.min_refresh` and `max_refresh`. A changed answer becomes a new pool generation
//! through [`Shared::apply_answer`], the path a reload takes, so backends that stay keep their
//! state. A lookup that fails, times out or finds nothing keeps the last good set: a backend
//! leaves only when a successful answer no longer lists it. Every lookup is counted by result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, ResolveErrorKind};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{BackendSource, Discovery};
use crate::state::Shared;
use crate::upstream::membership::{RefreshResult, Resolved};

/// How often the service looks at the current configuration for entries a reload added.
const POLL: Duration = Duration::from_secs(1);

/// A successful lookup: the addresses, sorted, and how long the answer is valid.
struct Answer {
    set: Vec<Resolved>,
    ttl: Duration,
}

/// A lookup that kept the last set: how, and why.
struct Kept {
    result: RefreshResult,
    error: String,
}

/// A resolver for `settings`: its name servers, or the system's.
fn resolver(settings: &Discovery) -> Result<TokioResolver, ResolveError> {
    let mut builder = if settings.resolvers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let mut config = ResolverConfig::new();
        for address in &settings.resolvers {
            config.add_name_server(NameServerConfig::new(*address, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*address, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = settings.timeout;
    options.attempts = 1;
    Ok(builder.build())
}

/// Why a lookup found nothing, or failed.
fn kept(e: &ResolveError) -> Kept {
    let empty = match e.kind() {
        ResolveErrorKind::Proto(p) => match p.kind() {
            hickory_resolver::proto::ProtoErrorKind::NoRecordsFound { response_code, .. } => {
                matches!(
                    *response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                )
            }
            _ => false,
        },
        _ => false,
    };
    Kept {
        result: if empty {
            RefreshResult::Empty
        } else {
            RefreshResult::Failure
        },
        error: e.to_string(),
    }
}

/// Looks up `source` once.
async fn lookup(resolver: &TokioResolver, source: &BackendSource) -> Result<Answer, Kept> {
    let now = Instant::now();
    let mut set = Vec::new();
    let valid_until = match source {
        BackendSource::Dns { host, port } => {
            let found = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| kept(&e))?;
            set.extend(found.iter().map(|ip| Resolved {
                address: std::net::SocketAddr::new(ip, *port),
                weight: 1,
                tier: 0,
            }));
            found.valid_until()
        }
        BackendSource::Srv { name } => {
            let found = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| kept(&e))?;
            let mut until = found.as_lookup().valid_until();
            // Priority groups ranked from the lowest value: tier 0 is used while any of it is
            // selectable.
            let mut priorities: Vec<u16> = found.iter().map(|r| r.priority()).collect();
            priorities.sort_unstable();
            priorities.dedup();
            for record in found.iter() {
                let tier = priorities
                    .iter()
                    .position(|p| *p == record.priority())
                    .and_then(|t| u16::try_from(t).ok())
                    .unwrap_or(u16::MAX);
                // A target the answer names but that does not resolve is left out; the answer
                // as a whole fails only when none does (below).
                let Ok(ips) = resolver.lookup_ip(record.target().clone()).await else {
                    continue;
                };
                until = until.min(ips.valid_until());
                set.extend(ips.iter().map(|ip| Resolved {
                    address: std::net::SocketAddr::new(ip, record.port()),
                    // RFC 2782's weight 0 ("very small chance") as the smallest share.
                    weight: usize::from(record.weight()).max(1),
                    tier,
                }));
            }
            until
        }
    };
    if set.is_empty() {
        return Err(Kept {
            result: RefreshResult::Empty,
            error: "the answer lists no address".into(),
        });
    }
    set.sort_unstable();
    set.dedup_by_key(|r| r.address);
    Ok(Answer {
        set,
        ttl: valid_until.saturating_duration_since(now),
    })
}

/// The background service that keeps every pool's `dns:`/`srv:` entries current.
pub(crate) struct Refresher(pub(crate) Arc<Shared>);

impl Refresher {
    /// Looks up every entry that is due, applies the answers, and returns when the next is.
    async fn round(
        &self,
        resolver: &TokioResolver,
        settings: &Discovery,
        due: &mut HashMap<(String, BackendSource), Instant>,
    ) -> Instant {
        let snapshot = self.0.current();
        let now = Instant::now();
        let mut next = now + POLL;
        let mut work = Vec::new();
        let mut present = BTreeMap::new();
        for pool in snapshot.upstreams.iter() {
            for source in pool.sources() {
                let key = (pool.name().to_string(), source.clone());
                let at = due.get(&key).copied().unwrap_or(now);
                present.insert(key.clone(), ());
                if at <= now {
                    work.push(key);
                } else {
                    next = next.min(at);
                }
            }
        }
        due.retain(|k, _| present.contains_key(k));
        drop(snapshot);
        if work.is_empty() {
            return next;
        }
        // Every lookup asks the servers: the TTL already decides when an entry is refreshed.
        resolver.clear_cache();
        let lookups = work.iter().map(|(_, source)| async move {
            match tokio::time::timeout(settings.timeout, lookup(resolver, source)).await {
                Ok(r) => r,
                Err(_) => Err(Kept {
                    result: RefreshResult::Timeout,
                    error: format!("no answer within {:?}", settings.timeout),
                }),
            }
        });
        let results = futures::future::join_all(lookups).await;
        for ((upstream, source), result) in work.into_iter().zip(results) {
            let label = source.to_string();
            let again = match result {
                Ok(answer) => {
                    let wait = answer.ttl.clamp(settings.min_refresh, settings.max_refresh);
                    let count = answer.set.len();
                    match self.0.apply_answer(&upstream, &source, answer.set.into()) {
                        Ok(changed) => {
                            if changed {
                                log::info!(
                                    "upstream {upstream}: {label} now resolves to {count} address(es)"
                                );
                            }
                            self.record(&upstream, &label, RefreshResult::Success, None);
                        }
                        Err(e) => {
                            log::error!(
                                "upstream {upstream}: {label}: the new set was not applied: {e}"
                            );
                            self.record(
                                &upstream,
                                &label,
                                RefreshResult::Failure,
                                Some(e.to_string()),
                            );
                        }
                    }
                    wait
                }
                Err(kept) => {
                    log::warn!(
                        "upstream {upstream}: looking up {label} failed ({}), the last set stays: {}",
                        kept.result.as_str(),
                        kept.error
                    );
                    self.record(&upstream, &label, kept.result, Some(kept.error));
                    settings.min_refresh
                }
            };
            let at = Instant::now() + again;
            next = next.min(at);
            due.insert((upstream, source), at);
        }
        next
    }

    fn record(&self, upstream: &str, source: &str, result: RefreshResult, error: Option<String>) {
        if let Some(pool) = self.0.current().upstreams.named(upstream) {
            pool.refreshes().record(source, result, error);
        }
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut resolvers: Option<(Discovery, TokioResolver)> = None;
        let mut due = HashMap::new();
        loop {
            let snapshot = self.0.current();
            let settings = snapshot.discovery.clone();
            let wanted = snapshot
                .upstreams
                .iter()
                .any(|p| p.sources().next().is_some());
            drop(snapshot);
            if wanted && resolvers.as_ref().is_none_or(|(s, _)| *s != settings) {
                match resolver(&settings) {
                    Ok(r) => resolvers = Some((settings.clone(), r)),
                    Err(e) => log::error!("discovery: cannot build a resolver: {e}"),
                }
            }
            let next = match &resolvers {
                Some((settings, r)) if wanted => self.round(r, settings, &mut due).await,
                _ => Instant::now() + POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
