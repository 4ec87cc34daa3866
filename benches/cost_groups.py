#!/usr/bin/env python3
"""Where a proxy's instructions per request go, grouped, from the callgrind files that
`benches/instructions.py --save DIR` keeps.

    python3 benches/instructions.py --skip-build --kinds all --requests 5000 --save /tmp/cg
    python3 benches/cost_groups.py --requests 5000 /tmp/cg/minimal/*.callgrind
    python3 benches/cost_groups.py --requests 5000 --calls 'clock_gettime@@' /tmp/cg/minimal/*.callgrind

Reads `callgrind_annotate`'s self cost per source file and function (code inlined from another
crate counts for that crate: callgrind splits a function's cost by the source file of each
instruction) and sums it into groups: the tokio runtime, Pingora's HTTP/1 code, its proxy logic,
its connection pool, the `http` crate's header maps, httparse, the allocator, memcpy and memset,
hashing, faultline's own code; nginx and HAProxy (stripped binaries: only their exported names
are known) by their own function-name prefixes. A group of `rep movsb`/`rep stosb` caveat: valgrind
counts every byte such an instruction moves as one instruction, so a copy of 13 KB reads as 13k
instructions though it takes a few hundred cycles; the `large copies` column says how much of
`memcpy`/`memset` went to copies of 2 KiB or more (measured by calls and cost per call).

Reads local files only; no network, no processes but `callgrind_annotate`.
"""

import argparse
import os
import re
import subprocess
import sys

# (group, pattern on "file:function", pattern on the object or None), first match wins.
NGINX, HAPROXY = r"/nginx$", r"/haproxy$"
GROUPS = [
    ("memcpy/memmove", r"memmove-vec|memcpy|__memmove", None),
    ("memset", r"memset", None),
    ("allocator", r"mimalloc|jemalloc|:_?rjem_\w+|:je_\w+|"
                  r"malloc\.c|/malloc/|arena\.c|:(?:malloc|free|realloc|calloc|cfree|"
                  r"_int_malloc|_int_free|_int_realloc|tcache_\w+|malloc_consolidate|"
                  r"unlink_chunk|__libc_\w*(?:malloc|free|calloc|realloc))$|"
                  r":ngx_(?:palloc\w*|pnalloc|pcalloc|pfree|alloc|calloc|memalign|"
                  r"create_pool|destroy_pool|reset_pool)$|:(?:__)?pool_\w+$|"
                  r"__rust_(?:alloc|dealloc|realloc)|alloc::alloc::|raw_vec", None),
    ("rustls (TLS handshake and records)", r"/rustls-[0-9]|/tokio-rustls-", None),
    ("ring (cryptography)", r"/ring-[0-9]|:ring_core_\w+$", None),
    ("h2 (HTTP/2 frames, HPACK, streams)", r"/h2-[0-9]", None),
    ("hashing", r"/hash/sip\.rs|siphash|ahash|foldhash|fxhash|hash_elem_using|:ngx_hash", None),
    ("timers", r"pingora-timeout|tokio-[^/]+/src/(?:time|runtime/time)/|clock_gettime|__vdso|"
               r":ngx_(?:event_(?:add|del)_timer|rbtree\w*|time_update|event_expire_timers|"
               r"event_find_timer)$|:(?:eb32|eb64|ebtree|__eb|eb_)\w*$|:(?:task_schedule|"
               r"__task_queue|wake_expired_tasks|tick_\w+)$", None),
    ("tokio I/O driver", r"tokio-[^/]+/src/(?:runtime/io|io|net)/|/mio-", None),
    ("tokio scheduler, tasks, sync", r"tokio-[^/]+/src/|tokio-util|futures-", None),
    ("HTTP/1 parsing (httparse)", r"httparse", None),
    ("header maps (http crate)", r"/http-[0-9][^/]*/src/", None),
    ("Pingora HTTP/1 (read, write, headers)", r"pingora-core-[^/]+/src/protocols/http/|"
                                              r"pingora-http-", None),
    ("Pingora L4 stream, buffers", r"pingora-core-[^/]+/src/protocols/", None),
    ("Pingora connectors and pool", r"pingora-core-[^/]+/src/connectors/|pingora-pool-", None),
    ("Pingora proxy logic, server, load balancing", r"pingora-", None),
    ("faultline's own code", r"^(?:/work/[^ ]*/)?src/[^:]*\.rs:", None),
    ("bytes, smallvec, other crates", r"/\.cargo/registry/src/|^/rust/deps/", None),
    ("Rust std/core (inlined state machines, fmt, Arc)", r"^/rustc/", None),
    ("nginx: HTTP parsing", r":ngx_http_parse|:ngx_parse", NGINX),
    ("nginx: proxy module, upstream", r":ngx_http_(?:proxy|upstream)", NGINX),
    ("nginx: HTTP core, headers, variables", r":ngx_http_", NGINX),
    ("nginx: events, connections, buffers", r":ngx_", NGINX),
    ("nginx: other (unexported functions)", r"", NGINX),
    ("HAProxy: HTTP (h1, htx, http_ana)", r":(?:h1|htx|http|h1_\w+|hlua)", HAPROXY),
    ("HAProxy: other (streams, tasks, fd, unexported)", r"", HAPROXY),
    ("OpenSSL", r"", r"libcrypto|libssl"),
    ("libc, other", r"", r"libc\.so|libm\.so|ld-linux|libpthread|libpcre|libz"),
]
COMPILED = [(name, re.compile(pattern), re.compile(obj) if obj else None)
            for name, pattern, obj in GROUPS]
