//! The client listeners: binding (or taking over on an upgrade) each listening socket and
//! accepting its connections, in place of Pingora's listening service.
//!
//! Pingora spawns one task per connection whose future holds its listener's TLS handshake
//! inline (`services/listening.rs`, `run_endpoint`, awaiting `UninitializedStream::handshake`),
//! so every connection's task is about 8.8 KB for as long as the connection is open, on a plain
//! listener too: more than half of what an idle HTTP/1 keep-alive connection cost
//! (BENCHMARKS.md, memory per idle connection). faultline runs the TLS handshake itself
//! (the `connections` module), so it accepts here, and a connection's task holds no more than the
//! (boxed) future of [`ServerApp::process_new`].
//!
//! What Pingora's listener did and this keeps: the listening socket has `SO_REUSEADDR` and a
//! backlog of 65,535; each connection gets `TCP_NODELAY`, a socket digest with its peer address,
//! and a small write buffer ([`ClientStream`]); sockets are registered in Pingora's table of
//! listening descriptors, so that a graceful upgrade (`SIGQUIT`) hands them to the next process,
//! and a process started with `-u` takes over the ones it was handed instead of binding; after a
//! shutdown signal no connection is accepted, and [`ServerApp::cleanup`] runs once every accept
//! loop has stopped (faultline's drain waits there). What it does not: Unix sockets and TLS
//! settings on the listener, which faultline does not configure.

mod stream;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::{TcpListener, TcpSocket};

pub(crate) use stream::ClientStream;

/// The listening sockets' backlog, Pingora's (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 65535;

/// How long accepting pauses when the process or the system is out of descriptors or memory:
/// accepting again at once would fail again at once, and the connections waiting in the
/// backlog are better served once open ones have closed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The service that accepts client connections on every configured listener and hands each to
/// the application `A` (faultline's: `connections::ClientConnections`).
pub(crate) struct ClientListeners<A> {
    name: String,
    /// Each listener's address as configured: the key of its descriptor in an upgrade.
    addresses: Vec<SocketAddr>,
    app: Option<A>,
}

impl<A> ClientListeners<A> {
    /// The service `name` serving `app` on every address of `addresses`.
    pub(crate) fn new(name: &str, app: A, addresses: Vec<SocketAddr>) -> Self {
        ClientListeners {
            name: name.to_string(),
            addresses,
            app: Some(app),
        }
    }
}

#[async_trait]
impl<A> Service for ClientListeners<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let Some(app) = self.app.take() else {
            return;
        };
        let app = Arc::new(app);
        let mut loops = Vec::new();
        for &address in &self.addresses {
            let listener = match listen(address, fds.as_ref()) {
                Ok(listener) => Arc::new(listener),
                Err(e) => {
                    // A server that cannot listen where it was told to is not running; Pingora
                    // panics in its service here, which leaves the process up and deaf.
                    log::error!("cannot listen on {address}: {e}");
                    std::process::exit(1);
                }
            };
            for _ in 0..listeners_per_fd.max(1) {
                let accepting = accept(listener.clone(), app.clone(), shutdown.clone());
                loops.push(tokio::spawn(accepting));
            }
        }
        for accepting in loops {
            let _ = accepting.await;
        }
        app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addresses.iter().map(ToString::to_string).collect())
    }
}

/// The listening socket for `address`: the one handed over by the previous process when there
/// is one in `fds`, else a new one, registered there for the next upgrade.
fn listen(address: SocketAddr, fds: Option<&ListenFds>) -> std::io::Result<TcpListener> {
    let key = address.to_string();
    let Some(fds) = fds else {
        return bind(address);
    };
    let mut table = fds.lock();
    if let Some(&fd) = table.get(&key) {
        return take_over(fd);
    }
    let listener = bind(address)?;
    table.add(key, listener.as_raw_fd());
    Ok(listener)
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Restarting while connections of the previous process are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// A listening socket inherited from the previous process (`-u`).
///
/// The crate's one `unsafe` block: a descriptor received from another process is a number,
/// and only `from_raw_fd` makes it a socket again (Pingora's own listener does the same).
#[allow(unsafe_code)]
fn take_over(fd: RawFd) -> std::io::Result<TcpListener> {
    // SAFETY: `fd` is a listening TCP socket the previous process handed over for this address
    // (Pingora's table of listening descriptors, filled from the upgrade socket before any
    // service starts), it is open, and this service is the only owner made of it: addresses
    // are unique among listeners, and each address is listened on once.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts connections on `listener` until the shutdown signal, each served by `app` on a task
/// of its own.
async fn accept<A>(listener: Arc<TcpListener>, app: Arc<A>, mut shutdown: ShutdownWatch)
where
    A: ServerApp + Send + Sync + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => match changed {
                // The watch's first value, before any signal.
                Ok(()) if !*shutdown.borrow() => continue,
                _ => return,
            },
        };
        match accepted {
            Ok((tcp, peer)) => {
                let stream = match client_stream(tcp, peer) {
                    Ok(stream) => stream,
                    Err(e) => {
                        log::debug!("connection from {peer} dropped at accept: {e}");
                        continue;
                    }
                };
                let app = app.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut next = app.process_new(stream, &shutdown).await;
                    while let Some(stream) = next {
                        next = app.process_new(stream, &shutdown).await;
                    }
                });
            }
            Err(e) if out_of_resources(&e) => {
                log::error!("accept() failed, pausing {ACCEPT_PAUSE:?}: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
            // A connection reset before it was accepted, say.
            Err(e) => log::debug!("accept() failed: {e}"),
        }
    }
}

/// Whether an `accept` error will repeat until connections close.
fn out_of_resources(e: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// The stream Pingora and faultline see for an accepted connection.
fn client_stream(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) -> std::io::Result<pingora::protocols::Stream> {
    tcp.set_nodelay(true)?;
    let mut stream = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    Ok(Box::new(ClientStream::new(stream)))
}
