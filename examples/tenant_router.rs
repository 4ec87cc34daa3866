//! Routing by tenant, looked up in a directory service.
//!
//! `acme.example.com` is tenant `acme`. The directory answers `GET /tenants/acme` with the name
//! of the tenant's upstream (404 for a tenant it does not know); each answer is cached for a
//! minute. An unknown tenant gets the proxy's 404 page (`destination_not_found`); a directory
//! that fails gets the 500 page (`extension_failed`), and so does one that does not answer
//! within the gateway's time limit for extensions (`extension_timeout`): each with its request
//! id, `Proxy-Status`, counters and access-log line, like every other answer of the proxy.
//!
//! ```sh
//! cargo run --example tenant_router
//! curl -i -H 'Host: acme.example.com' http://127.0.0.1:8080/
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use faultline::extension::{ExtensionError, RequestContext, Router, Routing};
use faultline::{Config, Gateway, GatewayBuilder, Route};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long an answer of the directory is kept, a "no such tenant" included.
pub const TTL: Duration = Duration::from_secs(60);
/// Tenants kept at most: hosts are the client's to choose, so the cache must not grow with
/// them.
const MAX_CACHED: usize = 10_000;
/// The route name every tenant's requests are counted under (metric labels stay bounded).
pub const ROUTE: &str = "tenants";

/// What the directory said of a tenant (its route, or `None`: unknown), and when.
type Answer = (Option<Arc<Route>>, Instant);

/// Routes each tenant to the upstream the directory names.
pub struct TenantRouter {
    directory: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// By tenant.
    cache: Mutex<HashMap<String, Answer>>,
}

impl TenantRouter {
    /// A router asking the directory at `directory` (`http://host:port`).
    pub fn new(directory: &str) -> TenantRouter {
        TenantRouter {
            directory: directory.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// What the directory says of `tenant`: its upstream, or `None` if it does not know it.
    async fn look_up(&self, tenant: &str) -> Result<Option<String>, ExtensionError> {
        let uri = format!("{}/tenants/{tenant}", self.directory)
            .parse()
            .map_err(ExtensionError::new)?;
        let response = self.client.get(uri).await.map_err(ExtensionError::new)?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != http::StatusCode::OK {
            return Err(ExtensionError::new(format!(
                "the tenant directory answered {status}"
            )));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(ExtensionError::new)?
            .to_bytes();
        let upstream = std::str::from_utf8(&body).map_err(ExtensionError::new)?;
        Ok(Some(upstream.trim().to_string()))
    }

    fn cached(&self, tenant: &str) -> Option<Option<Arc<Route>>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (route, at) = cache.get(tenant)?;
        (at.elapsed() < TTL).then(|| route.clone())
    }

    fn remember(&self, tenant: &str, route: Option<Arc<Route>>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(tenant.to_string(), (route, Instant::now()));
    }
}

/// The tenant a host names: its first label, when it is a plain name.
fn tenant_of(host: &str) -> Option<&str> {
    let (tenant, _) = host.split_once('.')?;
    let plain = tenant
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (plain && !tenant.is_empty() && tenant.len() <= 63).then_some(tenant)
}

#[async_trait]
impl Router for TenantRouter {
    async fn route(&self, request: &RequestContext<'_>) -> Result<Option<Routing>, ExtensionError> {
        let host = request.host();
        let Some(tenant) = host.as_deref().and_then(tenant_of) else {
            return Ok(None);
        };
        let route = match self.cached(tenant) {
            Some(route) => route,
            None => {
                let route = self
                    .look_up(tenant)
                    .await?
                    .map(|upstream| Arc::new(Route::to_upstream(ROUTE, &upstream)));
                self.remember(tenant, route.clone());
                route
            }
        };
        Ok(route.map(Routing::to))
    }
}

/// The gateway of `builder` routing by tenant through the directory at `directory`.
pub fn extend<'a>(builder: GatewayBuilder<'a>, directory: &str) -> GatewayBuilder<'a> {
    builder
        .router(TenantRouter::new(directory))
        .route_names([ROUTE])
}

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:8080" }]
admin: { address: "127.0.0.1:9900" }
upstreams:
  acme: { backends: [{ address: "127.0.0.1:9001" }] }
  globex: { backends: [{ address: "127.0.0.1:9002" }] }
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_yaml(CONFIG)?;
    let gateway = extend(Gateway::builder(&config), "http://127.0.0.1:9100").build()?;
    faultline::server::serve(gateway, config, None).run_forever()
}
