//! Assembling a Pingora `Server` from a validated [`Config`]: the gateway service on every
//! listener, and the admin service when configured. The binary and the integration tests both
//! start faultline through here.

use pingora::proxy::http_proxy_service_with_name;
use pingora::server::Server;
use pingora::server::configuration::Opt;
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
    Ok(server)
}
