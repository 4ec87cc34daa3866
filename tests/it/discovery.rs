//! DNS-discovered backends against an authoritative server the test controls (`dns::Dns`):
//! spreading over every A record, SRV weights and priorities, membership changes under load,
//! the last good set kept through failed lookups, state kept by backends that stay; draining
//! through the admin listener; reloading when the configuration file changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client;
use crate::dns::{Dns, Mode};
use crate::harness::{Proxy, backend_status, status_now, wait_for_status};
use crate::origin::{Behavior, Gate, Origin};

/// Origins named by `tags`, at 127.0.0.2, 127.0.0.3, … on one port: what the A records of one
/// name with one port lead to.
fn origins_on_one_port(tags: &[&str]) -> (u16, Vec<Origin>) {
    'port: for _ in 0..50 {
        let port = crate::harness::free_addr().port();
        let mut origins = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let ip = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i).expect("few"));
            match Origin::start_at(SocketAddr::from((ip, port)), Behavior::named(tag)) {
                Some(o) => origins.push(o),
                None => continue 'port,
            }
        }
        return (port, origins);
    }
    panic!("no port free on every address");
}

fn ips(origins: &[&Origin]) -> Vec<Ipv4Addr> {
    origins
        .iter()
        .map(|o| match o.addr.ip() {
            std::net::IpAddr::V4(v4) => v4,
            other => panic!("{other}"),
        })
        .collect()
}

/// Discovery against `dns`, refreshing every 300 ms (the records' TTL is 1 s), and `upstream`
/// as the one upstream's body.
fn discovery_yaml(dns: &Dns, upstream: &str) -> String {
    format!(
        "discovery: {{ resolvers: [\"{}\"], min_refresh: 100ms, max_refresh: 300ms, timeout: 500ms }}\nupstreams:\n  app:\n{upstream}routes:\n  - {{ upstream: app, name: main }}\n",
        dns.addr
    )
}

/// The backends of upstream `app` in a `/status`.
fn backends(status: &serde_json::Value) -> Vec<String> {
    status["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["backend"].as_str().expect("name").to_string())
        .collect()
}

/// Waits until upstream `app` has exactly `want` backends (in any order).
fn wait_for_backends(proxy: &Proxy, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    wait_for_status(proxy, &format!("backends {want:?}"), |s| {
        let mut have = backends(s);
        have.sort();
        have == want
    });
}

/// `n` GETs, each on a new connection; the bodies of the 200s, and every other status.
fn requests(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = client::get(proxy.addr, "/", &[]);
            assert_eq!(r.status, 200, "{}", r.describe());
            r.text()
        })
        .collect()
}

fn count(bodies: &[String], tag: &str) -> usize {
    let want = format!("origin {tag}");
    bodies.iter().filter(|b| **b == want).count()
}

/// Steady load until `stop` (at most 3000 requests or 20 s): the status of each request.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u16>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut statuses = Vec::new();
        while !stop.load(Ordering::SeqCst) && statuses.len() < 3000 && Instant::now() < deadline {
            statuses.push(client::get(addr, "/", &[]).status);
        }
        statuses
    })
}

fn all_ok(statuses: &[u16]) {
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(!statuses.is_empty(), "the load ran");
}

#[test]
fn requests_spread_over_every_a_record() {
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["a", "b", "c"]);
    dns.set_a("api.test", &ips(&origins.iter().collect::<Vec<_>>()));
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        &format!("    backends:\n      - {{ dns: \"api.test:{port}\" }}\n"),
    ));
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    wait_for_backends(&proxy, &addrs);
    let bodies = requests(&proxy, 60);
    for tag in ["a", "b", "c"] {
        assert_eq!(
            count(&bodies, tag),
            20,
            "round robin over every record: {bodies:?}"
        );
    }
    let status = status_now(&proxy);
    let label = format!("dns:api.test:{port}");
    assert_eq!(backend_status(&status, addrs[0])["source"], label.as_str());
    let discovery = &status["upstreams"][0]["discovery"][0];
    assert_eq!(discovery["source"], label.as_str());
    assert_eq!(discovery["addresses"], 3);
    assert_eq!(discovery["last_refresh"]["result"], "success");
    assert_eq!(
        proxy.metric("faultline_upstream_backends{upstream=\"app\"}"),
        3
    );
    assert!(
        proxy.metric("faultline_discovery_refreshes_total{upstream=\"app\",result=\"success\"}")
            >= 1
    );
}

