//! The admin listener: `/` (the status page, HTML for a person), `/metrics` (Prometheus text),
//! `/status` (JSON state of every upstream and backend), `/healthz` (the proxy itself is up), `/readyz` (it takes traffic: started, its
//! first health checks done, not shutting down), `POST /reload` (re-read the configuration
//! file), and `POST /upstreams/{name}/backends/{address}/drain` and `.../undrain` (a backend
//! takes no new request, or takes them again, for rolling deploys). Bind it to a private
//! address.

mod status_page;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::config::{Certificate, UnknownSni};
use crate::failure::FailureKind;
use crate::metrics;
use crate::state::{Shared, TlsListener};
use crate::upstream::Pool;
use crate::upstream::health::State;
use crate::upstream::membership::RefreshResult;

/// The admin application, sharing the gateway's state.
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) shared: Arc<Shared>,
}

impl Admin {
    /// Every metric series in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let snapshot = self.shared.current();
        let views: Vec<_> = snapshot.upstreams.iter().map(Pool::view).collect();
        let mut text = metrics::render(&snapshot.routes, &views);
        let clients = self.shared.clients();
        text.push_str(&format!(
            "# HELP faultline_client_connections Client connections open.\n\
             # TYPE faultline_client_connections gauge\n\
             faultline_client_connections {}\n\
             # HELP faultline_client_connections_over_limit_total Client connections beyond clients.max_connections, answered 503 or closed.\n\
             # TYPE faultline_client_connections_over_limit_total counter\n\
             faultline_client_connections_over_limit_total {}\n\
             # HELP faultline_client_header_timeouts_total Request headers not received within clients.header_timeout (408).\n\
             # TYPE faultline_client_header_timeouts_total counter\n\
             faultline_client_header_timeouts_total {}\n",
            clients.open(),
            clients.over_limit(),
            clients.header_timeouts()
        ));
        text.push_str(
            "# HELP faultline_client_handshake_failures_total Client TLS handshakes and HTTP/2 prefaces that failed or missed clients.header_timeout.\n\
             # TYPE faultline_client_handshake_failures_total counter\n",
        );
        for protocol in metrics::Handshake::ALL {
            text.push_str(&format!(
                "faultline_client_handshake_failures_total{{protocol=\"{}\"}} {}\n",
                protocol.as_str(),
                clients.handshake_failures(protocol)
            ));
        }
        text.push_str(
            "# HELP faultline_tls_certificate_expiry_seconds The notAfter time of each TLS listener's certificate, in Unix seconds.\n\
             # TYPE faultline_tls_certificate_expiry_seconds gauge\n",
        );
        for listener in &snapshot.tls {
            let certificates = &listener.settings.certificates;
            for (i, c) in certificates.iter().enumerate() {
                text.push_str(&format!(
                    "faultline_tls_certificate_expiry_seconds{{listener=\"{}\",certificate=\"{}\"}} {}\n",
                    listener.address,
                    metrics::Label(&certificate_label(certificates, i)),
                    c.not_after
                ));
            }
        }
        text.push_str(
            "# HELP faultline_upstream_backends Backends in each upstream now: static and discovered.\n\
             # TYPE faultline_upstream_backends gauge\n",
        );
        for pool in snapshot.upstreams.iter() {
            text.push_str(&format!(
                "faultline_upstream_backends{{upstream=\"{}\"}} {}\n",
                metrics::Label(pool.name()),
                pool.backends().len()
            ));
        }
        text.push_str(
            "# HELP faultline_discovery_refreshes_total Lookups of dns: and srv: backends by result; every result but success keeps the last set.\n\
             # TYPE faultline_discovery_refreshes_total counter\n",
        );
        for pool in snapshot.upstreams.iter() {
            if pool.sources().next().is_none() {
                continue;
            }
            for result in RefreshResult::ALL {
                text.push_str(&format!(
                    "faultline_discovery_refreshes_total{{upstream=\"{}\",result=\"{}\"}} {}\n",
                    metrics::Label(pool.name()),
                    result.as_str(),
                    pool.refreshes().count(result)
                ));
            }
        }
        let (ok, failed) = self.shared.reload_counts();
        metrics::render_reloads(&mut text, ok, failed, self.shared.last_reload_successful());
        text
    }

    /// The state of every upstream and backend, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let snapshot = self.shared.current();
        let upstreams: Vec<_> = snapshot.upstreams.iter().map(pool_status).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let tls: Vec<_> = snapshot.tls.iter().map(|l| tls_status(l, now)).collect();
        json!({ "upstreams": upstreams, "tls": tls })
    }
}

/// The tick of the backends' recent history (`history`), behind the status page: every
/// `history::SLOT` it reads the counters of the current configuration's backends.
#[derive(Debug)]
pub(crate) struct Sampler(pub(crate) Arc<Shared>);

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::history::SLOT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.0.current();
            self.0.history().sample(snapshot.upstreams.iter());
        }
    }
}

/// The label of a listener's certificate `i` in metrics and `/status`: its first DNS name, or
/// its index when it has none or an earlier certificate has the same first name (a renewal
/// listed beside the old one), so that each certificate is one series.
fn certificate_label(certificates: &[Certificate], i: usize) -> String {
    let first = |c: &Certificate| c.names.first().cloned();
    match certificates.get(i).and_then(first) {
        Some(name)
            if !certificates[..i]
                .iter()
                .any(|c| first(c).as_ref() == Some(&name)) =>
        {
            name
        }
        _ => i.to_string(),
    }
}

