"""Added latency of four request shapes through one Livery, against the direct
mock, request by request in a shuffled order (see paths.sh): a plain answer and
a stream's first event, each on a keep-alive and on a fresh connection.

    python3 paths.py MOCK_PORT LIVERY_PORT ROUNDS
"""

import json
import random
import re
import socket
import statistics
import sys
import time

import harness

SHAPES = [(stream, fresh) for stream in (False, True) for fresh in (False, True)]
KEPT = {}


def request(port, stream, fresh):
    body = {"model": "demo", "messages": [{"role": "user", "content": "Hello"}]}
    if stream:
        body["stream"] = True
        body["mock"] = {"chunks": 2, "gap_ms": 0}
    b = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {harness.TENANT_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(b)}\r\n" + ("Connection: close\r\n" if fresh else "") + "\r\n"
    ).encode()
    return head + b


def connection(port, fresh):
    if not fresh and port in KEPT:
        return KEPT[port]
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not fresh:
        KEPT[port] = s
    return s


def once(port, stream, fresh):
    """µs to the whole plain answer, or to a stream's first event."""
    s = connection(port, fresh)
    raw, done = b"", None
    t0 = time.perf_counter_ns()
    s.sendall(request(port, stream, fresh))
    while True:
        data = s.recv(65536)
        now = time.perf_counter_ns()
        if not data:
            break
        raw += data
        if stream:
            if done is None and b"data:" in raw:
                done = now
            if b"[DONE]" in raw:
                break
        else:
            h = raw.find(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", raw[:h]) if h >= 0 else None
            if m and len(raw) >= h + 4 + int(m.group(1)):
                done = now
                break
    if stream and not fresh:
        # The chunked body's end may come in a later segment: take it, so that
        # the next request on this connection starts clean.
        s.settimeout(0.05)
        try:
            while not raw.endswith(b"0\r\n\r\n"):
                more = s.recv(65536)
                if not more:
                    break
                raw += more
        except TimeoutError:
            pass
        s.settimeout(5)
    if fresh:
        s.close()
    return (done - t0) / 1000


def main():
    mock, livery, rounds = map(int, sys.argv[1:4])
    got = {(t, shape): [] for t in ("direct", "livery") for shape in SHAPES}
    for _ in range(rounds):
        order = [(t, p, shape) for t, p in (("direct", mock), ("livery", livery)) for shape in SHAPES]
        random.shuffle(order)
        for t, p, shape in order:
            got[(t, shape)].append(once(p, *shape))
            time.sleep(0.002)
    print("| request | direct p50 µs | through Livery p50 µs | added µs |")
    print("|---|---:|---:|---:|")
    for stream, fresh in SHAPES:
        d = statistics.median(got[("direct", (stream, fresh))])
        v = statistics.median(got[("livery", (stream, fresh))])
        what = ("stream, first event" if stream else "plain answer") + (", fresh connection" if fresh else ", keep-alive")
        print(f"| {what} | {d:.0f} | {v:.0f} | {v - d:.0f} |")


if __name__ == "__main__":
    main()