#[test]
fn srv_weights_are_respected_and_the_lowest_priority_group_is_used() {
    let dns = Dns::start();
    let [heavy, light, backup] =
        ["heavy", "light", "backup"].map(|t| Origin::start(Behavior::named(t)));
    dns.set_a("heavy.test", &ips(&[&heavy]));
    dns.set_a("light.test", &ips(&[&light]));
    dns.set_a("backup.test", &ips(&[&backup]));
    dns.set_srv(
        "_http._tcp.api.test",
        &[
            (10, 30, heavy.addr.port(), "heavy.test"),
            (10, 10, light.addr.port(), "light.test"),
            (20, 50, backup.addr.port(), "backup.test"),
        ],
    );
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        "    backends:\n      - { srv: \"_http._tcp.api.test\" }\n",
    ));
    wait_for_backends(&proxy, &[heavy.addr, light.addr, backup.addr]);
    let bodies = requests(&proxy, 200);
    let (h, l) = (count(&bodies, "heavy"), count(&bodies, "light"));
    assert_eq!(
        count(&bodies, "backup"),
        0,
        "a higher priority group is not used"
    );
    assert_eq!(h + l, 200);
    // 3:1 within a tolerance.
    assert!((140..=160).contains(&h), "heavy {h}, light {l}");
}

#[test]
fn a_removed_record_under_load_loses_no_request_and_its_in_flight_request_completes() {
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["stays", "leaves"]);
    let (stays, leaves) = (&origins[0], &origins[1]);
    // The one that leaves first holds a request.
    let gate = Gate::new();
    leaves.set(Behavior::Held(
        gate.clone(),
        Box::new(Behavior::named("leaves")),
    ));
    dns.set_a("api.test", &ips(&[leaves]));
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        &format!("    backends:\n      - {{ dns: \"api.test:{port}\" }}\n"),
    ));
    wait_for_backends(&proxy, &[leaves.addr]);
    let addr = proxy.addr;
    let held = std::thread::spawn(move || client::get(addr, "/held", &[]));
    leaves.wait_for_requests(1);
    leaves.set(Behavior::named("leaves"));
    dns.set_a("api.test", &ips(&[stays, leaves]));
    wait_for_backends(&proxy, &[stays.addr, leaves.addr]);

    let stop = Arc::new(AtomicBool::new(false));
    let load = load(proxy.addr, stop.clone());
    stays.wait_for_requests(5);
    leaves.wait_for_requests(5);
    dns.set_a("api.test", &ips(&[stays]));
    let removed = Instant::now();
    wait_for_backends(&proxy, &[stays.addr]);
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "gone within one refresh (300 ms), not {:?}",
        removed.elapsed()
    );
    let after_removal = leaves.requests();
    let before = stays.requests();
    stays.wait_for_requests(before + 20);
    stop.store(true, Ordering::SeqCst);
    all_ok(&load.join().expect("load"));
    assert_eq!(
        leaves.requests(),
        after_removal,
        "no new request reached the removed backend"
    );
    gate.open();
    let held = held.join().expect("held request");
    assert_eq!(held.status, 200, "{}", held.describe());
    assert_eq!(held.text(), "origin leaves");
}

