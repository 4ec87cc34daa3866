//! Every configuration error names its field path and the problem, exactly, and never panics;
//! every file in `conf/` is valid.

use faultline::Config;

const VALID: &str = r#"
listeners:
  - { address: "127.0.0.1:8080" }
upstreams:
  app:
    backends:
      - { address: "127.0.0.1:9001" }
routes:
  - { upstream: app }
"#;

fn errors(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("config should be invalid:\n{yaml}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

fn one_error(yaml: &str) -> String {
    let all = errors(yaml);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap_or_default()
}

#[test]
fn the_minimal_config_is_valid() {
    let c = Config::from_yaml(VALID).expect("valid");
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.upstreams[0].name, "app");
    assert_eq!(c.routes[0].route.name, "route0");
    assert_eq!(c.routes[0].route.retry.attempts, 3);
}

#[test]
fn timeouts_are_tokio_timers_unless_the_file_says_otherwise() {
    let c = Config::from_yaml(VALID).expect("valid");
    assert_eq!(c.server.fast_timeout_to_tokio_threshold_seconds, Some(0));
    let given = format!("server: {{ fast_timeout_to_tokio_threshold_seconds: 60 }}\n{VALID}");
    let c = Config::from_yaml(&given).expect("valid");
    assert_eq!(c.server.fast_timeout_to_tokio_threshold_seconds, Some(60));
    let null = format!("server: {{ fast_timeout_to_tokio_threshold_seconds: null }}\n{VALID}");
    let c = Config::from_yaml(&null).expect("valid");
    assert_eq!(c.server.fast_timeout_to_tokio_threshold_seconds, None);
}

#[test]
fn unknown_keys_name_their_path() {
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, retry: { atempts: 2 } }",
    );
    assert_eq!(
        one_error(&yaml),
        "routes[0].retry.atempts: unknown field, expected one of `attempts`, `on_status`, `idempotency_key`, `budget_percent` (line 9, column 31)"
    );
    let yaml = format!("{VALID}colour: blue\n");
    assert!(
        one_error(&yaml)
            .starts_with("colour: unknown field, expected one of `server`, `listeners`")
    );
    let yaml = VALID.replace(
        "      - { address: \"127.0.0.1:9001\" }",
        "      - { address: \"127.0.0.1:9001\", wieght: 2 }",
    );
    assert_eq!(
        one_error(&yaml),
        "upstreams.app.backends[0].wieght: unknown field, expected one of `address`, `dns`, `srv`, `weight` (line 7, column 38)"
    );
}

#[test]
fn server_section_is_strict_too() {
    let yaml = format!("server: {{ threads: 2, thread: 3 }}\n{VALID}");
    assert_eq!(one_error(&yaml), "server.thread: unknown field");
    let yaml = format!("server: {{ threads: many }}\n{VALID}");
    let e = one_error(&yaml);
    assert!(
        e.starts_with("server.threads: invalid type: string \"many\", expected usize"),
        "{e}"
    );
    let c = Config::from_yaml(&format!("server: {{ threads: 2 }}\n{VALID}")).expect("valid");
    assert_eq!(c.server.threads, 2);
}

#[test]
fn wrong_types_name_their_path() {
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, retry: { attempts: three } }",
    );
    let e = one_error(&yaml);
    assert!(
        e == "routes[0].retry.attempts: invalid type: string \"three\", expected u32 (line 9, column 41)",
        "{e}"
    );
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, intercept_origin_errors: 502 }",
    );
    let e = one_error(&yaml);
    assert!(
        e.starts_with(
            "routes[0].intercept_origin_errors: invalid type: integer `502`, expected a sequence"
        ),
        "{e}"
    );
}

#[test]
fn route_to_a_missing_upstream() {
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app }\n  - { upstream: ap }",
    );
    assert_eq!(
        one_error(&yaml),
        "routes[1].upstream: no upstream named \"ap\""
    );
}