LINE = re.compile(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$")


def self_costs(path):
    """(total, [(cost, "file:function [object]")]) of one callgrind file."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", path], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    total = None
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        cost = int(m.group(1).replace(",", ""))
        if m.group(2).strip() == "PROGRAM TOTALS":
            total = cost
            continue
        rows.append((cost, m.group(2)))
    if total is None:
        raise SystemExit(f"{path}: no totals")
    # Frames that were on the stack when the counters were zeroed show the whole program as their
    # own cost; they are the thread's entry points, not work.
    rows = [(c, what) for c, what in rows if c < 0.98 * total]
    return total, rows


# Code of Rust's standard library inlined into a function counts for the function's crate.
BY_FUNCTION = [
    ("rustls (TLS handshake and records)", r"^<?(?:rustls|tokio_rustls)::"),
    ("ring (cryptography)", r"^<?ring::"),
    ("h2 (HTTP/2 frames, HPACK, streams)", r"^<?h2::"),
    ("hashing", r"core::hash::|hash_one|hash_elem_using|hash_key|reuse_hash"),
    ("timers", r"pingora_timeout|tokio::runtime::time|tokio::time"),
    ("tokio I/O driver", r"tokio::(?:io|net|runtime::io)"),
    ("tokio scheduler, tasks, sync", r"^tokio::|^<tokio::|futures_"),
    ("HTTP/1 parsing (httparse)", r"httparse::"),
    ("header maps (http crate)", r"^<?http::"),
    ("Pingora HTTP/1 (read, write, headers)", r"pingora_core::protocols::http|pingora_http"),
    ("Pingora L4 stream, buffers", r"pingora_core::protocols"),
    ("Pingora connectors and pool", r"pingora_core::connectors|pingora_pool"),
    ("Pingora proxy logic, server, load balancing", r"^<?pingora_"),
    ("faultline's own code", r"^<?faultline::"),
    ("allocator", r"alloc::raw_vec|alloc::alloc::"),
    ("bytes, smallvec, other crates", r"^<?(?:bytes|smallvec|hashbrown|arc_swap|log|rand)"),
]
BY_FUNCTION = [(name, re.compile(pattern)) for name, pattern in BY_FUNCTION]


def group(what):
    m = re.match(r"^(.*?)(?: \[(.*)\])?$", what.strip())
    where, obj = m.group(1), m.group(2) or ""
    if where.startswith("/rustc/") and ":" in where:
        function = where.split(":", 1)[1]
        for name, pattern in BY_FUNCTION:
            if pattern.search(function):
                return name
    for name, pattern, obj_pattern in COMPILED:
        if obj_pattern is not None and not obj_pattern.search(obj):
            continue
        if pattern.search(where):
            return name
    return "other (unknown symbols)"


def large_copies(path):
    """The cost in memcpy/memset calls of 2 KiB or more (valgrind counts `rep movsb` and
    `rep stosb` per byte): from the calls lines, cost per call >= 2048."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", "--tree=caller", path],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    total = 0
    block = []
    for line in out.splitlines():
        if "<" in line:
            block.append(line)
            continue
        if "*" in line and re.search(r"memmove-vec|memset-vec|memcpy|memset", line):
            for caller in block:
                m = re.match(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+<.*\(([\d,]+)x\)", caller)
                if m:
                    cost = int(m.group(1).replace(",", ""))
                    calls = int(m.group(2).replace(",", ""))
                    if calls and cost / calls >= 2048:
                        total += cost
        block = []
    return total


def calls(path, pattern):
    """Calls to the functions whose "file:function [object]" matches `pattern`: the `(Nx)`
    counts of their callers in `callgrind_annotate --tree=caller`."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", "--tree=caller",
                          path], capture_output=True, text=True, check=True, timeout=600).stdout
    wanted = re.compile(pattern)
    total = 0
    block = []
    for line in out.splitlines():
        if " < " in line:
            block.append(line)
            continue
        if "*  " in line and wanted.search(line.split("*  ", 1)[1]):
            for caller in block:
                m = re.search(r"\(([\d,]+)x\)", caller)
                if m:
                    total += int(m.group(1).replace(",", ""))
        block = []
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="callgrind files (name.callgrind)")
    parser.add_argument("--requests", type=int, required=True,
                        help="the request count the files were made with")
    parser.add_argument("--calls", metavar="REGEX", action="append", default=[],
                        help="instead of the groups: calls per request to the functions whose "
                             "'file:function [object]' matches, e.g. 'clock_gettime@@' or "
                             "':malloc |mi_malloc_aligned |__pool_alloc |ngx_p[nc]?alloc '")
    args = parser.parse_args()
    if args.calls:
        print("| calls per request | " + " | ".join(
            os.path.basename(p).replace(".callgrind", "") for p in args.files) + " |")
        print("|---|" + "---:|" * len(args.files))
        for pattern in args.calls:
            print(f"| `{pattern}` | " + " | ".join(
                f"{calls(p, pattern) / args.requests:,.1f}" for p in args.files) + " |")
        return
    names, tables, totals, large = [], [], [], []
    for path in args.files:
        total, rows = self_costs(path)
        sums = {}
        for cost, what in rows:
            key = group(what)
            sums[key] = sums.get(key, 0) + cost
        names.append(os.path.basename(path).replace(".callgrind", ""))
        tables.append(sums)
        totals.append(total)
        large.append(large_copies(path))
        print(f"{names[-1]}: {total / args.requests:,.0f} instructions per request, "
              f"grouped {sum(sums.values()) / total:.1%} of them", file=sys.stderr)
    keys = [name for name, _, _ in GROUPS] + ["other (unknown symbols)"]
    keys = [k for k in keys if any(t.get(k) for t in tables)]
    keys.sort(key=lambda k: -max(t.get(k, 0) for t in tables))
    print("| per request | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{t.get(k, 0) / args.requests:,.0f}" for t in tables)
              + " |")
    print("| of memcpy/memset: copies of 2 KiB or more (`rep movsb`, counted per byte) | "
          + " | ".join(f"{n / args.requests:,.0f}" for n in large) + " |")
    print("| total | " + " | ".join(f"{t / args.requests:,.0f}" for t in totals) + " |")


if __name__ == "__main__":
    main()
