#!/usr/bin/env python3
"""Instructions and system calls per proxied request: faultline, bare Pingora, nginx, HAProxy.

Throughput on a small shared machine moves by more between runs than the gap between two
proxies; an instruction count does not: the same binary, inputs and environment give the same
count whatever else the machine is doing. Each proxy runs under `valgrind --tool=callgrind`, is
warmed up, has its counters zeroed, serves exactly N keep-alive GET requests from a small client
(the same for both) to one nginx origin, and the instructions it executed in that window are
divided by N. Four Pingora proxies: bare Pingora as written (the system allocator), the same with
jemalloc (the `faultline` binary's allocator: the difference to faultline is then faultline's own
work), bare Pingora setting the four headers faultline adds to every request (`FORWARDING=1`),
and faultline; and, with `--kinds`, nginx and HAProxy as the load benchmark configures them (the
same four headers; nginx with `master_process off`, HAProxy with `-db`, one thread each, so that
one process does all the work under valgrind).

With `--syscalls` the same proxies run without valgrind and `strace -f -c` is attached to every
thread after the warm-up, for the N requests only: system calls per request by name, and how
many of them failed (a `recvfrom` or `read` answering EAGAIN). strace slows every system call,
which can change how many events one `epoll_wait` returns; the counts are those of this client.

    python3 benches/instructions.py              # 20000 requests each
    python3 benches/instructions.py --requests 5000 --skip-build
    python3 benches/instructions.py --skip-build --kinds nginx,haproxy,bare-pingora
    python3 benches/instructions.py --skip-build --syscalls --requests 5000 --kinds all
    python3 benches/instructions.py --skip-build --kinds faultline --server 'work_stealing: false'
    python3 benches/instructions.py --save /tmp/cg   # then: callgrind_annotate --inclusive=yes
                                                     # or: benches/cost_groups.py
    python3 benches/instructions.py --skip-build --tls --save /tmp/cg-tls
        # over TLS: HTTP/2 and HTTP/1.1 requests, full handshakes, gRPC calls (Pingora builds,
        # faultline)
    python3 benches/instructions.py --skip-build --tls --cache-sim --requests 3000 --handshakes 10
        # and the cache misses per request, simulated for one core of this machine
    python3 benches/instructions.py --skip-build --tls --syscalls --requests 50000
        # CPU time (user, system) and system calls per request over TLS under h2load, with perf
    python3 benches/instructions.py --skip-build --only A=/tmp/faultline-a,B=/tmp/faultline-b
        # two faultline builds against each other, run alternately (paired comparison)

Loopback only; every wait has a deadline and the request count is fixed.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the load benchmark's origin, proxy configs and process handling)

CONNECTIONS = 4

KINDS = ["bare-pingora", "bare+jemalloc", "pingora+headers", "faultline"]
# More of Pingora's `ServerConf` for faultline's `server:` section (`--server`), e.g.
# "work_stealing: false": the levers Pingora's configuration offers, measured one at a time.
SERVER_EXTRA = ""
# Bare Pingora with jemalloc setting the four headers the plain Pingora way (`--kinds`).
HEADERS_JEMALLOC = "headers+jemalloc"
# `--kinds all`: the Pingora proxies and the two the load benchmark compares them with.
ALL_KINDS = KINDS + [HEADERS_JEMALLOC, "nginx", "haproxy"]

# `--cache-sim`: callgrind's options that also simulate the caches of one core of this machine
# (None when off), and the events per unit of work of each measurement, by (kind, shape).
CACHE_SIM = None
EVENTS = {}
# The simulated misses reported, with their labels.
MISSES = (("I1mr", "first-level instruction cache"),
          ("ILmr", "L2, instructions"),
          ("DLmr+DLmw", "L2, data"))

# A browser-like request, for the second measurement: the minimal `GET` with only `Host` is the
# worst case for a proxy that adds headers (the header maps Pingora sizes to the request grow).
BROWSER_HEADERS = (
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://bench.example/start\r\n"
    b"Cookie: session=4f1c2a9b7e3d; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Priority: u=0, i\r\n"
)


def ensure_valgrind():
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    load.log("installing valgrind")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "valgrind"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def drive(port, total, extra=b""):
    """Sends `total` GET requests (with `extra` header lines) over CONNECTIONS keep-alive
    connections; returns the count of 200 responses."""
    per = [total // CONNECTIONS + (1 if i < total % CONNECTIONS else 0)
           for i in range(CONNECTIONS)]
    ok = [0] * CONNECTIONS
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n" + extra + b"\r\n"

    def one(i):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        buf = b""
        for _ in range(per[i]):
            s.sendall(request)
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            while len(buf) < length:
                chunk = s.recv(65536)
                if not chunk:
                    return
                buf += chunk
            buf = buf[length:]
            if head.startswith(b"HTTP/1.1 200"):
                ok[i] += 1
        s.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return sum(ok)


def command(workdir, kind, name, port, origin, binary=None):
    """The command line and environment of one proxy serving `port` from the origin, as the
    load benchmark configures it; nginx and HAProxy in one process (no master, one thread)."""
    if kind == "faultline" or binary:
        conf = load.faultline_conf(workdir, name, port, [origin], False)
        if SERVER_EXTRA:
            with open(conf) as f:
                text = f.read()
            with open(conf, "w") as f:
                f.write(text.replace("graceful_shutdown_timeout_seconds: 1 }",
                                     f"graceful_shutdown_timeout_seconds: 1, {SERVER_EXTRA} }}",
                                     1))
        return [binary or load.FAULTLINE_BIN, "-c", conf], dict(os.environ, RUST_LOG="error")
    if kind == "nginx":
        conf = load.nginx_conf(workdir, name, port, [origin], False)
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            # nginx closes a client connection after 1000 requests by default; the others do not.
            text = text.replace("access_log off;", "access_log off;\nkeepalive_requests 1000000;", 1)
            f.write(text.replace("daemon off;", "daemon off;\nmaster_process off;", 1))
        return [load.tool("nginx"), "-c", conf, "-e", f"{workdir}/{name}-error.log"], None
    if kind == "haproxy":
        conf = load.haproxy_conf(workdir, name, port, [origin], False)
        return [load.tool("haproxy"), "-db", "-f", conf], None
    return load.bare_command(kind, port, [origin])


def tag_of(kind, what):
    """The name of one measurement of `kind` (its files, its process, its `EVENTS` entry):
    `what` is the TLS shape, the length of the plaintext request's extra headers, or the kind of
    count (`perf`, `tls-perf`)."""
    return f"{kind}-{what}".replace("/", "_")


def callgrind(workdir, tag):
    """The command prefix that runs a proxy under callgrind, its counts in `workdir` under
    `tag` (where `per_unit` finds the dump)."""
    out = os.path.join(workdir, f"{tag}.callgrind")
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
            "--collect-atstart=yes"] + (CACHE_SIM or [])


def cache_geometry():
    """callgrind's cache options for one core of this machine, from sysfs: its first-level
    instruction and data caches, and its L2 as callgrind's last level (the caches a proxy
    pinned to one core has to itself; an L2 miss goes to the shared L3 or memory)."""
    found = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    key = {("1", "Instruction"): "I1", ("1", "Data"): "D1", ("2", "Unified"): "LL"}
    for index in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if not index.startswith("index"):
            continue
        def read(name):
            with open(os.path.join(base, index, name)) as f:
                return f.read().strip()
        try:
            level, kind = read("level"), read("type")
            size = int(read("size").rstrip("K")) * 1024
            ways, line = int(read("ways_of_associativity")), int(read("coherency_line_size"))
        except (OSError, ValueError):
            continue
        if (level, kind) in key:
            found[key[(level, kind)]] = f"{size},{ways},{line}"
    if set(found) != {"I1", "D1", "LL"}:
        raise SystemExit(f"--cache-sim: could not read this machine's caches from {base}")
    return ["--cache-sim=yes"] + [f"--{k}={v}" for k, v in sorted(found.items())]


def measure(procs, workdir, kind, origin, requests, save, extra, binary=None):
    port = load.free_port()
    tag = tag_of(kind, len(extra))
    valgrind = callgrind(workdir, tag)
    name = f"{tag}-callgrind"
    args, env = command(workdir, kind, name, port, origin, binary)
    p = procs.start(name, valgrind + args, env=env)
    load.wait_port(port, name, timeout=120)
    warm = drive(port, 500)
    if warm != 500:
        raise SystemExit(f"{kind}: warm-up got {warm}/500 answers")
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    got = drive(port, requests, extra)
    return per_unit(p, workdir, tag, kind, save, got, requests)


def per_unit(p, workdir, tag, kind, save, got, wanted):
    """Dumps the callgrind counters of `p` (zeroed before the `wanted` units of work, of which
    `got` were answered) and returns its instructions per unit."""
    subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    if got != wanted:
        raise SystemExit(f"{kind}: {got}/{wanted} answers")
    # The dump taken after zeroing is the newest file: out.1 (or out.N).
    deadline = time.time() + 60
    dumps = []
    while time.time() < deadline and not dumps:
        dumps = sorted(f for f in os.listdir(workdir)
                       if f.startswith(f"{tag}.callgrind.") and f[-1].isdigit())
        time.sleep(0.2)
    if not dumps:
        raise SystemExit(f"{kind}: no callgrind dump")
    if save:
        os.makedirs(save, exist_ok=True)
        shutil.copy(os.path.join(workdir, dumps[-1]), os.path.join(save, f"{kind}.callgrind"))
    with open(os.path.join(workdir, dumps[-1])) as f:
        text = f.read()
    events = re.search(r"^events:\s+(.+)$", text, re.M)
    totals = re.search(r"^(?:summary|totals):\s+(.+)$", text, re.M)
    if not events or not totals:
        raise SystemExit(f"{kind}: no totals in the dump")
    per = {e: int(t) / wanted for e, t in zip(events.group(1).split(), totals.group(1).split())}
    EVENTS[tag] = per
    return per["Ir"]


def misses_report(kinds, shapes):
    """With `--cache-sim`: the simulated cache misses per unit of work, a markdown table;
    `shapes`: (what the measurement's tag names, label)."""
    lines = ["", "Simulated cache misses per unit (callgrind `" + " ".join(CACHE_SIM) + "`):",
             "", "| shape | misses | " + " | ".join(kinds) + " |",
             "|---|---|" + "---:|" * len(kinds)]
    for shape, label in shapes:
        for events, what in MISSES:
            cells = [sum(EVENTS.get(tag_of(k, shape), {}).get(e, 0.0) for e in events.split("+"))
                     for k in kinds]
            lines.append(f"| {label} | {what} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    return "\n".join(lines)


# `--tls`: the TLS edge as the load benchmark's edge scenarios configure it (one TLS listener,
# HTTP/2 and HTTP/1.1 by ALPN, an ECDSA P-256 certificate), driven by h2load with a fixed count:
# (shape, h2load options for n requests, label). The one handshake of the request shapes is in
# their count (a few thousand instructions per request over 20,000 requests). The gRPC calls go
# to the edge scenarios' tonic origin over h2c, the rest to the nginx origin.
TLS_SHAPES = (
    ("h2tls", lambda n: ["-c1", "-m10", "-n", str(n)],
     "an HTTP/2 request over TLS (`h2load -c1 -m10`)"),
    ("h1tls", lambda n: ["--h1", "-c1", "-n", str(n)],
     "an HTTP/1.1 request over TLS, kept alive (`h2load --h1 -c1`)"),
    ("handshakes", None,
     "a full TLS handshake, one HTTP/1.1 request, close (`h2load --h1 -c10 -n10`, repeated)"),
    ("grpc", lambda n: ["-c1", "-m10", "-n", str(n)],
     "a gRPC unary call over TLS, to the tonic origin over h2c (`h2load -c1 -m10`)"),
)
# Connections one h2load run of the handshakes shape opens (each: a handshake, one request).
HANDSHAKE_RUN = 10


def tls_work(port, options, n, grpc_body=None):
    """`n` requests made with h2load `options(n)` (or, without options, `n` handshakes, each
    with its request; with `grpc_body`, gRPC calls with that message); the count answered."""
    if grpc_body:
        return load.h2load(port, options(n) + load.grpc_options(grpc_body),
                           path=load.GRPC_PATH)["ok"]
    if options:
        return load.h2load(port, options(n))["ok"]
    return sum(load.h2load(port, ["--h1", f"-c{HANDSHAKE_RUN}", f"-n{HANDSHAKE_RUN}"])["ok"]
               for _ in range(n // HANDSHAKE_RUN))


def measure_tls(procs, workdir, kind, origins, certs, shape, options, n, save):
    """Instructions per request (per handshake, per call) of `kind` behind a TLS listener under
    callgrind; `origins`: the nginx origin's port, and the gRPC origin's with its message."""
    port = load.free_port()
    tag = tag_of(kind, shape)
    origin, (grpc_origin, grpc_body) = origins
    grpc = shape == "grpc"
    p = load.start_edge_proxy(procs, workdir, kind, port, grpc_origin if grpc else origin, certs,
                              grpc, prefix=callgrind(workdir, tag), wait=120.0)
    body = grpc_body if grpc else None
    warm = HANDSHAKE_RUN * 2 if options is None else 500
    got = tls_work(port, options, warm, body)
    if got != warm:
        raise SystemExit(f"{kind}: warm-up got {got}/{warm} answers")
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    got = tls_work(port, options, n, body)
    return per_unit(p, workdir, tag, kind, save, got, n)


# System calls counted under wrk by `perf stat` (tracepoints: no ptrace, so no slowdown).
TRACED = ["recvfrom", "sendto", "read", "write", "readv", "writev", "recvmsg", "sendmsg",
          "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "sched_yield", "getpeername",
          "getsockname", "getsockopt", "setsockopt", "getpid", "clock_gettime",
          "clock_nanosleep", "accept4", "close", "mmap", "munmap", "madvise", "mprotect"]


def syscalls_under_load(procs, workdir, kind, origin, seconds):
    """System calls per request of one proxy under `wrk -t1 -c64` for `seconds` (pinned as in
    the load benchmark), and its user and system CPU time per request ([`cpu_and_syscalls`])."""
    port = load.free_port()
    name = tag_of(kind, "perf")
    args, env = command(workdir, kind, name, port, origin)
    p = procs.start(name, load.PROXY_CPU + args, env=env)
    load.wait_port(port, name, timeout=30)
    load.wrk(port, 2, 64)  # warm-up: connections, pools
    return cpu_and_syscalls(p, workdir, name, lambda: load.wrk(port, seconds, 64)["requests"])


def cpu_and_syscalls(p, workdir, name, run):
    """Of the proxy `p`, warmed up: its user and system CPU time per request over one `run()`
    (which returns how many requests it made), from /proc; then, over a second `run()`, its
    system calls per request, counted by `perf stat` on the syscall tracepoints of its process,
    with the failed ones (EAGAIN) counted at exit. Stops `p`. Returns ({name: (calls, failed)},
    user us, system us) per request."""
    # CPU time first, without perf (an enabled tracepoint slows every system call).
    tick = os.sysconf("SC_CLK_TCK")
    before = [sum(int(f[11 + i]) for _, f in load.session_processes(p.pid)) for i in (0, 1)]
    n = run()
    after = [sum(int(f[11 + i]) for _, f in load.session_processes(p.pid)) for i in (0, 1)]
    if not n:
        raise SystemExit(f"{name}: the load made no requests")
    user, system = ((a - b) / tick * 1e6 / n for a, b in zip(after, before))
    events = (["raw_syscalls:sys_enter", "context-switches"]
              + [f"syscalls:sys_enter_{n}" for n in TRACED])
    exits = ["syscalls:sys_exit_recvfrom", "syscalls:sys_exit_read"]
    out = os.path.join(workdir, f"{name}.perf")
    perf = ["perf", "stat", "-x", ",", "-o", out, "-p", str(p.pid)]
    for event in events:
        perf += ["-e", event]
    for event in exits:
        perf += ["-e", event, "--filter", "ret == -11"]
    tracer = subprocess.Popen(perf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    n = run()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=60)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    if not n:
        raise SystemExit(f"{name}: the load made no requests")
    # The load's count covers its run; perf's window is a little longer (it starts 1 s before
    # and stops after it), during which the proxy is idle.
    counts = {}
    failed = {}
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
                continue
            value, event = float(parts[0]), parts[2]
            if event.startswith("syscalls:sys_exit_"):
                failed[event.rsplit("_", 1)[-1]] = value / n
            elif event == "raw_syscalls:sys_enter":
                counts["(all)"] = value / n
            elif event == "context-switches":
                counts["(context switches)"] = value / n
            elif value:
                counts[event.replace("syscalls:sys_enter_", "")] = value / n
    result = {k: (v, failed.get(k, 0.0)) for k, v in counts.items()}
    return result, user, system


# `--tls --syscalls`: the loads, as the edge scenarios' (h2load options), and how many requests.
TLS_LOADS = (("h2tls", ["-c16", "-m10"], "HTTP/2 over TLS, `h2load -c16 -m10`"),
             ("h1tls", ["--h1", "-c64"], "HTTP/1.1 over TLS, `h2load --h1 -c64`"))


def tls_cpu_and_syscalls(procs, workdir, kind, origin, certs, options, requests):
    """[`cpu_and_syscalls`] of `kind` behind the edge scenarios' TLS listener, pinned as there,
    under h2load with `options` making `requests` requests per run (after as many to warm up)."""
    port = load.free_port()
    p = load.start_edge_proxy(procs, workdir, kind, port, origin, certs, False)
    load.h2load(port, options + ["-n", str(requests)])
    name = tag_of(kind, "tls-perf")
    return cpu_and_syscalls(p, workdir, name,
                            lambda: load.h2load(port, options + ["-n", str(requests)])["ok"])


def syscalls(procs, workdir, kind, origin, requests, extra):
    """System calls per request of one proxy over `requests` requests after a warm-up, by name:
    {name: (calls, failed calls)} per request, from `strace -f -c` attached to every thread."""
    port = load.free_port()
    tag = tag_of(kind, len(extra))
    name = f"{tag}-strace"
    args, env = command(workdir, kind, name, port, origin)
    p = procs.start(name, args, env=env)
    load.wait_port(port, name, timeout=30)
    warm = drive(port, 500)
    if warm != 500:
        raise SystemExit(f"{kind}: warm-up got {warm}/500 answers")
    out = os.path.join(workdir, f"{tag}.strace")
    tids = sorted(os.listdir(f"/proc/{p.pid}/task"))
    attach = [arg for tid in tids for arg in ("-p", tid)]
    tracer = subprocess.Popen(["strace", "-f", "-c", "-qq", "-o", out] + attach,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 15
    while time.time() < deadline:
        traced = 0
        for tid in tids:
            try:
                with open(f"/proc/{p.pid}/task/{tid}/status") as f:
                    traced += bool(re.search(r"^TracerPid:\s*[1-9]", f.read(), re.M))
            except OSError:
                traced += 1  # a thread that ended needs no tracer
        if traced == len(tids):
            break
        time.sleep(0.05)
    else:
        tracer.kill()
        raise SystemExit(f"{kind}: strace did not attach")
    got = drive(port, requests, extra)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=60)
    if got != requests:
        raise SystemExit(f"{kind}: {got}/{requests} answers")
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) not in (5, 6) or not parts[3].isdigit() or parts[-1] == "total":
                continue
            errors = int(parts[4]) if len(parts) == 6 else 0
            counts[parts[-1]] = (int(parts[3]) / requests, errors / requests)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    return counts


def syscalls_report(kinds, requests, shape_label, results):
    """A markdown table: system calls per request by name (failed ones in brackets)."""
    names = sorted({n for kind in kinds for n in results[kind]},
                   key=lambda n: -max(results[k].get(n, (0, 0))[0] for k in kinds))
    counted = f", {requests} requests" if requests else ""
    lines = [f"System calls per request, {shape_label}{counted} "
             "(in brackets: those that failed, mostly EAGAIN):", "",
             "| system call | " + " | ".join(kinds) + " |",
             "|---|" + "---:|" * len(kinds)]
    for n in names:
        cells = []
        for kind in kinds:
            calls, failed = results[kind].get(n, (0.0, 0.0))
            cells.append(f"{calls:.3f}" + (f" ({failed:.3f})" if failed else ""))
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    totals = [sum(c for n, (c, _) in results[kind].items() if not n.startswith("("))
              for kind in kinds]
    lines.append("| listed | " + " | ".join(f"{t:.3f}" for t in totals) + " |")
    return "\n".join(lines)


def start_origin():
    """A work folder, its process list, and the nginx origin started in it (its port)."""
    workdir = tempfile.mkdtemp(prefix="faultline-instr-")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    procs = load.Procs(workdir)
    origin = load.free_port()
    try:
        load.start_origin(procs, workdir, origin)
    except BaseException:
        procs.stop_all()
        raise
    return workdir, procs, origin


SHAPES = (("minimal", b"", "`GET /` with `Host` only"),
          ("browser", BROWSER_HEADERS, "`GET /` with 11 browser headers"))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="which proxies, comma-separated, of " + ", ".join(ALL_KINDS)
                             + " (or `all`)")
    parser.add_argument("--syscalls", action="store_true",
                        help="count system calls with strace instead of instructions (with "
                             "--tls: CPU time and system calls per request under h2load, "
                             "with perf)")
    parser.add_argument("--under-load", type=int, metavar="SECONDS",
                        help="with --syscalls: count them with perf under wrk -c64 for SECONDS "
                             "instead of strace under the small client")
    parser.add_argument("--server", metavar="YAML", default="",
                        help="more keys for faultline's `server:` section (Pingora's ServerConf), "
                             "e.g. 'work_stealing: false'")
    parser.add_argument("--save", metavar="DIR",
                        help="keep the callgrind files here (for callgrind_annotate)")
    parser.add_argument("--only", metavar="NAME=BINARY,...",
                        help="measure only these faultline binaries, alternately, "
                             "--pairs times each")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--tls", action="store_true",
                        help="the TLS edge instead: HTTP/2 and HTTP/1.1 requests over TLS, "
                             "full handshakes and gRPC calls, for the Pingora builds and "
                             "faultline")
    parser.add_argument("--handshakes", type=int, default=200,
                        help="with --tls: handshakes measured (a multiple of 10)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="callgrind also simulates this machine's L1 and L2 caches (one "
                             "core's, read from sysfs): misses per request beside instructions")
    args = parser.parse_args()
    global SERVER_EXTRA, CACHE_SIM
    SERVER_EXTRA = args.server
    if args.handshakes < HANDSHAKE_RUN or args.handshakes % HANDSHAKE_RUN:
        # h2load opens them HANDSHAKE_RUN at a time: any other count measures fewer, or none.
        raise SystemExit(f"--handshakes: {args.handshakes} is not a positive multiple of "
                         f"{HANDSHAKE_RUN}")
    if args.cache_sim:
        if args.syscalls or args.only:
            raise SystemExit("--cache-sim goes with the instruction counts only")
        CACHE_SIM = cache_geometry()
    if args.only:
        return compare(args)
    if args.tls:
        return tls_main(args)
    kinds = ALL_KINDS if args.kinds == "all" else args.kinds.split(",")
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise SystemExit(f"unknown proxies: {', '.join(unknown)}")
    load.ensure_tools()
    if args.syscalls:
        if not shutil.which("strace"):
            raise SystemExit("strace is needed for --syscalls")
    else:
        ensure_valgrind()
    if not args.skip_build:
        load.build()
    workdir, procs, origin = start_origin()
    results = {}
    if args.syscalls and args.under_load:
        try:
            for kind in kinds:
                results[kind] = syscalls_under_load(procs, workdir, kind, origin,
                                                    args.under_load)
                load.log(f"{kind}: {results[kind][0].get('(all)', (0, 0))[0]:.2f} system calls, "
                         f"{results[kind][1]:.1f} us user, {results[kind][2]:.1f} us system "
                         "per request")
        finally:
            procs.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"Command: `python3 benches/instructions.py {' '.join(sys.argv[1:])}`")
        print()
        print(syscalls_report(kinds, None, f"under `wrk -t1 -c64 -d{args.under_load}s`",
                              {kind: results[kind][0] for kind in kinds}))
        print("| CPU µs per request, user / system (from /proc, load-dependent) | "
              + " | ".join(f"{results[k][1]:.1f} / {results[k][2]:.1f}" for k in kinds) + " |")
        return
    try:
        for shape, extra, _ in SHAPES:
            for kind in kinds:
                if args.syscalls:
                    results[(kind, shape)] = syscalls(procs, workdir, kind, origin,
                                                      args.requests, extra)
                    total = sum(c for c, _ in results[(kind, shape)].values())
                    load.log(f"{kind}, {shape} request: {total:.2f} system calls per request")
                    continue
                save = os.path.join(args.save, shape) if args.save else None
                results[(kind, shape)] = measure(procs, workdir, kind, origin, args.requests,
                                                 save, extra)
                load.log(f"{kind}, {shape} request: "
                         f"{results[(kind, shape)]:,.0f} instructions per request")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Command: `python3 benches/instructions.py {' '.join(sys.argv[1:])}`".rstrip())
    print()
    if args.syscalls:
        for shape, _, label in SHAPES:
            print(syscalls_report(kinds, args.requests, label,
                                  {kind: results[(kind, shape)] for kind in kinds}))
            print()
        return
    reference = "nginx" if "nginx" in kinds else None
    print("| request | " + " | ".join(kinds) + " |"
          + (" " + " | ".join(f"{k} / nginx" for k in kinds if k != "nginx") + " |"
             if reference else ""))
    print("|---|" + "---:|" * (len(kinds) + (len(kinds) - 1 if reference else 0)))
    for shape, _, label in SHAPES:
        row = [results[(kind, shape)] for kind in kinds]
        line = f"| {label} | " + " | ".join(f"{n:,.0f}" for n in row) + " |"
        if reference:
            base = results[(reference, shape)]
            line += " " + " | ".join(f"{results[(k, shape)] / base:.2f}"
                                     for k in kinds if k != reference) + " |"
        print(line)
    if CACHE_SIM:
        print(misses_report(kinds, [(len(extra), label) for _, extra, label in SHAPES]))
    if all(kind in kinds for kind in KINDS):
        print()
        print("| request | faultline / bare | faultline / bare, jemalloc | "
              "faultline / Pingora + headers |")
        print("|---|---:|---:|---:|")
        for shape, _, label in SHAPES:
            bare, same_alloc, headers, ours = (results[(kind, shape)] for kind in KINDS)
            print(f"| {label} | {ours / bare:.3f} | {ours / same_alloc:.3f} | {ours / headers:.3f} |")


