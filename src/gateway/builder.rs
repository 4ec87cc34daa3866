//! Building a [`Gateway`] from a configuration, with an optional custom router and the file
//! that reloads read.

use std::path::PathBuf;
use std::sync::Arc;

use super::Gateway;
use crate::config::Config;
use crate::routing::Router;
use crate::state::Shared;
use crate::upstream::PoolError;

/// Builds a [`Gateway`]: the configuration, and optionally a custom router and the file that
/// reloads read.
pub struct GatewayBuilder<'a> {
    config: &'a Config,
    router: Option<Arc<dyn Router>>,
    route_names: Vec<String>,
    source: Option<PathBuf>,
}

impl GatewayBuilder<'_> {
    /// Routes with `router` instead of the configuration's routes. Its routes name the
    /// configuration's upstreams; a name that does not exist is answered with a 500
    /// (`proxy_configuration_error`). A closure `Fn(&RequestHeader) -> Option<Arc<Route>>` works.
    pub fn router(mut self, router: impl Router + 'static) -> Self {
        self.router = Some(Arc::new(router));
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
                self.router,
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

    /// A builder, to embed faultline with a custom router.
    pub fn builder(config: &Config) -> GatewayBuilder<'_> {
        GatewayBuilder {
            config,
            router: None,
            route_names: Vec::new(),
            source: None,
        }
    }
}
