//! Assembling a Pingora `Server` from a validated [`Config`]: the gateway service on every
//! listener, the admin service when configured, the active health checks and, when the
//! configuration came from a file, reloading on `SIGHUP`. The binary and the integration tests
//! both start faultline through here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::config::Config;
use crate::connections::ClientConnections;
use crate::discovery::Refresher;
use crate::gateway::Gateway;
use crate::lifecycle::DEFAULT_DRAIN_SECONDS;
use crate::listening::ClientListeners;
use crate::state::Shared;
use crate::upstream::PoolError;

/// The binary's server: Pingora's, run with faultline's signal watch, exiting as soon as a
/// shutdown has drained (`lifecycle`).
pub struct Faultline {
    server: Server,
    shared: Arc<Shared>,
}

impl Faultline {
    /// Runs until a signal ends it: `SIGTERM` drains and exits, `SIGQUIT` hands the listeners
    /// over then drains and exits, `SIGINT` exits at once.
    pub fn run(self) -> std::process::ExitCode {
        self.shared.lifecycle().exit_when_drained();
        let shutdown_signal = Box::new(Signals(self.shared.clone()));
        self.server.run(RunArgs { shutdown_signal });
        std::process::ExitCode::SUCCESS
    }
}

/// Builds the binary's server, bootstrapped (listeners inherited with `-u`). With `source`,
/// `SIGHUP` and the admin `POST /reload` re-read that file.
pub fn build(
    config: Config,
    opt: Option<Opt>,
    source: Option<PathBuf>,
) -> Result<Faultline, PoolError> {
    let mut builder = Gateway::builder(&config);
    if let Some(path) = source {
        builder = builder.reload_from(path);
    }
    let gateway = builder.build()?;
    let shared = gateway.shared();
    Ok(Faultline {
        server: serve(gateway, config, opt),
        shared,
    })
}

/// Builds the server around an already built gateway (say, one with a custom router): the
/// proxy on every listener of `config`, the admin listener, the active health checks, and
/// reloading on `SIGHUP` when the gateway has a file to reload from.
pub fn serve(gateway: Gateway, config: Config, opt: Option<Opt>) -> Server {
    let shared = gateway.shared();
    let admin = config.admin.map(|address| {
        let mut service = Service::new("faultline admin".to_string(), gateway.admin());
        service.add_tcp(&address.to_string());
        service
    });
    // The admin listener closes with the others on SIGTERM; `/readyz` must keep answering 503
    // through the drain.
    let admin_in_drain = config.admin.map(|address| AdminDuringDrain {
        address,
        admin: Arc::new(gateway.admin()),
    });
    let listeners = config.listeners;
    let watch = config.watch;
    let mut server = Server::new_with_opt_and_conf(opt, config.server);
    server.bootstrap();
    let mut proxy = HttpProxy::new(gateway, server.configuration.clone());
    // Pingora answers CONNECT with a bare 405 of its own unless it may pass it on; passed on,
    // the gateway refuses it with its own page (`admission`).
    let mut options = HttpServerOptions::default();
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    proxy.handle_init_modules();
    // Every listener is accepted by faultline's own listener (`listening`), as plain TCP:
    // faultline runs the TLS handshake of a TLS listener itself, under the client header deadline and with the certificates of the
    // current snapshot, so that a reload swaps them (connections::tls). Prior-knowledge HTTP/2
    // on a plain listener is decided at start, as its address is.
    let grace = server
        .configuration
        .grace_period_seconds
        .unwrap_or(DEFAULT_DRAIN_SECONDS);
    let mut connections = ClientConnections::new(proxy, shared.clone(), Duration::from_secs(grace));
    for listener in listeners.iter().filter(|l| l.tls.is_none() && l.h2c) {
        connections = connections.serve_h2c(listener.address);
    }
    let addresses = listeners.iter().map(|l| l.address).collect();
    server.add_service(ClientListeners::new("faultline", connections, addresses));
    if let Some(admin) = admin {
        server.add_service(admin);
    }
    if let Some(admin) = admin_in_drain {
        server.add_service(background_service("faultline admin during a drain", admin));
        // The status page's recent history: only an admin listener shows it.
        server.add_service(background_service(
            "faultline status history",
            crate::admin::Sampler(shared.clone()),
        ));
    }
    server.add_service(background_service(
        "faultline active health checks",
        ActiveChecks(shared.clone()),
    ));
    server.add_service(background_service(
        "faultline DNS discovery",
        Refresher(shared.clone()),
    ));
    if shared.reloadable() && watch {
        server.add_service(background_service(
            "faultline reload when the file changes",
            WatchFile(shared.clone()),
        ));
    }
    if shared.reloadable() {
        server.add_service(background_service(
            "faultline reload on SIGHUP",
            ReloadOnHangup(shared),
        ));
    }
    server
}