def tls_main(args):
    """`--tls`: instructions per request over TLS (HTTP/2, HTTP/1.1), per full handshake and
    per gRPC call."""
    kinds = KINDS if args.kinds == ",".join(KINDS) else args.kinds.split(",")
    if any(kind not in KINDS + [HEADERS_JEMALLOC] for kind in kinds):
        raise SystemExit(f"--tls takes some of {', '.join(KINDS + [HEADERS_JEMALLOC])}")
    load.ensure_tools()
    if args.syscalls:
        return tls_syscalls_main(args, kinds)
    ensure_valgrind()
    workdir, procs, origin, certs = tls_setup(args)
    results = {}
    try:
        grpc_origin = load.free_port()
        load.start_grpc_origin(procs, grpc_origin)
        origins = (origin, (grpc_origin, load.grpc_body(workdir)))
        for shape, options, _ in TLS_SHAPES:
            n = args.handshakes if options is None else args.requests
            for kind in kinds:
                save = os.path.join(args.save, shape) if args.save else None
                results[(kind, shape)] = measure_tls(procs, workdir, kind, origins, certs, shape,
                                                     options, n, save)
                load.log(f"{kind}, {shape}: {results[(kind, shape)]:,.0f} instructions per "
                         f"{'handshake' if options is None else 'request'}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Command: `python3 benches/instructions.py {' '.join(sys.argv[1:])}`")
    print()
    reference = "bare+jemalloc" if "bare+jemalloc" in kinds and "faultline" in kinds else None
    print("| instructions per | " + " | ".join(kinds) + " |"
          + (" faultline / bare+jemalloc |" if reference else ""))
    print("|---|" + "---:|" * (len(kinds) + (1 if reference else 0)))
    for shape, _, label in TLS_SHAPES:
        line = f"| {label} | " + " | ".join(f"{results[(k, shape)]:,.0f}" for k in kinds) + " |"
        if reference:
            line += f" {results[('faultline', shape)] / results[(reference, shape)]:.3f} |"
        print(line)
    if CACHE_SIM:
        print(misses_report(kinds, [(shape, label) for shape, _, label in TLS_SHAPES]))


