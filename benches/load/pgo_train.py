#!/usr/bin/env python3
"""Training workload for Livery's profile-guided build (benches/load/pgo.sh).

Runs the instrumented `livery` the way the load harness runs the shipped one
(the same benchmark configuration, a sealed tenant credential, the usage ledger
on), once with local limits and once with Redis-backed limits, and sends it what
a gateway serves: plain completions, streams read to the end, streams the
client drops, and a share of refusals (a wrong key, an unknown model, bad JSON)
so that their paths are profiled rather than treated as never run. Each
instance is then stopped with SIGTERM so that it drains and writes its profile.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def refusals(port, n):
    """A wrong key, an unknown model and bad JSON, `n` times each."""
    cases = [
        ({"Authorization": "Bearer wrong-key-for-training"}, harness.BODY),
        ({"Authorization": f"Bearer {harness.TENANT_KEY}"}, '{"model":"no-such-model","messages":[]}'),
        ({"Authorization": f"Bearer {harness.TENANT_KEY}"}, '{"model":'),
    ]
    for _ in range(n):
        for headers, body in cases:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json", **headers}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
            except urllib.error.HTTPError as e:
                e.read()
                if e.code < 400 or e.code >= 500:
                    raise RuntimeError(f"refusal answered {e.code}")


def dropped_streams(port, n):
    """Streams whose client goes away after the first event (usage is then
    estimated, a path of its own)."""
    req = harness.stream_request(port, {"chunks": 20, "gap_ms": 2})
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        buf = b""
        while b"data:" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()


def stream_oha(args, port, seconds):
    body = json.dumps({"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hello"}],
                       "mock": {"chunks": 12, "gap_ms": 0}})
    subprocess.run([args.oha, "--no-tui", "--worker-threads", "1", "-z", f"{seconds}s", "-c", "8", "-m", "POST",
                    "-T", "application/json", "-H", f"Authorization: Bearer {harness.TENANT_KEY}", "-d", body,
                    f"http://127.0.0.1:{port}/v1/chat/completions"], check=True, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--livery-bin", required=True, help="the instrumented livery")
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--mock-bin", help="the mock binary (default target/release/livery-mock)")
    ap.add_argument("--server-cpu", type=int, default=1 if (os.cpu_count() or 1) >= 2 else None,
                    help="CPU the servers are pinned to, as in the harness (Livery then runs its "
                         "single-threaded scheduler, the one measured)")
    ap.add_argument("--seconds", type=int, default=6, help="seconds of each oha phase")
    args = ap.parse_args()

    procs = harness.Procs(args.tmp)
    env = harness.bench_env()
    try:
        _, mock_url = harness.start_mock(procs, args, args.server_cpu)
        credential = harness.seal_credential(args, env)
        if not credential:
            raise RuntimeError("could not seal the bench credential")
        _, redis_port = harness.start_redis(procs, args, args.server_cpu, os.path.join(args.tmp, "redis"))

        variants = [("local", ""), ("redis", f'\n[limits]\nbackend = "redis"\n'
                                             f'redis_url = "redis://127.0.0.1:{redis_port}/0"\n')]
        for name, extra in variants:
            d = os.path.join(args.tmp, name)
            os.makedirs(d, exist_ok=True)
            cfg = harness.render_config(args, mock_url, os.path.join(d, "usage.jsonl"), credential, extra=extra,
                                        name=f"gateway-{name}.toml")
            livery, port = harness.start_livery(procs, args, args.server_cpu, f"livery-{name}", cfg, env, cwd=d)
            t0 = time.time()
            harness.oha(args, port, args.seconds, conns=16)
            harness.oha(args, port, args.seconds, rate=2000)
            stream_oha(args, port, max(2, args.seconds // 2))
            for _ in range(20):
                harness.one_stream(port)
            dropped_streams(port, 50)
            refusals(port, 100)
            livery.send_signal(signal.SIGTERM)
            if livery.wait(timeout=60) != 0:
                raise RuntimeError(f"livery ({name}) exited with {livery.returncode}")
            harness.log(f"trained {name} limits in {time.time() - t0:.0f} s")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