#[test]
fn an_added_record_gets_traffic_at_once_and_one_that_stays_keeps_its_pooled_connection() {
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["first", "added"]);
    dns.set_a("api.test", &ips(&[&origins[0]]));
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        &format!("    backends:\n      - {{ dns: \"api.test:{port}\" }}\n"),
    ));
    wait_for_backends(&proxy, &[origins[0].addr]);
    assert_eq!(count(&requests(&proxy, 4), "first"), 4);
    let pooled = origins[0].connections();
    dns.set_a("api.test", &ips(&[&origins[0], &origins[1]]));
    wait_for_backends(&proxy, &[origins[0].addr, origins[1].addr]);
    let bodies = requests(&proxy, 10);
    assert_eq!(count(&bodies, "added"), 5, "{bodies:?}");
    assert_eq!(
        origins[0].connections(),
        pooled,
        "the backend that stays is reached over its pooled connection"
    );
}

#[test]
fn a_failing_resolver_keeps_the_last_set_and_counts_each_failure() {
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["a", "b"]);
    dns.set_a("api.test", &ips(&[&origins[0], &origins[1]]));
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        &format!("    backends:\n      - {{ dns: \"api.test:{port}\" }}\n"),
    ));
    let addrs = [origins[0].addr, origins[1].addr];
    wait_for_backends(&proxy, &addrs);
    for (mode, result) in [
        (Mode::ServFail, "failure"),
        (Mode::Empty, "empty"),
        (Mode::Silent, "timeout"),
    ] {
        let series =
            format!("faultline_discovery_refreshes_total{{upstream=\"app\",result=\"{result}\"}}");
        let before = proxy.metric(&series);
        dns.set_mode(mode);
        proxy.wait_for_metric(&series, |n| n >= before + 2, "failed lookups counted");
        let bodies = requests(&proxy, 10);
        assert_eq!(
            (count(&bodies, "a"), count(&bodies, "b")),
            (5, 5),
            "{mode:?}"
        );
        let status = status_now(&proxy);
        assert_eq!(backends(&status).len(), 2, "{mode:?}: the last set stays");
        assert_eq!(
            status["upstreams"][0]["discovery"][0]["last_refresh"]["result"],
            result
        );
    }
    // A server that answers again is followed.
    dns.set_mode(Mode::Answer);
    dns.set_a("api.test", &ips(&[&origins[1]]));
    wait_for_backends(&proxy, &[origins[1].addr]);
    assert!(dns.queries() > 0);
}

#[test]
fn a_backend_that_stays_across_a_refresh_keeps_its_ejection() {
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["good", "bad", "added"]);
    let (good, bad, added) = (&origins[0], &origins[1], &origins[2]);
    bad.set(Behavior::Text {
        status: 503,
        body: "down".into(),
        echo_request_id: false,
    });
    dns.set_a("api.test", &ips(&[good, bad]));
    let proxy = Proxy::start(&discovery_yaml(
        &dns,
        &format!(
            "    backends:\n      - {{ dns: \"api.test:{port}\" }}\n    health:\n      passive: {{ consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 50, failure_statuses: [503] }}\n"
        ),
    ));
    wait_for_backends(&proxy, &[good.addr, bad.addr]);
    for _ in 0..4 {
        let _ = client::get(proxy.addr, "/", &[]);
    }
    wait_for_status(&proxy, "the bad backend ejected", |s| {
        backend_status(s, bad.addr)["state"] == "ejected"
    });
    let before = bad.requests();
    dns.set_a("api.test", &ips(&[good, bad, added]));
    wait_for_backends(&proxy, &[good.addr, bad.addr, added.addr]);
    let status = status_now(&proxy);
    assert_eq!(backend_status(&status, bad.addr)["state"], "ejected");
    assert_eq!(backend_status(&status, bad.addr)["ejections"], 1);
    assert_eq!(backend_status(&status, added.addr)["state"], "healthy");
    let bodies = requests(&proxy, 10);
    assert_eq!(bad.requests(), before, "still ejected: {bodies:?}");
}