#[test]
fn retry_attempts_stay_within_what_pingora_makes() {
    // Pingora makes at most `server.max_retries` tries (16 by default).
    let over = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, retry: { attempts: 17 } }",
    );
    assert_eq!(
        one_error(&over),
        "routes[0].retry.attempts: at most 16, the attempts Pingora makes (server.max_retries)"
    );
    let raised = format!("server: {{ max_retries: 20 }}\n{over}");
    assert!(Config::from_yaml(&raised).is_ok());
    let at_limit = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, retry: { attempts: 16 } }",
    );
    assert!(Config::from_yaml(&at_limit).is_ok());
}

#[test]
fn upstream_without_backends() {
    let yaml = VALID.replace(
        "    backends:\n      - { address: \"127.0.0.1:9001\" }",
        "    backends: []",
    );
    assert_eq!(
        one_error(&yaml),
        "upstreams.app.backends: at least one backend is required"
    );
}

#[test]
fn unparsable_addresses() {
    let yaml = VALID.replace("127.0.0.1:9001", "localhost:port");
    assert_eq!(
        one_error(&yaml),
        "upstreams.app.backends[0].address: invalid address \"localhost:port\": expected IP:port, such as 127.0.0.1:8080"
    );
    let yaml = VALID.replace("127.0.0.1:8080", "8080");
    assert_eq!(
        one_error(&yaml),
        "listeners[0].address: invalid address \"8080\": expected IP:port, such as 127.0.0.1:8080"
    );
}

#[test]
fn unparsable_durations() {
    let yaml = VALID.replace(
        "    backends:",
        "    timeouts: { connect: 5x }\n    backends:",
    );
    let e = one_error(&yaml);
    assert!(
        e.starts_with("upstreams.app.timeouts.connect: invalid duration \"5x\": "),
        "{e}"
    );
    let yaml = VALID.replace(
        "    backends:",
        "    timeouts: { response_header: 15 }\n    backends:",
    );
    let e = one_error(&yaml);
    assert!(
        e.starts_with("upstreams.app.timeouts.response_header: invalid duration \"15\": a unit is required (\"15s\", \"15ms\")"),
        "{e}"
    );
    // Parsed, but past any clock: refused rather than overflowing a deadline at run time.
    let yaml = format!("clients: {{ keepalive_timeout: 500000000000y }}\n{VALID}");
    let e = one_error(&yaml);
    assert!(
        e.starts_with(
            "clients.keepalive_timeout: invalid duration \"500000000000y\": longer than the \
             most a setting takes (365 days)"
        ),
        "{e}"
    );
    let yaml = format!("clients: {{ keepalive_timeout: 365d }}\n{VALID}");
    assert!(Config::from_yaml(&yaml).is_ok());
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, deadline: soon }",
    );
    let e = one_error(&yaml);
    assert!(
        e.starts_with("routes[0].deadline: invalid duration \"soon\""),
        "{e}"
    );
}

#[test]
fn trusted_proxies_must_be_networks() {
    let yaml = format!(
        "trusted_proxies: [\"10.0.0.0/8\", \"::1\", \"10.0.0.0/33\", \"proxy.local\"]\n{VALID}"
    );
    assert_eq!(
        errors(&yaml),
        [
            "trusted_proxies[2]: \"10.0.0.0/33\" is not an IP address or a network such as 10.0.0.0/8",
            "trusted_proxies[3]: \"proxy.local\" is not an IP address or a network such as 10.0.0.0/8",
        ]
    );
    let ok = format!("trusted_proxies: [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]\n{VALID}");
    let c = Config::from_yaml(&ok).expect("valid");
    let net = c.trusted_proxies[0];
    assert!(net.contains("10.200.3.4".parse().unwrap()));
    assert!(!net.contains("11.0.0.1".parse().unwrap()));
    assert!(
        net.contains("::ffff:10.1.1.1".parse().unwrap()),
        "IPv4-mapped IPv6 peers match"
    );
    assert!(c.trusted_proxies[1].contains("::1".parse().unwrap()));
    assert!(!c.trusted_proxies[2].contains("192.168.1.8".parse().unwrap()));
}

