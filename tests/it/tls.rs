//! TLS at the edge (HTTP/1.1 and HTTP/2 by ALPN) and towards upstreams, with certificates made
//! at run time; what an HTTP/2 client sees when a body fails after its header went out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::tls::{
    ClientConfig, ClientTlsStream, PrivateKeyDer, RootCertStore, ServerConfig, ServerName,
    TlsAcceptor, TlsConnector,
};
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::Proxy;
use crate::origin::{Behavior, Gate, Origin, runtime};

/// A test CA, the proxy's certificate, a good origin certificate and a rogue one.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: Certificate,
    origin: (Certificate, KeyPair),
    rogue: (Certificate, KeyPair),
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA certificate named `common_name`, and its key.
pub(crate) fn ca(common_name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.self_signed(&key).expect("ca");
    (cert, key)
}

fn leaf(names: &[&str], ca: Option<(&Certificate, &KeyPair)>) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    let cert = match ca {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key),
        None => params.self_signed(&key),
    }
    .expect("sign");
    (cert, key)
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
        pingora::tls::install_default_crypto_provider();
        let dir = std::env::temp_dir().join(format!("faultline-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let (ca, ca_key) = ca("faultline test CA");
        let proxy = leaf(&["localhost", "127.0.0.1"], Some((&ca, &ca_key)));
        let origin = leaf(&["origin.test"], Some((&ca, &ca_key)));
        let rogue = leaf(&["origin.test"], None);
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("proxy.pem"), proxy.0.pem()).expect("write");
        std::fs::write(dir.join("proxy.key"), proxy.1.serialize_pem()).expect("write");
        Pki {
            dir,
            ca,
            origin,
            rogue,
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("root");
        roots
    }
}

/// An HTTPS origin answering `origin tls` on keep-alive connections.
fn tls_origin((cert, key): &(Certificate, KeyPair)) -> SocketAddr {
    let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
    tls_origin_with(config, "origin tls")
}

