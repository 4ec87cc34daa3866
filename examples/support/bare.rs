//! The bare Pingora proxy itself, shared by `bare_proxy` and `bare_proxy_jemalloc`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::listeners::ALPN;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::configuration::ServerConf;

struct Bare {
    lb: Arc<LoadBalancer<RoundRobin>>,
    forwarding: bool,
    /// Speak HTTP/2 with prior knowledge (h2c) to the backends.
    h2c: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self
            .lb
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no backend"))?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        if self.h2c {
            // As faultline's `protocol: h2c` upstreams: HTTP/2 only, 100 streams a connection.
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = 100;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if !self.forwarding {
            return Ok(());
        }
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        upstream_request.insert_header("X-Forwarded-For", ip)?;
        upstream_request.insert_header("X-Forwarded-Proto", "http")?;
        upstream_request.insert_header("Via", "1.1 bare")?;
        let id: u128 = rand::random();
        upstream_request.insert_header("X-Request-Id", format!("{id:032x}"))?;
        Ok(())
    }
}

/// Runs the proxy: `LISTEN BACKEND…` from the command line, `THREADS` and `FORWARDING` from the
/// environment; with `H2C=1` it speaks HTTP/2 with prior knowledge to the backends (the load
/// benchmark's gRPC origin). With `TLS_LISTEN`, `TLS_CERT` and `TLS_KEY` it also listens there with TLS,
/// offering HTTP/2 by ALPN (Pingora's defaults otherwise), as the load benchmark's connections
/// scenario needs.
pub(crate) fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().ok_or("usage: bare_proxy LISTEN BACKEND…")?;
    let backends: Vec<String> = args.collect();
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let lb = LoadBalancer::try_from_iter(backends)?;
    let conf = ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let forwarding = std::env::var_os("FORWARDING").is_some();
    let bare = Bare {
        lb: Arc::new(lb),
        forwarding,
        h2c: std::env::var_os("H2C").is_some(),
    };
    let mut service = http_proxy_service(&server.configuration, bare);
    service.add_tcp(&listen);
    if let Some(tls_listen) = std::env::var_os("TLS_LISTEN") {
        let cert = std::env::var("TLS_CERT")?;
        let key = std::env::var("TLS_KEY")?;
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)?;
        tls.enable_h2();
        let address = tls_listen.to_str().ok_or("TLS_LISTEN is not UTF-8")?;
        service.add_tls_with_settings(address, None, tls);
    }
    server.add_service(service);
    server.run_forever()
}