#[test]
fn drain_and_undrain_through_the_admin_listener_under_load_fail_nothing() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let proxy = Proxy::start(&crate::harness::one_upstream(&[a.addr, b.addr], "", ""));
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(proxy.addr, stop.clone());
    b.wait_for_requests(5);
    let path = format!("/upstreams/app/backends/{}/drain", b.addr);
    let r = client::send_one(proxy.admin, "POST", &path, &[]);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        backend_status(&status_now(&proxy), b.addr)["draining"],
        true
    );
    let drained = b.requests();
    let a_before = a.requests();
    a.wait_for_requests(a_before + 20);
    assert_eq!(
        b.requests(),
        drained,
        "a draining backend takes no new request"
    );
    let path = format!("/upstreams/app/backends/{}/undrain", b.addr);
    assert_eq!(
        client::send_one(proxy.admin, "POST", &path, &[]).status,
        200
    );
    assert_eq!(
        backend_status(&status_now(&proxy), b.addr)["draining"],
        false
    );
    b.wait_for_requests(drained + 5);
    stop.store(true, Ordering::SeqCst);
    all_ok(&load.join().expect("load"));
    // Unknown names are 404s.
    let missing = client::send_one(
        proxy.admin,
        "POST",
        "/upstreams/nope/backends/1.2.3.4:5/drain",
        &[],
    );
    assert_eq!(missing.status, 404);
}

