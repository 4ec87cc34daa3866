//! Embedding and operating at the edge: custom routers, consistent hashing on a header, and hot
//! reload through the admin listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline::Route;
use faultline::extension::RequestContext;

use crate::client::{self, Client};
use crate::harness::{
    Proxy, backend_status, one_upstream, proxy_yaml, status_now, wait_for_status,
};
use crate::origin::{Behavior, Gate, Origin};

fn two_upstreams(blue: &Origin, green: &Origin) -> String {
    format!(
        "upstreams:\n  blue: {{ backends: [{{ address: \"{}\" }}] }}\n  green: {{ backends: [{{ address: \"{}\" }}] }}\nroutes: []\n",
        blue.addr, green.addr
    )
}

#[test]
fn a_closure_routes_requests() {
    let blue = Origin::start(Behavior::named("blue"));
    let green = Origin::start(Behavior::named("green"));
    let to_blue = Arc::new(Route::to_upstream("blue-route", "blue"));
    let to_green = Arc::new(Route::to_upstream("green-route", "green"));
    let proxy = Proxy::start_with(&two_upstreams(&blue, &green), move |b| {
        b.router(move |req: &RequestContext<'_>| {
            match req.header().headers.get("x-color").map(|v| v.as_bytes()) {
                Some(b"blue") => Some(to_blue.clone()),
                Some(b"green") => Some(to_green.clone()),
                _ => None,
            }
        })
        .route_names(["blue-route"])
    });
    for color in ["blue", "green"] {
        let rid = format!("color-{color}");
        let resp = client::get(
            proxy.addr,
            "/",
            &[("x-color", color), ("x-request-id", &rid)],
        );
        assert_eq!(resp.text(), format!("origin {color}"));
        crate::harness::access_entry(&rid);
    }
    let none = client::get(proxy.addr, "/", &[("x-request-id", "no-color")]);
    assert_eq!(none.status, 404);
    assert!(
        none.header("proxy-status")
            .is_some_and(|v| v.contains("destination_not_found"))
    );
    crate::harness::access_entry("no-color");
    // A declared route has its own counters; an undeclared one counts under `none`.
    let m = proxy.metrics();
    let count = |s: &str| crate::harness::metric_value(&m, s);
    assert_eq!(
        count("faultline_requests_total{route=\"blue-route\",status=\"200\",source=\"origin\"}"),
        1
    );
    assert_eq!(
        count("faultline_requests_total{route=\"none\",status=\"200\",source=\"origin\"}"),
        1
    );
    assert_eq!(
        count("faultline_requests_total{route=\"none\",status=\"404\",source=\"proxy\"}"),
        1
    );
}

#[test]
fn a_route_to_a_missing_upstream_is_a_configuration_error() {
    let blue = Origin::start(Behavior::named("blue"));
    let green = Origin::start(Behavior::named("green"));
    let nowhere = Arc::new(Route::to_upstream("nowhere", "purple"));
    let proxy = Proxy::start_with(&two_upstreams(&blue, &green), move |b| {
        b.router(move |_: &RequestContext<'_>| Some(nowhere.clone()))
    });
    let resp = client::get(proxy.addr, "/", &[]);
    assert_eq!(resp.status, 500);
    assert!(
        resp.header("proxy-status")
            .is_some_and(|v| v.contains("error=proxy_configuration_error"))
    );
}

#[test]
fn consistent_hashing_on_a_header_keeps_a_tenant_on_one_backend() {
    let (_origins, mut body) = crate::harness::consistent_hash_app();
    body.push_str("routes:\n  - { upstream: app, hash_header: x-tenant }\n");
    let proxy = Proxy::start(&body);
    let mut seen = std::collections::HashSet::new();
    for tenant in 0..30 {
        let tenant = format!("tenant-{tenant}");
        let first = client::get(
            proxy.addr,
            &format!("/{tenant}/a"),
            &[("x-tenant", &tenant)],
        )
        .text();
        for path in ["/x", "/y/z", "/"] {
            let again = client::get(proxy.addr, path, &[("x-tenant", &tenant)]).text();
            assert_eq!(again, first, "{tenant} moved");
        }
        seen.insert(first);
    }
    assert!(seen.len() > 1, "thirty tenants all on one backend");
}

#[test]
fn methods_and_headers_select_routes() {
    let reads = Origin::start(Behavior::named("reads"));
    let writes = Origin::start(Behavior::named("writes"));
    let body = format!(
        "upstreams:\n  reads: {{ backends: [{{ address: \"{}\" }}] }}\n  writes: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ match: {{ methods: [POST, put] }}, upstream: writes }}\n  - {{ match: {{ headers: {{ x-force-writes: \"1\" }} }}, upstream: writes }}\n  - {{ upstream: reads }}\n",
        reads.addr, writes.addr
    );
    let proxy = Proxy::start(&body);
    assert_eq!(client::get(proxy.addr, "/", &[]).text(), "origin reads");
    assert_eq!(
        client::send_one(proxy.addr, "POST", "/", &[("content-length", "0")]).text(),
        "origin writes"
    );
    assert_eq!(
        client::send_one(proxy.addr, "PUT", "/", &[("content-length", "0")]).text(),
        "origin writes"
    );
    assert_eq!(
        client::get(proxy.addr, "/", &[("x-force-writes", "1")]).text(),
        "origin writes"
    );
    assert_eq!(
        client::get(proxy.addr, "/", &[("x-force-writes", "0")]).text(),
        "origin reads"
    );
}

fn reload(proxy: &Proxy) -> client::Response {
    client::send_one(proxy.admin, "POST", "/reload", &[("content-length", "0")])
}

fn temp_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    dir.join("faultline.yaml")
}

