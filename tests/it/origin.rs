//! In-process origins that behave, and misbehave, on purpose: the library's origin kit
//! ([`faultline::internals::demo::origin`]) on an ephemeral loopback port of the tests' runtime. Each
//! counts the connections it accepted and the requests it read, and keeps the request heads it
//! saw. Also: an address that refuses connections, and one where connects time out.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use faultline::internals::demo::origin::{Behavior, Gate};

/// The runtime every origin runs on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("origin runtime")
    })
}

/// A running origin.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    kit: faultline::internals::demo::origin::Origin,
}

impl Origin {
    /// Starts an origin on an ephemeral loopback port; it is accepting when this returns.
    pub fn start(behavior: Behavior) -> Origin {
        Self::start_with(behavior, None)
    }

    fn start_with(behavior: Behavior, recv_buffer: Option<u32>) -> Origin {
        let (addr, listener) = runtime().block_on(async {
            let socket = TcpSocket::new_v4().expect("socket");
            if let Some(size) = recv_buffer {
                socket.set_recv_buffer_size(size).expect("rcvbuf");
            }
            socket
                .bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
            let listener = socket.listen(1024).expect("listen");
            (listener.local_addr().expect("addr"), listener)
        });
        let kit = faultline::internals::demo::origin::Origin::new(behavior);
        runtime().spawn(kit.clone().serve(listener));
        Origin { addr, kit }
    }

    /// Starts an origin at `addr` (say 127.0.0.3 on the port another origin has), or `None`
    /// when that address is taken.
    pub fn start_at(addr: SocketAddr, behavior: Behavior) -> Option<Origin> {
        let listener = runtime().block_on(async {
            let socket = TcpSocket::new_v4().ok()?;
            socket.bind(addr).ok()?;
            socket.listen(1024).ok()
        })?;
        let kit = faultline::internals::demo::origin::Origin::new(behavior);
        runtime().spawn(kit.clone().serve(listener));
        Some(Origin { addr, kit })
    }

    /// Changes what the origin does from the next request on.
    pub fn set(&self, behavior: Behavior) {
        self.kit.set(behavior);
    }

    /// An origin that accepts but never reads, with a small receive buffer so writes stall.
    pub fn start_no_read() -> Origin {
        Self::start_with(Behavior::NoRead, Some(4096))
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.kit.stats().requests.load(Ordering::SeqCst)
    }

    /// Waits (5 s at most) until `n` requests have reached the origin: the readiness signal of a
    /// request in flight.
    pub fn wait_for_requests(&self, n: usize) {
        self.wait_until(n, "requests", Self::requests);
    }

    /// Waits (5 s at most) until `n` connections have reached the origin: the readiness signal
    /// of an attempt whose request has not completed.
    pub fn wait_for_connections(&self, n: usize) {
        self.wait_until(n, "connections", Self::connections);
    }

    fn wait_until(&self, n: usize, what: &str, count: fn(&Origin) -> usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count(self) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} {what} reached the origin",
                count(self)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.kit.stats().connections.load(Ordering::SeqCst)
    }

    /// The request heads seen so far.
    pub fn heads(&self) -> Vec<String> {
        self.kit
            .stats()
            .heads
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }
}

/// A loopback address where nothing listens: connecting is refused. The port stays bound (not
/// listening) for the life of the test process, so no other test's listener can take it.
pub fn refused_addr() -> SocketAddr {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::mem::forget(socket);
    addr
}

/// A listener whose accept queue is full, so further SYNs are dropped and a connect times out.
/// The returned guard keeps the listener and the queue fillers alive.
pub struct Blackhole {
    /// Where it listens.
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Builds the full queue and checks that one more connect really times out.
    pub fn start() -> Blackhole {
        runtime().block_on(async {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
            let listener = socket.listen(0).expect("listen");
            let addr = listener.local_addr().expect("addr");
            let mut fillers = Vec::new();
            // A backlog of 0 still queues one or two; fill until a connect hangs.
            for _ in 0..8 {
                match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(s)) => fillers.push(s),
                    _ => break,
                }
            }
            // The claim itself: one more connect gets no answer.
            let probe =
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
            assert!(
                probe.is_err(),
                "a connect to the full queue did not time out: {probe:?}"
            );
            Blackhole {
                addr,
                _listener: listener,
                _fillers: fillers,
            }
        })
    }
}

/// A hyper HTTP/1.1 server on a fresh loopback port, serving each connection with a clone of
/// `service`: an origin that speaks HTTP properly, where the test needs one.
pub fn hyper_origin<S, B>(service: S) -> SocketAddr
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = runtime()
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    runtime().spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service.clone());
            tokio::spawn(connection);
        }
    });
    addr
}
