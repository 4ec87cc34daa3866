#!/usr/bin/env python3
"""Trains a faultline binary built for profile-guided optimisation: runs it under the load
benchmark's shapes so that it writes the profile its optimised build is then made from.

The binary is one built with `-Cprofile-generate=DIR`; it writes `DIR/*.profraw` when it exits,
which this script makes it do (SIGTERM, faultline's graceful shutdown). The loads, against the
benchmark's nginx origin, on loopback, each bounded in count or time:

- behind the edge scenarios' TLS listener: `h2load -c16 -m10 -n 100000` (HTTP/2) and
  `h2load --h1 -c64 -n 100000` (HTTP/1.1 with keep-alive);
- behind the healthy scenario's plain listener: `wrk -t1 -c64 -d10s`.

    RUSTFLAGS="-Cprofile-generate=/tmp/pgo-data" CARGO_TARGET_DIR=/tmp/tgt-pgo \\
        cargo build --release --bin faultline
    python3 benches/pgo_train.py /tmp/tgt-pgo/release/faultline
    "$(rustc --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-profdata \\
        merge -o /tmp/pgo.profdata /tmp/pgo-data          # rustup component add llvm-tools
    RUSTFLAGS="-Cprofile-use=/tmp/pgo.profdata" cargo build --release --bin faultline

The profile is of the paths these loads take: healthy proxying. Failures, retries and error
pages stay cold, laid out away from the hot path; how fast they are then was not measured.
"""

import argparse
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instructions  # noqa: E402  (the origin and the TLS loads, as the counts use them)
import load  # noqa: E402  (proxy configurations, the loads, process handling)

# Requests per TLS load (`instructions.TLS_LOADS`: the edge scenarios' h2load options).
TLS_REQUESTS = 100_000
PLAIN_SECONDS = 10


def stop(p):
    """Ends faultline as a service manager would, so that it writes its profile on the way out."""
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="a faultline built with -Cprofile-generate=DIR")
    args = parser.parse_args()
    load.ensure_tools()
    load.FAULTLINE_BIN = os.path.abspath(args.binary)
    workdir, procs, origin = instructions.start_origin()
    certs = load.make_certificate(workdir)
    try:
        port = load.free_port()
        p = load.start_edge_proxy(procs, workdir, "faultline", port, origin, certs, False)
        for _, options, label in instructions.TLS_LOADS:
            ok = load.h2load(port, options + ["-n", str(TLS_REQUESTS)])["ok"]
            load.log(f"{label}: {ok} of {TLS_REQUESTS} answered")
        stop(p)
        port = load.free_port()
        p = load.start_proxy(procs, workdir, "faultline", port, [origin])
        made = load.wrk(port, PLAIN_SECONDS, 64)["requests"]
        load.log(f"wrk -c64 -d{PLAIN_SECONDS}s: {made} requests")
        stop(p)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