#[test]
fn reload_under_load_loses_nothing() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let file = temp_file("reload");
    let body = one_upstream(&[a.addr], "", "");
    let source = file.clone();
    let proxy = Proxy::start_with(&body, move |builder| builder.reload_from(source));

    // A steady stream of requests on keep-alive connections, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (stop, failures, served, addr) =
            (stop.clone(), failures.clone(), served.clone(), proxy.addr);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut c = Client::connect(addr);
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                c.send(&client::request("GET", "/", "app.test", &[]));
                let resp = c.read_response("GET");
                if resp.status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let wait_served = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the request stream stalled");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_served(50);

    // A new route works right after a good reload.
    let with_new_route = format!(
        "upstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\n  fresh: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: fresh, match: {{ path_prefix: /new }}, upstream: fresh }}\n  - {{ name: main, upstream: app }}\n",
        a.addr, b.addr
    );
    std::fs::write(&file, proxy_yaml(proxy.addr, proxy.admin, &with_new_route)).expect("write");
    let resp = reload(&proxy);
    assert_eq!((resp.status, resp.text().as_str()), (200, "reloaded\n"));
    assert_eq!(client::get(proxy.addr, "/new/x", &[]).text(), "origin b");
    let after_good = served.load(Ordering::SeqCst);
    wait_served(after_good + 50);

    // A broken file changes nothing and says why.
    std::fs::write(
        &file,
        proxy_yaml(
            proxy.addr,
            proxy.admin,
            &with_new_route.replace("upstream: fresh", "upstream: frsh"),
        ),
    )
    .expect("write");
    let resp = reload(&proxy);
    assert_eq!(resp.status, 422);
    assert!(
        resp.text()
            .contains("routes[0].upstream: no upstream named \"frsh\""),
        "{}",
        resp.text()
    );
    assert_eq!(client::get(proxy.addr, "/new/x", &[]).text(), "origin b");
    let after_bad = served.load(Ordering::SeqCst);
    wait_served(after_bad + 50);

    stop.store(true, Ordering::SeqCst);
    stream.join().expect("stream thread");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "a request failed during reloads"
    );
    assert!(served.load(Ordering::SeqCst) >= 150);
    let m = proxy.metrics();
    assert!(
        m.contains("faultline_config_reloads_total{result=\"success\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("faultline_config_reloads_total{result=\"failure\"} 1\n"),
        "{m}"
    );
    // Counters of the route that stayed were kept across the reloads.
    let main_200 = crate::harness::metric_value(
        &m,
        "faultline_requests_total{route=\"main\",status=\"200\",source=\"origin\"}",
    );
    assert!(main_200 as usize >= 150, "{main_200}");
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn an_ejected_backend_stays_ejected_across_a_reload() {
    let bad = Origin::start(Behavior::Reset);
    let good = Origin::start(Behavior::named("good"));
    let file = temp_file("eject");
    let health = "    health:\n      passive: { consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 50 }\n";
    let body = one_upstream(&[bad.addr, good.addr], health, "");
    let source = file.clone();
    let proxy = Proxy::start_with(&body, move |b| b.reload_from(source));
    for _ in 0..10 {
        if bad.requests() == 2 {
            break;
        }
        client::get(proxy.addr, "/", &[]);
    }
    wait_for_status(&proxy, "ejection", |s| {
        backend_status(s, bad.addr)["state"] == "ejected"
    });
    // Same upstream, plus a route: the backend that stays keeps its state.
    let reloaded =
        format!("{body}  - {{ name: extra, match: {{ path_prefix: /extra }}, upstream: app }}\n");
    std::fs::write(&file, proxy_yaml(proxy.addr, proxy.admin, &reloaded)).expect("write");
    assert_eq!(reload(&proxy).status, 200);
    let s = backend_status(&status_now(&proxy), bad.addr);
    assert_eq!(s["state"], "ejected", "{s}");
    assert_eq!(s["ejections"], 1);
    for _ in 0..6 {
        assert_eq!(client::get(proxy.addr, "/extra", &[]).status, 200);
    }
    assert_eq!(
        bad.requests(),
        2,
        "the ejected backend got traffic after the reload"
    );
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn requests_in_flight_finish_on_the_config_they_started_with() {
    let gate = Gate::new();
    let slow = Origin::start(Behavior::held(
        gate.clone(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow".to_vec(),
    ));
    let file = temp_file("inflight");
    let body = one_upstream(&[slow.addr], "", "");
    let source = file.clone();
    let proxy = Proxy::start_with(&body, move |b| b.reload_from(source));
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || client::get(addr, "/", &[]));
    slow.wait_for_requests(1);
    // The new configuration has no route for "/" at all.
    let no_routes = format!(
        "upstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes: []\n",
        slow.addr
    );
    std::fs::write(&file, proxy_yaml(proxy.addr, proxy.admin, &no_routes)).expect("write");
    assert_eq!(reload(&proxy).status, 200);
    assert_eq!(
        client::get(proxy.addr, "/", &[]).status,
        404,
        "new requests see the new config"
    );
    // The origin holds its answer until now: the request was in flight across the reload.
    assert!(
        !in_flight.is_finished(),
        "the request ended before the reload"
    );
    gate.open();
    let resp = in_flight.join().expect("thread");
    assert_eq!((resp.status, resp.text().as_str()), (200, "slow"));
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn reload_without_a_file_is_refused() {
    let a = Origin::start(Behavior::named("a"));
    let proxy = Proxy::start(&one_upstream(&[a.addr], "", ""));
    let resp = reload(&proxy);
    assert_eq!(resp.status, 422);
    assert!(resp.text().contains("no configuration file to reload from"));
}
