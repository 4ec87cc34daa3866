//! A canary release: a share of the traffic, and the clients that ask for it by cookie, go to a
//! second upstream; everything else goes where the configuration says.
//!
//! The router wraps the configuration's routes: a request they send to upstream `stable` goes
//! to `canary` instead, with the same policy (retries, deadline, limits), when the client sends
//! the cookie `canary=always`, or for `percent` of the other requests (an even split, not a
//! draw: exactly `percent` in every hundred). `canary=never` keeps a client on `stable`. A
//! response filter pins a client the split sent to the canary with that cookie, so that its
//! next requests stay there. A reload that changes the routes changes what the router wraps.
//!
//! ```sh
//! cargo run --example canary
//! curl -i http://127.0.0.1:8080/ --cookie canary=always
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use faultline::extension::{
    ExtensionError, Filter, RequestContext, ResponseContext, Router, Routing,
};
use faultline::{Config, Gateway, GatewayBuilder, Route};
use http::HeaderValue;
use pingora::http::ResponseHeader;

/// The upstream the canary takes traffic from, and the one it sends it to.
pub const STABLE: &str = "stable";
/// The canary's upstream.
pub const CANARY: &str = "canary";
/// The route name canary requests are counted under.
pub const CANARY_ROUTE: &str = "canary";

/// Sends a share of `stable`'s requests to `canary`.
pub struct Canary {
    percent: u64,
    seen: AtomicU64,
}

impl Canary {
    /// `percent` of the requests (0–100) without a `canary` cookie go to the canary.
    pub fn new(percent: u64) -> Canary {
        Canary {
            percent: percent.min(100),
            seen: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Router for Canary {
    async fn route(&self, request: &RequestContext<'_>) -> Result<Option<Routing>, ExtensionError> {
        let Some(configured) = request.configured() else {
            return Ok(None);
        };
        if configured.route().upstream != STABLE {
            return Ok(Some(configured));
        }
        let canary = match request.cookie("canary") {
            Some("always") => true,
            Some("never") => false,
            _ => self.seen.fetch_add(1, Ordering::Relaxed) % 100 < self.percent,
        };
        if !canary {
            return Ok(Some(configured));
        }
        let route = Route {
            name: CANARY_ROUTE.to_string(),
            upstream: CANARY.to_string(),
            ..Route::clone(configured.route())
        };
        Ok(Some(Routing::to(Arc::new(route))))
    }
}

/// Pins a client the split sent to the canary there.
pub struct PinCanary;

impl Filter for PinCanary {
    fn response(&self, response: &mut ResponseHeader, request: &ResponseContext<'_>) {
        let to_canary = request.route().is_some_and(|r| r.name == CANARY_ROUTE);
        let asked = request
            .request()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .any(|v| v.as_bytes().windows(7).any(|w| w == b"canary="));
        if to_canary && !asked && !request.from_proxy() {
            let cookie = HeaderValue::from_static("canary=always; Path=/; Max-Age=3600");
            // A header the response cannot take is left out, never an error of the response.
            let _ = response.append_header(http::header::SET_COOKIE, cookie);
        }
    }
}

/// The gateway of `builder` with `percent` of `stable`'s traffic on the canary.
pub fn extend(builder: GatewayBuilder<'_>, percent: u64) -> GatewayBuilder<'_> {
    builder
        .router(Canary::new(percent))
        .filter(PinCanary)
        .route_names([CANARY_ROUTE])
}

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:8080" }]
admin: { address: "127.0.0.1:9900" }
upstreams:
  stable: { backends: [{ address: "127.0.0.1:9001" }] }
  canary: { backends: [{ address: "127.0.0.1:9002" }] }
routes:
  - { name: web, upstream: stable }
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_yaml(CONFIG)?;
    let gateway = extend(Gateway::builder(&config), 10).build()?;
    faultline::server::serve(gateway, config, None).run_forever()
}
