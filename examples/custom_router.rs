//! Embedding faultline in your own Pingora server with your own routing.
//!
//! Requests that carry an `X-Tenant` header go to the `tenants` pool, hashed on the tenant id so
//! that each tenant stays on one backend; everything else goes to `web`. Failure handling
//! (502/504/pass-through, retries, health, metrics) is faultline's, unchanged.
//!
//! ```sh
//! cargo run --example custom_router
//! curl -i -H 'X-Tenant: acme' http://127.0.0.1:8080/
//! ```

use std::sync::Arc;

use faultline::extension::RequestContext;
use faultline::{Config, Gateway, Route};

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:8080" }]
admin: { address: "127.0.0.1:9900" }
upstreams:
  tenants:
    selection: consistent_hash
    backends: [{ address: "127.0.0.1:9001" }, { address: "127.0.0.1:9002" }]
  web:
    backends: [{ address: "127.0.0.1:9003" }]
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_yaml(CONFIG)?;

    let tenant = Arc::new(Route {
        hash_header: Some(http::HeaderName::from_static("x-tenant")),
        ..Route::to_upstream("tenant", "tenants")
    });
    let web = Arc::new(Route::to_upstream("web", "web"));
    let router = move |req: &RequestContext<'_>| {
        Some(if req.header().headers.contains_key("x-tenant") {
            tenant.clone()
        } else {
            web.clone()
        })
    };

    let gateway = Gateway::builder(&config)
        .router(router)
        .route_names(["tenant", "web"])
        .build()?;
    faultline::server::serve(gateway, config, None).run_forever()
}