def tls_setup(args):
    """The build (unless `--skip-build`), then a work folder, its process list, the nginx origin
    (its port) and the TLS listeners' certificate, for the `--tls` measurements."""
    if not args.skip_build:
        load.build()
    workdir, procs, origin = start_origin()
    return workdir, procs, origin, load.make_certificate(workdir)


def tls_syscalls_main(args, kinds):
    """`--tls --syscalls`: CPU time and system calls per request over TLS under load."""
    if not shutil.which("perf"):
        raise SystemExit("perf is needed for --tls --syscalls (Debian: linux-perf)")
    workdir, procs, origin, certs = tls_setup(args)
    results = {}
    try:
        for shape, options, _ in TLS_LOADS:
            for kind in kinds:
                results[(kind, shape)] = tls_cpu_and_syscalls(procs, workdir, kind, origin, certs,
                                                              options, args.requests)
                counts, user, system = results[(kind, shape)]
                load.log(f"{kind}, {shape}: {counts.get('(all)', (0, 0))[0]:.2f} system calls, "
                         f"{user:.1f} us user, {system:.1f} us system per request")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Command: `python3 benches/instructions.py {' '.join(sys.argv[1:])}`")
    for shape, _, label in TLS_LOADS:
        print()
        print(syscalls_report(kinds, args.requests, label,
                              {kind: results[(kind, shape)][0] for kind in kinds}))
        print("| CPU µs per request, user / system (from /proc, load-dependent) | "
              + " | ".join(f"{results[(k, shape)][1]:.1f} / {results[(k, shape)][2]:.1f}"
                           for k in kinds) + " |")