/// Runs the active health checks of every pool of the current configuration, each at its own
/// interval; pools that a reload brings in are picked up on the next round.
struct ActiveChecks(Arc<Shared>);

#[async_trait]
impl BackgroundService for ActiveChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: std::collections::HashMap<String, Instant> = Default::default();
        loop {
            let snapshot = self.0.current();
            let now = Instant::now();
            let mut next = now + Duration::from_secs(1);
            for pool in snapshot.upstreams.iter() {
                let Some(interval) = pool.active_interval() else {
                    continue;
                };
                let at = *due.entry(pool.name().to_string()).or_insert(now);
                if at <= now {
                    pool.run_active_checks().await;
                    let again = Instant::now() + interval;
                    due.insert(pool.name().to_string(), again);
                    next = next.min(again);
                } else {
                    next = next.min(at);
                }
            }
            drop(snapshot);
            // Every pool has had its first round.
            self.0.lifecycle().set_ready();
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How often the watched file's identity is compared.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies the file's content without reading it: the file the path resolves to now
/// (through every symlink, so Kubernetes' swap of a ConfigMap's `..data` link to a new
/// directory is a change), its modification time and its length.
fn identity(path: &std::path::Path) -> Option<(u64, u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// Reloads the configuration file when it changes (`watch: true` or `--watch`): the same
/// validation as `SIGHUP`, and an invalid file keeps the running configuration. Polling needs
/// no platform notification API and sees a symlink swap as any other change.
struct WatchFile(Arc<Shared>);

#[async_trait]
impl BackgroundService for WatchFile {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(path) = self.0.source().map(std::path::Path::to_path_buf) else {
            return;
        };
        let mut seen = identity(&path);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let now = identity(&path);
            // A file missing for a moment (replaced by rename) is no change yet.
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            log::info!("{} changed, reloading", path.display());
            let shared = self.0.clone();
            let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
        }
    }
}

/// Reloads the configuration file on every `SIGHUP`.
struct ReloadOnHangup(Arc<Shared>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "cannot listen for SIGHUP, reload only through the admin listener: {e}"
                );
                return;
            }
        };
        loop {
            tokio::select! {
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    let shared = self.0.clone();
                    let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Serves the admin listener again once a `SIGTERM` has closed Pingora's, for as long as the
/// drain lasts: Pingora stops every listener at its shutdown broadcast (`services/listening.rs`,
/// `run_endpoint`), and a probe refused is no answer. An upgrade (`SIGQUIT`) does not: the new
/// process has the admin listener.
struct AdminDuringDrain {
    address: std::net::SocketAddr,
    admin: Arc<crate::admin::Admin>,
}

/// How long the admin address may stay taken after the shutdown broadcast (Pingora's admin
/// listener closing) before the drain gives up serving it.
const ADMIN_REBIND: Duration = Duration::from_secs(2);

#[async_trait]
impl BackgroundService for AdminDuringDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use pingora::apps::HttpServerApp;
        use pingora::protocols::http::ServerSession;
        use pingora::protocols::l4::stream::Stream as L4;

        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        if !self.admin.shared.lifecycle().terminating() {
            return;
        }
        let deadline = Instant::now() + ADMIN_REBIND;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    log::warn!("admin listener not served during the drain: {e}");
                    return;
                }
                // Pingora's admin socket is not closed yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // Every answer closes its connection.
        let (_stopped, stopping) = tokio::sync::watch::channel(true);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors, say: let connections close before the next try.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let admin = self.admin.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let session = ServerSession::new_http1(Box::new(L4::from(tcp)));
                admin.process_new_http(session, &stopping).await;
            });
        }
    }
}

/// The `SIGQUIT`, `SIGTERM` and `SIGINT` watch of Pingora's `UnixShutdownSignalWatch`, which
/// also records the signal in the [`Lifecycle`] before Pingora acts on it.
struct Signals(Arc<Shared>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for signal {}: {e}", kind.as_raw_value());
                None
            }
        };
        let mut quit = listen(SignalKind::quit());
        let mut term = listen(SignalKind::terminate());
        let mut int = listen(SignalKind::interrupt());
        // A signal that cannot be listened for never comes.
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let lifecycle = self.0.lifecycle();
        tokio::select! {
            () = next(&mut quit) => {
                lifecycle.stopping(true);
                ShutdownSignal::GracefulUpgrade
            }
            () = next(&mut term) => {
                lifecycle.stopping(false);
                ShutdownSignal::GracefulTerminate
            }
            () = next(&mut int) => ShutdownSignal::FastShutdown,
        }
    }
}
