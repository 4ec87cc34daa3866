//! Failover between backends as far as the failure kinds make it safe: a request that never
//! reached a backend goes to another; one that may have been processed goes again only when
//! it is idempotent.

use crate::client;
use crate::harness::{Proxy, access_entry, one_upstream};
use crate::origin::{Behavior, Origin, refused_addr};

/// The outcomes of every attempt of a request, from the access log.
fn outcomes(rid: &str) -> Vec<String> {
    access_entry(rid)["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn refused_backend_is_failed_over_for_every_method() {
    let good = Origin::start(Behavior::Named("good"));
    let dead = refused_addr();
    let proxy = Proxy::start(&one_upstream(&[dead, good.addr], "", ""));
    let mut failed_over = 0;
    for i in 0..10 {
        for method in ["GET", "POST"] {
            let rid = format!("fo-{method}-{i}");
            let resp = client::send_one(
                proxy.addr,
                method,
                "/",
                &[("x-request-id", &rid), ("content-length", "0")],
            );
            assert_eq!(resp.status, 200, "{rid}");
            assert_eq!(resp.text(), "origin good");
            match outcomes(&rid).as_slice() {
                [one] => assert_eq!(one, "response"),
                [first, second] => {
                    assert_eq!(
                        (first.as_str(), second.as_str()),
                        ("connection_refused", "response")
                    );
                    failed_over += 1;
                }
                other => panic!("{rid}: {other:?}"),
            }
        }
    }
    assert_eq!(good.requests(), 20);
    assert!(
        failed_over > 0,
        "round robin never picked the dead backend first"
    );
}

#[test]
fn post_to_a_hanging_backend_is_not_sent_twice() {
    let hang = Origin::start(Behavior::Hang);
    let good = Origin::start(Behavior::Named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[hang.addr, good.addr],
        "    timeouts: { response_header: 300ms }\n",
        "",
    ));
    let mut timed_out = 0;
    for i in 0..4 {
        let rid = format!("post-hang-{i}");
        let (hang_before, good_before) = (hang.requests(), good.requests());
        let resp = client::send_one(
            proxy.addr,
            "POST",
            "/",
            &[("x-request-id", &rid), ("content-length", "0")],
        );
        match resp.status {
            504 => {
                timed_out += 1;
                assert_eq!(hang.requests(), hang_before + 1);
                assert_eq!(
                    good.requests(),
                    good_before,
                    "a POST that may have been processed must not be repeated"
                );
                assert_eq!(outcomes(&rid), ["http_response_timeout"]);
            }
            200 => {
                assert_eq!(hang.requests(), hang_before);
                assert_eq!(outcomes(&rid), ["response"]);
            }
            other => panic!("{rid}: status {other}"),
        }
    }
    assert!(
        timed_out > 0,
        "round robin never picked the hanging backend"
    );
}

#[test]
fn get_to_a_hanging_backend_fails_over() {
    let hang = Origin::start(Behavior::Hang);
    let good = Origin::start(Behavior::Named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[hang.addr, good.addr],
        "    timeouts: { response_header: 300ms }\n",
        "",
    ));
    for i in 0..4 {
        let rid = format!("get-hang-{i}");
        let resp = client::get(proxy.addr, "/", &[("x-request-id", &rid)]);
        assert_eq!(resp.status, 200);
        let o = outcomes(&rid);
        assert!(
            o == ["response"] || o == ["http_response_timeout", "response"],
            "{o:?}"
        );
    }
    assert!(
        hang.requests() > 0,
        "round robin never picked the hanging backend"
    );
    assert_eq!(good.requests(), 4);
}

#[test]
fn attempts_one_means_no_retry() {
    let good = Origin::start(Behavior::Named("good"));
    let proxy = Proxy::start(&one_upstream(
        &[refused_addr(), good.addr],
        "",
        "    retry: { attempts: 1 }\n",
    ));
    let statuses: Vec<u16> = (0..6)
        .map(|_| client::get(proxy.addr, "/", &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(good.requests(), 3);
}
