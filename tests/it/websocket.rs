//! WebSocket tunnels through faultline, with real WebSocket implementations on both ends
//! (`tokio-tungstenite` as the client and as an echoing origin): the tunnel's own idle timeout,
//! streaming both ways, the open-tunnel gauge, the access-log entry at the close, the `101`
//! counted as the attempt's response, and the ordinary failures before the `101`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::client::Client;
use crate::harness::{Proxy, access_entry, backend_status, one_upstream, status_now};
use crate::origin::{Behavior, Origin, refused_addr, runtime};

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket origin that echoes every text and binary message; tungstenite answers pings and
/// the closing handshake itself.
fn echo_origin() -> SocketAddr {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream));
            }
        });
        addr
    })
}

async fn echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// A proxy in front of `backend` with these upstream timeouts (YAML flow-map body).
fn proxy(backend: SocketAddr, timeouts: &str) -> Proxy {
    Proxy::start(&one_upstream(
        &[backend],
        &format!("    timeouts: {{ {timeouts} }}\n"),
        "",
    ))
}

/// Opens a WebSocket through `proxy` with request id `id`.
async fn open(proxy: &Proxy, id: &str) -> Ws {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut req = "ws://app.test/ws".into_client_request().expect("request");
    req.headers_mut()
        .insert("x-request-id", id.parse().expect("header value"));
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("the upgrade is answered 101");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `m` and expects it back, within 5 s.
async fn echoed(ws: &mut Ws, m: Message) {
    ws.send(m.clone()).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s")
        .expect("the tunnel is open")
        .expect("a message");
    assert_eq!(back, m);
}

/// The closing handshake from the client; waits for the end of the stream.
async fn close(mut ws: Ws) {
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
}

/// `series` of backend `b` of upstream `app`.
fn attempts(proxy: &Proxy, b: SocketAddr, outcome: &str) -> u64 {
    proxy.metric(&format!(
        "faultline_upstream_attempts_total{{upstream=\"app\",backend=\"{b}\",outcome=\"{outcome}\"}}"
    ))
}

const GAUGE: &str = "faultline_tunnels_open{upstream=\"app\"}";

#[test]
fn messages_echo_through_the_tunnel() {
    let proxy = proxy(echo_origin(), "response_header: 5s");
    runtime().block_on(async {
        let mut ws = open(&proxy, "ws-echo").await;
        echoed(&mut ws, Message::text("hello")).await;
        echoed(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
        close(ws).await;
    });
}

#[test]
fn a_tunnel_quiet_past_the_response_header_timeout_stays_open() {
    // The response-header timeout used to cut every tunnel quiet for that long.
    let proxy = proxy(echo_origin(), "response_header: 300ms, tunnel_idle: 10s");
    runtime().block_on(async {
        let mut ws = open(&proxy, "ws-quiet").await;
        echoed(&mut ws, Message::text("before")).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        echoed(
            &mut ws,
            Message::text("after four response-header timeouts"),
        )
        .await;
        close(ws).await;
    });
    let entry = access_entry("ws-quiet");
    assert_eq!(entry["tunnel"]["end"], "closed", "{entry}");
}

#[test]
fn a_tunnel_quiet_past_tunnel_idle_is_closed_with_going_away() {
    let idle = Duration::from_secs(1);
    let backend = echo_origin();
    let proxy = proxy(backend, "response_header: 300ms, tunnel_idle: 1s");
    let (took, got) = runtime().block_on(async {
        let mut ws = open(&proxy, "ws-idle").await;
        // The clock starts before the message goes: the proxy's starts at the echo's last
        // byte, which it forwards before this client has read it, so a clock started on
        // receipt can read a few hundred microseconds short of tunnel_idle under load.
        let quiet = Instant::now();
        echoed(&mut ws, Message::text("once")).await;
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s");
        (quiet.elapsed(), got)
    });
    assert!(took >= idle, "closed after {took:?}, before tunnel_idle");
    assert!(
        took < idle + Duration::from_millis(1500),
        "closed after {took:?}, long past tunnel_idle"
    );
    match got {
        Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
            assert_eq!(code, CloseCode::Away);
        }
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    let entry = access_entry("ws-idle");
    assert_eq!(entry["status"], 101, "{entry}");
    assert_eq!(entry["failure"], serde_json::Value::Null, "{entry}");
    assert_eq!(entry["tunnel"]["end"], "idle_timeout", "{entry}");
    // The tunnel's end is no failure of the backend.
    assert_eq!(attempts(&proxy, backend, "response"), 1);
    let m = proxy.metrics();
    for kind in ["connection_read_timeout", "http_request_timeout"] {
        assert!(
            !m.contains(&format!("backend=\"{backend}\",outcome=\"{kind}\"")),
            "counted as {kind}:\n{m}"
        );
    }
}

#[test]
fn a_megabyte_message_goes_both_ways() {
    let proxy = proxy(echo_origin(), "");
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    runtime().block_on(async {
        let mut ws = open(&proxy, "ws-big").await;
        echoed(&mut ws, Message::binary(big.clone())).await;
        close(ws).await;
    });
    let entry = access_entry("ws-big");
    // The megabyte, each way, in one frame: header 2 + 8 bytes, plus the client's 4-byte mask;
    // then the empty close frames (client 2 + 4, origin 2).
    assert_eq!(entry["tunnel"]["bytes_from_client"], (1 << 20) + 14 + 6);
    assert_eq!(entry["tunnel"]["bytes_to_client"], (1 << 20) + 10 + 2);
}

#[test]
fn an_upgrade_to_a_refused_backend_is_a_502_page() {
    let proxy = proxy(refused_addr(), "");
    let resp = upgrade_raw(&proxy, "ws-refused");
    assert_eq!(resp.status, 502, "{}", resp.describe());
    assert!(
        resp.header("proxy-status")
            .is_some_and(|v| v.starts_with("faultline; error=connection_refused")),
        "{}",
        resp.describe()
    );
    let entry = access_entry("ws-refused");
    assert_eq!(entry["failure"], "connection_refused", "{entry}");
    assert_eq!(entry.get("tunnel"), None, "{entry}");
}

#[test]
fn an_upgrade_to_a_backend_that_never_answers_is_a_504_after_tunnel_idle() {
    // Pingora gives the wait for the 101 the same read timeout as the tunnel: `tunnel_idle`,
    // not `response_header`.
    let origin = Origin::start(Behavior::Hang);
    let proxy = proxy(origin.addr, "response_header: 300ms, tunnel_idle: 1s");
    let started = Instant::now();
    let resp = upgrade_raw(&proxy, "ws-stalled");
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.describe());
    assert!(
        resp.header("proxy-status")
            .is_some_and(|v| v.starts_with("faultline; error=http_response_timeout")),
        "{}",
        resp.describe()
    );
    assert!(took >= Duration::from_secs(1), "504 after {took:?}");
    assert!(took < Duration::from_millis(2500), "504 after {took:?}");
    assert_eq!(
        access_entry("ws-stalled")["failure"],
        "http_response_timeout"
    );
}

/// An upgrade request sent by hand, for the failures before a `101`.
fn upgrade_raw(proxy: &Proxy, id: &str) -> crate::client::Response {
    let mut c = Client::connect(proxy.addr);
    c.send(
        format!(
            "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Request-Id: {id}\r\n\r\n"
        )
        .as_bytes(),
    );
    c.read_response("GET")
}

#[test]
fn the_gauge_counts_open_tunnels() {
    let proxy = proxy(echo_origin(), "");
    assert_eq!(proxy.metric(GAUGE), 0);
    runtime().block_on(async {
        let mut a = open(&proxy, "ws-gauge-a").await;
        let mut b = open(&proxy, "ws-gauge-b").await;
        echoed(&mut a, Message::text("a")).await;
        echoed(&mut b, Message::text("b")).await;
        assert_eq!(proxy.metric(GAUGE), 2);
        close(a).await;
        proxy.wait_for_metric(GAUGE, |v| v == 1, "one tunnel closed");
        assert_eq!(proxy.metric(GAUGE), 1);
        close(b).await;
    });
    proxy.wait_for_metric(GAUGE, |v| v == 0, "both tunnels closed");
}

#[test]
fn a_closed_tunnel_is_logged_with_its_duration_and_bytes_each_way() {
    let proxy = proxy(echo_origin(), "");
    let held = Duration::from_millis(300);
    runtime().block_on(async {
        let mut ws = open(&proxy, "ws-log").await;
        echoed(&mut ws, Message::text("ping")).await;
        tokio::time::sleep(held).await;
        close(ws).await;
    });
    let entry = access_entry("ws-log");
    assert_eq!(entry["status"], 101, "{entry}");
    assert_eq!(entry["source"], "origin", "{entry}");
    assert_eq!(entry["failure"], serde_json::Value::Null, "{entry}");
    assert_eq!(entry["attempts"][0]["outcome"], "response", "{entry}");
    assert_eq!(entry["attempts"][0]["status"], 101, "{entry}");
    let tunnel = &entry["tunnel"];
    assert_eq!(tunnel["end"], "closed", "{entry}");
    // "ping" from the client: 2 header + 4 mask + 4 bytes; its empty close: 2 + 4.
    assert_eq!(tunnel["bytes_from_client"], 10 + 6, "{entry}");
    // The echo: 2 + 4; the origin's empty close: 2.
    assert_eq!(tunnel["bytes_to_client"], 6 + 2, "{entry}");
    let ms = tunnel["duration_ms"].as_f64().expect("duration_ms");
    assert!(
        ms >= held.as_millis() as f64 && ms < 3000.0,
        "duration_ms {ms}: {entry}"
    );
}

#[test]
fn the_101_is_the_attempts_response_and_leaves_nothing_pending() {
    let backend = echo_origin();
    let proxy = proxy(backend, "");
    runtime().block_on(async {
        let mut ws = open(&proxy, "ws-pending").await;
        echoed(&mut ws, Message::text("open")).await;
        // While the tunnel is open: answered, counted, nothing outstanding on the backend.
        assert_eq!(attempts(&proxy, backend, "response"), 1);
        assert_eq!(
            proxy.metric(&format!(
                "faultline_upstream_responses_total{{upstream=\"app\",backend=\"{backend}\",status=\"101\"}}"
            )),
            1
        );
        let b = backend_status(&status_now(&proxy), backend);
        assert_eq!(b["pending"], 0, "{b}");
        assert_eq!(b["lagging"], false, "{b}");
        close(ws).await;
    });
    // Counted once, at the 101, not again at the close.
    proxy.wait_for_metric(GAUGE, |v| v == 0, "the tunnel closed");
    assert_eq!(attempts(&proxy, backend, "response"), 1);
}

#[test]
fn at_shutdown_a_tunnel_lives_through_the_drain_and_is_closed_at_its_end() {
    let backend = echo_origin();
    let binary = crate::harness::Binary::start(
        "ws-drain",
        "server: { threads: 1, grace_period_seconds: 2, graceful_shutdown_timeout_seconds: 1 }",
        &one_upstream(&[backend], "", ""),
    );
    let proxy = Proxy {
        addr: binary.addr,
        admin: binary.admin,
    };
    let took = runtime().block_on(async {
        let mut ws = open(&proxy, "ws-drain").await;
        echoed(&mut ws, Message::text("before")).await;
        binary.signal(nix::sys::signal::Signal::SIGTERM);
        let term = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        echoed(&mut ws, Message::text("during the drain")).await;
        // Closed (without a close frame: the runtime's end drops the connection) when the
        // drain ends.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => term.elapsed(),
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Err(_) => panic!("the tunnel outlived the drain by 10 s"),
        }
    });
    assert!(took >= Duration::from_secs(2), "closed after {took:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}
