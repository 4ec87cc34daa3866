//! `bare_proxy` with jemalloc, the allocator of the `faultline` binary: the reference for
//! faultline's own overhead with the allocator taken out of the comparison.
//!
//! ```sh
//! cargo run --release --example bare_proxy_jemalloc -- 127.0.0.1:8081 127.0.0.1:9001
//! ```

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "support/bare.rs"]
mod bare;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    bare::main()
}
