"""A stream's first event split at the mock's two stamps, when its handler got
the request and when it sent the event (see stream_split.sh).

    python3 stream_split.py ROUNDS NAME=PORT ...   (the first NAME is direct)
"""

import random
import re
import socket
import statistics
import sys
import time

import harness

STAMP = re.compile(rb'"rx_us":\s*(\d+),"t_us":\s*(\d+)')


def one(port):
    """(µs from sending the request to its arrival at the mock's handler, µs
    from there to the mock's send of the first event, µs from that send to the
    client having it)."""
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
                    stamp, seen = (int(m.group(1)), int(m.group(2))), now
            if not data or raw.endswith(b"0\r\n\r\n"):
                break
    finally:
        s.close()
    if stamp is None:
        raise RuntimeError(f"no stamped event from port {port}")
    rx, sent = stamp
    return rx - t0, sent - rx, seen - sent


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
    med = {t: [statistics.median(x[k] for x in v) for k in range(3)] + [statistics.median(sum(x) for x in v)]
           for t, v in got.items()}
    d = med["direct"]
    print("| target | request -> mock's handler | handler -> mock's send | mock's send -> client "
          "| first event | added (µs, p50) |")
    print("|---|---:|---:|---:|---:|---:|")
    for t, m in med.items():
        added = "" if t == "direct" else " + ".join(f"{m[k] - d[k]:.0f}" for k in range(3)) + f" = {m[3] - d[3]:.0f}"
        print(f"| {t} | {m[0]:.0f} | {m[1]:.0f} | {m[2]:.0f} | {m[3]:.0f} | {added} |")


if __name__ == "__main__":
    main()
