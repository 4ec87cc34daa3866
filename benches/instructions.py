#!/usr/bin/env python3
"""Instructions per proxied request, faultline against bare Pingora, counted by callgrind.

Throughput on a small shared machine moves by more between runs than the gap between two
proxies; an instruction count does not: the same binary, inputs and environment give the same
count whatever else the machine is doing. Each proxy runs under `valgrind --tool=callgrind`, is
warmed up, has its counters zeroed, serves exactly N keep-alive GET requests from a small client
(the same for both) to one nginx origin, and the instructions it executed in that window are
divided by N. Four proxies: bare Pingora as written (the system allocator), the same with mimalloc
(the `faultline` binary's allocator: the difference to faultline is then faultline's own work),
bare Pingora setting the four headers faultline adds to every request (`FORWARDING=1`), and
faultline.

    python3 benches/instructions.py              # 20000 requests each
    python3 benches/instructions.py --requests 5000 --skip-build
    python3 benches/instructions.py --save /tmp/cg   # then: callgrind_annotate --inclusive=yes
    python3 benches/instructions.py --skip-build --only A=/tmp/faultline-a,B=/tmp/faultline-b
        # two faultline builds against each other, run alternately (paired comparison)

Loopback only; every wait has a deadline and the request count is fixed.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the load benchmark's origin, proxy configs and process handling)

CONNECTIONS = 4

KINDS = ["bare-pingora", "bare+mimalloc", "pingora+headers", "faultline"]

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


def measure(procs, workdir, kind, origin, requests, save, extra, binary=None):
    port = load.free_port()
    tag = f"{kind}-{len(extra)}".replace("/", "_")
    out = os.path.join(workdir, f"{tag}.callgrind")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                "--dump-instr=no", "--collect-atstart=yes"]
    name = f"{tag}-callgrind"
    if kind == "faultline" or binary:
        conf = load.faultline_conf(workdir, name, port, [origin], False)
        args = [binary or load.FAULTLINE_BIN, "-c", conf]
        env = dict(os.environ, RUST_LOG="error")
    else:
        args, env = load.bare_command(kind, port, [origin])
    p = procs.start(name, valgrind + args, env=env)
    load.wait_port(port, name, timeout=120)
    warm = drive(port, 500)
    if warm != 500:
        raise SystemExit(f"{kind}: warm-up got {warm}/500 answers")
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    got = drive(port, requests, extra)
    subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    if got != requests:
        raise SystemExit(f"{kind}: {got}/{requests} answers")
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
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m:
        raise SystemExit(f"{kind}: no totals in the dump")
    return int(m.group(1)) / requests


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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--save", metavar="DIR",
                        help="keep the callgrind files here (for callgrind_annotate)")
    parser.add_argument("--only", metavar="NAME=BINARY,...",
                        help="measure only these faultline binaries, alternately, "
                             "--pairs times each")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    if args.only:
        return compare(args)
    load.ensure_tools()
    ensure_valgrind()
    if not args.skip_build:
        load.build()
    workdir, procs, origin = start_origin()
    results = {}
    try:
        for shape, extra in (("minimal", b""), ("browser", BROWSER_HEADERS)):
            for kind in KINDS:
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
    print("| request | bare Pingora | bare Pingora, mimalloc | Pingora + the same 4 headers | "
          "faultline | faultline / bare | faultline / bare, mimalloc | "
          "faultline / Pingora + headers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, label in (("minimal", "`GET /` with `Host` only"),
                         ("browser", "`GET /` with 11 browser headers")):
        bare, mi, headers, ours = (results[(kind, shape)] for kind in KINDS)
        print(f"| {label} | {bare:,.0f} | {mi:,.0f} | {headers:,.0f} | {ours:,.0f} | "
              f"{ours / bare:.3f} | {ours / mi:.3f} | {ours / headers:.3f} |")


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
