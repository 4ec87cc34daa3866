#!/usr/bin/env python3
"""The load benchmark: faultline, bare Pingora, nginx and HAProxy side by side, in one run.

Everything runs on this machine and talks over loopback only. Every load is bounded in time
(wrk -d, h2load -D, or h2load runs of a fixed count for a fixed time) and every wait has a
deadline. Missing tools (wrk, nginx, haproxy, h2load and nghttp) are installed from the
distribution's packages.

    python3 benches/load.py                 # the full run (about 8 minutes)
    python3 benches/load.py --quick         # shorter rounds, for a smoke test
    python3 benches/load.py --scenario failures   # one scenario only
    python3 benches/load.py --ab faultline,bare-pingora   # two proxies, alternately, fresh

On a machine with two cores or more, each proxy is pinned to core 0 and the origin and wrk to
core 1 (taskset), so that the proxies never compete with the load generator for a core; besides
throughput and latency, the proxy's own CPU time per request is reported (from /proc, summed over
the proxy's processes), the figure least disturbed by anything else running on the machine.

Scenario 1 (healthy): one origin, each proxy with one worker thread and upstream keep-alive,
driven by the same wrk settings in interleaved rounds; reports requests per second, p50 and p99
latency per proxy (median over rounds) and faultline's ratios to the others. Bare Pingora runs in
three builds: as a user would write it (the system allocator), with jemalloc (the allocator the
`faultline` binary links, so that the ratio is faultline's own work alone), and setting the same
four forwarding headers faultline sets.

Scenario 2 (failures): three backends behind each proxy, one refusing connections and one
accepting but never answering; reports client-visible errors (non-2xx and socket errors),
requests slower than one second (wrk timeouts) and throughput.

Scenario 3 (connections): memory per idle client connection. Each proxy is started afresh with
a plain and a TLS listener (HTTP/2 by ALPN), takes a warm-up load, and then N idle connections
(benches/idle_clients.py: each makes one request, reads the answer and stays open): first N
HTTP/1.1 keep-alive connections, then, on a fresh start of the same proxy, N HTTP/2 connections
over TLS. The RSS the proxy's processes added, divided by N, is the memory per idle connection;
the same wrk load as the healthy scenario runs before and while the connections are held, so
that the throughput under them can be compared with the throughput without.

    python3 benches/load.py --scenario connections            # N = 10000
    python3 benches/load.py --scenario connections --idle 2000 --proxies faultline,nginx

Scenarios 4 to 7 (the TLS edge; `--scenario edge` runs the four, or name one): each proxy
(faultline, bare Pingora with glibc and with jemalloc, nginx, HAProxy) with one TLS listener,
the same ECDSA P-256 certificate, TLS session resumption off where the proxy can turn it off,
driven by h2load in interleaved rounds; medians over rounds, the proxy's CPU time per request
(or handshake) and h2load's own, and faultline's ratios to the others.

    h2tls       HTTP/2 over TLS, h2load -c16 -m10, to the nginx origin over HTTP/1.1
    h1tls       HTTP/1.1 over TLS with keep-alive, h2load --h1 -c64, to the same origin
    handshakes  full TLS handshakes: h2load runs of 100 connections, each one handshake and
                one request, then closed; handshakes per second and CPU per handshake
    grpc        gRPC unary calls over HTTP/2 over TLS, h2load -c16 -m10, to a tonic origin over
                h2c (examples/grpc_origin.rs); one call per proxy checked for grpc-status 0

    python3 benches/load.py --scenario edge --skip-build      # about 20 minutes
    python3 benches/load.py --scenario handshakes --quick --proxies faultline,nginx
"""

import argparse
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXIES = ["faultline", "bare-pingora", "bare+jemalloc", "pingora+headers", "nginx", "haproxy"]
# What `--proxies` and `--ab` may name: those, and the headers build with jemalloc.
ALL_PROXIES = PROXIES + ["headers+jemalloc"]
# The proxies of the connections scenario (the headers build holds connections as bare does).
CONNECTION_PROXIES = ["faultline", "bare-pingora", "bare+jemalloc", "nginx", "haproxy"]
# Another build of faultline to measure (FAULTLINE_BIN=path), say one with another allocator.
FAULTLINE_BIN = os.environ.get("FAULTLINE_BIN") or os.path.join(ROOT, "target/release/faultline")
# Another build of the bare Pingora examples (BARE_DIR=folder), say profile-guided ones.
BARE_DIR = os.environ.get("BARE_DIR") or os.path.join(ROOT, "target/release/examples")
# The builds setting the headers from another folder (HEADERS_DIR=folder; BARE_DIR when unset):
# `scripts/pgo-build` trains them apart, in target/pgo/bin/headers, so that one run can hold both.
HEADERS_DIR = os.environ.get("HEADERS_DIR")
IDLE_CLIENTS = os.path.join(ROOT, "benches", "idle_clients.py")
# Ephemeral ports one source address is given at most (the kernel's range is ~28k by default).
PORTS_PER_SOURCE = 20000
# The bare Pingora proxy in four builds: as written (the system allocator), with the faultline
# binary's allocator (jemalloc, with its default options), and setting the four headers
# faultline adds, the plain Pingora way (`FORWARDING=1`), with either allocator.
BARE = ("bare-pingora", "bare+jemalloc", "pingora+headers", "headers+jemalloc")
PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
PROXY_CPU = ["taskset", "-c", "0"] if PIN else []
LOAD_CPU = ["taskset", "-c", "1"] if PIN else []
# The scenarios of the TLS edge, over CONNECTION_PROXIES (`--scenario edge` runs the four).
EDGE_SCENARIOS = ["h2tls", "h1tls", "handshakes", "grpc"]
# Connections one h2load run of the handshakes scenario opens at once.
HANDSHAKE_BATCH = 100
# The gRPC scenario's call: `bench.Echo/Unary` of examples/grpc_origin.rs, with one protobuf
# message (field 1, a string).
GRPC_PATH = "/bench.Echo/Unary"
GRPC_TEXT = b"hello from the benchmark"
GRPC_MESSAGE = b"\x0a" + bytes([len(GRPC_TEXT)]) + GRPC_TEXT


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_tools():
    """Installs the distribution's packages of the tools missing (apt-get; the package lists
    are refreshed once if the install fails)."""
    needed = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy",
              "h2load": "nghttp2-client", "nghttp": "nghttp2-client"}
    missing = sorted({pkg for tool, pkg in needed.items() if not shutil.which(tool)
                      and not os.path.exists(f"/usr/sbin/{tool}")})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "-qq"] + missing
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def build():
    log("building faultline, the bare Pingora proxy and the gRPC origin (release)")
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup")], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "faultline",
                    "--example", "bare_proxy", "--example", "bare_proxy_jemalloc",
                    "--example", "grpc_origin"], check=True, cwd=ROOT)


