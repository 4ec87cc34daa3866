//! Assembling a Pingora `Server` from a validated [`Config`]: the gateway service on every
//! listener, and the admin service when configured. The binary and the integration tests both
//! start faultline through here.

use pingora::proxy::http_proxy_service_with_name;
use pingora::server::Server;
use pingora::server::configuration::Opt;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::upstream::PoolError;

/// Builds the server, bootstrapped and ready for `run_forever`.
pub fn build(config: Config, opt: Option<Opt>) -> Result<Server, PoolError> {
    let gateway = Gateway::new(&config)?;
    let admin = config.admin.map(|address| {
        let mut service = Service::new("faultline admin".to_string(), gateway.admin());
        service.add_tcp(&address.to_string());
        service
    });
    let checks: Vec<_> = gateway
        .admin()
        .upstreams
        .iter()
        .filter_map(|p| Some((p.name().to_string(), p.active_checks()?)))
        .collect();
    let listeners = config.listeners;
    let mut server = Server::new_with_opt_and_conf(opt, config.server);
    server.bootstrap();
    let mut service = http_proxy_service_with_name(&server.configuration, gateway, "faultline");
    for address in &listeners {
        service.add_tcp(&address.to_string());
    }
    server.add_service(service);
    if let Some(admin) = admin {
        server.add_service(admin);
    }
    for (name, task) in checks {
        server.add_service(background_service(
            &format!("active health checks of {name}"),
            ActiveChecks(task),
        ));
    }
    Ok(server)
}

/// Runs a pool's Pingora load balancer in the background: its active health checks.
struct ActiveChecks(Arc<dyn BackgroundService + Send + Sync>);

#[async_trait]
impl BackgroundService for ActiveChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.start(shutdown).await;
    }
}
