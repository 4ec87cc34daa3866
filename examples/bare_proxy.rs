//! The smallest Pingora round-robin proxy: the reference the load benchmark measures faultline's
//! own overhead against. No failure handling beyond Pingora's defaults.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:8081 127.0.0.1:9001 [more backends…]
//! ```
//!
//! `bare_proxy_jemalloc` is the same proxy with faultline's allocator (jemalloc), so that the
//! benchmark can tell faultline's own cost from the allocator's.
//!
//! With `FORWARDING=1` it also sets the four headers faultline adds to every request
//! (`X-Forwarded-For`, `X-Forwarded-Proto`, `Via`, `X-Request-Id`) the plain Pingora way, so the
//! benchmark can tell the cost of those headers from the cost of everything else.
//!
//! With `H2C=1` it speaks HTTP/2 with prior knowledge to its backends (as faultline's
//! `protocol: h2c` upstreams), for the benchmark's gRPC scenario.

#[path = "support/bare.rs"]
mod bare;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    bare::main()
}