def bare_command(kind, port, backends, tls=None):
    """The command line and environment of one of the bare Pingora builds (BARE); `tls`: the
    TLS listener's port, certificate and key."""
    jemalloc = kind in ("bare+jemalloc", "headers+jemalloc")
    example = "bare_proxy_jemalloc" if jemalloc else "bare_proxy"
    headers = kind in ("pingora+headers", "headers+jemalloc")
    folder = (HEADERS_DIR or BARE_DIR) if headers else BARE_DIR
    args = [os.path.join(folder, example), f"127.0.0.1:{port}"]
    args += [f"127.0.0.1:{b}" for b in backends]
    env = dict(os.environ, RUST_LOG="error", THREADS="1")
    if headers:
        env["FORWARDING"] = "1"
    if tls:
        tls_port, cert, key = tls
        env.update(TLS_LISTEN=f"127.0.0.1:{tls_port}", TLS_CERT=cert, TLS_KEY=key)
    return args, env


# The ports `free_port` handed out in this run.
PORTS_GIVEN = set()


def free_port():
    """A loopback port free now and not handed out before in this run: the kernel can give the
    same free port to two probes in a row when the first one's owner has not bound it yet (two
    listeners of one proxy, say). Taken below the kernel's ephemeral range (32768-60999 by
    default): the connections scenario's clients use that range up, and then the kernel's own
    choice for port 0 comes back to the same few ports, all handed out already."""
    low, _high = ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free loopback port left that this run has not handed out")


def ephemeral_range():
    """The kernel's range for ephemeral ports (Linux), or its default."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


# The output file of each process started, by name: what a proxy said when it did not start.
LOGS = {}


def wait_port(port, what, timeout=15.0):
    deadline = time.time() + timeout
    error = None
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError as e:
            error = e
            time.sleep(0.05)
    said = ""
    if what in LOGS:
        with open(LOGS[what], errors="replace") as f:
            said = f.read()
        # A panic's message comes first and its backtrace after: keep both ends.
        if len(said) > 3000:
            said = said[:2000] + "\n[…]\n" + said[-1000:]
    raise SystemExit(f"{what} did not start listening on {port} (last error: {error}); "
                     f"its output:\n{said}")


class Procs:
    """Processes started for the run, stopped at the end whatever happens."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def start(self, name, args, env=None):
        LOGS[name] = os.path.join(self.workdir, f"{name}.log")
        out = open(LOGS[name], "w")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p


    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def session_processes(session):
    """The /proc entries of every process in a session (a proxy and its workers), each with the
    fields of its `stat` after the command name (state, ppid, pgrp, session, ... utime is the
    12th, stime the 13th). A process that ends while it is read is left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            yield entry, fields


def cpu_seconds(session):
    """User + system CPU time of every process in a session (a proxy and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(f[11]) + int(f[12]) for _, f in session_processes(session))
    return total / tick


def write(workdir, name, text):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def nginx_head(workdir, name, connections, rlimit=None):
    """The top of an nginx configuration: one worker in the foreground, its files in `workdir`."""
    limit = f"worker_rlimit_nofile {rlimit};\n" if rlimit else ""
    return (f"daemon off;\nworker_processes 1;\n{limit}pid {workdir}/{name}.pid;\n"
            f"error_log {workdir}/{name}-error.log;\n"
            f"events {{ worker_connections {connections}; }}\n")


