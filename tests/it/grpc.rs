//! gRPC through faultline, with tonic on both ends (a raw-bytes codec: no protobuf): calls pass
//! through untouched over an h2c listener and over TLS, to an h2c upstream; what faultline
//! answers itself is a gRPC Trailers-Only response mapped from the failure kind; a client's
//! `grpc-timeout` caps the deadline and reaches the backend reduced; a call is delivered once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::client;
use crate::grpc_raw::Raw;
use crate::harness::{Proxy, access_entry, free_addr, proxy_yaml};
use crate::origin::{Behavior, Origin, runtime};
use crate::tls::{Pki, connector, tls_connect, tls_proxy};

/// What the origin saw: the calls it received and each call's request header.
#[derive(Debug, Default)]
struct Seen {
    calls: AtomicUsize,
    headers: Mutex<Vec<http::HeaderMap>>,
}

/// A tonic server over h2c (prior knowledge) with the methods of `test.Echo`:
/// `Unary` echoes, `Stream` sends the message three times, `StreamFail` sends it twice then
/// fails with FAILED_PRECONDITION and a custom trailer, `Slow` answers after two seconds.
#[derive(Clone)]
struct Echo(Arc<Seen>);

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

type BoxStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0.headers.lock().unwrap().push(req.headers().clone());
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            let resp = match method.as_str() {
                "Unary" => grpc.unary(UnaryFn(false), req).await,
                "Slow" => grpc.unary(UnaryFn(true), req).await,
                "Stream" => grpc.server_streaming(StreamFn(false), req).await,
                "StreamFail" => grpc.server_streaming(StreamFn(true), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

/// `Unary`, or `Slow` (answers after two seconds).
struct UnaryFn(bool);

impl Service<Request<Bytes>> for UnaryFn {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let slow = self.0;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(Response::new(req.into_inner()))
        })
    }
}

/// `Stream`, or `StreamFail` (two messages, then an error status with a custom trailer).
struct StreamFn(bool);

impl Service<Request<Bytes>> for StreamFn {
    type Response = Response<BoxStream>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxStream>, Status>> + Send>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let fail = self.0;
        Box::pin(async move {
            let message = req.into_inner();
            let mut items: Vec<Result<Bytes, Status>> = if fail {
                vec![Ok(message.clone()), Ok(message)]
            } else {
                vec![Ok(message.clone()), Ok(message.clone()), Ok(message)]
            };
            if fail {
                let mut trailers = MetadataMap::new();
                trailers.insert("x-origin-trailer", "kept".parse().unwrap());
                items.push(Err(Status::with_metadata(
                    Code::FailedPrecondition,
                    "origin says no",
                    trailers,
                )));
            }
            let stream: BoxStream = Box::pin(futures::stream::iter(items));
            Ok(Response::new(stream))
        })
    }
}

/// A tonic origin on an ephemeral port, and what it saw.
fn grpc_origin() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = Echo(seen.clone());
    runtime().spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, seen)
}

/// A config body: upstream `app` of `backends` speaking h2c, with `extra` under it, and the
/// route `main` (with `route` under it).
fn h2c_upstream(backends: &[SocketAddr], extra: &str, route: &str) -> String {
    let mut s = String::from("upstreams:\n  app:\n    protocol: h2c\n    backends:\n");
    for b in backends {
        s.push_str(&format!("      - {{ address: \"{b}\" }}\n"));
    }
    s.push_str(extra);
    s.push_str("routes:\n  - upstream: app\n    name: main\n");
    s.push_str(route);
    s
}

/// faultline with one plain listener that serves h2c beside HTTP/1.1.
fn h2c_proxy(body: &str) -> Proxy {
    let (addr, admin) = (free_addr(), free_addr());
    let yaml = proxy_yaml(addr, admin, body).replacen(
        &format!("{{ address: \"{addr}\" }}"),
        &format!("{{ address: \"{addr}\", h2c: true }}"),
        1,
    );
    Proxy::start_yaml(addr, admin, &yaml)
}

/// A tonic client over h2c to `addr`.
fn channel(addr: SocketAddr) -> Channel {
    runtime().block_on(async {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("h2c connection to faultline")
    })
}

