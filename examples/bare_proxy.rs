//! The smallest Pingora round-robin proxy: the reference the load benchmark measures faultline's
//! own overhead against. No failure handling beyond Pingora's defaults.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:8081 127.0.0.1:9001 [more backends…]
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::configuration::ServerConf;

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no backend"))?;
        Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())))
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
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
    let mut service = http_proxy_service(&server.configuration, Bare(Arc::new(lb)));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever()
}
