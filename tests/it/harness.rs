//! Starting faultline in-process from a generated config, and reading its access log; starting
//! the real binary the same way.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running faultline. It lives until the test process exits.
pub struct Proxy {
    /// The client-facing listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

/// A free loopback port (bound, then released), never one handed out before in this test
/// process: the kernel may give a released port again at once, and two tests (or a listener and
/// the admin listener of one proxy) would then be configured on the same port. Taken below the
/// kernel's ephemeral range: between this check and the proxy's bind, any outgoing connection
/// on the machine (the tests' own clients, a benchmark) may take a port of that range as its
/// source port, and the proxy would then fail to listen.
pub fn free_addr() -> SocketAddr {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let low = ephemeral_low();
    let first = low.saturating_sub(12_000).max(1024);
    let span = low - first;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each test process starts somewhere else in the range, so that two running at once (a
    // build's unit tests and this binary, say) rarely try the same ports.
    let mut offset = next.unwrap_or((std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let port = first + offset;
        offset = (offset + 1) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("no loopback port free below the ephemeral range")
}

/// The first port of the kernel's ephemeral range (Linux), or its default.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u16| low > 2048)
        .unwrap_or(32768)
}

impl Proxy {
    /// Starts faultline with `body` (upstreams, routes, error_pages …) plus a generated
    /// `server` and `listeners` section; returns once the listener accepts connections.
    pub fn start(body: &str) -> Proxy {
        Self::start_with(body, |b| b)
    }

    /// Like [`Proxy::start`], with the gateway builder adjusted by `customize` (a custom router,
    /// a file to reload from).
    pub fn start_with(
        body: &str,
        customize: impl FnOnce(faultline::GatewayBuilder<'_>) -> faultline::GatewayBuilder<'_>,
    ) -> Proxy {
        let addr = free_addr();
        let admin = free_addr();
        Self::start_full(addr, admin, &proxy_yaml(addr, admin, body), customize)
    }

    /// Starts faultline from a whole configuration whose listener is `addr` and admin `admin`.
    pub fn start_yaml(addr: SocketAddr, admin: SocketAddr, yaml: &str) -> Proxy {
        Self::start_full(addr, admin, yaml, |b| b)
    }

    /// Starts faultline from the configuration file `file`, whose listener is `addr` and admin
    /// `admin`; `POST /reload` re-reads the file.
    pub fn start_file(addr: SocketAddr, admin: SocketAddr, file: &std::path::Path) -> Proxy {
        let yaml = std::fs::read_to_string(file).expect("read config");
        let source = file.to_path_buf();
        Self::start_full(addr, admin, &yaml, move |b| b.reload_from(source))
    }

    /// Starts faultline from a whole configuration whose listener is `addr` and admin `admin`,
    /// with the gateway builder adjusted by `customize`.
    pub fn start_full(
        addr: SocketAddr,
        admin: SocketAddr,
        yaml: &str,
        customize: impl FnOnce(faultline::GatewayBuilder<'_>) -> faultline::GatewayBuilder<'_>,
    ) -> Proxy {
        init_log_capture();
        let config = faultline::Config::from_yaml(yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        let gateway = customize(faultline::Gateway::builder(&config))
            .build()
            .expect("gateway builds");
        let server = faultline::server::serve(gateway, config, None);
        std::thread::spawn(move || server.run_forever());
        // Readiness: both listeners accept connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        for a in [addr, admin] {
            while TcpStream::connect(a).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "faultline did not start listening on {a}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Proxy { addr, admin }
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let resp = crate::client::get(self.admin, "/metrics", &[]);
        assert_eq!(resp.status, 200);
        resp.text()
    }

    /// The value of the series `name{labels}` in `/metrics`; a series that is not exported
    /// fails the test (a misspelled series must not read as 0).
    pub fn metric(&self, series: &str) -> u64 {
        metric_value(&self.metrics(), series)
    }

    /// Waits (5 s at most) until `series` is exported and satisfies `done`; `what` names the
    /// wait in a failure.
    pub fn wait_for_metric(&self, series: &str, done: impl Fn(u64) -> bool, what: &str) {
        wait_for_series(|| self.metrics(), series, done, what);
    }
}

/// Waits (5 s at most) until `series` is exported in what `scrape` returns and satisfies `done`.
fn wait_for_series(
    scrape: impl Fn() -> String,
    series: &str,
    done: impl Fn(u64) -> bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !find_metric(&scrape(), series).is_some_and(&done) {
        assert!(Instant::now() < deadline, "{what}: {series}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `series` (name with its labels, exactly as exposed) in a scrape; panics when
/// the series is absent.
pub fn metric_value(text: &str, series: &str) -> u64 {
    find_metric(text, series).unwrap_or_else(|| panic!("{series} is not exported:\n{text}"))
}

/// The value of `series` in a scrape, or `None` when it is not exported.
pub fn find_metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{series} = {v}"))
        })
}

/// A whole configuration: one thread, a listener, an admin listener, and `body`.
pub fn proxy_yaml(addr: SocketAddr, admin: SocketAddr, body: &str) -> String {
    format!(
        "server: {{ threads: 1 }}\nlisteners:\n  - {{ address: \"{addr}\" }}\nadmin: {{ address: \"{admin}\" }}\n{body}"
    )
}

/// Three origins named `a`, `b` and `c` behind one `consistent_hash` upstream `app`: the
/// `upstreams:` section (routes to add).
pub fn consistent_hash_app() -> (Vec<crate::origin::Origin>, String) {
    use crate::origin::{Behavior, Origin};
    let origins: Vec<Origin> = ["a", "b", "c"]
        .iter()
        .map(|t| Origin::start(Behavior::named(t)))
        .collect();
    let mut body =
        String::from("upstreams:\n  app:\n    selection: consistent_hash\n    backends:\n");
    for o in &origins {
        body.push_str(&format!("      - {{ address: \"{}\" }}\n", o.addr));
    }
    (origins, body)
}

/// A config body with one upstream `app` of these backends and one catch-all route to it.
pub fn one_upstream(backends: &[SocketAddr], extra_upstream: &str, extra_route: &str) -> String {
    let mut s = String::from("upstreams:\n  app:\n    backends:\n");
    for b in backends {
        s.push_str(&format!("      - {{ address: \"{b}\" }}\n"));
    }
    s.push_str(extra_upstream);
    s.push_str("routes:\n  - upstream: app\n    name: main\n");
    s.push_str(extra_route);
    s
}

struct Capture {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| Capture {
        lines: Mutex::new(Vec::new()),
        added: Condvar::new(),
    })
}

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == faultline::ACCESS_LOG_TARGET || metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() == faultline::ACCESS_LOG_TARGET {
            let c = capture();
            if let Ok(mut lines) = c.lines.lock() {
                lines.push(record.args().to_string());
                c.added.notify_all();
            }
        } else if std::env::var_os("FAULTLINE_TEST_LOG").is_some() {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

fn init_log_capture() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if log::set_boxed_logger(Box::new(CaptureLogger)).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// The access-log entry of `request_id`, waiting for it to be written (the log line follows the
/// response, so it may land a moment after the client has read everything).
pub fn access_entry(request_id: &str) -> serde_json::Value {
    let c = capture();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = c.lines.lock().expect("log lock");
    loop {
        for line in lines.iter() {
            let v: serde_json::Value = serde_json::from_str(line).expect("access log line is JSON");
            if v["request_id"] == request_id {
                return v;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no access-log entry for {request_id}");
        lines = c.added.wait_timeout(lines, left).expect("log lock").0;
    }
}

/// Every access-log line captured so far, parsed.
pub fn all_access_entries() -> Vec<serde_json::Value> {
    let lines = capture().lines.lock().expect("log lock").clone();
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `/status` document as it is now.
pub fn status_now(proxy: &Proxy) -> serde_json::Value {
    let resp = crate::client::get(proxy.admin, "/status", &[]);
    assert_eq!(resp.status, 200);
    serde_json::from_slice(&resp.body).expect("status JSON")
}

/// Polls `/status` until `ready` accepts it; panics after 10 s. The status endpoint is the
/// readiness signal for time-driven state (ejections ending, active checks flipping).
pub fn wait_for_status(
    proxy: &Proxy,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status_now(proxy);
        if ready(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `/status` entry of `backend` in upstream `app`.
pub fn backend_status(status: &serde_json::Value, backend: SocketAddr) -> serde_json::Value {
    let name = backend.to_string();
    status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["backends"].as_array().into_iter().flatten())
        .find(|b| b["backend"] == name.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {status}"))
}

/// The `faultline` binary started from a generated configuration file; killed on drop if the
/// test did not stop it.
pub struct Binary {
    /// The process.
    pub child: Child,
    /// The client-facing listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Its configuration file and log live here.
    pub dir: std::path::PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Binary {
    /// Starts the binary with `server` as its `server:` line (`{dir}` stands for its directory)
    /// and `body` after generated listeners; returns once both listeners accept connections.
    pub fn start(tag: &str, server: &str, body: &str) -> Binary {
        Self::start_with_listener(tag, server, "", body)
    }

    /// Like [`Binary::start`], with `listener` (say `, tls: { … }`) added to the listener's
    /// settings.
    pub fn start_with_listener(tag: &str, server: &str, listener: &str, body: &str) -> Binary {
        let dir = std::env::temp_dir().join(format!("faultline-bin-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let server = server.replace("{dir}", &dir.display().to_string());
        // A port picked free can be taken by a parallel test before the binary binds it; the
        // binary then exits, and a new pair of ports is tried.
        for _ in 0..3 {
            let (addr, admin) = (free_addr(), free_addr());
            let yaml = proxy_yaml(addr, admin, body)
                .replacen("server: { threads: 1 }", &server, 1)
                .replacen(
                    &format!("{{ address: \"{addr}\" }}"),
                    &format!("{{ address: \"{addr}\"{listener} }}"),
                    1,
                );
            std::fs::write(dir.join("faultline.yaml"), yaml).expect("write config");
            let mut child = Self::spawn(&dir, &[]);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            for a in [addr, admin] {
                while !exited && TcpStream::connect(a).is_err() {
                    exited = child.try_wait().expect("wait").is_some();
                    assert!(Instant::now() < deadline, "faultline did not start on {a}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if !exited {
                return Binary {
                    child,
                    addr,
                    admin,
                    dir,
                };
            }
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("faultline.log")).unwrap_or_default();
        panic!("faultline exited at start three times; last log:\n{log}");
    }

    /// Starts the binary on the configuration in `dir`, its output in `dir/faultline.log`.
    pub fn spawn(dir: &std::path::Path, extra: &[&str]) -> Child {
        let log = std::fs::File::create(dir.join(format!("faultline{}.log", extra.join(""))))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_faultline"))
            .arg("-c")
            .arg(dir.join("faultline.yaml"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start faultline")
    }

    /// Its configuration file.
    pub fn file(&self) -> std::path::PathBuf {
        self.dir.join("faultline.yaml")
    }

    /// Sends it `signal` once it catches that signal: one that came before Pingora or
    /// faultline installed its handler would kill the process (the default action) instead.
    /// Without `/proc` to tell, at once.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // Linux lists the caught signals as a hex mask, bit n-1 for signal n.
        let caught = || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
            Some(mask & (1 << (signal as i32 - 1)) != 0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while caught() == Some(false) {
            assert!(Instant::now() < deadline, "{signal} is never caught");
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("kill");
    }

    /// Its `/metrics`.
    fn metrics(&self) -> String {
        crate::client::get(self.admin, "/metrics", &[]).text()
    }

    /// One series of its `/metrics`.
    pub fn metric(&self, series: &str) -> u64 {
        metric_value(&self.metrics(), series)
    }

    /// Waits (5 s at most) until `series` is exported and satisfies `done`.
    pub fn wait_for_metric(&self, series: &str, done: impl Fn(u64) -> bool, what: &str) {
        wait_for_series(|| self.metrics(), series, done, what);
    }

    /// What the binary wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("faultline.log")).unwrap_or_default()
    }
}