/// Connects over TLS (ALPN h2) with the test CA.
#[derive(Clone)]
struct TlsConnect {
    connector: pingora::tls::TlsConnector,
    addr: SocketAddr,
}

type TlsIo = hyper_util::rt::TokioIo<pingora::tls::ClientTlsStream<tokio::net::TcpStream>>;

impl Service<http::Uri> for TlsConnect {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (connector, addr) = (self.connector.clone(), self.addr);
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tls_connect(&connector, addr).await?,
            ))
        })
    }
}

/// A tonic client over TLS and HTTP/2 to `addr`.
fn tls_channel(pki: &Pki, addr: SocketAddr) -> Channel {
    let connect = TlsConnect {
        connector: connector(pki, b"h2"),
        addr,
    };
    runtime().block_on(async {
        Endpoint::from_static("https://localhost")
            .connect_with_connector(connect)
            .await
            .expect("TLS h2 connection to faultline")
    })
}

/// A unary call of `method` with `message` and request `metadata`.
fn call(
    channel: &Channel,
    method: &str,
    message: &'static str,
    metadata: &[(&'static str, &str)],
) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let mut req = Request::new(Bytes::from_static(message.as_bytes()));
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(format!("/test.Echo/{method}")).unwrap();
    runtime().block_on(async move {
        grpc.ready().await.expect("channel ready");
        grpc.unary(req, path, Raw).await
    })
}

/// A server-streaming call: the messages received, then how the stream ended and its trailers.
fn stream_call(
    channel: &Channel,
    method: &str,
    message: &'static str,
) -> (Vec<Bytes>, Result<Option<MetadataMap>, Status>) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let req = Request::new(Bytes::from_static(message.as_bytes()));
    let path = http::uri::PathAndQuery::try_from(format!("/test.Echo/{method}")).unwrap();
    runtime().block_on(async move {
        grpc.ready().await.expect("channel ready");
        let mut stream: Streaming<Bytes> = match grpc.server_streaming(req, path, Raw).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut got = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, stream.trailers().await),
                Err(status) => return (got, Err(status)),
            }
        }
    })
}

/// Everything an origin response must keep on its way through, checked on `channel`.
fn assert_passes_through(channel: &Channel, seen: &Seen) {
    let resp = call(channel, "Unary", "hello", &[]).expect("unary call");
    assert_eq!(resp.get_ref(), &Bytes::from_static(b"hello"));
    let (got, end) = stream_call(channel, "Stream", "tick");
    assert_eq!(got, vec![Bytes::from_static(b"tick"); 3]);
    assert!(end.is_ok(), "{end:?}");
    // The origin's error status and its custom trailer, after two messages.
    let (got, end) = stream_call(channel, "StreamFail", "tock");
    assert_eq!(got, vec![Bytes::from_static(b"tock"); 2]);
    let status = end.expect_err("the origin's status");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "origin says no");
    assert_eq!(
        status
            .metadata()
            .get("x-origin-trailer")
            .map(|v| v.to_str().unwrap()),
        Some("kept")
    );
    // `te: trailers` reached the backend with every call.
    let headers = seen.headers.lock().unwrap();
    assert_eq!(headers.len(), 3);
    for h in headers.iter() {
        assert_eq!(
            h.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..]),
            "{h:?}"
        );
        assert_eq!(
            h.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
    }
}

