//! Demo origins: tiny HTTP/1.1 servers faultline can start itself (the `demo:` section), so the
//! README's first command shows a healthy, a stalled and an overloaded backend on a machine with
//! nothing else running. Not for production traffic.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{DemoBehavior, DemoOrigin};

/// Largest request header a demo origin reads.
const MAX_HEAD: usize = 64 * 1024;

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
                for (listener, origin) in bound {
                    match TcpListener::from_std(listener) {
                        Ok(l) => tasks.push(tokio::spawn(serve(l, origin))),
                        Err(e) => log::error!("demo origin {}: {e}", origin.address),
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, origin: DemoOrigin) {
    log::info!(
        "demo origin {} ({:?}) listening",
        origin.address,
        origin.behavior
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, origin.address, origin.behavior));
            }
            Err(e) => log::warn!("demo origin {}: accept: {e}", origin.address),
        }
    }
}

async fn connection(mut stream: TcpStream, me: SocketAddr, behavior: DemoBehavior) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(head_end) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let body_len = content_length(&buf[..head_end]);
        let total = head_end + body_len;
        while buf.len() < total {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..total);
        let (status, body) = match behavior {
            DemoBehavior::Healthy => (
                "200 OK",
                format!("hello from the healthy demo origin {me}\n"),
            ),
            DemoBehavior::Unavailable => (
                "503 Service Unavailable",
                format!("the demo origin {me} is overloaded (its own 503 page)\n"),
            ),
            DemoBehavior::Stall => {
                // Hold the connection open and answer nothing until the peer leaves.
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until the end of a request header; returns its length including the blank line.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
