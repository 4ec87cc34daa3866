//! Micro-benchmarks of the per-failure work: classifying a Pingora error, negotiating the body
//! format, and rendering the error page.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline::FailureKind;
use faultline::internals::error_page::{Cause, ErrorPages, Request, negotiate};
use faultline::internals::failure::{Phase, classify};
use pingora::{Error, ErrorType};

fn bench(c: &mut Criterion) {
    let mut e = Error::explain(
        ErrorType::ConnectionClosed,
        "while reading response headers, bytes already read: 0",
    );
    e.as_up();
    c.bench_function("classify connection_closed", |b| {
        b.iter(|| classify(black_box(&e), black_box(Phase::Exchange)))
    });

    let accept = b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    c.bench_function("negotiate browser accept", |b| {
        b.iter(|| negotiate(black_box(Some(&accept[..]))))
    });

    let pages = ErrorPages::new(faultline::config::ErrorPages {
        proxy_status: true,
        ..Default::default()
    });
    for (name, accept) in [
        ("html", "text/html"),
        ("json", "application/json"),
        ("text", "*/*"),
    ] {
        c.bench_function(&format!("render 502 {name}"), |b| {
            b.iter(|| {
                pages.render(
                    Cause::Failure(FailureKind::ConnectionRefused),
                    Request {
                        request_id: "0123456789abcdef0123456789abcdef",
                        accept: Some(accept.as_bytes()),
                        head: false,
                        next_hop: None,
                        retry_after: None,
                    },
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
