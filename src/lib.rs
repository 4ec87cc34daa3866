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
//! Embed it in your own Pingora server, with your own routing and filters if you like
//! ([`extension`]):
//!
//! ```no_run
//! use std::sync::Arc;
//! use faultline::extension::RequestContext;
//! use faultline::{Config, Gateway, Route};
//!
//! let config = Config::load("conf/faultline.yaml").expect("valid config");
//! let api = Arc::new(Route::to_upstream("api", "app"));
//! let gateway = Gateway::builder(&config)
//!     .router(move |req: &RequestContext<'_>| {
//!         if req.header().uri.path().starts_with("/api") {
//!             return Some(api.clone().into());
//!         }
//!         // Everything else goes where the configuration says.
//!         req.configured()
//!     })
//!     .route_names(["api"])
//!     .build()
//!     .expect("pools build");
//! faultline::server::serve(gateway, config, None).run_forever();
//! ```

mod access_log;
mod admin;
mod admission;
mod certificates;
mod completion;
pub mod config;
mod connections;
mod context;
mod demo;
mod discovery;
mod error_page;
pub mod extension;
mod failure;
mod forwarding;
mod gateway;
mod grpc;
mod history;
mod lifecycle;
mod listening;
mod metrics;
mod request_checks;
mod request_head;
mod request_id;
mod retry;
mod routing;
pub mod server;
mod state;
mod tunnel;
mod upstream;

pub use access_log::TARGET as ACCESS_LOG_TARGET;
pub use config::{Config, Route};
pub use extension::{Filter, Router};
pub use failure::FailureKind;
pub use gateway::{Gateway, GatewayBuilder};

/// Not part of the API: the pieces that the project's own binary, benchmarks, fuzz targets and
/// integration tests reach into. Anything here may change in any release.
#[doc(hidden)]
pub mod internals {
    /// The demo origins and the misbehaving-origin kit.
    pub mod demo {
        pub use crate::demo::spawn;
        /// The misbehaving-origin kit.
        pub mod origin {
            pub use crate::demo::origin::{Behavior, Gate, Origin, Stats};
        }
    }
    /// Error pages and `Proxy-Status`.
    pub mod error_page {
        pub use crate::error_page::{
            Cause, ErrorPages, Format, Request, negotiate, proxy_status_error,
            proxy_status_received,
        };
    }
    /// Failure classification.
    pub mod failure {
        pub use crate::failure::{Phase, Source, classify};
    }
    /// Forwarding headers.
    pub mod forwarding {
        pub use crate::forwarding::{Client, apply};
    }
    /// Counters.
    pub mod metrics {
        pub use crate::metrics::{BackendMetrics, RouteTable};
    }
    /// Request checks.
    pub mod request_checks {
        pub use crate::request_checks::path::normalize as normalize_path;
        pub use crate::request_checks::{MAX_HEADER_BYTES, check};
    }
    /// Request ids.
    pub mod request_id {
        pub use crate::request_id::{MAX_LEN, accept_incoming, for_request};
    }
    /// The configuration router.
    pub mod routing {
        pub use crate::routing::ConfigRouter;
    }
    /// Upstream pools.
    pub mod upstream {
        pub use crate::upstream::Pool;
    }
}
