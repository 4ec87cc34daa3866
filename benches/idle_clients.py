#!/usr/bin/env python3
"""Holds N idle client connections to a proxy, for the load benchmark's connections scenario.

Each connection makes one request (HTTP/1.1 keep-alive, or HTTP/2 over TLS negotiated by ALPN),
reads the whole response, and then stays open and silent (answering only an HTTP/2 PING or
SETTINGS, as a browser would). When all are open it prints one line, `open OK FAILED`, and
holds them until its standard input closes; then it prints `still-open K` (how many the proxy
had not closed meanwhile) and exits.

    python3 benches/idle_clients.py --port 8080 -n 10000 --proto h1
    python3 benches/idle_clients.py --port 8443 -n 10000 --proto h2 --sources 127.0.0.1,127.0.0.2

Connections are opened at most `--parallel` at a time, every step under a deadline; source
addresses rotate over `--sources` so that more connections than one address has ephemeral ports
can be opened.
"""

import argparse
import asyncio
import resource
import ssl
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STEP_TIMEOUT = 20.0


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream) + payload


def h2_request(authority):
    # HPACK: :method GET, :scheme https, :path / from the static table; :authority as a
    # literal without indexing (name index 1).
    value = authority.encode()
    block = bytes([0x82, 0x87, 0x84, 0x01, len(value)]) + value
    return frame(HEADERS, END_STREAM | END_HEADERS, 1, block)


async def read_frame(reader):
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    payload = await reader.readexactly(length) if length else b""
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


def acknowledge(writer, kind, flags, payload):
    """Answers a SETTINGS or PING frame as the protocol asks; whether the frame was one."""
    if kind == SETTINGS and not flags & ACK:
        writer.write(frame(SETTINGS, ACK, 0))
    elif kind == PING and not flags & ACK:
        writer.write(frame(PING, ACK, 0, payload))
    else:
        return False
    return True


class Holder:
    def __init__(self, args):
        self.args = args
        self.ssl = None
        if args.proto == "h2":
            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
            self.ssl.set_alpn_protocols(["h2"])
        self.conns = []
        self.closed = 0
        self.failed = 0
        self.tasks = set()

    async def open_one(self, i):
        a = self.args
        source = a.sources[i % len(a.sources)]
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(a.host, a.port, ssl=self.ssl, local_addr=(source, 0),
                                    server_hostname="localhost" if self.ssl else None),
            STEP_TIMEOUT)
        if a.proto == "h1":
            writer.write(f"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0])
            await asyncio.wait_for(reader.readexactly(length), STEP_TIMEOUT)
            watch = self.watch_h1
        else:
            if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
                raise RuntimeError("no h2 by ALPN")
            writer.write(PREFACE + frame(SETTINGS, 0, 0) + h2_request("localhost"))
            await asyncio.wait_for(self.h2_until_answered(reader, writer), STEP_TIMEOUT)
            watch = self.watch_h2
        self.conns.append(writer)
        task = asyncio.ensure_future(watch(reader, writer))
        self.tasks.add(task)

    async def h2_until_answered(self, reader, writer):
        while True:
            kind, flags, stream, payload = await read_frame(reader)
            if acknowledge(writer, kind, flags, payload):
                continue
            if kind == GOAWAY:
                raise RuntimeError("GOAWAY")
            if stream == 1 and kind in (HEADERS, DATA) and flags & END_STREAM:
                return

    async def watch_h1(self, reader, writer):
        try:
            await reader.read(1)
        except (OSError, asyncio.IncompleteReadError):
            pass
        self.closed += 1

    async def watch_h2(self, reader, writer):
        try:
            while True:
                kind, flags, _, payload = await read_frame(reader)
                if not acknowledge(writer, kind, flags, payload) and kind == GOAWAY:
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        self.closed += 1

    async def run(self):
        a = self.args
        limit = asyncio.Semaphore(a.parallel)

        async def one(i):
            async with limit:
                try:
                    await self.open_one(i)
                except Exception as e:  # counted; the first few are shown
                    self.failed += 1
                    if self.failed <= 3:
                        print(f"connection {i}: {type(e).__name__}: {e}", file=sys.stderr)

        await asyncio.gather(*(one(i) for i in range(a.n)))
        print(f"open {len(self.conns)} {self.failed}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        print(f"still-open {len(self.conns) - self.closed}", flush=True)
        for w in self.conns:
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--proto", choices=["h1", "h2"], default="h1")
    p.add_argument("--sources", default="127.0.0.1",
                   help="comma-separated source addresses, used in turn")
    p.add_argument("--parallel", type=int, default=200)
    a = p.parse_args()
    a.sources = a.sources.split(",")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.n + 100 > hard:
        raise SystemExit(f"{a.n} connections need more descriptors than the limit ({hard})")
    asyncio.run(Holder(a).run())


if __name__ == "__main__":
    main()
