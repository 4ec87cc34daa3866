//! An API-key filter: requests of the route `api` without a valid `X-Api-Key` are refused with
//! the proxy's 401 (`application/problem+json` for API clients, by their `Accept`), with a
//! `WWW-Authenticate` challenge, the request id, `Proxy-Status` and an access-log line. A valid
//! key is taken off the request and replaced by the client's id (`X-Client-Id`), so that the
//! backend never sees the secret and can trust the id.
//!
//! ```sh
//! cargo run --example api_key
//! curl -i -H 'Accept: application/json' http://127.0.0.1:8080/api/orders
//! curl -i -H 'X-Api-Key: k-123' http://127.0.0.1:8080/api/orders
//! ```

use std::collections::HashMap;

use async_trait::async_trait;
use faultline::extension::{ExtensionError, Filter, FilterError, Refusal, RequestContext};
use faultline::{Config, Gateway, GatewayBuilder};
use http::HeaderValue;

/// The route whose requests need a key.
pub const ROUTE: &str = "api";

/// Keys and the clients they belong to.
pub struct ApiKeys {
    clients: HashMap<String, HeaderValue>,
}

impl ApiKeys {
    /// `(key, client id)` pairs; a client id that is no valid header value is left out.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> ApiKeys {
        ApiKeys {
            clients: keys
                .into_iter()
                .filter_map(|(key, client)| {
                    Some((key.to_string(), HeaderValue::from_str(client).ok()?))
                })
                .collect(),
        }
    }
}

#[async_trait]
impl Filter for ApiKeys {
    async fn request(&self, request: &mut RequestContext<'_>) -> Result<(), FilterError> {
        if request.route().is_none_or(|r| r.name != ROUTE) {
            return Ok(());
        }
        let key = request
            .header()
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok());
        let Some(client) = key.and_then(|k| self.clients.get(k)).cloned() else {
            let challenge = HeaderValue::from_static("ApiKey realm=\"api\"");
            return Err(Refusal::unauthorized(challenge).into());
        };
        let header = request.header_mut();
        header.remove_header("x-api-key");
        // Replaces any `X-Client-Id` the client sent.
        header
            .insert_header("x-client-id", client)
            .map_err(ExtensionError::new)?;
        Ok(())
    }
}

/// The gateway of `builder` with the API keys `keys` on route `api`.
pub fn extend<'a>(builder: GatewayBuilder<'a>, keys: &[(&str, &str)]) -> GatewayBuilder<'a> {
    builder.filter(ApiKeys::new(keys.iter().copied()))
}

const CONFIG: &str = r#"
listeners: [{ address: "127.0.0.1:8080" }]
admin: { address: "127.0.0.1:9900" }
upstreams:
  app: { backends: [{ address: "127.0.0.1:9001" }] }
routes:
  - { name: api, match: { path_prefix: /api }, upstream: app }
  - { name: site, upstream: app }
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_yaml(CONFIG)?;
    let gateway = extend(Gateway::builder(&config), &[("k-123", "acme")]).build()?;
    faultline::server::serve(gateway, config, None).run_forever()
}