#[test]
fn grpc_passes_through_an_h2c_listener_to_an_h2c_upstream() {
    let (origin, seen) = grpc_origin();
    let proxy = h2c_proxy(&h2c_upstream(&[origin], "", ""));
    let channel = channel(proxy.addr);
    assert_passes_through(&channel, &seen);
    let resp = call(
        &channel,
        "Unary",
        "logged",
        &[("x-request-id", "grpc-pass-1")],
    )
    .unwrap();
    assert_eq!(resp.get_ref(), &Bytes::from_static(b"logged"));
    let entry = access_entry("grpc-pass-1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["grpc_status"], 0, "{entry}");
}

#[test]
fn grpc_passes_through_a_tls_http2_listener_to_an_h2c_upstream() {
    let pki = Pki::new("grpc");
    let (origin, seen) = grpc_origin();
    let proxy = tls_proxy(&pki, &h2c_upstream(&[origin], "", ""));
    let channel = tls_channel(&pki, proxy.addr);
    assert_passes_through(&channel, &seen);
}

#[test]
fn http1_and_h2c_share_one_h2c_listener() {
    let origin = Origin::start(Behavior::named("one"));
    let proxy = h2c_proxy(&crate::harness::one_upstream(&[origin.addr], "", ""));
    let resp = client::get(proxy.addr, "/", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "origin one");
    // HTTP/2 with prior knowledge on the same port, to the same HTTP/1 origin.
    let (status, body) = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut send = crate::tls::h2_client(tcp).await;
        let req = http::Request::get(format!("http://{}/", proxy.addr))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.expect("h2c response");
        let status = resp.status().as_u16();
        let (bytes, _) = crate::tls::h2_body(&mut resp.into_body(), usize::MAX).await;
        (status, String::from_utf8(bytes).unwrap())
    });
    assert_eq!((status, body.as_str()), (200, "origin one"));
    assert_eq!(origin.requests(), 2);
}

/// The proxy's own gRPC answer: code, message, and the headers every proxy answer carries;
/// the access log and the metric keep the failure kind and add the code.
fn assert_proxy_answer(
    proxy: &Proxy,
    status: &Status,
    request_id: &str,
    code: Code,
    kind: &str,
    message: &str,
) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
    let md = status.metadata();
    assert_eq!(
        md.get("x-request-id").map(|v| v.to_str().unwrap()),
        Some(request_id)
    );
    let proxy_status = md
        .get("proxy-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        proxy_status
            .as_deref()
            .is_some_and(|p| p.starts_with(&format!("faultline; error={kind}"))),
        "{proxy_status:?}"
    );
    let entry = access_entry(request_id);
    assert_eq!(entry["failure"], kind, "{entry}");
    assert_eq!(entry["grpc_status"], code as i32, "{entry}");
    assert_eq!(entry["source"], "proxy");
    let route = entry["route"].as_str().unwrap_or("none").to_string();
    assert_eq!(
        proxy.metric(&format!(
            "faultline_grpc_proxy_answers_total{{route=\"{route}\",grpc_status=\"{}\"}}",
            code as i32
        )),
        1
    );
}

#[test]
fn a_refused_backend_is_unavailable_naming_the_failure() {
    let proxy = h2c_proxy(&h2c_upstream(&[free_addr()], "", ""));
    let status = call(
        &channel(proxy.addr),
        "Unary",
        "x",
        &[("x-request-id", "grpc-refused")],
    )
    .expect_err("no backend answers");
    assert_proxy_answer(
        &proxy,
        &status,
        "grpc-refused",
        Code::Unavailable,
        "connection_refused",
        "the upstream server refused the connection",
    );
}

#[test]
fn a_backend_past_its_timeout_is_deadline_exceeded() {
    let (origin, _seen) = grpc_origin();
    let timeouts = "    timeouts: { response_header: 300ms }\n";
    let proxy = h2c_proxy(&h2c_upstream(&[origin], timeouts, ""));
    let status = call(
        &channel(proxy.addr),
        "Slow",
        "x",
        &[("x-request-id", "grpc-slow")],
    )
    .expect_err("the backend is too slow");
    assert_proxy_answer(
        &proxy,
        &status,
        "grpc-slow",
        Code::DeadlineExceeded,
        "http_response_timeout",
        "the upstream server did not respond in time",
    );
}

#[test]
fn no_route_is_unimplemented() {
    let (origin, _seen) = grpc_origin();
    let route = "    match: { path_prefix: /other.Service/ }\n";
    let proxy = h2c_proxy(&h2c_upstream(&[origin], "", route));
    let status = call(
        &channel(proxy.addr),
        "Unary",
        "x",
        &[("x-request-id", "grpc-noroute")],
    )
    .expect_err("no route");
    assert_proxy_answer(
        &proxy,
        &status,
        "grpc-noroute",
        Code::Unimplemented,
        "destination_not_found",
        "no route serves this address",
    );
}

