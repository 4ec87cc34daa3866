//! The extension API through the real gateway: the three examples (tenant routing with an async
//! lookup, a canary split, an API-key filter) against real origins and a real directory
//! service; what a router sees of the connection; composition with the configuration's routes
//! across a reload; sticky backends; and every way an extension can fail (error, time limit,
//! panic), each answered by the failure contract.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use faultline::Route;
use faultline::extension::{
    ExtensionError, Filter, FilterError, Refusal, RequestContext, ResponseContext, Router, Routing,
};
use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::client::{self, Response};
use crate::harness::{Proxy, access_entry, free_addr, proxy_yaml};
use crate::origin::{Behavior, Origin, refused_addr, runtime};

#[path = "../../examples/tenant_router.rs"]
#[allow(dead_code)]
mod tenant_router;

#[path = "../../examples/canary.rs"]
#[allow(dead_code)]
mod canary;

#[path = "../../examples/api_key.rs"]
#[allow(dead_code)]
mod api_key;

/// Asserts a proxy-generated answer: status, `Proxy-Status` type and detail, request id, and
/// the access-log entry with the failure kind.
fn assert_proxy_answer(resp: &Response, status: u16, proxy_status: &str, kind: &str, rid: &str) {
    assert_eq!(resp.status, status, "{}", resp.describe());
    let detail = faultline::FailureKind::ALL
        .iter()
        .find(|k| k.as_str() == kind)
        .map(|k| k.detail())
        .unwrap_or_else(|| panic!("unknown kind {kind}"));
    assert_eq!(
        resp.header("proxy-status"),
        Some(format!("faultline; error={proxy_status}; details=\"{detail}\"").as_str())
    );
    assert_eq!(resp.header("x-request-id"), Some(rid));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let entry = access_entry(rid);
    assert_eq!(entry["status"], status);
    assert_eq!(entry["source"], "proxy");
    assert_eq!(entry["failure"], kind);
}

/// A tenant directory: `GET /tenants/<name>` answers the tenant's upstream; `broken` answers
/// 500, `slow` never answers, anything else 404. Counts the lookups.
struct Directory {
    addr: SocketAddr,
    lookups: Arc<AtomicUsize>,
}