/// A label value in the Prometheus text format.
fn tls_status(listener: &TlsListener, now: i64) -> serde_json::Value {
    let settings = &listener.settings;
    let certificates: Vec<_> = settings
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "certificate": certificate_label(&settings.certificates, i),
                "names": c.names,
                "subject": c.subject,
                "file": c.cert_path.display().to_string(),
                "not_after": c.not_after,
                "expires_in_seconds": c.not_after.saturating_sub(now),
            })
        })
        .collect();
    json!({
        "listener": listener.address.to_string(),
        "min_version": settings.min_version.as_str(),
        "unknown_sni": match settings.unknown_sni {
            UnknownSni::Default => "default",
            UnknownSni::Refuse => "refuse",
        },
        "cipher_suites": settings.cipher_suites,
        "client_auth": settings.client_auth.as_ref().map(|a| if a.required { "required" } else { "optional" }),
        "session_resumption": settings.session_resumption,
        "certificates": certificates,
    })
}

fn pool_status(pool: &Pool) -> serde_json::Value {
    let backends: Vec<_> = pool
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut outcomes = serde_json::Map::new();
            outcomes.insert("response".into(), b.metrics().attempts(None).into());
            for kind in FailureKind::ALL {
                let n = b.metrics().attempts(Some(*kind));
                if n > 0 {
                    outcomes.insert(kind.as_str().into(), n.into());
                }
            }
            let state = b.state();
            let ejected_for_ms = match state {
                State::Ejected(left) => Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                _ => None,
            };
            let active = match (pool.active_interval(), pool.actively_healthy(i)) {
                (None, _) => "off",
                (Some(_), true) => "up",
                (Some(_), false) => "down",
            };
            json!({
                "backend": b.name(),
                "source": b.source(),
                "draining": b.draining(),
                "up": pool.is_up(i),
                "state": state.as_str(),
                "ejected_for_ms": ejected_for_ms,
                "active_check": active,
                "consecutive_failures": b.breaker().consecutive_failures(),
                "pending": b.pending(),
                "lagging": b.lagging(),
                "ejections": b.breaker().ejections_total(),
                "attempts": outcomes,
            })
        })
        .collect();
    let discovery: Vec<_> = pool
        .sources()
        .map(|source| {
            let label = source.to_string();
            let last = pool.refreshes().last(&label);
            json!({
                "source": label,
                "addresses": pool.answer(source).map_or(0, <[_]>::len),
                "last_refresh": last.as_ref().map(|l| json!({
                    "at": l.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    "result": l.result.as_str(),
                    "error": l.error,
                })),
            })
        })
        .collect();
    json!({ "upstream": pool.name(), "backends": backends, "discovery": discovery })
}

/// `POST /upstreams/{name}/backends/{address}/drain` or `/undrain`: the answer.
fn drain(shared: &Shared, path: &str) -> Option<Response<Vec<u8>>> {
    let rest = path.strip_prefix("/upstreams/")?;
    let (upstream, rest) = rest.split_once("/backends/")?;
    let (address, action) = rest.rsplit_once('/')?;
    let draining = match action {
        "drain" => true,
        "undrain" => false,
        _ => return None,
    };
    let snapshot = shared.current();
    let Some(pool) = snapshot.upstreams.named(upstream) else {
        return Some(text(StatusCode::NOT_FOUND, "no such upstream\n"));
    };
    let Some(backend) = pool.backends().iter().find(|b| b.name() == address) else {
        return Some(text(
            StatusCode::NOT_FOUND,
            "no such backend in this upstream\n",
        ));
    };
    backend.set_draining(draining);
    log::info!(
        "upstream {upstream}: backend {address} {}",
        if draining {
            "drained"
        } else {
            "back in service"
        }
    );
    Some(text(
        StatusCode::OK,
        if draining {
            "draining\n"
        } else {
            "in service\n"
        },
    ))
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header(http::header::ALLOW, "GET, HEAD, POST");
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain", body.as_bytes().to_vec())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let read = req.method == Method::GET || req.method == Method::HEAD;
        match (req.uri.path(), read, req.method == Method::POST) {
            ("/", true, _) => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_page::render(&self.shared).into_bytes(),
            ),
            ("/metrics", true, _) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics().into_bytes(),
            ),
            ("/status", true, _) => {
                let mut body = self.status().to_string().into_bytes();
                body.push(b'\n');
                reply(StatusCode::OK, "application/json", body)
            }
            ("/healthz", true, _) => text(StatusCode::OK, "ok\n"),
            ("/readyz", true, _) if self.shared.lifecycle().ready() => {
                text(StatusCode::OK, "ready\n")
            }
            ("/readyz", true, _) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            ("/reload", _, true) => {
                // Reading and validating a file is blocking work: keep it off the event loop.
                let shared = self.shared.clone();
                match tokio::task::spawn_blocking(move || shared.reload()).await {
                    Ok(Ok(())) => text(StatusCode::OK, "reloaded\n"),
                    Ok(Err(e)) => text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("reload failed, the running configuration stays:\n{e}\n"),
                    ),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed\n"),
                }
            }
            (path, _, true) if path.starts_with("/upstreams/") => drain(&self.shared, path)
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
            ("/" | "/metrics" | "/status" | "/healthz" | "/reload", _, _) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
