//! The integration tests: real origins, a real faultline, real sockets, all on loopback.

// A failed expectation in a test helper is a test failure: panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test binary has no API: `pub` in its modules means "for the other test modules".
#![allow(unreachable_pub)]

mod client;
#[path = "../../examples/support/grpc_raw.rs"]
mod grpc_raw;
mod harness;
mod origin;

mod config_errors;
mod deploy;
mod discovery;
mod dns;
mod edge;
mod extensions;
mod failures;
mod grpc;
mod health;
mod hostile;
mod lifecycle;
mod limits;
mod pages;
mod proxying;
mod retries;
mod soak;
mod status_page;
mod tls;
mod tls_edge;
mod websocket;