def compare(args):
    """Faultline binaries against each other: each shape measured `--pairs` times per binary,
    the binaries alternating, so that a drift of the machine falls on all of them."""
    binaries = [tuple(item.split("=", 1)) for item in args.only.split(",")]
    load.ensure_tools()
    ensure_valgrind()
    workdir, procs, origin = start_origin()
    results = {}
    try:
        for shape, extra in (("minimal", b""), ("browser", BROWSER_HEADERS)):
            for run in range(args.pairs):
                order = binaries if run % 2 == 0 else binaries[::-1]
                for name, binary in order:
                    n = measure(procs, workdir, f"{name}-{run}", origin, args.requests, None,
                                extra, binary)
                    results.setdefault((name, shape), []).append(n)
                    load.log(f"{name}, {shape} request, run {run}: {n:,.0f} instructions")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Command: `python3 benches/instructions.py {' '.join(sys.argv[1:])}`")
    print()
    names = [name for name, _ in binaries]
    print("| request | " + " | ".join(f"{n} (mean of {args.pairs})" for n in names)
          + " | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(names) - 1))
    for shape, label in (("minimal", "`GET /` with `Host` only"),
                         ("browser", "`GET /` with 11 browser headers")):
        means = [sum(results[(n, shape)]) / len(results[(n, shape)]) for n in names]
        print(f"| {label} | " + " | ".join(f"{m:,.0f}" for m in means) + " | "
              + " | ".join(f"{m / means[0]:.3f}" for m in means[1:]) + " |")


if __name__ == "__main__":
    main()
