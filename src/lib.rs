//! faultline: an HTTP edge load balancer on [Pingora](https://github.com/cloudflare/pingora)
//! that answers upstream failures exactly right and records which backend failed how.
//!
//! - **502** when the upstream refused the connection, reset it, or sent an invalid response;
//! - **504** when no response came in time;
//! - **the origin's own response, untouched**, whenever the origin sent a valid one;
//! - **503** with `Retry-After` only when no backend can be selected at all.
//!
//! One closed enum, [`failure::FailureKind`], decides the status, the `Proxy-Status` header
//! (RFC 9209), the retry, the health signal and the log field of every failure.
//!
//! Embed it in your own Pingora server, with your own routing if you like:
//!
//! ```no_run
//! use std::sync::Arc;
//! use faultline::{Config, Gateway, Route};
//! use pingora::http::RequestHeader;
//!
//! let config = Config::load("conf/faultline.yaml").expect("valid config");
//! let api = Arc::new(Route::to_upstream("api", "app"));
//! let gateway = Gateway::builder(&config)
//!     .router(move |req: &RequestHeader| {
//!         req.uri.path().starts_with("/api").then(|| api.clone())
//!     })
//!     .route_names(["api"])
//!     .build()
//!     .expect("pools build");
//! faultline::server::serve(gateway, config, None).run_forever();
//! ```

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod config;
pub mod connections;
pub mod context;
pub mod demo;
pub mod error_page;
pub mod failure;
pub mod forwarding;
pub mod gateway;
pub mod metrics;
pub mod request_checks;
pub mod request_head;
pub mod request_id;
pub mod retry;
pub mod routing;
pub mod server;
pub mod state;
pub mod upstream;

pub use config::Config;
pub use failure::FailureKind;
pub use gateway::Gateway;
pub use routing::{Route, Router};
