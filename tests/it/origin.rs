//! In-process origins that behave, and misbehave, on purpose. Each counts the connections it
//! accepted and the requests it read, and keeps the request heads it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

/// What an origin does with each request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answers with these exact response bytes, keeping the connection open.
    Raw(Vec<u8>),
    /// Behaves for request number n (counted across connections) as `behaviors[n % len]`.
    Cycle(Vec<Behavior>),
    /// Answers `200` with a body naming the origin (`origin <tag>`), keep-alive.
    Named(&'static str),
    /// Waits this many milliseconds after reading the request, then answers these bytes.
    Delayed(u64, Vec<u8>),
    /// Reads the request, then resets the connection (RST) without a byte.
    Reset,
    /// Reads the request, then closes cleanly without a byte.
    Close,
    /// Reads the request, writes these bytes, then closes.
    WriteThenClose(Vec<u8>),
    /// Reads the request, writes these bytes, then closes once the gate opens.
    WriteThenCloseWhen(Vec<u8>, Gate),
    /// Reads the request and never answers.
    Hang,
    /// Accepts and never reads.
    NoRead,
    /// Answers the first bytes that arrive, whatever they are (say a TLS ClientHello), with
    /// these bytes, then waits for the peer to close: a server speaking another protocol.
    AnswerFirstBytes(Vec<u8>),
    /// Reads the request, waits until the gate opens, then answers these bytes.
    Held(Gate, Vec<u8>),
    /// Reads the request, writes these bytes, then keeps the connection open without another
    /// byte until the peer goes away.
    WriteThenHang(Vec<u8>),
}

/// A gate a [`Behavior::Held`] origin waits on: the test decides when it answers.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Opens the gate: every held request is answered, and so is every later one.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// What an origin saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Request heads read completely.
    pub requests: AtomicUsize,
    /// Those heads, as text.
    pub heads: Mutex<Vec<String>>,
}

/// A running origin.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<Stats>,
    behavior: Arc<RwLock<Behavior>>,
}

impl Origin {
    /// Starts an origin on an ephemeral loopback port; it is accepting when this returns.
    pub fn start(behavior: Behavior) -> Origin {
        Self::start_with(behavior, None)
    }

    fn start_with(behavior: Behavior, recv_buffer: Option<u32>) -> Origin {
        let stats = Arc::new(Stats::default());
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
        let behavior = Arc::new(RwLock::new(behavior));
        runtime().spawn(accept_loop(listener, behavior.clone(), stats.clone()));
        Origin {
            addr,
            stats,
            behavior,
        }
    }

    /// Changes what the origin does from the next request on.
    pub fn set(&self, behavior: Behavior) {
        if let Ok(mut b) = self.behavior.write() {
            *b = behavior;
        }
    }

    /// An origin that accepts but never reads, with a small receive buffer so writes stall.
    pub fn start_no_read() -> Origin {
        Self::start_with(Behavior::NoRead, Some(4096))
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// The request heads seen so far.
    pub fn heads(&self) -> Vec<String> {
        self.stats
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

async fn accept_loop(listener: TcpListener, behavior: Arc<RwLock<Behavior>>, stats: Arc<Stats>) {
    while let Ok((stream, _)) = listener.accept().await {
        stats.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(connection(stream, behavior.clone(), stats.clone()));
    }
}

fn current(behavior: &RwLock<Behavior>) -> Behavior {
    behavior
        .read()
        .map(|b| b.clone())
        .unwrap_or(Behavior::Close)
}

async fn connection(mut stream: TcpStream, behavior: Arc<RwLock<Behavior>>, stats: Arc<Stats>) {
    if matches!(current(&behavior), Behavior::NoRead) {
        // Keep the socket open and unread until the peer goes away.
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    if let Behavior::AnswerFirstBytes(bytes) = current(&behavior) {
        let mut sink = [0u8; 4096];
        if matches!(stream.read(&mut sink).await, Ok(n) if n > 0)
            && stream.write_all(&bytes).await.is_ok()
        {
            // Closing with the peer's later bytes unread would reset instead.
            drain_until_closed(&mut stream).await;
        }
        return;
    }
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let n = stats.requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut heads) = stats.heads.lock() {
            heads.push(head.clone());
        }
        let now = match current(&behavior) {
            Behavior::Cycle(list) if !list.is_empty() => list[n % list.len()].clone(),
            other => other,
        };
        match &now {
            Behavior::Raw(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Behavior::Delayed(ms, bytes) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Behavior::Named(tag) => {
                let body = format!("origin {tag}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behavior::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Behavior::Close => return,
            Behavior::WriteThenClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                let _ = stream.flush().await;
                return;
            }
            Behavior::WriteThenCloseWhen(bytes, gate) => {
                let _ = stream.write_all(bytes).await;
                gate.wait().await;
                return;
            }
            Behavior::Held(gate, bytes) => {
                gate.wait().await;
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Behavior::WriteThenHang(bytes) => {
                let _ = stream.write_all(bytes).await;
                drain_until_closed(&mut stream).await;
                return;
            }
            Behavior::Hang => {
                drain_until_closed(&mut stream).await;
                return;
            }
            Behavior::NoRead | Behavior::Cycle(_) | Behavior::AnswerFirstBytes(_) => return,
        }
    }
}

/// Reads and drops whatever the peer sends until it closes.
async fn drain_until_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads one request (head and body) and returns the head; `None` when the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let lower = head.to_ascii_lowercase();
    let content_length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let chunked = lower.contains("transfer-encoding: chunked");
    buf.drain(..head_end);
    if chunked {
        loop {
            if let Some(pos) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                buf.drain(..pos + 5);
                break;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    } else {
        while buf.len() < content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..content_length);
    }
    Some(head)
}