#[test]
fn two_listeners_on_one_address() {
    let yaml = VALID.replace(
        "  - { address: \"127.0.0.1:8080\" }",
        "  - { address: \"127.0.0.1:8080\" }\n  - { address: \"127.0.0.1:8080\" }",
    );
    assert_eq!(
        one_error(&yaml),
        "listeners[1].address: 127.0.0.1:8080 is already used by another listener"
    );
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let yaml = r#"
listeners: []
upstreams:
  app:
    selection: round_robin
    backends:
      - { address: "nope" }
      - { address: "127.0.0.1:1", weight: 0 }
    health:
      passive: { max_ejected_percent: 150, base_ejection: 10m, max_ejection: 1m }
routes:
  - { upstream: ap, match: { host: "bad host!", path_prefix: "v1" }, retry: { attempts: 0, on_status: [200] } }
"#;
    assert_eq!(
        errors(yaml),
        [
            "listeners: at least one listener is required",
            "upstreams.app.backends[0].address: invalid address \"nope\": expected IP:port, such as 127.0.0.1:8080",
            "upstreams.app.backends[1].weight: weight must be at least 1",
            "upstreams.app.health.passive.base_ejection: must not be longer than max_ejection",
            "upstreams.app.health.passive.max_ejected_percent: 150 is more than 100 percent",
            "routes[0].upstream: no upstream named \"ap\"",
            "routes[0].match.host: \"bad host!\" is not a host name or a \"*.suffix\" wildcard",
            "routes[0].match.path_prefix: \"v1\" must start with '/'",
            "routes[0].retry.attempts: must be at least 1",
            "routes[0].retry.on_status[0]: 200 is not an error status (400 to 599)",
        ]
    );
}

#[test]
fn garbage_input_never_panics() {
    for text in [
        "",
        "[",
        "- a\n- b",
        "listeners: 5",
        "\u{0}\u{1}",
        "upstreams: { a: { backends: [ {address: } ] } }",
        "a: &x [*x]",
    ] {
        assert!(Config::from_yaml(text).is_err(), "{text:?}");
    }
}

#[test]
fn missing_file_is_a_read_error() {
    let e = Config::load("/nonexistent/faultline.yaml").expect_err("missing");
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/faultline.yaml: "),
        "{e}"
    );
}

#[test]
fn every_file_in_conf_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Err(e) = Config::load(&path) {
                panic!("{} is invalid:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "conf/ holds faultline.yaml and demo.yaml at least"
    );
}

#[test]
fn the_binary_validates_with_dash_t() {
    let bin = env!("CARGO_BIN_EXE_faultline");
    let dir = std::env::temp_dir().join(format!("faultline-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        VALID
            .replace("upstream: app", "upstream: ap")
            .replace("127.0.0.1:9001", "x"),
    )
    .expect("write");
    let out = std::process::Command::new(bin)
        .args(["-t", "-c"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstreams.app.backends[0].address: invalid address \"x\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].upstream: no upstream named \"ap\""),
        "{stderr}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(&good, VALID).expect("write");
    let out = std::process::Command::new(bin)
        .args(["-t", "-c"])
        .arg(&good)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_limits_and_body_sizes_are_checked() {
    let yaml = format!(
        "{VALID}clients: {{ max_connections: 0, header_timeout: 10, keepalive_timeout: 0s }}\n"
    );
    assert_eq!(
        errors(&yaml),
        [
            "clients.header_timeout: invalid duration \"10\": a unit is required (\"10s\", \"10ms\") (line 10, column 10)"
        ]
    );
    let yaml = format!(
        "{VALID}clients: {{ max_connections: 0, keepalive_timeout: 0s, body_timeout: 0s, send_timeout: 0ms }}\n"
    );
    assert_eq!(
        errors(&yaml),
        [
            "clients.max_connections: must be at least 1",
            "clients.keepalive_timeout: must be more than zero (a kept-alive connection needs some idle time)",
            "clients.body_timeout: must be more than zero",
            "clients.send_timeout: must be more than zero",
        ]
    );
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, max_request_body: 10XB }",
    );
    assert_eq!(
        one_error(&yaml),
        "routes[0].max_request_body: invalid size \"10XB\": unknown unit \"XB\" (B, KB, KiB, MB, MiB, GB, GiB) (line 9, column 5)"
    );
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, max_request_body: 0 }",
    );
    assert_eq!(
        one_error(&yaml),
        "routes[0].max_request_body: must be more than zero (a route that takes no body: limit its methods instead)"
    );
    let yaml = VALID.replace(
        "  - { upstream: app }",
        "  - { upstream: app, max_request_body: 64KiB }",
    );
    let config = Config::from_yaml(&yaml).expect("valid");
    assert_eq!(config.routes[0].route.max_request_body, Some(64 * 1024));
    assert_eq!(
        config.clients.header_timeout,
        std::time::Duration::from_secs(10)
    );
}

