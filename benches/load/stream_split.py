"""A stream's first event split at the mock's send stamp (see stream_split.sh).

    python3 stream_split.py ROUNDS NAME=PORT ...   (the first NAME is direct)
"""

import random
import re
import socket
import statistics
import sys
import time

import harness

STAMP = re.compile(rb'"t_us":\s*(\d+)')


def one(port):
    """(µs from sending the request to the mock's send of the first event,
    µs from that send to the client having it)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = harness.stream_request(port, {"chunks": harness.STREAM_CHUNKS, "gap_ms": harness.STREAM_GAP_MS,
                                        "stamp": True})
    raw, stamp, seen = b"", None, None
    t0 = time.time_ns() // 1000
    s.sendall(req)
    try:
        while True:
            data = s.recv(65536)
            now = time.time_ns() // 1000
            raw += data
            if stamp is None:
                m = STAMP.search(raw)
                if m:
                    stamp, seen = int(m.group(1)), now
            if not data or raw.endswith(b"0\r\n\r\n"):
                break
    finally:
        s.close()
    if stamp is None:
        raise RuntimeError(f"no stamped event from port {port}")
    return stamp - t0, seen - stamp


def main():
    rounds = int(sys.argv[1])
    targets = dict(a.split("=") for a in sys.argv[2:])
    got = {t: [] for t in targets}
    for t, p in targets.items():
        for _ in range(10):
            one(int(p))
    for _ in range(rounds):
        order = list(targets)
        random.shuffle(order)
        for t in order:
            got[t].append(one(int(targets[t])))
            time.sleep(0.005)
    p50 = {t: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v),
               statistics.median(a + b for a, b in v)) for t, v in got.items()}
    d = p50["direct"]
    print("| target | request -> mock's send p50 µs | mock's send -> client p50 µs | first event p50 µs | added µs |")
    print("|---|---:|---:|---:|---:|")
    for t, (a, b, tot) in p50.items():
        added = "" if t == "direct" else f"{a - d[0]:.0f} + {b - d[1]:.0f} = {tot - d[2]:.0f}"
        print(f"| {t} | {a:.0f} | {b:.0f} | {tot:.0f} | {added} |")


if __name__ == "__main__":
    main()