#[test]
fn a_drained_backend_stays_drained_across_a_reload() {
    let a = Origin::start(Behavior::named("a"));
    let b = Origin::start(Behavior::named("b"));
    let dir = std::env::temp_dir().join(format!("faultline-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("faultline.yaml");
    let (addr, admin) = (crate::harness::free_addr(), crate::harness::free_addr());
    let body = crate::harness::one_upstream(&[a.addr, b.addr], "", "");
    std::fs::write(&file, crate::harness::proxy_yaml(addr, admin, &body)).expect("write");
    let proxy = Proxy::start_file(addr, admin, &file);
    let path = format!("/upstreams/app/backends/{}/drain", b.addr);
    assert_eq!(
        client::send_one(proxy.admin, "POST", &path, &[]).status,
        200
    );
    assert_eq!(
        client::send_one(proxy.admin, "POST", "/reload", &[]).status,
        200
    );
    assert_eq!(
        backend_status(&status_now(&proxy), b.addr)["draining"],
        true
    );
    assert_eq!(count(&requests(&proxy, 6), "a"), 6);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Points the symlink `link` at `target` atomically, as Kubernetes swaps a ConfigMap's `..data`.
fn swap_symlink(link: &std::path::Path, target: &str) {
    let tmp = link.with_file_name(".swap");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename");
}

#[test]
fn a_watched_file_reloads_on_a_symlink_swap_and_a_broken_one_keeps_the_old_config() {
    let blue = Origin::start(Behavior::named("blue"));
    let green = Origin::start(Behavior::named("green"));
    let dir = std::env::temp_dir().join(format!("faultline-watch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, admin) = (crate::harness::free_addr(), crate::harness::free_addr());
    let config = |backend: SocketAddr| {
        let body = crate::harness::one_upstream(&[backend], "", "");
        format!(
            "watch: true\n{}",
            crate::harness::proxy_yaml(addr, admin, &body)
        )
    };
    for (version, text) in [
        ("v1", config(blue.addr)),
        ("v2", config(green.addr)),
        ("v3", "listeners: [ this is not valid".to_string()),
    ] {
        std::fs::create_dir_all(dir.join(version)).expect("dir");
        std::fs::write(dir.join(version).join("faultline.yaml"), text).expect("write");
    }
    // The ConfigMap volume's layout: faultline.yaml → ..data/faultline.yaml, ..data → v1.
    swap_symlink(&dir.join("..data"), "v1");
    std::os::unix::fs::symlink("..data/faultline.yaml", dir.join("faultline.yaml")).expect("link");
    let proxy = Proxy::start_file(addr, admin, &dir.join("faultline.yaml"));
    assert_eq!(count(&requests(&proxy, 2), "blue"), 2);

    swap_symlink(&dir.join("..data"), "v2");
    proxy.wait_for_metric(
        "faultline_config_reloads_total{result=\"success\"}",
        |n| n >= 1,
        "the swap reloads",
    );
    assert_eq!(count(&requests(&proxy, 2), "green"), 2);

    swap_symlink(&dir.join("..data"), "v3");
    proxy.wait_for_metric(
        "faultline_config_reloads_total{result=\"failure\"}",
        |n| n >= 1,
        "the broken file is refused",
    );
    assert_eq!(
        count(&requests(&proxy, 2), "green"),
        2,
        "the old config stays"
    );
}

/// The `/status` of a running binary.
fn binary_status(b: &crate::harness::Binary) -> serde_json::Value {
    serde_json::from_slice(&client::get(b.admin, "/status", &[]).body).expect("status JSON")
}

/// Waits (10 s at most) until upstream `app` of binary `b` has exactly the backends `want`.
fn wait_for_binary_backends(b: &crate::harness::Binary, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut have = backends(&binary_status(b));
        have.sort();
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "backends {have:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fleet_of_three_processes_follows_dns_and_the_file_and_ejects_on_its_own_evidence() {
    use crate::harness::Binary;
    let dns = Dns::start();
    let (port, origins) = origins_on_one_port(&["a", "b"]);
    let (a, b) = (&origins[0], &origins[1]);
    dns.set_a("api.test", &ips(&[a, b]));
    let body = |passive: &str| {
        format!(
            "watch: true\n{}",
            discovery_yaml(
                &dns,
                &format!("    backends:\n      - {{ dns: \"api.test:{port}\" }}\n{passive}"),
            )
        )
    };
    let fleet: Vec<Binary> = (0..3)
        .map(|i| Binary::start(&format!("fleet{i}"), "server: { threads: 1 }", &body("")))
        .collect();
    for f in &fleet {
        wait_for_binary_backends(f, &[a.addr, b.addr]);
    }
    // Traffic through every instance reaches every backend.
    for f in &fleet {
        let bodies: Vec<String> = (0..4)
            .map(|_| client::get(f.addr, "/", &[]).text())
            .collect();
        assert_eq!(
            (count(&bodies, "a"), count(&bodies, "b")),
            (2, 2),
            "{bodies:?}"
        );
    }
    // One file change, each instance reloads it: passive health with an ejection on one 503.
    let passive = "    health:\n      passive: { consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 50, failure_statuses: [503] }\n";
    for f in &fleet {
        let text = std::fs::read_to_string(f.file()).expect("read");
        let (head, _) = text.split_once("watch: true").expect("generated file");
        std::fs::write(f.file(), format!("{head}{}", body(passive))).expect("write");
    }
    for f in &fleet {
        f.wait_for_metric(
            "faultline_config_reloads_total{result=\"success\"}",
            |n| n >= 1,
            "each instance reloads the changed file",
        );
    }
    // Each ejects on its own evidence: only the instance that saw b fail ejects it.
    b.set(Behavior::Text {
        status: 503,
        body: "down".into(),
        echo_request_id: false,
    });
    for _ in 0..4 {
        let _ = client::get(fleet[0].addr, "/", &[]);
    }
    let name = b.addr.to_string();
    let state = |f: &Binary| {
        let s = binary_status(f);
        s["upstreams"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|x| x["backend"] == name.as_str())
            .map(|x| x["state"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(state(&fleet[0]).as_deref(), Some("ejected"));
    assert_eq!(state(&fleet[1]).as_deref(), Some("healthy"));
    assert_eq!(state(&fleet[2]).as_deref(), Some("healthy"));
    // A record removed: every instance drops it.
    dns.set_a("api.test", &ips(&[a]));
    for f in &fleet {
        wait_for_binary_backends(f, &[a.addr]);
        assert_eq!(client::get(f.addr, "/", &[]).text(), "origin a");
    }
}
