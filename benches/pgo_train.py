#!/usr/bin/env python3
"""Trains a proxy built for profile-guided optimisation: runs it under the load benchmark's
shapes so that it writes the profile its optimised build is then made from. `scripts/pgo-build`
runs it between the instrumented build and the optimised one.

The binary is one built with `-Cprofile-generate=DIR`; it writes its profile (`DIR/*.profraw`,
or where `LLVM_PROFILE_FILE` says) when it exits, which this script makes it do: SIGTERM for
faultline (its graceful shutdown, with no grace period in the benchmark's configuration),
SIGINT for the bare Pingora proxy (Pingora's fast shutdown), which `headers+jemalloc` runs
setting faultline's four forwarding headers. The loads, on loopback, each
bounded in time, are the benchmark's, so that the profile is of what the benchmark measures and
of what an edge mostly does:

- behind the edge scenarios' TLS listener, in front of the nginx origin: HTTP/2
  (`h2load -c16 -m10`), HTTP/1.1 with keep-alive (`h2load --h1 -c64`) and full handshakes;
- gRPC unary calls over TLS, in front of the tonic origin over h2c;
- plaintext HTTP/1.1, `wrk -c64`;
- faultline only: the failures scenario's pool (a refusing and a silent backend beside the
  origin, passive health on), so that the answers of faultline's mission (502, 504, retries,
  ejection) are not laid out as code that never runs. The bare proxy has no such paths.
"""

import argparse
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instructions  # noqa: E402  (the origin, as the counts start it)
import load  # noqa: E402  (proxy configurations, the loads, process handling)

# Seconds per load. Each edge load makes about 100,000 requests at the rates of BENCHMARKS.md.
EDGE_SECONDS = 4
PLAIN_SECONDS = 8
FAILURE_SECONDS = 6
# What `--proxy` may name: the binary given is a build of it.
PROXIES = ("faultline", "bare+jemalloc", "headers+jemalloc")


def stop(kind, p):
    """Ends the proxy so that it writes its profile on the way out."""
    os.killpg(p.pid, signal.SIGTERM if kind == "faultline" else signal.SIGINT)
    p.wait(timeout=60)
    if p.returncode != 0:
        raise SystemExit(f"{kind} exited with {p.returncode}: its profile may be missing")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the proxy built with -Cprofile-generate")
    parser.add_argument("--proxy", choices=PROXIES, default="faultline",
                        help="which proxy the binary is (default: faultline)")
    args = parser.parse_args()
    kind = args.proxy
    load.ensure_tools()
    binary = os.path.abspath(args.binary)
    if kind == "faultline":
        load.FAULTLINE_BIN = binary
    else:
        load.BARE_DIR = load.HEADERS_DIR = os.path.dirname(binary)
    workdir, procs, origin = instructions.start_origin()
    certs = load.make_certificate(workdir)
    body = load.grpc_body(workdir)
    grpc_origin = load.free_port()
    load.start_grpc_origin(procs, grpc_origin)
    try:
        for backend, scenarios in ((origin, ("h2tls", "h1tls", "handshakes")),
                                   (grpc_origin, ("grpc",))):
            port = load.free_port()
            p = load.start_edge_proxy(procs, workdir, kind, port, backend, certs,
                                      backend == grpc_origin)
            for scenario in scenarios:
                res = load.edge_round(scenario, port, EDGE_SECONDS, None, workdir, body)
                load.log(f"{scenario}: {res['ok']} answered, {res['failed']} failed")
            stop(kind, p)
        port = load.free_port()
        p = load.start_proxy(procs, workdir, kind, port, [origin])
        res = load.wrk(port, PLAIN_SECONDS, 64)
        load.log(f"plaintext, wrk -c64 -d{PLAIN_SECONDS}s: {res['requests']} requests")
        stop(kind, p)
        if kind == "faultline":
            refused, stalled = load.free_port(), load.free_port()
            load.start_stall(procs, workdir, stalled)
            port = load.free_port()
            p = load.start_proxy(procs, workdir, kind, port, [origin, refused, stalled],
                                 failure=True)
            res = load.wrk(port, FAILURE_SECONDS, 64, timeout="1s")
            load.log(f"failures, wrk -c64 -d{FAILURE_SECONDS}s: {res['requests']} requests")
            stop(kind, p)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