impl Directory {
    fn start(tenants: &'static [(&'static str, &'static str)]) -> Directory {
        use http_body_util::Full;
        use hyper::service::service_fn;

        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let name = req.uri().path().trim_start_matches("/tenants/").to_string();
            async move {
                if name == "slow" {
                    std::future::pending::<()>().await;
                }
                let (status, body) = match tenants.iter().find(|(t, _)| *t == name) {
                    Some((_, upstream)) => (200, upstream.to_string()),
                    None if name == "broken" => (500, "directory failure".into()),
                    None => (404, "no such tenant".into()),
                };
                let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let addr = crate::origin::hyper_origin(service);
        Directory { addr, lookups }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One GET of `/` for `host` on a new connection.
fn get_host(addr: SocketAddr, host: &str, extra: &[(&str, &str)]) -> Response {
    let mut c = client::Client::connect(addr);
    c.send(&client::request("GET", "/", host, extra));
    c.read_response("GET")
}

fn tenant_upstreams(acme: &Origin, globex: &Origin) -> String {
    format!(
        "upstreams:\n  acme: {{ backends: [{{ address: \"{}\" }}] }}\n  globex: {{ backends: [{{ address: \"{}\" }}] }}\nroutes: []\n",
        acme.addr, globex.addr
    )
}

#[test]
fn tenant_router_looks_tenants_up_once_and_answers_unknown_ones_404() {
    let acme = Origin::start(Behavior::named("acme"));
    let globex = Origin::start(Behavior::named("globex"));
    let directory = Directory::start(&[("acme", "acme"), ("globex", "globex")]);
    let url = directory.url();
    let proxy = Proxy::start_with(&tenant_upstreams(&acme, &globex), move |b| {
        tenant_router::extend(b, &url)
    });
    for (host, want) in [
        ("acme.example.com", "origin acme"),
        ("globex.example.com", "origin globex"),
        ("acme.example.com", "origin acme"),
        ("ACME.example.com", "origin acme"),
    ] {
        let resp = get_host(proxy.addr, host, &[]);
        assert_eq!(resp.status, 200, "{host}: {}", resp.describe());
        assert_eq!(resp.text(), want);
    }
    // One lookup per tenant: the rest came from the cache.
    assert_eq!(directory.lookups.load(Ordering::SeqCst), 2);

    let rid = "tenant-unknown";
    let resp = get_host(proxy.addr, "initech.example.com", &[("x-request-id", rid)]);
    assert_proxy_answer(
        &resp,
        404,
        "destination_not_found",
        "destination_not_found",
        rid,
    );
    assert!(resp.text().contains(rid), "the page names the request id");
    // The unknown tenant is cached too.
    let again = get_host(proxy.addr, "initech.example.com", &[]);
    assert_eq!(again.status, 404);
    assert_eq!(directory.lookups.load(Ordering::SeqCst), 3);

    for (series, n) in [
        (
            "faultline_requests_total{route=\"tenants\",status=\"200\",source=\"origin\"}",
            4,
        ),
        (
            "faultline_requests_total{route=\"none\",status=\"404\",source=\"proxy\"}",
            2,
        ),
    ] {
        proxy.wait_for_metric(series, |v| v == n, "requests counted");
    }
}

#[test]
fn a_failing_slow_or_absent_directory_is_answered_by_the_failure_contract() {
    let acme = Origin::start(Behavior::named("acme"));
    let globex = Origin::start(Behavior::named("globex"));
    let directory = Directory::start(&[("acme", "acme")]);
    let url = directory.url();
    let proxy = Proxy::start_with(&tenant_upstreams(&acme, &globex), move |b| {
        tenant_router::extend(b, &url).extension_timeout(Duration::from_millis(300))
    });
    let rid = "tenant-broken";
    let resp = get_host(
        proxy.addr,
        "broken.example.com",
        &[("x-request-id", rid), ("accept", "application/json")],
    );
    assert_proxy_answer(&resp, 500, "proxy_internal_error", "extension_failed", rid);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&resp.body).expect("problem+json");
    assert_eq!(problem["status"], 500);
    assert_eq!(problem["request_id"], rid);
    assert!(
        !resp.text().contains("directory failure"),
        "the extension's reason stays in the log"
    );

    let rid = "tenant-slow";
    let started = std::time::Instant::now();
    let resp = get_host(proxy.addr, "slow.example.com", &[("x-request-id", rid)]);
    assert_proxy_answer(&resp, 500, "proxy_internal_error", "extension_timeout", rid);
    assert!(started.elapsed() < Duration::from_secs(5));

    // The proxy is none the worse.
    let resp = get_host(proxy.addr, "acme.example.com", &[]);
    assert_eq!(resp.text(), "origin acme");
    proxy.wait_for_metric(
        "faultline_requests_total{route=\"none\",status=\"500\",source=\"proxy\"}",
        |v| v == 2,
        "extension failures counted",
    );
    for kind in ["extension_failed", "extension_timeout"] {
        proxy.wait_for_metric(
            &format!("faultline_request_failures_total{{route=\"none\",kind=\"{kind}\"}}"),
            |v| v == 1,
            "extension failures by kind",
        );
    }

    // No directory at all.
    let gone = format!("http://{}", refused_addr());
    let proxy = Proxy::start_with(&tenant_upstreams(&acme, &globex), move |b| {
        tenant_router::extend(b, &gone)
    });
    let rid = "tenant-no-directory";
    let resp = get_host(proxy.addr, "acme.example.com", &[("x-request-id", rid)]);
    assert_proxy_answer(&resp, 500, "proxy_internal_error", "extension_failed", rid);
}

fn canary_config(stable: &Origin, canary: &Origin) -> String {
    format!(
        "upstreams:\n  stable: {{ backends: [{{ address: \"{}\" }}] }}\n  canary: {{ backends: [{{ address: \"{}\" }}] }}\n  other: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: other, match: {{ path_prefix: /other }}, upstream: other }}\n  - {{ name: web, upstream: stable }}\n",
        stable.addr, canary.addr, stable.addr
    )
}

#[test]
fn canary_takes_its_share_and_the_clients_that_ask_for_it() {
    let stable = Origin::start(Behavior::named("stable"));
    let canary = Origin::start(Behavior::named("canary"));
    let proxy = Proxy::start_with(&canary_config(&stable, &canary), |b| canary::extend(b, 25));
    let mut to_canary = 0;
    for _ in 0..100 {
        let resp = client::get(proxy.addr, "/", &[]);
        assert_eq!(resp.status, 200);
        if resp.text() == "origin canary" {
            to_canary += 1;
            assert_eq!(
                resp.header("set-cookie"),
                Some("canary=always; Path=/; Max-Age=3600"),
                "the split pins the client"
            );
        } else {
            assert_eq!(resp.text(), "origin stable");
            assert_eq!(resp.header("set-cookie"), None);
        }
    }
    assert_eq!(to_canary, 25, "an even split of 25 in 100");
    for _ in 0..10 {
        let always = client::get(proxy.addr, "/", &[("cookie", "a=1; canary=always")]);
        assert_eq!(always.text(), "origin canary");
        assert_eq!(always.header("set-cookie"), None, "already pinned");
        let never = client::get(proxy.addr, "/", &[("cookie", "canary=never")]);
        assert_eq!(never.text(), "origin stable");
    }
    // A route to another upstream is left alone, cookie or not.
    let other = client::get(proxy.addr, "/other", &[("cookie", "canary=always")]);
    assert_eq!(other.text(), "origin stable");
    // Counted as each request's log line is written, just after its response.
    for (route, n) in [("canary", 35), ("web", 85), ("other", 1)] {
        proxy.wait_for_metric(
            &format!(
                "faultline_requests_total{{route=\"{route}\",status=\"200\",source=\"origin\"}}"
            ),
            |v| v == n,
            "requests by route",
        );
    }
}

#[test]
fn api_key_filter_refuses_with_401_problem_json_and_hides_the_key() {
    let app = Origin::start(Behavior::named("app"));
    let body = format!(
        "upstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api }}, upstream: app }}\n  - {{ name: site, upstream: app }}\n",
        app.addr
    );
    let proxy = Proxy::start_with(&body, |b| {
        api_key::extend(b, &[("k-123", "acme"), ("k-456", "globex")])
    });
    for (rid, key) in [("api-no-key", None), ("api-bad-key", Some("k-999"))] {
        let mut headers = vec![("accept", "application/json"), ("x-request-id", rid)];
        if let Some(key) = key {
            headers.push(("x-api-key", key));
        }
        let resp = client::get(proxy.addr, "/api/orders", &headers);
        assert_proxy_answer(&resp, 401, "http_request_denied", "unauthorized", rid);
        assert_eq!(
            resp.header("www-authenticate"),
            Some("ApiKey realm=\"api\"")
        );
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        let problem: serde_json::Value = serde_json::from_slice(&resp.body).expect("problem+json");
        assert_eq!(problem["status"], 401);
        assert_eq!(problem["title"], "Unauthorized");
        assert_eq!(problem["request_id"], rid);
        assert_eq!(access_entry(rid)["route"], "api");
    }
    let seen_before = app.heads().len();
    let resp = client::get(
        proxy.addr,
        "/api/orders",
        &[("x-api-key", "k-123"), ("x-client-id", "spoofed")],
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.text(), "origin app");
    let heads = app.heads();
    assert_eq!(heads.len(), seen_before + 1);
    let head = heads.last().expect("a head").to_ascii_lowercase();
    assert!(head.contains("x-client-id: acme\r\n"), "{head}");
    assert!(!head.contains("spoofed"), "{head}");
    assert!(
        !head.contains("x-api-key"),
        "the key never reaches the backend: {head}"
    );
    // Other routes need no key.
    assert_eq!(client::get(proxy.addr, "/", &[]).status, 200);
    proxy.wait_for_metric(
        "faultline_requests_total{route=\"api\",status=\"401\",source=\"proxy\"}",
        |v| v == 2,
        "refusals counted",
    );
    proxy.wait_for_metric(
        "faultline_request_failures_total{route=\"api\",kind=\"unauthorized\"}",
        |v| v == 2,
        "refusals counted by kind",
    );
    // The refused requests kept their connection: a refusal reads the whole request.
    let mut c = client::Client::connect(proxy.addr);
    let within = Duration::from_secs(5);
    let first = c
        .exchange(
            &client::request("GET", "/api/x", "a.test", &[]),
            "GET",
            within,
        )
        .expect("a response");
    assert_eq!(first.status, 401);
    let second = c
        .exchange(&client::request("GET", "/", "a.test", &[]), "GET", within)
        .expect("a response on the same connection");
    assert_eq!(second.status, 200);
}

/// Writes what it sees of the connection into a request header, `x-seen`.
struct Facts;

#[async_trait]
impl Filter for Facts {
    async fn request(&self, request: &mut RequestContext<'_>) -> Result<(), FilterError> {
        let seen = format!(
            "client={} listener={} tls={} sni={} alpn={} id={} route={}",
            request
                .client_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            request
                .listener()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            request.is_tls(),
            request.server_name().unwrap_or("-"),
            request.alpn().unwrap_or("-"),
            request.request_id(),
            request.route().map(|r| r.name.as_str()).unwrap_or("-"),
        );
        let value = HeaderValue::from_str(&seen).map_err(ExtensionError::new)?;
        request
            .header_mut()
            .insert_header("x-seen", value)
            .map_err(ExtensionError::new)?;
        Ok(())
    }
}

#[test]
fn extensions_see_the_connection_over_http1_and_tls_http2() {
    let app = Origin::start(Behavior::named("app"));
    let body = crate::harness::one_upstream(&[app.addr], "", "");
    let proxy = Proxy::start_with(&body, |b| b.filter(Facts));
    let resp = client::get(proxy.addr, "/", &[("x-request-id", "facts-h1")]);
    assert_eq!(resp.status, 200);
    let head = app.heads().last().cloned().expect("a head");
    let want = format!(
        "x-seen: client=127.0.0.1 listener={} tls=false sni=- alpn=- id=facts-h1 route=main",
        proxy.addr
    );
    assert!(head.contains(&want), "{head}");

    let pki = crate::tls::Pki::new("extension-facts");
    let proxy = crate::tls::tls_proxy_with(&pki, &body, |b| b.filter(Facts));
    let status = runtime().block_on(async {
        let connector = crate::tls::connector(&pki, b"h2");
        let tls = crate::tls::tls_connect(&connector, proxy.addr)
            .await
            .expect("tls");
        let (_send, resp) = crate::tls::h2_get(tls, "/", &[("x-request-id", "facts-h2")])
            .await
            .expect("h2 request");
        resp.await.expect("h2 response").status()
    });
    assert_eq!(status, 200);
    let head = app.heads().last().cloned().expect("a head");
    let want = format!(
        "x-seen: client=127.0.0.1 listener={} tls=true sni=localhost alpn=h2 id=facts-h2 route=main",
        proxy.addr
    );
    assert!(head.contains(&want), "{head}");
}

/// Refuses by path: `/forbidden` 403, `/slow-down` 429, `/panic` panics, `/error` fails, and
/// adds `x-filtered` to every response header, the proxy's pages included.
struct Gatekeeper;

#[async_trait]
impl Filter for Gatekeeper {
    async fn request(&self, request: &mut RequestContext<'_>) -> Result<(), FilterError> {
        match request.header().uri.path() {
            "/forbidden" => Err(Refusal::forbidden().into()),
            "/slow-down" => {
                Err(Refusal::too_many_requests(Some(Duration::from_millis(1500))).into())
            }
            "/panic" => panic!("a filter bug"),
            "/error" => Err(ExtensionError::new("the store is down").into()),
            _ => Ok(()),
        }
    }

    fn response(&self, response: &mut ResponseHeader, request: &ResponseContext<'_>) {
        let by = if request.from_proxy() {
            "proxy"
        } else {
            "origin"
        };
        response
            .insert_header("x-filtered", by)
            .expect("a valid header");
    }
}

#[test]
fn filter_refusals_failures_and_panics_take_the_proxys_answer_path() {
    let app = Origin::start(Behavior::named("app"));
    let body = crate::harness::one_upstream(&[app.addr], "", "");
    let proxy = Proxy::start_with(&body, |b| b.filter(Gatekeeper));
    let cases = [
        ("/forbidden", 403, "http_request_denied", "forbidden"),
        (
            "/slow-down",
            429,
            "http_request_denied",
            "too_many_requests",
        ),
        ("/panic", 500, "proxy_internal_error", "extension_failed"),
        ("/error", 500, "proxy_internal_error", "extension_failed"),
    ];
    for (path, status, proxy_status, kind) in cases {
        let rid = format!("gate{}", path.replace('/', "-"));
        let resp = client::get(
            proxy.addr,
            path,
            &[("x-request-id", &rid), ("accept", "text/html")],
        );
        assert_proxy_answer(&resp, status, proxy_status, kind, &rid);
        assert_eq!(resp.header("x-filtered"), Some("proxy"));
        assert!(resp.text().contains(&rid), "the page names the request id");
        let series = format!(
            "faultline_requests_total{{route=\"main\",status=\"{status}\",source=\"proxy\"}}"
        );
        proxy.wait_for_metric(&series, |v| v >= 1, "answers counted");
    }
    for (kind, n) in [
        ("forbidden", 1),
        ("too_many_requests", 1),
        ("extension_failed", 2),
    ] {
        proxy.wait_for_metric(
            &format!("faultline_request_failures_total{{route=\"main\",kind=\"{kind}\"}}"),
            |v| v == n,
            "failures by kind",
        );
    }
    let slow = client::get(proxy.addr, "/slow-down", &[]);
    assert_eq!(slow.header("retry-after"), Some("2"));
    let ok = client::get(proxy.addr, "/", &[]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-filtered"), Some("origin"));
    assert_eq!(app.requests(), 1, "no refused request reached the backend");
}

/// Panics on `/panic`, never answers on `/hang`; otherwise wraps the configuration's routes.
struct Wrapping;

#[async_trait]
impl Router for Wrapping {
    async fn route(&self, request: &RequestContext<'_>) -> Result<Option<Routing>, ExtensionError> {
        match request.header().uri.path() {
            "/panic" => panic!("a router bug"),
            "/hang" => std::future::pending().await,
            _ => Ok(request.configured()),
        }
    }
}

#[test]
fn a_router_that_panics_or_hangs_is_answered_and_reload_changes_what_it_wraps() {
    let blue = Origin::start(Behavior::named("blue"));
    let green = Origin::start(Behavior::named("green"));
    let (addr, admin) = (free_addr(), free_addr());
    let routes = |upstream: &str| {
        format!(
            "upstreams:\n  blue: {{ backends: [{{ address: \"{}\" }}] }}\n  green: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: web, upstream: {upstream} }}\n",
            blue.addr, green.addr
        )
    };
    let file = std::env::temp_dir().join(format!("faultline-wrap-{}.yaml", std::process::id()));
    std::fs::write(&file, proxy_yaml(addr, admin, &routes("blue"))).expect("write");
    let source = file.clone();
    let proxy = Proxy::start_full(
        addr,
        admin,
        &proxy_yaml(addr, admin, &routes("blue")),
        move |b| {
            b.router(Wrapping)
                .reload_from(source)
                .extension_timeout(Duration::from_millis(200))
        },
    );
    assert_eq!(client::get(proxy.addr, "/", &[]).text(), "origin blue");
    let resp = client::get(proxy.addr, "/panic", &[("x-request-id", "router-panic")]);
    assert_proxy_answer(
        &resp,
        500,
        "proxy_internal_error",
        "extension_failed",
        "router-panic",
    );
    let resp = client::get(proxy.addr, "/hang", &[("x-request-id", "router-hang")]);
    assert_proxy_answer(
        &resp,
        500,
        "proxy_internal_error",
        "extension_timeout",
        "router-hang",
    );

    std::fs::write(&file, proxy_yaml(addr, admin, &routes("green"))).expect("write");
    let reload = client::send_one(proxy.admin, "POST", "/reload", &[("content-length", "0")]);
    assert_eq!(reload.status, 200, "{}", reload.describe());
    assert_eq!(client::get(proxy.addr, "/", &[]).text(), "origin green");
    let _ = std::fs::remove_file(&file);
}

/// Sends everything to `main`, preferring the backend the `backend` cookie names and hashing
/// on the `x-user` header.
fn sticky(req: &RequestContext<'_>) -> Option<Routing> {
    let mut routing = Routing::to(Arc::new(Route::to_upstream("main", "app")));
    if let Some(backend) = req.cookie("backend") {
        routing = routing.prefer_backend(backend);
    }
    if let Some(user) = req.header().headers.get("x-user") {
        routing = routing.hash_key(bytes::Bytes::copy_from_slice(user.as_bytes()));
    }
    Some(routing)
}

#[test]
fn a_preferred_backend_takes_the_first_attempt_while_it_can() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let body = crate::harness::one_upstream(&[a.addr, b.addr], "", "");
    let proxy = Proxy::start_with(&body, |builder| {
        builder.router(sticky).route_names(["main"])
    });
    let cookie = format!("backend={}", b.addr);
    for _ in 0..6 {
        let resp = client::get(proxy.addr, "/", &[("cookie", &cookie)]);
        assert_eq!(resp.text(), "origin b");
    }
    // Round robin without a preference.
    let spread: std::collections::HashSet<String> = (0..4)
        .map(|_| client::get(proxy.addr, "/", &[]).text())
        .collect();
    assert_eq!(spread.len(), 2);
    // A backend the upstream does not have is no preference.
    let resp = client::get(proxy.addr, "/", &[("cookie", "backend=10.0.0.1:1")]);
    assert_eq!(resp.status, 200);
    // The preferred backend fails: the retry goes elsewhere.
    b.set(Behavior::Reset);
    let resp = client::get(
        proxy.addr,
        "/",
        &[("cookie", &cookie), ("x-request-id", "sticky-b-down")],
    );
    assert_eq!(resp.text(), "origin a");
    let attempts = access_entry("sticky-b-down")["attempts"].clone();
    assert_eq!(attempts.as_array().map(Vec::len), Some(2), "{attempts}");
}

#[test]
fn a_router_hash_key_keeps_a_user_on_one_backend() {
    let (_origins, mut body) = crate::harness::consistent_hash_app();
    body.push_str("routes: []\n");
    let proxy = Proxy::start_with(&body, |builder| {
        builder.router(sticky).route_names(["main"])
    });
    let mut seen = std::collections::HashSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        // Different paths: without the key, the path would be hashed.
        let first = client::get(proxy.addr, "/a", &[("x-user", &user)]).text();
        for path in ["/b", "/c/d", "/e?f=g"] {
            assert_eq!(
                client::get(proxy.addr, path, &[("x-user", &user)]).text(),
                first
            );
        }
        seen.insert(first);
    }
    assert!(seen.len() > 1, "users spread over the backends: {seen:?}");
}
