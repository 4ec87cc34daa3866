//! Micro-benchmarks of the per-request work besides the network: route matching over a few
//! hundred routes, backend selection through passive-health filtering, path normalisation,
//! forwarding headers and metric recording.

// criterion_group! generates an undocumented function; a failed setup should stop the bench.
#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::Config;
use faultline::config::HeaderCase;
use faultline::internals::failure::Source;
use faultline::internals::metrics::{BackendMetrics, RouteTable};
use faultline::internals::routing::ConfigRouter;
use faultline::internals::upstream::Pool;
use pingora::http::RequestHeader;

fn config(routes: usize) -> Config {
    let mut yaml = String::from(
        "listeners: [{ address: \"127.0.0.1:8080\" }]\nupstreams:\n  app:\n    backends:\n",
    );
    for port in 9001..9005 {
        yaml.push_str(&format!("      - {{ address: \"127.0.0.1:{port}\" }}\n"));
    }
    yaml.push_str("    health: { passive: { consecutive_failures: 3 } }\nroutes:\n");
    for i in 0..routes {
        let host = if i % 3 == 0 {
            format!("h{i}.example.com")
        } else {
            format!("*.s{i}.example.com")
        };
        yaml.push_str(&format!(
            "  - {{ name: r{i}, match: {{ host: \"{host}\", path_prefix: /p{i} }}, upstream: app }}\n"
        ));
    }
    yaml.push_str("  - { name: fallback, upstream: app }\n");
    Config::from_yaml(&yaml).expect("bench config")
}

fn bench(c: &mut Criterion) {
    let cfg = config(300);
    let router = ConfigRouter::new(&cfg.routes);
    let mut exact = RequestHeader::build("GET", b"/p150/x", None).expect("req");
    exact
        .insert_header("host", "h150.example.com")
        .expect("host");
    let mut wild = RequestHeader::build("GET", b"/p151/x", None).expect("req");
    wild.insert_header("host", "a.s151.example.com")
        .expect("host");
    let mut miss = RequestHeader::build("GET", b"/nowhere", None).expect("req");
    miss.insert_header("host", "unknown.org").expect("host");
    c.bench_function("route exact host of 300", |b| {
        b.iter(|| router.route(black_box(&exact)))
    });
    c.bench_function("route wildcard host of 300", |b| {
        b.iter(|| router.route(black_box(&wild)))
    });
    c.bench_function("route fallback of 300", |b| {
        b.iter(|| router.route(black_box(&miss)))
    });

    let pool = Pool::new(&cfg.upstreams[0], None).expect("pool");
    c.bench_function("select 4 backends, passive health on", |b| {
        b.iter(|| pool.select(b"", |_| false))
    });
    // One backend ejected: selection must step over it.
    for _ in 0..3 {
        pool.record_failure(0, None, false, faultline::FailureKind::ConnectionRefused);
    }
    c.bench_function("select 4 backends, one ejected", |b| {
        b.iter(|| pool.select(b"", |_| false))
    });

    let mut incoming = RequestHeader::build("GET", b"/index.html", Some(4)).expect("req");
    incoming
        .insert_header("Host", "www.example.com")
        .expect("host");
    incoming
        .insert_header("User-Agent", "bench/1.0")
        .expect("ua");
    incoming.insert_header("Accept", "*/*").expect("accept");
    let client = faultline::internals::forwarding::Client {
        ip: Some("192.0.2.7".parse().expect("ip")),
        trusted: false,
        proto: "http",
        request_id: "0123456789abcdef0123456789abcdef",
        version: http::Version::HTTP_11,
    };
    for (case, name) in [
        (
            HeaderCase::Canonical,
            "forwarding headers of a plain request",
        ),
        (
            HeaderCase::Preserve,
            "forwarding headers of a plain request, case preserved",
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || incoming.clone(),
                |mut req| {
                    faultline::internals::forwarding::apply(&mut req, client, case).map(|()| req)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }

    // Every request's path goes through it; a plain one must cost one pass and no allocation.
    let plain = b"/static/js/app.min.js".as_slice();
    let hostile = b"/public/./a/%2e%2e/b/%7Euser/../c".as_slice();
    c.bench_function("normalise a plain path", |b| {
        b.iter(|| faultline::internals::request_checks::normalize_path(black_box(plain)))
    });
    c.bench_function("normalise a hostile path", |b| {
        b.iter(|| faultline::internals::request_checks::normalize_path(black_box(hostile)))
    });

    let routes = RouteTable::new(["api"], None);
    let route = routes.get(Some("api"));
    let backend = BackendMetrics::default();
    c.bench_function("record a request and an attempt", |b| {
        b.iter(|| {
            route.request(black_box(200), Source::Origin, None);
            backend.response(black_box(200));
            backend
                .header
                .observe(black_box(Duration::from_micros(800)));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
