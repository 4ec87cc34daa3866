//! Building a [`Gateway`] from a configuration, with optional extensions (a custom router,
//! filters) and the file that reloads read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::config::Config;
use crate::extension::{Extensions, Filter, Router};
use crate::state::Shared;
use crate::upstream::PoolError;

/// Builds a [`Gateway`]: the configuration, and optionally a custom router, filters, and the
/// file that reloads read.
pub struct GatewayBuilder<'a> {
    config: &'a Config,
    router: Option<Arc<dyn Router>>,
    filters: Vec<Arc<dyn Filter>>,
    extension_timeout: Duration,
    route_names: Vec<String>,
    source: Option<PathBuf>,
}

impl GatewayBuilder<'_> {
    /// Routes with `router` instead of the configuration's routes (which it can still ask:
    /// [`RequestContext::configured`](crate::extension::RequestContext::configured)). Its
    /// routes name the configuration's upstreams; a name that does not exist is answered with
    /// a 500 (`proxy_configuration_error`). A closure
    /// `Fn(&RequestContext) -> Option<Arc<Route>>` works.
    pub fn router(mut self, router: impl Router) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Adds `filter`, run after those added before it.
    pub fn filter(mut self, filter: impl Filter) -> Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// How long one call of the router or of a filter may take (default 1 s); one that takes
    /// longer is answered 500 (`extension_timeout`).
    pub fn extension_timeout(mut self, timeout: Duration) -> Self {
        self.extension_timeout = timeout;
        self
    }

    /// Names of the routes a custom router returns, so that their requests are counted under
    /// their own `route` label (requests of undeclared routes count under `none`, keeping the
    /// label set bounded).
    pub fn route_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.route_names.extend(names.into_iter().map(Into::into));
        self
    }

    /// The file `SIGHUP` and `POST /reload` re-read.
    pub fn reload_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(path.into());
        self
    }

    /// Builds the pools and the gateway.
    pub fn build(self) -> Result<Gateway, PoolError> {
        Ok(Gateway {
            shared: Arc::new(Shared::new(
                self.config,
                Extensions::new(self.router, self.filters, self.extension_timeout),
                self.route_names,
                self.source,
            )?),
        })
    }
}

impl Gateway {
    /// A gateway routing with the configuration's own routes.
    pub fn new(config: &Config) -> Result<Gateway, PoolError> {
        Self::builder(config).build()
    }

    /// A builder, to embed faultline with extensions.
    pub fn builder(config: &Config) -> GatewayBuilder<'_> {
        GatewayBuilder {
            config,
            router: None,
            filters: Vec::new(),
            extension_timeout: crate::extension::DEFAULT_TIMEOUT,
            route_names: Vec::new(),
            source: None,
        }
    }
}