/// A unary call of `method` sent with the h2 crate over h2c, for headers tonic's client acts on
/// itself (it enforces a `grpc-timeout` of its own): the response's header section, which a
/// Trailers-Only answer ends the stream with.
fn raw_call(addr: SocketAddr, method: &str, headers: &[(&str, &str)]) -> http::HeaderMap {
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut send = crate::tls::h2_client(tcp).await;
        let mut req = http::Request::post(format!("http://{addr}/test.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (resp, mut body) = send.send_request(req.body(()).unwrap(), false).unwrap();
        // One uncompressed message of one byte.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 1, b'x']), true)
            .unwrap();
        let resp = resp.await.expect("a response");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.body().is_end_stream(),
            "Trailers-Only: the header section ends the stream"
        );
        resp.headers().clone()
    })
}

#[test]
fn a_client_grpc_timeout_shorter_than_the_route_deadline_wins_and_reaches_the_backend_reduced() {
    let (origin, seen) = grpc_origin();
    let proxy = h2c_proxy(&h2c_upstream(&[origin], "", "    deadline: 10s\n"));
    let started = Instant::now();
    // The backend learns it has less than 500 ms and gives up itself (tonic answers
    // CANCELLED, "Timeout expired"): the call ends with the client's deadline, not the route's.
    let headers = raw_call(
        proxy.addr,
        "Slow",
        &[("x-request-id", "grpc-timeout"), ("grpc-timeout", "500m")],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Whichever side's timer fires first ends it: the backend's own (CANCELLED) or the
    // proxy's (DEADLINE_EXCEEDED); both are the client's deadline, not the route's.
    let code = headers["grpc-status"].to_str().unwrap().to_string();
    assert!(code == "1" || code == "4", "{headers:?}");
    let sent = seen.headers.lock().unwrap()[0]
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .expect("grpc-timeout upstream")
        .to_string();
    let millis = parse_grpc_timeout(&sent);
    assert!(millis > 0 && millis < 500, "upstream grpc-timeout {sent}");
    let entry = access_entry("grpc-timeout");
    assert_eq!(entry["grpc_status"].to_string(), code, "{entry}");
}

#[test]
fn a_spent_grpc_deadline_is_deadline_exceeded_from_the_proxy() {
    // A backend that ignores the deadline it is sent (an HTTP/1 one that never answers).
    let hang = Origin::start(Behavior::Hang);
    let proxy = h2c_proxy(&crate::harness::one_upstream(
        &[hang.addr],
        "",
        "    deadline: 10s\n",
    ));
    let started = Instant::now();
    let headers = raw_call(
        proxy.addr,
        "Unary",
        &[("x-request-id", "grpc-spent"), ("grpc-timeout", "300m")],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert_eq!(
        headers["grpc-message"],
        "the upstream server did not respond in time"
    );
    assert_eq!(headers["x-request-id"], "grpc-spent");
    assert_eq!(
        headers["proxy-status"],
        "faultline; error=http_response_timeout; details=\"the upstream server did not respond in time\""
    );
    let entry = access_entry("grpc-spent");
    assert_eq!(entry["failure"], "http_response_timeout", "{entry}");
    assert_eq!(entry["grpc_status"], 4, "{entry}");
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(
        proxy.metric("faultline_grpc_proxy_answers_total{route=\"main\",grpc_status=\"4\"}"),
        1
    );
}

#[test]
fn a_route_deadline_alone_reaches_the_backend_as_grpc_timeout() {
    let (origin, seen) = grpc_origin();
    let proxy = h2c_proxy(&h2c_upstream(&[origin], "", "    deadline: 10s\n"));
    call(&channel(proxy.addr), "Unary", "x", &[]).expect("answered");
    let sent = seen.headers.lock().unwrap()[0]
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .map(parse_grpc_timeout);
    assert!(sent.is_some_and(|ms| ms > 9000 && ms <= 10_000), "{sent:?}");
}

/// A `grpc-timeout` value in milliseconds.
fn parse_grpc_timeout(text: &str) -> u64 {
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1000,
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        other => panic!("unit {other}"),
    }
}

#[test]
fn a_grpc_call_is_never_delivered_twice() {
    let (a, seen_a) = grpc_origin();
    let (b, seen_b) = grpc_origin();
    // A route that would retry a POST carrying Idempotency-Key after it was sent: never a gRPC
    // call, whose messages may have been acted on.
    let proxy = h2c_proxy(&h2c_upstream(
        &[a, b],
        "    timeouts: { response_header: 300ms }\n",
        "    retry: { attempts: 3, idempotency_key: true }\n",
    ));
    let status = call(
        &channel(proxy.addr),
        "Slow",
        "once",
        &[("x-request-id", "grpc-once"), ("idempotency-key", "k1")],
    )
    .expect_err("the backend is too slow");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    std::thread::sleep(Duration::from_millis(300));
    let calls = seen_a.calls.load(Ordering::SeqCst) + seen_b.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1, "delivered once");
    let entry = access_entry("grpc-once");
    assert_eq!(
        entry["attempts"].as_array().map(Vec::len),
        Some(1),
        "{entry}"
    );
    // Before anything was sent, failing over is safe: a refused backend is passed over.
    let proxy = h2c_proxy(&h2c_upstream(&[free_addr(), a], "", ""));
    let channel = channel(proxy.addr);
    for _ in 0..2 {
        let resp = call(&channel, "Unary", "over", &[]).expect("failed over");
        assert_eq!(resp.get_ref(), &Bytes::from_static(b"over"));
    }
}

