//! Demo origins: tiny HTTP/1.1 servers faultline can start itself (the `demo:` section), so the
//! README's first command shows a healthy, a stalled and an overloaded backend on a machine with
//! nothing else running. Each is an [`origin::Origin`] of the origin kit, which the integration
//! tests use too. Not for production traffic.

pub(crate) mod origin;

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{DemoBehavior, DemoOrigin};
use origin::{Behavior, Origin};

/// Binds every demo origin now (so a busy port is reported at once) and serves them from a
/// background thread for the life of the process.
pub fn spawn(origins: &[DemoOrigin]) -> io::Result<()> {
    if origins.is_empty() {
        return Ok(());
    }
    let mut bound = Vec::with_capacity(origins.len());
    for o in origins {
        let listener = std::net::TcpListener::bind(o.address)
            .map_err(|e| io::Error::new(e.kind(), format!("demo origin {}: {e}", o.address)))?;
        listener.set_nonblocking(true)?;
        bound.push((listener, *o));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("faultline-demo".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (listener, demo) in bound {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            log::info!(
                                "demo origin {} ({:?}) listening",
                                demo.address,
                                demo.behavior
                            );
                            let origin = Origin::new(behavior(demo.behavior, demo.address));
                            tasks.push(tokio::spawn(origin.serve(l)));
                        }
                        Err(e) => log::error!("demo origin {}: {e}", demo.address),
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    Ok(())
}

/// The kit behaviour of a demo origin at `me`.
fn behavior(demo: DemoBehavior, me: SocketAddr) -> Behavior {
    let text = |status, body| Behavior::Text {
        status,
        body,
        echo_request_id: false,
    };
    match demo {
        DemoBehavior::Healthy => text(200, format!("hello from the healthy demo origin {me}\n")),
        DemoBehavior::Unavailable => text(
            503,
            format!("the demo origin {me} is overloaded (its own 503 page)\n"),
        ),
        DemoBehavior::Stall => Behavior::Hang,
    }
}