/// An HTTPS origin with `config`, answering 200 `body` to each request of a keep-alive
/// connection.
pub(crate) fn tls_origin_with(config: ServerConfig, body: &'static str) -> SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    runtime().spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let resp = resp.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub(crate) fn connector(pki: &Pki, alpn: &[u8]) -> TlsConnector {
    let mut config = ClientConfig::builder()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` for the name `localhost`.
pub(crate) async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<ClientTlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

/// An HTTP/2 client connection over `io` (TLS, or plain TCP for h2c), driven in the background:
/// its sender.
pub(crate) async fn h2_client<T>(io: T) -> h2::client::SendRequest<bytes::Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Starts a GET of `path` with `headers` on a new HTTP/2 connection over `tls`: the connection's
/// sender (keep it to keep the connection open, or to start more streams) and the response to
/// come. The error names the step that failed.
pub(crate) async fn h2_get(
    tls: ClientTlsStream<tokio::net::TcpStream>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        h2::client::SendRequest<bytes::Bytes>,
        h2::client::ResponseFuture,
    ),
    String,
> {
    let (mut send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = h2_request(&mut send, path, headers).await?;
    Ok((send, resp))
}

/// Starts a GET of `path` with `headers` on an open HTTP/2 connection, as a new stream.
pub(crate) async fn h2_request(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<h2::client::ResponseFuture, String> {
    std::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .map_err(|e| format!("ready: {e}"))?;
    let mut req = http::Request::builder().uri(format!("https://localhost{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(()).map_err(|e| format!("request: {e}"))?;
    let (resp, _) = send
        .send_request(req, true)
        .map_err(|e| format!("send: {e}"))?;
    Ok(resp)
}

/// An HTTPS/1.1 request; returns the status line, the raw head and the body.
pub(crate) fn https1(pki: &Pki, addr: SocketAddr, path: &str) -> (u16, String, String) {
    let connector = connector(pki, b"http/1.1");
    runtime().block_on(async move {
        let mut tls = tls_connect(&connector, addr).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("a response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, head.to_ascii_lowercase(), body.to_string())
    })
}

/// An HTTP/2 request over TLS (ALPN h2); returns status, headers and body.
fn https2(pki: &Pki, addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let connector = connector(pki, b"h2");
    let path = path.to_string();
    runtime().block_on(async move {
        let tls = tls_connect(&connector, addr).await.expect("handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN chose HTTP/2"
        );
        let (_send, resp) = h2_get(tls, &path, &[]).await.expect("h2 GET");
        let resp = resp.await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (bytes, end) = h2_body(&mut resp.into_body(), usize::MAX).await;
        assert!(matches!(end, Some(Ok(()))), "{end:?}");
        (status, headers, String::from_utf8_lossy(&bytes).to_string())
    })
}

/// Reads an HTTP/2 response body until the stream ends or `stop` bytes came: the bytes, and how
/// the stream ended (`None`: not yet; `Some(Ok)`: a clean end of stream).
pub(crate) async fn h2_body(
    body: &mut h2::RecvStream,
    stop: usize,
) -> (Vec<u8>, Option<Result<(), h2::Error>>) {
    let mut bytes = Vec::new();
    while bytes.len() < stop {
        match body.data().await {
            None => return (bytes, Some(Ok(()))),
            Some(Err(e)) => return (bytes, Some(Err(e))),
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
        }
    }
    (bytes, None)
}

fn edge_config(plain: SocketAddr, secure: SocketAddr) -> String {
    format!(
        "upstreams:
  plain: {{ backends: [{{ address: \"{plain}\" }}] }}
  secure: {{ backends: [{{ address: \"{secure}\" }}], tls: true, sni: origin.test }}
routes:
  - {{ match: {{ path_prefix: /plain }}, upstream: plain }}
  - {{ match: {{ path_prefix: /secure }}, upstream: secure }}
"
    )
}

/// Starts faultline with a TLS listener (and the test CA for upstream verification).
pub(crate) fn tls_proxy(pki: &Pki, body: &str) -> Proxy {
    tls_proxy_with(pki, body, |b| b)
}

/// Like [`tls_proxy`], with the gateway builder adjusted by `customize`.
pub(crate) fn tls_proxy_with(
    pki: &Pki,
    body: &str,
    customize: impl FnOnce(faultline::GatewayBuilder<'_>) -> faultline::GatewayBuilder<'_>,
) -> Proxy {
    let addr = crate::harness::free_addr();
    let admin = crate::harness::free_addr();
    let yaml = format!(
        "server: {{ threads: 1, ca_file: \"{}\" }}\nlisteners:\n  - {{ address: \"{addr}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}\nadmin: {{ address: \"{admin}\" }}\n{body}",
        pki.path("ca.pem"),
        pki.path("proxy.pem"),
        pki.path("proxy.key")
    );
    Proxy::start_full(addr, admin, &yaml, customize)
}

#[test]
fn https_with_http1_and_http2_to_plain_and_tls_origins() {
    let pki = Pki::new("edge");
    let plain = Origin::start(Behavior::named("plain"));
    let secure = tls_origin(&pki.origin);
    let proxy = tls_proxy(&pki, &edge_config(plain.addr, secure));

    let (status, _, body) = https1(&pki, proxy.addr, "/plain");
    assert_eq!((status, body.as_str()), (200, "origin plain"));
    let (status, _, body) = https1(&pki, proxy.addr, "/secure");
    assert_eq!((status, body.as_str()), (200, "origin tls"));

    let (status, _, body) = https2(&pki, proxy.addr, "/plain");
    assert_eq!((status, body.as_str()), (200, "origin plain"));
    let (status, _, body) = https2(&pki, proxy.addr, "/secure");
    assert_eq!((status, body.as_str()), (200, "origin tls"));

    // The origin learns the client spoke HTTPS.
    let heads = plain.heads();
    assert!(
        heads.iter().all(|h| h
            .to_ascii_lowercase()
            .contains("\r\nx-forwarded-proto: https\r\n")),
        "{heads:?}"
    );
    assert!(
        heads
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("\r\nvia: 2 faultline\r\n")),
        "{heads:?}"
    );
}

/// An HTTP/2 client gets the origin's header values as sent, repeated and indexed ones included,
/// on every stream of a connection: faultline gives them storage of their own (so that the
/// HPACK table does not pin the upstream's read buffer) before they go out.
#[test]
fn http2_clients_get_the_origin_header_values_on_every_stream() {
    let pki = Pki::new("h2values");
    let origin = Origin::start(Behavior::Raw(
        b"HTTP/1.1 200 OK\r\nServer: test-origin/1.0\r\nContent-Type: text/plain\r\n\
          Set-Cookie: a=1\r\nX-Note: first\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
    ));
    let proxy = tls_proxy(&pki, &edge_config(origin.addr, origin.addr));
    let connector = connector(&pki, b"h2");
    let addr = proxy.addr;
    let seen = runtime().block_on(async move {
        let tls = tls_connect(&connector, addr).await.expect("handshake");
        let mut send = h2_client(tls).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let resp = h2_request(&mut send, "/plain", &[]).await.expect("request");
            let resp = resp.await.expect("response");
            let mut headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
                .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_string()))
                .collect();
            let (body, end) = h2_body(&mut resp.into_body(), usize::MAX).await;
            assert!(matches!(end, Some(Ok(()))), "{end:?}");
            headers.push(("(body)".into(), String::from_utf8_lossy(&body).into()));
            seen.push(headers);
        }
        seen
    });
    let expected: Vec<(String, String)> = [
        ("server", "test-origin/1.0"),
        ("content-type", "text/plain"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("x-note", "first"),
        ("content-length", "2"),
        ("(body)", "ok"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    for headers in &seen {
        assert_eq!(headers, &expected);
    }
}

/// An HTTP/1.1 origin (hyper) that answers every request with its own body.
fn echo_origin() -> SocketAddr {
    use http_body_util::{BodyExt, Full};

    crate::origin::hyper_origin(hyper::service::service_fn(
        |req: hyper::Request<hyper::body::Incoming>| async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
        },
    ))
}

#[test]
fn http2_connections_carry_large_bodies_both_ways_after_waiting_idle() {
    // Between streams the connection has nothing to read or write, and faultline's HTTP/2
    // codec lets its read and write buffers go (vendor/h2); each stream below starts on a
    // connection in that state and takes them again, frame header and all.
    let pki = Pki::new("h2idle");
    let origin = echo_origin();
    let proxy = tls_proxy(&pki, &edge_config(origin, origin));
    let connector = connector(&pki, b"h2");
    let addr = proxy.addr;
    let sizes = [0usize, 1, 300 * 1024, 17, 1024 * 1024];
    let echoed = runtime().block_on(async move {
        let tls = tls_connect(&connector, addr).await.expect("handshake");
        let mut send = h2_client(tls).await;
        let mut echoed = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let body: Vec<u8> = (0..size).map(|b| ((b * 31 + i) % 251) as u8).collect();
            std::future::poll_fn(|cx| send.poll_ready(cx))
                .await
                .expect("ready");
            let req = http::Request::post("https://localhost/plain/echo")
                .body(())
                .expect("request");
            let (resp, mut stream) = send.send_request(req, false).expect("send");
            stream
                .send_data(bytes::Bytes::from(body.clone()), true)
                .expect("body");
            let resp = resp.await.expect("response");
            let status = resp.status().as_u16();
            let (got, end) = h2_body(&mut resp.into_body(), usize::MAX).await;
            assert!(matches!(end, Some(Ok(()))), "stream {i}: {end:?}");
            echoed.push((status, got == body, got.len()));
        }
        echoed
    });
    let expected: Vec<_> = sizes.iter().map(|&size| (200, true, size)).collect();
    assert_eq!(echoed, expected);
}

#[test]
fn http2_clients_get_the_same_failure_answers() {
    let pki = Pki::new("h2fail");
    let body = format!(
        "upstreams:\n  dead: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ upstream: dead }}\n",
        crate::origin::refused_addr()
    );
    let proxy = tls_proxy(&pki, &body);
    let (status, headers, body) = https2(&pki, proxy.addr, "/");
    assert_eq!(status, 502);
    assert_eq!(
        headers.get("proxy-status").and_then(|v| v.to_str().ok()),
        Some(
            "faultline; error=connection_refused; details=\"the upstream server refused the connection\""
        )
    );
    assert!(body.starts_with("502 Bad Gateway: "), "{body}");
}

#[test]
fn an_upstream_with_a_bad_certificate_is_502_tls_certificate_error() {
    let pki = Pki::new("rogue");
    let plain = Origin::start(Behavior::named("plain"));
    let rogue = tls_origin(&pki.rogue);
    let proxy = tls_proxy(&pki, &edge_config(plain.addr, rogue));
    let (status, head, _) = https1(&pki, proxy.addr, "/secure");
    assert_eq!(status, 502);
    assert!(
        head.contains("proxy-status: faultline; error=tls_certificate_error;"),
        "{head}"
    );
}

#[test]
fn tls_configuration_errors_name_their_field() {
    let pki = Pki::new("errors");
    let base = |listener_tls: &str, upstream: &str| {
        format!(
            "listeners:\n  - {{ address: \"127.0.0.1:8443\"{listener_tls} }}\nupstreams:\n  app: {{ backends: [{{ address: \"127.0.0.1:9\" }}]{upstream} }}\nroutes: []\n"
        )
    };
    let errors = |yaml: &str| match faultline::Config::from_yaml(yaml) {
        Ok(_) => panic!("should be invalid:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    // A key that is not the certificate's.
    std::fs::write(
        pki.dir.join("other.key"),
        KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let e = errors(&base(
        &format!(
            ", tls: {{ cert: \"{}\", key: \"{}\" }}",
            pki.path("proxy.pem"),
            pki.path("other.key")
        ),
        "",
    ));
    assert!(
        e.starts_with(&format!(
            "listeners[0].tls.key: {} does not fit the certificate",
            pki.path("other.key")
        )),
        "{e}"
    );
    let e = errors(&base(
        &format!(
            ", tls: {{ cert: \"{}\", key: \"{}\" }}",
            pki.path("missing.pem"),
            pki.path("proxy.key")
        ),
        "",
    ));
    assert!(e.starts_with("listeners[0].tls.cert: cannot read "), "{e}");
    let e = errors(&base("", ", tls: true"));
    assert_eq!(e, "upstreams.app.sni: required when tls is true");
    let e = errors(&format!(
        "server: {{ ca_file: \"{}\" }}\n{}",
        pki.path("proxy.key"),
        base("", "")
    ));
    assert!(e.starts_with("server.ca_file: "), "{e}");
    let ok = base(
        &format!(
            ", tls: {{ cert: \"{}\", key: \"{}\" }}",
            pki.path("proxy.pem"),
            pki.path("proxy.key")
        ),
        ", tls: true, sni: origin.test",
    );
    assert!(faultline::Config::from_yaml(&ok).is_ok());
}

#[test]
fn client_limits_hold_on_tls_listeners_for_http1_and_http2() {
    let pki = Pki::new("limits");
    let origin = Origin::start(Behavior::named("o"));
    let body = format!(
        "clients: {{ max_connections: 1, header_timeout: 300ms }}\nupstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ upstream: app }}\n",
        origin.addr
    );
    let proxy = tls_proxy(&pki, &body);
    let addr = proxy.addr;
    let wait_for_no_connections = || {
        proxy.wait_for_metric(
            "faultline_client_connections",
            |n| n == 0,
            "connections stayed open",
        )
    };
    wait_for_no_connections();

    // A header that never completes gets its 408 through TLS.
    let h1 = connector(&pki, b"http/1.1");
    let answer = runtime().block_on(async {
        let mut tls = tls_connect(&h1, addr).await.expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).to_string()
    });
    assert!(answer.starts_with("HTTP/1.1 408 "), "got: {answer}");
    wait_for_no_connections();

    // One HTTP/2 connection held open fills the limit.
    let h2c = connector(&pki, b"h2");
    let (refused_h2, refused_h1) = runtime().block_on(async {
        let tls = tls_connect(&h2c, addr).await.expect("handshake");
        let (held, resp) = h2_get(tls, "/", &[]).await.expect("h2 GET");
        assert_eq!(resp.await.expect("response").status(), 200);

        // A second HTTP/2 connection is closed before any request on it is answered.
        let refused_h2 = match tls_connect(&h2c, addr).await {
            Err(e) => format!("TLS: {e}"),
            Ok(tls) => match h2_get(tls, "/", &[]).await {
                Err(e) => e,
                Ok((_send, resp)) => match resp.await {
                    Err(e) => format!("response: {e}"),
                    Ok(r) => panic!("answered {} over the limit", r.status()),
                },
            },
        };
        // An HTTP/1.1 one gets the 503 page.
        let mut tls = tls_connect(&h1, addr).await.expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        drop(held);
        (refused_h2, String::from_utf8_lossy(&raw).to_string())
    });
    eprintln!("second HTTP/2 connection: {refused_h2}");
    assert!(refused_h1.starts_with("HTTP/1.1 503 "), "got: {refused_h1}");
    assert!(
        refused_h1.contains("faultline; error=connection_limit_reached;"),
        "got: {refused_h1}"
    );
    assert_eq!(
        origin.requests(),
        1,
        "only the held connection's request was forwarded"
    );
    assert_eq!(
        proxy.metric("faultline_client_connections_over_limit_total"),
        2
    );
}

#[test]
fn http2_body_cut_after_the_header_resets_the_stream_not_the_connection() {
    let pki = Pki::new("h2cut");
    let mut cut = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    cut.extend(std::iter::repeat_n(b'z', 100));
    // The origin closes only once the client has the 100 bytes: h2 discards DATA still queued
    // when a stream is reset, so a close at once could reset the stream before they went out.
    let close = Gate::new();
    let origin = Origin::start(Behavior::Cycle(vec![
        Behavior::WriteThenCloseWhen(cut, close.clone()),
        Behavior::named("after"),
    ]));
    let proxy = tls_proxy(&pki, &crate::harness::one_upstream(&[origin.addr], "", ""));
    let connector = connector(&pki, b"h2");
    let ((status, body, end), after) = runtime().block_on(async {
        let tls = tls_connect(&connector, proxy.addr)
            .await
            .expect("handshake");
        let (mut send, resp) = h2_get(tls, "/cut", &[("x-request-id", "h2cut")])
            .await
            .expect("h2 GET");
        let cut = async {
            let resp = resp.await.expect("response header");
            let status = resp.status().as_u16();
            let mut stream = resp.into_body();
            let (mut body, end) = h2_body(&mut stream, 100).await;
            assert!(end.is_none(), "the stream ended before 100 bytes: {end:?}");
            close.open();
            let (rest, end) = h2_body(&mut stream, usize::MAX).await;
            body.extend(rest);
            (status, body, end.expect("ended"))
        };
        let cut = tokio::time::timeout(Duration::from_secs(10), cut)
            .await
            .expect("the cut stream never ended");
        // A second stream on the same connection.
        let resp = h2_request(&mut send, "/after", &[])
            .await
            .expect("a new stream")
            .await
            .expect("response header");
        let status = resp.status().as_u16();
        let (body, end) = h2_body(&mut resp.into_body(), usize::MAX).await;
        assert!(matches!(end, Some(Ok(()))), "{end:?}");
        (cut, (status, String::from_utf8_lossy(&body).to_string()))
    });
    assert_eq!(status, 200, "the status was already sent");
    assert_eq!(body, vec![b'z'; 100]);
    // Not a clean end: Pingora drops the unfinished stream, and h2 resets a dropped stream with
    // CANCEL.
    let err = end.expect_err("the stream must be reset, not ended");
    assert!(err.is_reset() && err.is_remote(), "{err:?}");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    assert_eq!(after, (200, "origin after".to_string()));
    let entry = crate::harness::access_entry("h2cut");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["source"], "origin");
    assert_eq!(entry["failure"], "http_response_incomplete");
    assert_eq!(entry["attempts"][0]["outcome"], "http_response_incomplete");
    assert_eq!(entry["attempts"][0]["progress"], "response_started");
    assert_eq!(
        proxy.metric(&format!(
            "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{}\",outcome=\"http_response_incomplete\"}}",
            origin.addr
        )),
        1
    );
}