#[test]
fn a_call_that_fails_after_its_response_started_ends_with_grpc_status_trailers() {
    // A backend that starts a gRPC response (header and part of a message) and closes.
    let cut = Origin::start(Behavior::WriteThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n7\r\n\x00\x00\x00\x00\x05ab\r\n"
            .to_vec(),
    ));
    let proxy = h2c_proxy(&crate::harness::one_upstream(&[cut.addr], "", ""));
    let (status, data, trailers) = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut send = crate::tls::h2_client(tcp).await;
        let req = http::Request::post(format!("http://{}/test.Echo/Unary", proxy.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-request-id", "grpc-cut")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.expect("the response header");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let (data, end) = crate::tls::h2_body(&mut body, usize::MAX).await;
        assert!(
            matches!(end, Some(Ok(()))),
            "a clean end, not a reset: {end:?}"
        );
        let trailers = body
            .trailers()
            .await
            .expect("trailers")
            .expect("some trailers");
        (status, data, trailers)
    });
    assert_eq!(status, 200);
    assert_eq!(data, b"\x00\x00\x00\x00\x05ab");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(
        trailers["grpc-message"],
        "the upstream server sent an incomplete response"
    );
    let entry = access_entry("grpc-cut");
    assert_eq!(entry["failure"], "http_response_incomplete", "{entry}");
    assert_eq!(entry["grpc_status"], 14, "{entry}");
}

#[test]
fn grpc_configuration_errors_name_their_field() {
    let cases = [
        (
            "upstreams:\n  app:\n    protocol: h2\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.protocol",
        ),
        (
            "upstreams:\n  app:\n    protocol: h2c\n    tls: true\n    sni: a.test\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.protocol",
        ),
        (
            "upstreams:\n  app:\n    protocol: h2c\n    h2: { max_streams: 0 }\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.h2.max_streams",
        ),
        (
            "upstreams:\n  app:\n    h2: { max_streams: 10 }\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.h2",
        ),
        (
            "upstreams:\n  app:\n    protocol: http3\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.protocol",
        ),
        (
            "upstreams:\n  app:\n    protocol: h2c\n    h2: { max_stream: 10 }\n    backends: [{ address: \"127.0.0.1:1\" }]\nroutes: [{ upstream: app }]\n",
            "upstreams.app.h2",
        ),
    ];
    for (body, path) in cases {
        let yaml = format!("listeners: [{{ address: \"127.0.0.1:8080\" }}]\n{body}");
        let err = faultline::Config::from_yaml(&yaml).expect_err(path);
        let text = err.to_string();
        assert!(text.starts_with(path), "{path}: {text}");
    }
    let tls_h2c = "listeners: [{ address: \"127.0.0.1:8080\", h2c: true, tls: { cert: a.pem, key: a.key } }]\nupstreams:\n  app: { backends: [{ address: \"127.0.0.1:1\" }] }\nroutes: [{ upstream: app }]\n";
    let err = faultline::Config::from_yaml(tls_h2c).expect_err("h2c on TLS");
    assert!(
        err.field_errors()
            .iter()
            .any(|e| e.path == "listeners[0].h2c"),
        "{err}"
    );
}