def nginx_temp_paths(workdir):
    """Where nginx may buffer bodies: the work directory, not a system path."""
    return "".join(f"{kind}_temp_path {workdir}/tmp;\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def nginx_forwarding(module):
    """The headers faultline adds to every request, so that all proxies do the same work."""
    return (f"{module}_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            f"{module}_set_header X-Forwarded-Proto $scheme;\n"
            f"{module}_set_header Via \"1.1 nginx\";\n"
            f"{module}_set_header X-Request-Id $request_id;\n")


def haproxy_head(maxconn, tls_cache=True, client="30s", keepalive=None, failover=True):
    """The global and defaults sections of a HAProxy configuration: one thread, HTTP mode;
    `client`: its client timeout; `keepalive`: an idle keep-alive timeout of its own (HAProxy's
    default: `client`); `failover`: three retries, the last ones on another server."""
    cache = "" if tls_cache else "    tune.ssl.cachesize 0\n"
    keepalive = f"    timeout http-keep-alive {keepalive}\n" if keepalive else ""
    retries = "    retries 3\n    option redispatch\n" if failover else ""
    return (f"global\n    nbthread 1\n    maxconn {maxconn}\n{cache}\n"
            f"defaults\n    mode http\n    timeout connect 1s\n    timeout client {client}\n"
            f"{keepalive}    timeout server 2s\n{retries}    http-reuse always\n")


def haproxy_forwarding(scheme):
    """The headers faultline adds to every request, so that all proxies do the same work."""
    return ("    option forwardfor\n"
            "    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n"
            "    unique-id-header X-Request-Id\n"
            f"    http-request set-header X-Forwarded-Proto {scheme}\n"
            "    http-request set-header Via \"1.1 haproxy\"\n")


def start_origin(procs, workdir, port):
    conf = write(workdir, "origin.conf", f"""
        daemon off;
        worker_processes 1;
        pid {workdir}/origin.pid;
        error_log {workdir}/origin-error.log;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            client_body_temp_path {workdir}/tmp;
            proxy_temp_path {workdir}/tmp;
            fastcgi_temp_path {workdir}/tmp;
            uwsgi_temp_path {workdir}/tmp;
            scgi_temp_path {workdir}/tmp;
            server {{
                listen 127.0.0.1:{port};
                location / {{ return 200 "hello from the origin\\n"; }}
            }}
        }}
    """)
    procs.start("origin", LOAD_CPU + [tool("nginx"), "-c", conf, "-e",
                                      f"{workdir}/origin-error.log"])
    wait_port(port, "origin")


def start_stall(procs, workdir, port):
    """A backend that accepts connections and never answers."""
    script = write(workdir, "stall.py", f"""
        import socket, threading, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port}))
        s.listen(4096)
        held = []
        while True:
            c, _ = s.accept()
            held.append(c)
    """)
    procs.start("stall", LOAD_CPU + [sys.executable, script])
    wait_port(port, "stalled backend")


def faultline_conf(workdir, name, port, backends, failure):
    backend_lines = "\n".join(f'      - {{ address: "127.0.0.1:{b}" }}' for b in backends)
    health = ""
    if failure:
        health = """
    health:
      passive: { consecutive_failures: 1, base_ejection: 10s, max_ejection: 10s, max_ejected_percent: 67 }"""
    return write(workdir, f"{name}.yaml", f"""
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
upstreams:
  app:
    backends:
{backend_lines}
    timeouts: {{ connect: 1s, response_header: 2s }}{health}
routes:
  - {{ upstream: app, retry: {{ attempts: 3 }} }}
""")


def nginx_conf(workdir, name, port, backends, failure):
    servers = "\n".join(
        f"server 127.0.0.1:{b}{' max_fails=1 fail_timeout=10s' if failure else ''};"
        for b in backends)
    return write(workdir, f"{name}.conf", nginx_head(workdir, name, 4096) + f"""
http {{
access_log off;
{nginx_temp_paths(workdir)}
upstream app {{
{servers}
keepalive 128;
}}
server {{
listen 127.0.0.1:{port};
location / {{
proxy_pass http://app;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_connect_timeout 1s;
proxy_read_timeout 2s;
proxy_next_upstream error timeout;
{nginx_forwarding("proxy")}
proxy_next_upstream_tries 3;
}}
}}
}}
""")


def haproxy_conf(workdir, name, port, backends, failure):
    check = " check observe layer4 error-limit 1 on-error mark-down inter 10s" if failure else ""
    servers = "\n".join(f"    server b{i} 127.0.0.1:{b}{check}" for i, b in enumerate(backends))
    return write(workdir, f"{name}.cfg", haproxy_head(4096) + f"""
frontend f
    bind 127.0.0.1:{port}
{haproxy_forwarding("http")}    default_backend app

backend app
    balance roundrobin
{servers}
""")


def start_proxy(procs, workdir, kind, port, backends, failure=False):
    """Starts a proxy pinned to the proxies' core; returns its process (a session leader)."""
    name = f"{kind}-{'fail' if failure else 'ok'}"
    if kind == "faultline":
        conf = faultline_conf(workdir, name, port, backends, failure)
        env = dict(os.environ, RUST_LOG="error")
        p = procs.start(name, PROXY_CPU + [FAULTLINE_BIN, "-c", conf], env=env)
    elif kind in BARE:
        args, env = bare_command(kind, port, backends)
        p = procs.start(name, PROXY_CPU + args, env=env)
    elif kind == "nginx":
        conf = nginx_conf(workdir, name, port, backends, failure)
        p = procs.start(name, PROXY_CPU + [tool("nginx"), "-c", conf, "-e",
                                           f"{workdir}/{name}-error.log"])
    else:
        conf = haproxy_conf(workdir, name, port, backends, failure)
        p = procs.start(name, PROXY_CPU + [tool("haproxy"), "-db", "-f", conf])
    wait_port(port, name)
    return p


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, duration, connections, timeout="2s", session=None):
    """Drives the proxy on `port`; with `session`, also measures that proxy's CPU time."""
    cpu_before = cpu_seconds(session) if session else 0.0
    out = subprocess.run(
        LOAD_CPU + [tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout}",
         "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 30).stdout
    cpu = cpu_seconds(session) - cpu_before if session else None
    result = {"rps": 0.0, "p50": None, "p99": None, "requests": 0, "non2xx": 0,
              "socket_errors": 0, "timeouts": 0, "cpu_us": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        result["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            result[key] = to_ms(m.group(1), m.group(2))
    m = re.search(r"(\d+) requests in", out)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        result["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        c, r, w, t = map(int, m.groups())
        result["socket_errors"] = c + r + w
        result["timeouts"] = t
    if cpu is not None and result["requests"]:
        result["cpu_us"] = cpu * 1e6 / result["requests"]
    return result


def healthy_scenario(procs, workdir, rounds, duration, connections):
    origin = free_port()
    start_origin(procs, workdir, origin)
    ports = {}
    sessions = {}
    for kind in PROXIES:
        ports[kind] = free_port()
        sessions[kind] = start_proxy(procs, workdir, kind, ports[kind], [origin]).pid
    results = {kind: [] for kind in PROXIES}
    for kind in PROXIES:  # warm-up: connections, pools, caches
        wrk(ports[kind], 2, connections)
    for r in range(rounds):
        order = PROXIES[r % len(PROXIES):] + PROXIES[:r % len(PROXIES)]
        for kind in order:
            res = wrk(ports[kind], duration, connections, session=sessions[kind])
            log(f"round {r + 1} {kind}: {res['rps']:.0f} req/s, p50 {res['p50']} ms, "
                f"p99 {res['p99']} ms, proxy CPU {res['cpu_us']:.1f} us/request")
            results[kind].append(res)
    return results


def ab_scenario(procs, workdir, pair, rounds, duration, connections):
    """Two proxies alternately, each started afresh for its turn and stopped after it (nothing
    else of the benchmark running meanwhile), for `rounds` pairs: the per-pair ratios."""
    origin = free_port()
    start_origin(procs, workdir, origin)
    results = {kind: [] for kind in pair}
    for r in range(rounds):
        for kind in (pair if r % 2 == 0 else pair[::-1]):
            port = free_port()
            p = start_proxy(procs, workdir, kind, port, [origin])
            wrk(port, 1, connections)  # warm-up
            res = wrk(port, duration, connections, session=p.pid)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            log(f"pair {r + 1} {kind}: {res['rps']:.0f} req/s, p99 {res['p99']} ms, "
                f"proxy CPU {res['cpu_us']:.1f} us/request")
            results[kind].append(res)
    return results


def ab_report(results, pair, args):
    a, b = pair
    lines = [
        f"Machine: {machine()}.",
        f"Command: `{' '.join(['python3', 'benches/load.py'] + sys.argv[1:])}`.",
        "",
        f"A/B: {a} and {b} alternately, each started afresh for each turn, {args.rounds} pairs "
        f"of {args.duration}s, wrk -t1 -c{args.connections}; per pair the ratio {a} / {b}.",
        "",
        "| ratio per pair | median | lowest | highest |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (("rps", "requests/s"), ("p99", "p99"), ("cpu_us", "CPU per request")):
        ratios = sorted(x[key] / y[key] for x, y in zip(results[a], results[b])
                        if x.get(key) and y.get(key))
        if ratios:
            lines.append(f"| {label} | {median(ratios):.3f} | {ratios[0]:.3f} | "
                         f"{ratios[-1]:.3f} |")
    return "\n".join(lines)


def failure_scenario(procs, workdir, duration, connections):
    refused = free_port()
    stalled = free_port()
    start_stall(procs, workdir, stalled)
    results = {}
    for kind in ["faultline", "nginx", "haproxy"]:
        # A fresh origin and proxy for each: no state carries over from one proxy to the next.
        origin = free_port()
        sub = os.path.join(workdir, f"origin-{kind}")
        os.makedirs(os.path.join(sub, "tmp"), exist_ok=True)
        start_origin(procs, sub, origin)
        port = free_port()
        start_proxy(procs, workdir, kind, port, [origin, refused, stalled], failure=True)
        res = wrk(port, duration, connections, timeout="1s")
        log(f"failures {kind}: {res}")
        results[kind] = res
    return results


def rss_bytes(session):
    """Resident memory of every process in a session (a proxy and its workers)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry, _ in session_processes(session):
        try:
            with open(f"/proc/{entry}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            continue
    return total


def make_certificate(workdir):
    """A self-signed certificate for `localhost`: (cert, key, both in one file for HAProxy)."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "7", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    both = os.path.join(workdir, "both.pem")
    with open(both, "w") as out:
        for path in (cert, key):
            with open(path) as f:
                out.write(f.read())
    return cert, key, both


def start_connections_proxy(procs, workdir, kind, port, tls_port, backend, certs, idle):
    """A proxy with a plain listener on `port` and a TLS one (HTTP/2 and HTTP/1.1 by ALPN) on
    `tls_port`, whose idle client connections stay open for five minutes."""
    cert, key, both = certs
    name = f"{kind}-conn"
    limit = idle + 1000
    if kind == "faultline":
        conf = write(workdir, f"{name}.yaml", f"""
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
listeners:
  - {{ address: "127.0.0.1:{port}" }}
  - {{ address: "127.0.0.1:{tls_port}", tls: {{ cert: "{cert}", key: "{key}" }} }}
clients: {{ keepalive_timeout: 300s }}
upstreams:
  app: {{ backends: [{{ address: "127.0.0.1:{backend}" }}] }}
routes:
  - {{ upstream: app }}
""")
        env = dict(os.environ, RUST_LOG="error")
        p = procs.start(name, PROXY_CPU + [FAULTLINE_BIN, "-c", conf], env=env)
    elif kind in BARE:
        args, env = bare_command(kind, port, [backend], tls=(tls_port, cert, key))
        p = procs.start(name, PROXY_CPU + args, env=env)
    elif kind == "nginx":
        conf = write(workdir, f"{name}.conf", nginx_head(workdir, name, limit, limit + 100) + f"""
http {{
access_log off;
keepalive_timeout 300s;
keepalive_requests 1000000;
{nginx_temp_paths(workdir)}
upstream app {{ server 127.0.0.1:{backend}; keepalive 128; }}
server {{
listen 127.0.0.1:{port};
listen 127.0.0.1:{tls_port} ssl http2;
ssl_certificate {cert};
ssl_certificate_key {key};
location / {{
proxy_pass http://app;
proxy_http_version 1.1;
proxy_set_header Connection "";
}}
}}
}}
""")
        p = procs.start(name, PROXY_CPU + [tool("nginx"), "-c", conf, "-e",
                                           f"{workdir}/{name}-error.log"])
    else:
        head = haproxy_head(haproxy_maxconn(limit), client="300s", keepalive="300s",
                            failover=False)
        conf = write(workdir, f"{name}.cfg", head + f"""
frontend f
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{tls_port} ssl crt {both} alpn h2,http/1.1
    default_backend app

backend app
    server b0 127.0.0.1:{backend}
""")
        p = procs.start(name, PROXY_CPU + [tool("haproxy"), "-db", "-f", conf])
    wait_port(port, name)
    wait_port(tls_port, name)
    return p


def haproxy_maxconn(wanted):
    """HAProxy refuses to start unless it may open two descriptors per connection (and a few
    more): its maxconn within this process's descriptor limit."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return min(wanted, (hard - 100) // 2)


class IdleClients:
    """benches/idle_clients.py holding `n` idle connections until `close`."""

    def __init__(self, port, n, proto, deadline):
        sources = ",".join(f"127.0.0.{1 + i}" for i in range(-(-n // PORTS_PER_SOURCE)))
        self.proc = subprocess.Popen(
            LOAD_CPU + [sys.executable, IDLE_CLIENTS, "--port", str(port), "-n", str(n),
                        "--proto", proto, "--sources", sources],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.opened = self.failed = 0
        line = read_line(self.proc.stdout, deadline)
        m = re.match(r"open (\d+) (\d+)", line or "")
        if not m:
            self.close()
            raise SystemExit(f"idle clients did not report their connections: {line!r}")
        self.opened, self.failed = int(m.group(1)), int(m.group(2))

    def close(self):
        """Closes the connections; how many were still open (the proxy closed none)."""
        still = None
        try:
            self.proc.stdin.close()
            line = read_line(self.proc.stdout, 30)
            m = re.match(r"still-open (\d+)", line or "")
            still = int(m.group(1)) if m else None
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return still


def read_line(stream, timeout):
    """One line from a child's output, waiting `timeout` seconds at most."""
    import selectors
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    return stream.readline().strip()


def settled_rss(session, wait=2.0):
    """The session's RSS once it stopped moving (or after `wait` more seconds)."""
    time.sleep(0.5)
    last = rss_bytes(session)
    deadline = time.time() + wait
    while time.time() < deadline:
        time.sleep(0.5)
        now = rss_bytes(session)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def connections_scenario(procs, workdir, proxies, n, duration, connections):
    certs = make_certificate(workdir)
    origin = free_port()
    start_origin(procs, workdir, origin)
    results = {}
    for kind in proxies:
        for proto in ("h1", "h2"):
            port, tls_port = free_port(), free_port()
            p = start_connections_proxy(procs, workdir, kind, port, tls_port, origin, certs, n)
            wrk(port, 2, connections)  # warm-up: connections, pools, caches
            base = wrk(port, duration, connections, session=p.pid)
            before = settled_rss(p.pid)
            started = time.time()
            # Room for wrk's connections beside the idle ones.
            idle_n = min(n, haproxy_maxconn(n + 1000) - connections - 100) \
                if kind == "haproxy" else n
            held = IdleClients(tls_port if proto == "h2" else port, idle_n, proto,
                               deadline=max(60, n / 50))
            opening = time.time() - started
            idle = settled_rss(p.pid)
            under = wrk(port, duration, connections, session=p.pid)
            after = settled_rss(p.pid)
            still = held.close()
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            per = (idle - before) / max(held.opened, 1)
            per_after = (after - before) / max(held.opened, 1)
            res = {"opened": held.opened, "failed": held.failed, "still": still,
                   "before": before, "idle": idle, "after": after, "per": per,
                   "per_after": per_after, "rps": base["rps"], "rps_idle": under["rps"],
                   "cpu_us": base["cpu_us"], "cpu_us_idle": under["cpu_us"],
                   "errors": under["non2xx"] + under["socket_errors"], "opening": opening}
            log(f"connections {kind} {proto}: {held.opened} open ({held.failed} failed, "
                f"{still} still open at the end) in {opening:.1f}s; RSS {before / 2**20:.1f} -> "
                f"{idle / 2**20:.1f} MiB ({per / 1024:.2f} KiB/connection), "
                f"{after / 2**20:.1f} MiB after load; {base['rps']:.0f} -> "
                f"{under['rps']:.0f} req/s")
            results[(kind, proto)] = res
    return results


def connections_report(results, proxies, args):
    load = os.getloadavg()
    lines = [
        f"Machine: {machine()}; load average at the end {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}.",
        f"Command: `{' '.join(['python3', 'benches/load.py'] + sys.argv[1:])}`.",
        "",
        f"Connections: {args.idle} idle client connections per proxy (each made one request, "
        f"then stayed silent), HTTP/1.1 keep-alive on a plain listener, or HTTP/2 over TLS on "
        f"a fresh start of the proxy; one worker per proxy. RSS of the proxy's processes "
        f"(after a warm-up load) before the connections, with them held, and after "
        f"{args.duration}s of wrk -t1 -c{args.connections} on the plain listener while they "
        f"were held; requests/s of that load without and with the idle connections"
        + ("; proxies pinned to core 0, idle clients, origin and wrk to core 1." if PIN else "."),
        "",
        "| proxy | idle | open | RSS before MiB | RSS held MiB | KiB per connection | "
        "KiB per connection after load | requests/s without / with | CPU µs/request "
        "without / with |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in proxies:
        for proto, label in (("h1", "HTTP/1.1"), ("h2", "HTTP/2 TLS")):
            r = results.get((kind, proto))
            if not r:
                continue
            lost = "" if r["still"] in (None, r["opened"]) else f" ({r['still']} at the end)"
            failed = f", {r['failed']} failed" if r["failed"] else ""
            cpu = (f"{r['cpu_us']:.1f} / {r['cpu_us_idle']:.1f}"
                   if r["cpu_us"] and r["cpu_us_idle"] else "–")
            lines.append(
                f"| {kind} | {label} | {r['opened']}{failed}{lost} | "
                f"{r['before'] / 2**20:.1f} | {r['idle'] / 2**20:.1f} | {r['per'] / 1024:.2f} | "
                f"{r['per_after'] / 1024:.2f} | {r['rps']:,.0f} / {r['rps_idle']:,.0f} | {cpu} |")
    return "\n".join(lines)


def start_edge_proxy(procs, workdir, kind, tls_port, backend, certs, grpc, prefix=None,
                     wait=15.0):
    """A proxy with one TLS listener on `tls_port` (HTTP/2 and HTTP/1.1 by ALPN, the same
    ECDSA P-256 certificate for all) in front of `backend`: the nginx origin over HTTP/1.1 with
    keep-alive, or, with `grpc`, the gRPC origin over h2c. Each proxy sets the four headers
    faultline sets, as in the healthy scenario. nginx, HAProxy and faultline resume no TLS
    session (no session cache, no stateless tickets; faultline `session_resumption: false`;
    HAProxy takes the client's cipher order, as the others do); bare Pingora has no such
    setting: rustls' defaults, a 256-entry session cache that its TLS 1.3 tickets refer to (see
    `tls_resumption`). `prefix`: what the proxy's command runs under (default: pinned to the
    proxy core); `wait`: how long it may take to listen."""
    cert, key, both = certs
    cpu = PROXY_CPU if prefix is None else prefix
    name = f"{kind}-{'grpc' if grpc else 'tls'}"
    if kind == "faultline":
        protocol = "\n    protocol: h2c" if grpc else ""
        conf = write(workdir, f"{name}.yaml", f"""
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
listeners:
  - address: "127.0.0.1:{tls_port}"
    tls: {{ cert: "{cert}", key: "{key}", session_resumption: false }}
upstreams:
  app:
    backends: [{{ address: "127.0.0.1:{backend}" }}]
    timeouts: {{ connect: 1s, response_header: 2s }}{protocol}
routes:
  - {{ upstream: app, retry: {{ attempts: 3 }} }}
""")
        env = dict(os.environ, RUST_LOG="error")
        p = procs.start(name, cpu + [FAULTLINE_BIN, "-c", conf], env=env)
    elif kind in BARE:
        args, env = bare_command(kind, free_port(), [backend], tls=(tls_port, cert, key))
        if grpc:
            env["H2C"] = "1"
        p = procs.start(name, cpu + args, env=env)
    elif kind == "nginx":
        # grpc_pass speaks HTTP/2 to the origin (one stream per upstream connection).
        module = "grpc" if grpc else "proxy"
        upstream = "grpc_pass grpc://app;" if grpc else (
            'proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";')
        conf = write(workdir, f"{name}.conf", nginx_head(workdir, name, 4096) + f"""
http {{
access_log off;
keepalive_requests 1000000;
{nginx_temp_paths(workdir)}
upstream app {{ server 127.0.0.1:{backend}; keepalive 128; }}
server {{
listen 127.0.0.1:{tls_port} ssl http2;
ssl_certificate {cert};
ssl_certificate_key {key};
ssl_protocols TLSv1.2 TLSv1.3;
ssl_session_cache off;
ssl_session_tickets off;
location / {{
{upstream}
{module}_connect_timeout 1s;
{module}_read_timeout 2s;
{module}_next_upstream error timeout;
{module}_next_upstream_tries 3;
{nginx_forwarding(module)}
}}
}}
}}
""")
        p = procs.start(name, cpu + [tool("nginx"), "-c", conf, "-e",
                                     f"{workdir}/{name}-error.log"])
    else:
        conf = write(workdir, f"{name}.cfg", haproxy_head(4096, tls_cache=False) + f"""
frontend f
    bind 127.0.0.1:{tls_port} ssl crt {both} alpn h2,http/1.1 no-tls-tickets prefer-client-ciphers
{haproxy_forwarding("https")}    default_backend app

backend app
    server b0 127.0.0.1:{backend}{" proto h2" if grpc else ""}
""")
        p = procs.start(name, cpu + [tool("haproxy"), "-db", "-f", conf])
    wait_port(tls_port, name, timeout=wait)
    return p


def start_grpc_origin(procs, port):
    """examples/grpc_origin.rs (tonic, h2c) on `port`, on the load generator's core."""
    binary = os.path.join(ROOT, "target/release/examples/grpc_origin")
    procs.start("grpc-origin", LOAD_CPU + [binary, f"127.0.0.1:{port}"])
    wait_port(port, "gRPC origin")


def grpc_body(workdir):
    """The file of one gRPC request body: GRPC_MESSAGE behind the 5-byte prefix (not
    compressed, then the length, big-endian)."""
    path = os.path.join(workdir, "grpc-request.bin")
    with open(path, "wb") as f:
        f.write(b"\x00" + len(GRPC_MESSAGE).to_bytes(4, "big") + GRPC_MESSAGE)
    return path


def grpc_options(body):
    """h2load's options that make each request a gRPC call with the message in file `body`
    (to `GRPC_PATH`)."""
    return ["-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_check(port, body):
    """One gRPC call through the proxy on `port` with nghttp (HTTP/2 over TLS), since h2load
    counts HTTP statuses only: the call's grpc-status (from the trailers, or from a
    Trailers-Only answer's header; None without one, or without an answer in 10 s) and whether
    the message came back."""
    try:
        out = subprocess.run([tool("nghttp"), "-v", "-d", body, "-H",
                              "content-type: application/grpc", "-H", "te: trailers",
                              f"https://127.0.0.1:{port}{GRPC_PATH}"],
                             capture_output=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return None, False
    m = re.search(rb"recv \(stream_id=\d+\) grpc-status: (\d+)", out)
    return (int(m.group(1)) if m else None), GRPC_MESSAGE in out


def tls_resumption(port, workdir):
    """What the proxy on `port` does about TLS session resumption, asked as a client would
    (openssl s_client, TLS 1.3): how many session tickets one full handshake brings, and
    whether a second connection offering that session is resumed. (h2load, the client of the
    scenarios, never offers a session: every connection it opens is a full handshake.) A
    connection that does not end within 10 s counts as no tickets, or as not resumed."""
    saved = os.path.join(workdir, f"session-{port}.pem")
    client = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
              "localhost", "-tls1_3", "-alpn", "http/1.1", "-ign_eof"]
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    def connect(*session):
        try:
            return subprocess.run(client + list(session), input=request, capture_output=True,
                                  timeout=10).stdout
        except subprocess.TimeoutExpired:
            return b""
    tickets = connect("-sess_out", saved).count(b"Post-Handshake New Session Ticket arrived")
    if not os.path.exists(saved):
        return tickets, False
    return tickets, b"Reused, TLSv1.3" in connect("-sess_in", saved)


def children_cpu():
    """User + system CPU time of this script's finished children (h2load among them)."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def h2load(port, options, duration=None, session=None, log_file=None, path="/"):
    """One h2load run against the TLS listener on `port` with h2load's `options` (clients,
    streams, --h1, a body…), bounded by `-D duration` when given, else by the request count in
    `options`. With `session`, the proxy's CPU time meanwhile; with `log_file`, p50 and p99
    from h2load's per-request log. The CPU time h2load itself used is reported too. The URL
    names `localhost`, so that the handshakes carry a server name (SNI) as a browser's do."""
    cpu_before = cpu_seconds(session) if session else 0.0
    client_before = children_cpu()
    args = LOAD_CPU + [tool("h2load"), "-t1", f"--connect-to=127.0.0.1:{port}", *options]
    if duration:
        args += ["-D", str(duration)]
    if log_file:
        args += ["--log-file", log_file]
    out = subprocess.run(args + [f"https://localhost:{port}{path}"], capture_output=True,
                         text=True, timeout=(duration or 0) + 60).stdout
    result = {"rps": 0.0, "ok": 0, "failed": 0, "elapsed": 0.0, "p50": None, "p99": None,
              "cpu": cpu_seconds(session) - cpu_before if session else None,
              "client_cpu": children_cpu() - client_before, "tls": None}
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    if m:
        result["elapsed"] = to_ms(m.group(1), m.group(2)) / 1000
        result["rps"] = float(m.group(3))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", out)
    if m:
        result["failed"] = int(m.group(1))
    m = re.search(r"status codes: (\d+) 2xx", out)
    if m:
        result["ok"] = int(m.group(1))
    tls = [re.search(rf"^{field}: (.+)$", out, re.M) for field in
           ("TLS Protocol", "Cipher", "Server Temp Key")]
    if all(tls):
        result["tls"] = ", ".join(t.group(1).strip() for t in tls)
    if log_file and os.path.exists(log_file):
        with open(log_file) as f:
            times = sorted(int(cols[2]) for cols in (line.split("\t") for line in f)
                           if len(cols) == 3 and cols[1].startswith("2"))
        os.remove(log_file)
        if times:
            result["p50"] = times[len(times) // 2] / 1000
            result["p99"] = times[min(len(times) - 1, len(times) * 99 // 100)] / 1000
    return result


def edge_round(scenario, port, duration, session, workdir, body):
    """One round of an edge scenario against the proxy on `port`, `duration` seconds: the
    round's rate (requests or handshakes per second), latency, failures, and the proxy's and
    h2load's CPU time per request (or handshake)."""
    log_file = os.path.join(workdir, "h2load.log")
    if scenario == "h2tls":
        res = h2load(port, ["-c16", "-m10"], duration, session, log_file)
    elif scenario == "h1tls":
        res = h2load(port, ["--h1", "-c64"], duration, session, log_file)
    elif scenario == "grpc":
        res = h2load(port, ["-c16", "-m10"] + grpc_options(body), duration, session, log_file,
                     path=GRPC_PATH)
    else:
        res = handshakes(port, duration, session)
    done = max(res["ok"], 1)
    res["cpu_us"] = res["cpu"] * 1e6 / done if res["cpu"] is not None else None
    res["client_cpu_us"] = res["client_cpu"] * 1e6 / done
    return res


def handshakes(port, duration, session):
    """Full TLS handshakes for `duration` seconds: h2load runs one after the other, each
    opening HANDSHAKE_BATCH HTTP/1.1 connections at once, each connection one handshake and one
    request, then closed (bounded: as many runs as fit in the time, at most 100 per second).
    The rate is the handshakes over the time h2load's runs took; the proxy's CPU time is taken
    over the whole round, the closing of the last connections included."""
    total = {"rps": 0.0, "ok": 0, "failed": 0, "elapsed": 0.0, "p50": None, "p99": None,
             "cpu": None, "client_cpu": 0.0, "tls": None}
    cpu_before = cpu_seconds(session) if session else 0.0
    deadline = time.time() + duration
    for _ in range(duration * 100):
        if time.time() >= deadline:
            break
        res = h2load(port, ["--h1", f"-c{HANDSHAKE_BATCH}", f"-n{HANDSHAKE_BATCH}"])
        for key in ("ok", "failed", "elapsed", "client_cpu"):
            total[key] += res[key]
        total["tls"] = total["tls"] or res["tls"]
    if session:
        time.sleep(0.2)  # the proxy's side of the last connections' close
        total["cpu"] = cpu_seconds(session) - cpu_before
    total["rps"] = total["ok"] / total["elapsed"] if total["elapsed"] else 0.0
    return total


def edge_scenario(procs, workdir, scenarios, proxies, rounds, duration):
    """The TLS edge scenarios (EDGE_SCENARIOS), each in `rounds` interleaved rounds over
    `proxies` started together, all with the same certificate. h2tls, h1tls and handshakes go
    through proxies in front of the nginx origin, grpc through proxies started afresh in front
    of the gRPC origin. Per proxy also: its TLS resumption behaviour, and one gRPC call's
    grpc-status."""
    certs = make_certificate(workdir)
    body = grpc_body(workdir)
    results = {s: {kind: [] for kind in proxies} for s in scenarios}
    info = {kind: {} for kind in proxies}
    for grpc in (False, True):
        batch = [s for s in scenarios if (s == "grpc") == grpc]
        if not batch:
            continue
        backend = free_port()
        if grpc:
            start_grpc_origin(procs, backend)
        else:
            start_origin(procs, workdir, backend)
        ports, started = {}, {}
        for kind in proxies:
            ports[kind] = free_port()
            started[kind] = start_edge_proxy(procs, workdir, kind, ports[kind], backend, certs,
                                             grpc)
        for kind in proxies:
            if "resumption" not in info[kind]:
                info[kind]["resumption"] = tls_resumption(ports[kind], workdir)
                log(f"tls {kind}: {info[kind]['resumption'][0]} session tickets, resumed "
                    f"{info[kind]['resumption'][1]}")
            if grpc:
                info[kind]["grpc"] = [grpc_check(ports[kind], body)]
        for scenario in batch:
            for kind in proxies:  # warm-up: connections, pools, caches
                edge_round(scenario, ports[kind], 1, None, workdir, body)
            for r in range(rounds):
                for kind in proxies[r % len(proxies):] + proxies[:r % len(proxies)]:
                    res = edge_round(scenario, ports[kind], duration, started[kind].pid,
                                     workdir, body)
                    log(f"{scenario} round {r + 1} {kind}: {res['rps']:.0f}/s, p50 {res['p50']} "
                        f"ms, p99 {res['p99']} ms, proxy CPU {res['cpu_us'] or 0:.1f} us, "
                        f"h2load CPU {res['client_cpu_us']:.1f} us, {res['failed']} failed")
                    results[scenario][kind].append(res)
        for kind in proxies:
            if grpc:  # and once more after the load
                info[kind]["grpc"].append(grpc_check(ports[kind], body))
                log(f"grpc {kind}: (grpc-status, message back) before and after the load: "
                    f"{info[kind]['grpc']}")
        for p in started.values():
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    return results, info


def edge_report(results, info, proxies, args):
    """A table per edge scenario, with faultline's ratios to the other proxies."""
    load = os.getloadavg()
    lines = [
        f"Machine: {machine()}; h2load {h2load_version()}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        f"Command: `{' '.join(['python3', 'benches/load.py'] + sys.argv[1:])}`.",
        "",
        f"{args.rounds} interleaved rounds of {args.duration}s per scenario, one worker per "
        "proxy, TLS on the client side (one ECDSA P-256 certificate; the version, cipher and "
        "key exchange h2load reported are in the TLS column), medians over rounds"
        + ("; proxies pinned to core 0, origin and h2load to core 1." if PIN else "."),
        "TLS session resumption: nginx `ssl_session_cache off; ssl_session_tickets off;`, "
        "HAProxy `no-tls-tickets` and `tune.ssl.cachesize 0`, faultline "
        "`session_resumption: false`; bare Pingora keeps rustls' defaults, which no setting of "
        "Pingora's changes (a 256-entry session cache, which the TLS 1.3 tickets refer to). "
        "As openssl s_client saw it (tickets after one "
        "handshake, whether a second connection offering one was resumed): "
        + "; ".join(f"{kind} {info[kind]['resumption'][0]}, "
                    f"{'resumed' if info[kind]['resumption'][1] else 'not resumed'}"
                    for kind in proxies if "resumption" in info[kind])
        + ". h2load never offers a session: every handshake measured is a full one.",
    ]
    titles = {
        "h2tls": ("HTTP/2 over TLS, h2load -c16 -m10 to the nginx origin", "requests/s",
                  "request"),
        "h1tls": ("HTTP/1.1 over TLS with keep-alive, h2load --h1 -c64 to the nginx origin",
                  "requests/s", "request"),
        "handshakes": (f"full TLS handshakes, h2load --h1 -c{HANDSHAKE_BATCH} "
                       f"-n{HANDSHAKE_BATCH} run after run, each connection one handshake and "
                       "one request; h2load's side of a handshake costs about what the proxy's "
                       "does, so the rate is bounded by the one client core for every proxy "
                       "alike: the proxy's CPU per handshake is the figure that compares them",
                       "handshakes/s", "handshake"),
        "grpc": (f"gRPC unary calls ({GRPC_PATH}, {len(GRPC_MESSAGE)}-byte message) over "
                 "HTTP/2 over TLS, h2load -c16 -m10, to a tonic origin over h2c "
                 "(examples/grpc_origin.rs); one call per proxy with nghttp before the load "
                 "and one after, for its grpc-status (h2load counts HTTP statuses only)",
                 "calls/s", "call"),
    }
    for scenario in (s for s in EDGE_SCENARIOS if s in results):
        title, rate, unit = titles[scenario]
        extra = " grpc-status before / after |" if scenario == "grpc" else ""
        lines += [
            "",
            f"**{scenario}**: {title}.",
            "",
            f"| proxy | {rate} | p50 ms | p99 ms | proxy CPU µs/{unit} | h2load CPU µs/{unit} "
            f"| failed | TLS |{extra}",
            "|---|---:|---:|---:|---:|---:|---:|---|" + ("---|" if extra else ""),
        ]
        summary = {}
        for kind in proxies:
            runs = results[scenario][kind]
            summary[kind] = [median([r[key] for r in runs]) for key in ("rps", "p99", "cpu_us")]
            p50 = median([r["p50"] for r in runs])
            cell = ""
            if scenario == "grpc":
                cell = " " + " / ".join(f"{status}{'' if echoed else ' (message not echoed)'}"
                                        for status, echoed in info[kind]["grpc"]) + " |"
            lines.append(
                f"| {kind} | {summary[kind][0]:,.0f} | {figure(p50, '.2f')} | "
                f"{figure(summary[kind][1], '.2f')} | {figure(summary[kind][2], '.1f')} | "
                f"{median([r['client_cpu_us'] for r in runs]):.1f} | "
                f"{sum(r['failed'] for r in runs)} | "
                f"{next((r['tls'] for r in runs if r['tls']), '–')} |{cell}")
        if "faultline" not in proxies:
            continue
        lines += ["", f"| ratio | {rate} | p99 | proxy CPU per {unit} | {rate}, per round "
                  f"| proxy CPU per {unit}, per round |", "|---|---:|---:|---:|---:|---:|"]
        for other in (kind for kind in proxies if kind != "faultline"):
            ratios = [f / o if o else float("nan")
                      for f, o in zip(summary["faultline"], summary[other])]
            rounds = list(zip(results[scenario]["faultline"], results[scenario][other]))
            paired = [per_round(rounds, key) for key in ("rps", "cpu_us")]
            lines.append(f"| faultline / {other} | "
                         + " | ".join(figure(r, ".3f") for r in ratios) + " | "
                         + " | ".join(paired) + " |")
        lines += ["", "Per round: the median, and the quartiles, of the ratios of the two "
                  "proxies' runs in the same round (run one after the other), which the "
                  "machine's drift between rounds moves less than the ratio of the medians."]
    return "\n".join(lines)


def per_round(rounds, key):
    """The ratios of `key` between the two proxies of each round: median (quartiles)."""
    ratios = sorted(a[key] / b[key] for a, b in rounds if a.get(key) and b.get(key))
    if not ratios:
        return "–"
    return (f"{median(ratios):.3f} ({ratios[len(ratios) // 4]:.3f}–"
            f"{ratios[(3 * len(ratios)) // 4]:.3f})")


def figure(value, spec):
    """`value` formatted by `spec`, or a dash where there is none (NaN)."""
    return "–" if value != value else format(value, spec)


def h2load_version():
    """h2load's version, as it gives it (`nghttp2/1.52.0`)."""
    out = subprocess.run([tool("h2load"), "--version"], capture_output=True, text=True).stdout
    return out.split()[-1] if out.split() else "unknown"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
            f"nginx, HAProxy and wrk from the distribution")


def report(healthy, failures, args):
    rows = []
    summary = {}
    lines = [
        f"Machine: {machine()}.",
        f"Command: `{' '.join(['python3', 'benches/load.py'] + sys.argv[1:])}`.",
        "",
    ]
    if healthy:
        for kind in PROXIES:
            rps = median([r["rps"] for r in healthy[kind]])
            p50 = median([r["p50"] for r in healthy[kind]])
            p99 = median([r["p99"] for r in healthy[kind]])
            cpu = median([r["cpu_us"] for r in healthy[kind]])
            errs = sum(r["non2xx"] + r["socket_errors"] for r in healthy[kind])
            summary[kind] = (rps, p99, cpu)
            rows.append(f"| {kind} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {errs} |")
        f_rps, f_p99, f_cpu = summary["faultline"]
        lines += [
            f"Healthy: {args.rounds} interleaved rounds of {args.duration}s, wrk -t1 "
            f"-c{args.connections}, one worker per proxy, one nginx origin; medians over rounds"
            + ("; proxies pinned to core 0, origin and wrk to core 1." if PIN else "."),
            "",
            "| proxy | requests/s | p50 ms | p99 ms | proxy CPU µs/request | errors |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Ratios of the medians above, and, paired, the median over rounds of each round's "
            "own ratio (the two proxies ran minutes apart at most, so a slow drift in what else "
            "the machine is doing cancels out), with the spread of those per-round ratios.",
            "",
            "| ratio | requests/s | p99 | CPU per request | requests/s, paired | "
            "CPU per request, paired |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for other in PROXIES[1:]:
            o_rps, o_p99, o_cpu = summary[other]
            paired = {
                key: [f[key] / o[key] for f, o in zip(healthy["faultline"], healthy[other])
                      if f.get(key) and o.get(key)]
                for key in ("rps", "cpu_us")
            }
            cells = [
                f"{median(paired[key]):.3f} ({min(paired[key], default=0):.3f}–"
                f"{max(paired[key], default=0):.3f})"
                for key in ("rps", "cpu_us")
            ]
            lines.append(f"| faultline / {other} | {f_rps / o_rps:.3f} | {f_p99 / o_p99:.3f} | "
                         f"{f_cpu / o_cpu:.3f} | {cells[0]} | {cells[1]} |")
    if not failures:
        return "\n".join(lines)
    lines += [
        "",
        f"Failure scenario: three backends (one refusing, one accepting but never answering), "
        f"{args.fail_duration}s, wrk -t1 -c{args.fail_connections} --timeout 1s.",
        "",
        "| proxy | requests | client-visible errors | slower than 1 s | requests/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in failures.items():
        lines.append(f"| {kind} | {r['requests']} | {r['non2xx'] + r['socket_errors']} | "
                     f"{r['timeouts']} | {r['rps']:,.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short rounds (smoke test)")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--scenario", default="all",
                        choices=["all", "healthy", "failures", "connections", "edge"]
                        + EDGE_SCENARIOS,
                        help="all: healthy and failures (connections apart); edge: "
                             f"{', '.join(EDGE_SCENARIOS)}")
    parser.add_argument("--rounds", type=int, help="healthy rounds (default 5; --quick 2)")
    parser.add_argument("--duration", type=int, help="seconds per healthy round (default 10)")
    parser.add_argument("--ab", metavar="A,B",
                        help="only an A/B of two proxies (e.g. faultline,bare-pingora), each "
                             "started afresh for each turn; --rounds pairs (default 12) of "
                             "--duration seconds (default 5)")
    parser.add_argument("--idle", type=int, default=10000,
                        help="idle connections per proxy in the connections scenario")
    parser.add_argument("--proxies", help="connections and edge scenarios: which proxies, "
                        f"comma-separated, of {', '.join(ALL_PROXIES)} "
                        f"(default {','.join(CONNECTION_PROXIES)})")
    args = parser.parse_args()
    proxies = args.proxies.split(",") if args.proxies else CONNECTION_PROXIES
    if any(kind not in ALL_PROXIES for kind in proxies):
        parser.error(f"--proxies takes some of {', '.join(ALL_PROXIES)}")
    pair = args.ab.split(",") if args.ab else None
    if pair and (len(pair) != 2 or any(kind not in ALL_PROXIES for kind in pair)):
        parser.error(f"--ab takes two of {', '.join(ALL_PROXIES)}")
    default_rounds, default_duration = (12, 5) if pair else (5, 10)
    args.rounds = args.rounds or (2 if args.quick else default_rounds)
    args.duration = args.duration or (3 if args.quick else default_duration)
    args.connections = 64
    args.fail_duration = 5 if args.quick else 15
    args.fail_connections = 16

    ensure_tools()
    if not args.skip_build:
        build()
    workdir = tempfile.mkdtemp(prefix="faultline-load-")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    procs = Procs(workdir)
    edge = EDGE_SCENARIOS if args.scenario == "edge" else \
        [args.scenario] if args.scenario in EDGE_SCENARIOS else []
    healthy, failures, ab, conns, edged = None, None, None, None, None
    try:
        if not pair and edge:
            edged = edge_scenario(procs, workdir, edge, proxies, args.rounds, args.duration)
        if not pair and args.scenario == "connections":
            conns = connections_scenario(procs, workdir, proxies, args.idle, args.duration,
                                         args.connections)
        if pair:
            ab = ab_scenario(procs, workdir, pair, args.rounds, args.duration,
                             args.connections)
        if not pair and args.scenario in ("all", "healthy"):
            healthy = healthy_scenario(procs, workdir, args.rounds, args.duration,
                                       args.connections)
            procs.stop_all()
            procs = Procs(workdir)
        if not pair and args.scenario in ("all", "failures"):
            failures = failure_scenario(procs, workdir, args.fail_duration,
                                        args.fail_connections)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if pair:
        print(ab_report(ab, pair, args))
        return
    if conns is not None:
        print(connections_report(conns, proxies, args))
        return
    if edged is not None:
        print(edge_report(*edged, proxies, args))
        return
    print(report(healthy, failures, args))


if __name__ == "__main__":
    main()