#[test]
fn a_tunnel_idle_of_zero_names_its_path() {
    let yaml = VALID.replace(
        "      - { address: \"127.0.0.1:9001\" }",
        "      - { address: \"127.0.0.1:9001\" }\n    timeouts: { tunnel_idle: 0s }",
    );
    assert_eq!(
        one_error(&yaml),
        "upstreams.app.timeouts.tunnel_idle: must be more than zero"
    );
    let yaml = VALID.replace(
        "      - { address: \"127.0.0.1:9001\" }",
        "      - { address: \"127.0.0.1:9001\" }\n    timeouts: { tunnel_idle: 1h }",
    );
    let c = Config::from_yaml(&yaml).expect("valid");
    assert_eq!(
        c.upstreams[0].timeouts.tunnel_idle,
        std::time::Duration::from_secs(3600)
    );
    let c = Config::from_yaml(VALID).expect("valid");
    assert_eq!(
        c.upstreams[0].timeouts.tunnel_idle,
        std::time::Duration::from_secs(300),
        "the default"
    );
}

#[test]
fn discovered_backends_and_discovery_settings_name_their_field() {
    let backends = |entry: &str| {
        VALID.replace(
            "      - { address: \"127.0.0.1:9001\" }",
            &format!("      - {entry}"),
        )
    };
    assert_eq!(
        one_error(&backends(
            "{ address: \"127.0.0.1:9001\", dns: \"api.internal:8080\" }"
        )),
        "upstreams.app.backends[0]: a backend is exactly one of address, dns or srv"
    );
    assert_eq!(
        one_error(&backends("{ weight: 2 }")),
        "upstreams.app.backends[0]: a backend is exactly one of address, dns or srv"
    );
    assert_eq!(
        one_error(&backends("{ dns: \"api.internal\" }")),
        "upstreams.app.backends[0].dns: invalid name \"api.internal\": expected NAME:port, such as api.internal:8080"
    );
    assert_eq!(
        one_error(&backends("{ srv: \"_http._tcp.api\", weight: 3 }")),
        "upstreams.app.backends[0].weight: an SRV record carries its own weight"
    );
    assert_eq!(
        one_error(&backends("{ srv: \"not a name\" }")),
        "upstreams.app.backends[0].srv: invalid name \"not a name\": expected an SRV name such as _http._tcp.api.service.consul"
    );
    let ok = backends(
        "{ dns: \"API.internal:8080\", weight: 2 }\n      - { srv: \"_http._tcp.api.service.consul\" }",
    );
    let c = Config::from_yaml(&ok).expect("valid");
    assert_eq!(c.upstreams[0].discovered.len(), 2);
    assert!(c.upstreams[0].backends.is_empty());
    let settings = format!(
        "{VALID}discovery: {{ resolvers: [\"nameserver\"], min_refresh: 10s, max_refresh: 1s }}\n"
    );
    assert_eq!(
        errors(&settings),
        [
            "discovery.resolvers[0]: invalid address \"nameserver\": expected IP:port, such as 127.0.0.1:8080",
            "discovery.max_refresh: must be at least discovery.min_refresh",
        ]
    );
}
