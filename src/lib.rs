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
//! Embed it in your own Pingora server:
//!
//! ```no_run
//! use faultline::{Config, Gateway};
//! use pingora::proxy::http_proxy_service;
//! use pingora::server::Server;
//!
//! let config = Config::load("conf/faultline.yaml").expect("valid config");
//! let gateway = Gateway::new(&config).expect("pools build");
//! let mut server = Server::new(None).expect("server");
//! server.bootstrap();
//! let mut service = http_proxy_service(&server.configuration, gateway);
//! service.add_tcp("127.0.0.1:8080");
//! server.add_service(service);
//! server.run_forever();
//! ```

pub mod access_log;
pub mod admin;
pub mod config;
pub mod context;
pub mod demo;
pub mod error_page;
pub mod failure;
pub mod forwarding;
pub mod gateway;
pub mod metrics;
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
