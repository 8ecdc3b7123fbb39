#!/usr/bin/env python3
"""Livery's load benchmark driver (issue 7). Started by benches/load/run.sh, which
installs the tools, builds the binaries, pins this script to the load generator's
core and stops whatever is left at exit. Standard library only.

Targets, all on 127.0.0.1:
  direct        livery-mock itself;
  nginx         a bare nginx hop in front of the mock (keep-alive upstream, no buffering);
  livery        `livery serve` with every implemented feature on, provider = the mock
                (local limits, usage ledger spool + SQLite, JSONL mirror);
  livery-redis  a second `livery serve` on the same configuration plus
                `[limits] backend = "redis"`, against a redis-server this script
                starts on a free loopback port (no persistence).

Phases, run in alternating rounds (target order rotated each round):
  max       closed loop, 64 connections, non-streamed chat completion (oha);
  rateN     open loop at N req/s with latency correction (oha -q N --latency-correction);
  stream    sequential streamed requests (20 chunks, 5 ms apart) by a raw-socket
            client: time to first event and, from the mock's send stamps, the
            delay of every event.
Then each Livery's RSS idle and with 1,000 open streams, CPU seconds per 10,000
requests, and the issue's target ratios (each Livery against nginx). Writes results/latest.{md,json}.
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

TENANT_KEY = "sk-livery-bench-0123456789"
# Keys the mock is sent and the vault seals: obviously fake (the mock accepts any).
PLATFORM_KEY = "fake-bench-platform-key-not-a-secret"
TENANT_PROVIDER_KEY = "fake-bench-tenant-provider-key-not-a-secret"
BODY = '{"model":"demo","messages":[{"role":"user","content":"Hello"}]}'
STREAM_CHUNKS = 20
STREAM_GAP_MS = 5
OPEN_STREAMS = 1000
TARGETS = ["direct", "nginx", "livery", "livery-redis"]
LIVERIES = ["livery", "livery-redis"]
LABELS = {"direct": "direct mock", "nginx": "nginx hop", "livery": "Livery", "livery-redis": "Livery + Redis limits"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes


class Procs:
    """Everything this run starts; stopped by PID (also listed in TMP/pids so
    run.sh's EXIT trap can stop them if this script dies)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, argv, env=None, stdout=subprocess.PIPE, cwd=None):
        err = open(os.path.join(self.tmp, f"{name}.stderr"), "wb")
        # Run in the temporary directory: relative paths (a usage spool, a
        # ledger database) land there, never in the repository.
        p = subprocess.Popen(argv, stdout=stdout, stderr=err, env=env, stdin=subprocess.DEVNULL,
                             cwd=cwd or self.tmp)
        self.procs.append((name, p))
        with open(os.path.join(self.tmp, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def wait_line(p, prefix, timeout=30):
    """Reads the child's stdout until a line starting with `prefix`."""
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    buf = b""
    end = time.time() + timeout
    while time.time() < end:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args[0]} exited with {p.returncode}")
        if sel.select(timeout=0.2):
            chunk = os.read(p.stdout.fileno(), 4096)
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
    raise RuntimeError(f"timed out waiting for '{prefix}' from {p.args}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu, argv):
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK_TCK


def machine_busy_s():
    """CPU seconds all CPUs spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine_steal_s():
    """CPU seconds the hypervisor gave to other guests since boot (/proc/stat
    `steal`): on a shared VM, the noise no pinning avoids."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields + [0] * 8)[7] / CLK_TCK


def rss_parts_kb(pid):
    """(RssAnon, RssFile, FilePmdMapped) of one process, in KiB: the heap and
    stacks, and the mapped files (the binary's text above all), of which the
    part the page cache maps on 2 MiB pages. A BOLT build's text is 2 MiB
    aligned, and a kernel whose page cache keeps large folios maps it whole on
    huge pages: about 6 MiB of RSS the heap has nothing to do with."""
    parts = {"RssAnon:": 0, "RssFile:": 0}
    pmd = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(" ", 1)[0].split("\t", 1)[0]
                if key in parts:
                    parts[key] = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("FilePmdMapped:"):
                    pmd = int(line.split()[1])
    except OSError:
        pass
    return parts["RssAnon:"], parts["RssFile:"], pmd


def mem_kb(pids):
    """(VmRSS, VmHWM) summed over pids, in KiB."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


# ------------------------------------------------------------------ HTTP helpers


def http_post(port, path, body, timeout=10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TENANT_KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(port, path="/healthz", timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def redis_cmd(port, *args, timeout=2):
    """One RESP command to the redis-server on `port`; returns the raw reply."""
    req = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf[:1] in (b"+", b"-", b":") and buf.endswith(b"\r\n"):
                break
            if buf[:1] == b"$":
                n = int(buf[1:buf.find(b"\r\n")])
                if n < 0 or len(buf) >= buf.find(b"\r\n") + 2 + n + 2:
                    break
    return buf


def wait_redis(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if redis_cmd(port, "PING").startswith(b"+PONG"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"redis-server does not answer on port {port}")


def redis_stats(port):
    """Keys and the scripting calls served (INFO commandstats) by the bench Redis."""
    out = {}
    try:
        out["dbsize"] = int(redis_cmd(port, "DBSIZE")[1:].strip())
        info = redis_cmd(port, "INFO", "commandstats").decode(errors="replace")
        calls = {}
        for line in info.splitlines():
            m = re.match(r"cmdstat_([a-z|_]+):calls=(\d+)", line)
            if m:
                calls[m.group(1)] = int(m.group(2))
        out["calls"] = calls
        out["script_calls"] = sum(v for k, v in calls.items() if k.startswith(("eval", "fcall")))
    except (OSError, ValueError) as e:
        out["error"] = str(e)
    return out


def count_lines(path, needle):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def ledger_rows(db):
    """Rows of the SQLite ledger's events table (None if unreadable)."""
    try:
        import sqlite3
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            con.close()
    except Exception:  # noqa: BLE001 - a report, not a failure
        return None


def stream_request(port, mock):
    body = json.dumps(
        {
            "model": "demo",
            "stream": True,
            "messages": [{"role": "user", "content": "Hello"}],
            "mock": mock,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TENANT_KEY}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


class SseReader:
    """Incremental HTTP/1.1 response parser (chunked or not) that yields the SSE
    events completed by each read."""

    def __init__(self):
        self.raw = b""
        self.headers_done = False
        self.status = None
        self.chunked = False
        self.body = b""
        self.events_buf = b""
        self.eof_body = False

    def feed(self, data):
        self.raw += data
        if not self.headers_done:
            i = self.raw.find(b"\r\n\r\n")
            if i < 0:
                return []
            head = self.raw[:i].decode(errors="replace").split("\r\n")
            self.status = int(head[0].split()[1])
            for h in head[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
            self.raw = self.raw[i + 4:]
            self.headers_done = True
        if self.chunked:
            while True:
                j = self.raw.find(b"\r\n")
                if j < 0:
                    break
                size = int(self.raw[:j].split(b";")[0], 16)
                if size == 0:
                    self.eof_body = True
                    self.raw = b""
                    break
                if len(self.raw) < j + 2 + size + 2:
                    break
                self.events_buf += self.raw[j + 2:j + 2 + size]
                self.raw = self.raw[j + 2 + size + 2:]
        else:
            self.events_buf += self.raw
            self.raw = b""
        events = []
        while True:
            k = self.events_buf.find(b"\n\n")
            if k < 0:
                break
            events.append(self.events_buf[:k])
            self.events_buf = self.events_buf[k + 2:]
        return events


STAMP = re.compile(rb'"t_us":(\d+)')


CONTENT = re.compile(rb'"delta":\{[^}]*"content":"[^"]')


def one_stream(port):
    """One streamed request over a fresh connection. Returns (time to the first
    event in µs, time to the first content event in µs, [delays in µs of the
    events after the first: arrival − mock send stamp], events, done).

    The first event of an OpenAI chat stream is a role-only chunk; a proxy may hold
    it back until content arrives (Livery does, so that it can still fall back to
    another route), so it is left out of the per-event delays and measured by the
    two times instead."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = stream_request(port, {"chunks": STREAM_CHUNKS, "gap_ms": STREAM_GAP_MS, "stamp": True})
    reader = SseReader()
    delays, ttfb, ttft, n, done = [], None, None, 0, False
    t0 = time.perf_counter_ns()
    s.sendall(req)
    try:
        while True:
            data = s.recv(65536)
            now_pc = time.perf_counter_ns()
            now_us = time.time_ns() // 1000
            if not data:
                break
            for ev in reader.feed(data):
                if not ev.startswith(b"data:"):
                    continue
                n += 1
                if ttfb is None:
                    ttfb = (now_pc - t0) / 1000
                if ttft is None and CONTENT.search(ev):
                    ttft = (now_pc - t0) / 1000
                m = STAMP.search(ev)
                if m and n > 1:
                    delays.append(now_us - int(m.group(1)))
                if ev.strip() == b"data: [DONE]":
                    done = True
            if reader.eof_body:
                break
    finally:
        s.close()
    if reader.status != 200:
        raise RuntimeError(f"stream through port {port}: HTTP {reader.status}")
    return ttfb, ttft, delays, n, done


def open_streams(port, count, timeout=60):
    """Opens `count` streams that stay open (long gaps), waits until each has
    received its first event, and returns the sockets (caller closes them)."""
    req = stream_request(port, {"chunks": 10, "gap_ms": 3000})
    sel = selectors.DefaultSelector()
    socks, readers, started = [], {}, set()
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        s.setblocking(False)
        socks.append(s)
        readers[s.fileno()] = SseReader()
        sel.register(s, selectors.EVENT_READ)
    end = time.time() + timeout
    while len(started) < count and time.time() < end:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(s)
                continue
            if readers[s.fileno()].feed(data):
                started.add(s.fileno())
    sel.close()
    return socks, len(started)


# ------------------------------------------------------------------ oha


def oha(args, port, duration, rate=None, conns=64):
    argv = [
        args.oha, "--no-tui", "--output-format", "json", "--worker-threads", "1",
        "-z", f"{duration}s", "-c", str(conns), "-m", "POST", "-T", "application/json",
        "-H", f"Authorization: Bearer {TENANT_KEY}", "-d", BODY,
    ]
    if rate:
        argv += ["-q", str(rate), "--latency-correction"]
    argv.append(f"http://127.0.0.1:{port}/v1/chat/completions")
    out = subprocess.run(argv, capture_output=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed: {out.stderr.decode(errors='replace')[-2000:]}")
    d = json.loads(out.stdout)
    codes = {k: int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errors = {k: int(v) for k, v in (d.get("errorDistribution") or {}).items()
              if "deadline" not in k}
    lp = d.get("latencyPercentiles") or {}
    us = lambda k: round(lp[k] * 1e6, 1) if lp.get(k) is not None else None
    ok = codes.get("200", 0)
    return {
        "rps": round(ok / d["summary"]["total"], 1) if d["summary"].get("total") else 0,
        "ok": ok,
        "non_200": sum(v for k, v in codes.items() if k != "200"),
        "errors": errors,
        "p50_us": us("p50"),
        "p90_us": us("p90"),
        "p99_us": us("p99"),
        "p99_9_us": us("p99.9"),
        "mean_us": round((d["summary"].get("average") or 0) * 1e6, 1),
    }


# ------------------------------------------------------------------ set-up


def machine_info(args):
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    def cmd(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    commit = cmd(["git", "-C", args.root, "rev-parse", "--short", "HEAD"])
    dirty = cmd(["git", "-C", args.root, "status", "--porcelain", "--untracked-files=no"])
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "git_commit": (commit or "?") + ("-dirty" if dirty else ""),
        "nginx": cmd(["nginx", "-v"]),
        "oha": cmd([args.oha, "--version"]),
        "python": platform.python_version(),
        "livery_build": build_kind(args.livery_bin)[1],
    }


def build_kind(livery_bin):
    """(run.sh's option, a description) of the build at `livery_bin`."""
    if "/bolt/" in livery_bin:
        return " --bolt", "profile-guided and BOLT-optimised (benches/load/pgo.sh, bolt.sh)"
    if "/pgo/" in livery_bin:
        return " --pgo", "profile-guided (benches/load/pgo.sh)"
    return "", "release"


def bench_env():
    """The environment Livery runs with: the platform key, default logging."""
    env = dict(os.environ)
    env["LIVERY_BENCH_PLATFORM_KEY"] = PLATFORM_KEY
    env.pop("RUST_LOG", None)  # Livery's default: info, one usage line per request
    return env


def start_mock(procs, args, cpu):
    """The mock on a free port; returns (process, base URL)."""
    p = procs.start("mock", pinned(cpu, [
        args.mock_bin or os.path.join(args.root, "target/release/livery-mock"), "--listen", "127.0.0.1:0",
        "--delay-ms", "0", "--chunks", "12", "--gap-ms", "0"]))
    return p, wait_line(p, "livery-mock listening on")


def start_redis(procs, args, cpu, directory):
    """A redis-server without persistence on a free port; returns (process, port)."""
    port = free_port()
    os.makedirs(directory, exist_ok=True)
    p = procs.start("redis", pinned(cpu, [
        args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--daemonize", "no", "--dir", directory, "--logfile", ""]),
        stdout=subprocess.DEVNULL, cwd=directory)
    wait_redis(port)
    return p, port


def drop_from_page_cache(path):
    """Evicts `path` from the page cache, so that a binary is read from disk as
    after a deploy. The build step leaves whatever page cache its writes made:
    BOLT writes its output in large pieces, and the kernel keeps those as 2 MiB
    folios, which a process maps whole (`FilePmdMapped`) once it touches a byte
    of them; that put 6-7 MiB more file-backed RSS on a BOLT build than on the
    same file read back from disk (the thirty-seventh session). Pages already
    mapped by a running process stay (the kernel skips them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def start_livery(procs, args, cpu, name, cfg, env, cwd=None):
    """`livery serve` (args.livery_bin) on a free port; returns (process, port)."""
    p = procs.start(name, pinned(cpu, [args.livery_bin, "serve", "--config", cfg, "--listen", "127.0.0.1:0"]),
                    env=env, cwd=cwd)
    return p, int(wait_line(p, "livery listening on").rsplit(":", 1)[1])


def render_config(args, mock_url, usage_path, credential, extra="", name="gateway.toml"):
    with open(os.path.join(args.root, "benches/load/gateway.bench.toml")) as f:
        text = f.read()
    creds = f'credentials = {{ upstream = "{credential}" }}' if credential else "# (no sealed credential: vault unavailable)"
    text = (text.replace("@MOCK_URL@", mock_url).replace("@USAGE_PATH@", usage_path)
            .replace("@CREDENTIALS@", creds)) + extra
    path = os.path.join(args.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def seal_credential(args, env):
    """Seals a tenant provider key under a throw-away KEK; None if the build has
    no vault commands."""
    livery = args.livery_bin
    kg = subprocess.run([livery, "vault", "keygen"], capture_output=True, text=True, cwd=args.tmp)
    if kg.returncode != 0:
        return None
    env["LIVERY_MASTER_KEY"] = kg.stdout.strip()
    seal = subprocess.run(
        [livery, "vault", "seal", "--owner", "tenant:bench/bench-tenant", "--provider", "upstream",
         "--config", os.path.join(args.tmp, "no-such-config.toml")],
        input=TENANT_PROVIDER_KEY, capture_output=True, text=True, env=env,
        cwd=args.tmp,
    )
    if seal.returncode != 0:
        log(f"vault seal failed, running without a sealed credential: {seal.stderr.strip()}")
        return None
    return seal.stdout.strip()


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


# ------------------------------------------------------------------ statistics


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def slope_per_min(samples):
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return None
    xs = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=int, help="seconds per oha phase")
    ap.add_argument("--rates", default="500,2000,5000")
    ap.add_argument("--streams", type=int, help="streamed requests per target per round")
    ap.add_argument("--soak-min", type=float, default=0,
                    help="after the rounds, drive Livery at 2,000 req/s for this many minutes and report the RSS slope")
    ap.add_argument("--server-cpu", type=int)
    ap.add_argument("--load-cpu", type=int)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--redis-server", default=os.environ.get("LIVERY_REDIS_SERVER") or "redis-server")
    ap.add_argument("--livery-bin", help="the livery binary to measure (default target/release/livery; "
                    "run.sh --pgo passes the profile-guided build)")
    ap.add_argument("--mock-bin", help="the mock binary (default target/release/livery-mock; "
                    "another build of it, to compare mocks)")
    ap.add_argument("--out", help="results directory (default benches/load/results)")
    args = ap.parse_args()
    args.livery_bin = os.path.abspath(args.livery_bin or os.path.join(args.root, "target/release/livery"))
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3 if args.quick else 8)
    n_streams = args.streams or (10 if args.quick else 25)
    rates = [int(r) for r in args.rates.split(",") if r]
    out_dir = args.out or os.path.join(args.root, "benches/load/results")
    started_at = time.time()

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    load_cpu = args.load_cpu if args.load_cpu is not None else (cpus[0] if len(cpus) >= 2 else None)
    server_cpu = args.server_cpu
    if server_cpu is None:
        all_cpus = list(range(os.cpu_count() or 1))
        server_cpu = next((c for c in all_cpus if c != load_cpu), None) if len(all_cpus) >= 2 else None

    procs = Procs(args.tmp)
    env = bench_env()
    results = {"rounds": [], "phases": {}}
    rss_samples = []

    def sample_rss(tag):
        for t in LIVERIES:
            rss, hwm = mem_kb([livery_ps[t].pid])
            rss_samples.append((time.time() - started_at, rss / 1024, tag, t))

    busy0 = machine_busy_s()
    steal0 = machine_steal_s()
    try:
        info = machine_info(args)
        info["cpu_split"] = {"load_generator_cpu": load_cpu, "servers_cpu": server_cpu}
        log(f"machine: {info['nproc']} x {info['cpu_model']}; load on cpu {load_cpu}, servers on cpu {server_cpu}")

        # Binaries as read from disk, whatever the build left in the page cache.
        for binary in (args.livery_bin, args.mock_bin or os.path.join(args.root, "target/release/livery-mock")):
            drop_from_page_cache(binary)

        # The mock.
        mock_p, mock_url = start_mock(procs, args, server_cpu)
        mock_port = int(mock_url.rsplit(":", 1)[1])

        # Livery.
        credential = seal_credential(args, env)
        cfg = render_config(args, mock_url, os.path.join(args.tmp, "usage.jsonl"), credential)
        livery_bin = args.livery_bin
        chk = subprocess.run([livery_bin, "check-config", "--config", cfg], capture_output=True, text=True,
                             env=env, cwd=args.tmp)
        if chk.returncode != 0:
            raise RuntimeError(f"livery check-config failed: {chk.stderr}")
        livery_p, livery_port = start_livery(procs, args, server_cpu, "livery", cfg, env)

        # Redis (no persistence), then a second Livery with Redis-backed limits. It
        # runs in its own directory so that its usage mirror, spool and SQLite
        # ledger (placed beside jsonl_path) are its own.
        redis_p, redis_port = start_redis(procs, args, server_cpu, os.path.join(args.tmp, "redis"))
        lr_dir = os.path.join(args.tmp, "livery-redis")
        os.makedirs(lr_dir, exist_ok=True)
        lr_usage = os.path.join(lr_dir, "usage.jsonl")
        cfg_r = render_config(args, mock_url, lr_usage, credential,
                              extra=f'\n[limits]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n',
                              name="gateway-redis.toml")
        chk = subprocess.run([livery_bin, "check-config", "--config", cfg_r], capture_output=True, text=True,
                             env=env, cwd=lr_dir)
        if chk.returncode != 0:
            raise RuntimeError(f"livery check-config (redis) failed: {chk.stderr}")
        livery_r_p, livery_r_port = start_livery(procs, args, server_cpu, "livery-redis", cfg_r, env, cwd=lr_dir)
        livery_ps = {"livery": livery_p, "livery-redis": livery_r_p}
        lr_log = os.path.join(args.tmp, "livery-redis.stderr")
        usage_paths = {"livery": os.path.join(args.tmp, "usage.jsonl"), "livery-redis": lr_usage}

        # nginx.
        nginx_port = free_port()
        for d in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
            os.makedirs(os.path.join(args.tmp, d), exist_ok=True)
        conf = os.path.join(args.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=args.tmp, mock_port=mock_port, port=nginx_port))
        nginx_p = procs.start("nginx", pinned(server_cpu, ["nginx", "-p", args.tmp, "-c", conf]),
                              stdout=subprocess.DEVNULL)
        wait_http(nginx_port)

        ports = {"direct": mock_port, "nginx": nginx_port, "livery": livery_port, "livery-redis": livery_r_port}

        def pids_of(target):
            """(proxy pids, mock pids) of a target."""
            if target == "direct":
                return [], [mock_p.pid]
            if target == "nginx":
                return [nginx_p.pid] + children(nginx_p.pid), [mock_p.pid]
            return [livery_ps[target].pid], [mock_p.pid]

        def aux_pids_of(target):
            """Helper processes a target relies on (Redis for livery-redis)."""
            return [redis_p.pid] if target == "livery-redis" else []

        # Sanity: every target answers the benchmark request and a stream properly.
        for t in TARGETS:
            status, body = http_post(ports[t], "/v1/chat/completions", BODY)
            if status != 200 or b'"choices"' not in body:
                raise RuntimeError(f"{t}: unexpected answer {status} {body[:200]!r}")
            ttfb, ttft, delays, n, done = one_stream(ports[t])
            if not done or ttft is None or len(delays) < STREAM_CHUNKS:
                raise RuntimeError(f"{t}: stream incomplete ({n} events, done={done})")
        time.sleep(0.5)
        for t, usage_path in usage_paths.items():
            if not os.path.exists(usage_path) or os.path.getsize(usage_path) == 0:
                raise RuntimeError(f"{t} wrote no usage record")
        rs0 = redis_stats(redis_port)
        if not rs0.get("script_calls"):
            raise RuntimeError(f"livery-redis did not run its admission script in Redis: {rs0}")
        log(f"targets up: direct :{mock_port}, nginx :{nginx_port}, livery :{livery_port}, "
            f"livery-redis :{livery_r_port} (redis :{redis_port}, {rs0['script_calls']} script calls so far)"
            f" (sealed credential: {'yes' if credential else 'no'})")

        # Memory: idle, then 1,000 open streams (before any load, so VmHWM is theirs).
        time.sleep(1)
        sample_rss("idle")
        memory = {"mock_idle_rss_kib": mem_kb([mock_p.pid])[0],
                  "redis_idle_rss_kib": mem_kb([redis_p.pid])[0]}
        for t in LIVERIES:
            idle_rss, idle_hwm = mem_kb([livery_ps[t].pid])
            memory[f"{t}_idle_rss_kib"] = idle_rss
            memory[f"{t}_idle_hwm_kib"] = idle_hwm
        for t in LIVERIES + ["nginx"]:
            proxy_pids, _ = pids_of(t)
            before = mem_kb(proxy_pids)[0]
            fb0 = count_lines(lr_log, "redis unavailable")
            socks, started = open_streams(ports[t], OPEN_STREAMS)
            time.sleep(0.5)
            peak = 0
            for _ in range(5):
                peak = max(peak, mem_kb(proxy_pids)[0])
                time.sleep(0.2)
            hwm = mem_kb(proxy_pids)[1]
            if t in LIVERIES:
                anon, file_kb, pmd = rss_parts_kb(proxy_pids[0])
                memory[f"{t}_rss_anon_with_streams_kib"] = anon
                memory[f"{t}_rss_file_with_streams_kib"] = file_kb
                memory[f"{t}_file_pmd_with_streams_kib"] = pmd
                # Where the pages are, mapping by mapping (the binary's
                # segments, heap, stacks): SMAPS_DUMP=DIR keeps a copy.
                if os.environ.get("SMAPS_DUMP"):
                    with open(f"/proc/{proxy_pids[0]}/smaps") as src, \
                            open(os.path.join(os.environ["SMAPS_DUMP"], f"{t}.smaps"), "w") as dst:
                        dst.write(src.read())
            mock_rss = mem_kb([mock_p.pid])[0]
            aux_rss = mem_kb(aux_pids_of(t))[0] if aux_pids_of(t) else None
            for s in socks:
                s.close()
            memory[f"{t}_streams_open"] = started
            if t == "livery-redis":
                time.sleep(0.2)
                memory["livery-redis_fallbacks_while_opening_streams"] = count_lines(lr_log, "redis unavailable") - fb0
            memory[f"{t}_rss_before_streams_kib"] = before
            memory[f"{t}_rss_with_streams_kib"] = peak
            memory[f"{t}_hwm_with_streams_kib"] = hwm
            memory[f"mock_rss_with_{t}_streams_kib"] = mock_rss
            if aux_rss is not None:
                memory[f"redis_rss_with_{t}_streams_kib"] = aux_rss
            log(f"{t}: {started}/{OPEN_STREAMS} streams open, RSS {peak / 1024:.1f} MiB (before {before / 1024:.1f})")
            time.sleep(2)  # let the proxies notice the closed clients
        sample_rss("after-streams")

        # Warm-up: connection pools, allocator, page cache.
        for t in TARGETS:
            oha(args, ports[t], 1 if args.quick else 2)

        phases = ["max"] + [f"rate{r}" for r in rates] + ["stream"]
        per = {p: {t: [] for t in TARGETS} for p in phases}
        for r in range(rounds):
            order = TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]
            log(f"round {r + 1}/{rounds}: order {', '.join(order)}")
            for phase in phases:
                for t in order:
                    proxy_pids, mock_pids = pids_of(t)
                    aux = aux_pids_of(t)
                    c0, m0, a0, w0 = cpu_seconds(proxy_pids), cpu_seconds(mock_pids), cpu_seconds(aux), time.time()
                    fb0 = count_lines(lr_log, "redis unavailable") if aux else 0
                    if phase == "stream":
                        ttfbs, ttfts, delays, events = [], [], [], 0
                        for _ in range(n_streams):
                            tt, tc, dl, n, done = one_stream(ports[t])
                            if not done:
                                raise RuntimeError(f"{t}: a stream did not end with [DONE]")
                            ttfbs.append(tt)
                            ttfts.append(tc)
                            delays += dl
                            events += n
                        m = {"ttfb_us": ttfbs, "ttft_us": ttfts, "event_delay_us": delays, "events": events}
                    else:
                        rate = int(phase[4:]) if phase.startswith("rate") else None
                        m = oha(args, ports[t], duration, rate=rate)
                    wall = time.time() - w0
                    m["proxy_cpu_s"] = round(cpu_seconds(proxy_pids) - c0, 3)
                    m["mock_cpu_s"] = round(cpu_seconds(mock_pids) - m0, 3)
                    m["redis_cpu_s"] = round(cpu_seconds(aux) - a0, 3)
                    if aux:
                        # Switches to the local fallback (Redis slower than redis_timeout_ms).
                        m["redis_fallbacks"] = count_lines(lr_log, "redis unavailable") - fb0
                    m["wall_s"] = round(wall, 3)
                    m["round"] = r + 1
                    per[phase][t].append(m)
                    if phase != "stream":
                        log(f"  {phase:>8} {t:>12}: {m['rps']:>9.0f} req/s  p50 {m['p50_us']} µs  p99 {m['p99_us']} µs"
                            f"  (proxy cpu {m['proxy_cpu_s']} s, mock cpu {m['mock_cpu_s']} s"
                            + (f", redis cpu {m['redis_cpu_s']} s, fallbacks {m['redis_fallbacks']}" if aux else "") + ")")
                    else:
                        log(f"  {phase:>8} {t:>12}: first event p50 {pct(m['ttfb_us'], .5):.0f} µs, "
                            f"first content p50 {pct(m['ttft_us'], .5):.0f} µs, "
                            f"event delay p50 {pct(m['event_delay_us'], .5):.0f} µs")
                    sample_rss(f"r{r + 1}-{phase}-{t}")

        # Optional soak: RSS slope under steady load.
        soak = None
        if args.soak_min > 0:
            log(f"soak: Livery at 2,000 req/s for {args.soak_min} min")
            samples = []
            argv = [args.oha, "--no-tui", "--output-format", "json", "--worker-threads", "1",
                    "-z", f"{int(args.soak_min * 60)}s", "-c", "64", "-m", "POST", "-T", "application/json",
                    "-H", f"Authorization: Bearer {TENANT_KEY}", "-d", BODY, "-q", "2000",
                    "--latency-correction", f"http://127.0.0.1:{livery_port}/v1/chat/completions"]
            p = procs.start("soak-oha", pinned(load_cpu, argv), stdout=subprocess.DEVNULL)
            t0 = time.time()
            while p.poll() is None:
                samples.append((time.time() - t0, mem_kb([livery_p.pid])[0] / 1024))
                time.sleep(5)
            soak = {"minutes": args.soak_min, "rss_mib_first": samples[0][1] if samples else None,
                    "rss_mib_last": samples[-1][1] if samples else None,
                    "rss_slope_mib_per_min": slope_per_min(samples), "samples": len(samples)}
            log(f"soak: RSS slope {soak['rss_slope_mib_per_min']} MiB/min")

        for t in LIVERIES:
            final_rss, final_hwm = mem_kb([livery_ps[t].pid])
            memory[f"{t}_final_rss_kib"] = final_rss
            memory[f"{t}_final_hwm_kib"] = final_hwm
            load_samples = [(x[0], x[1]) for x in rss_samples if x[2].startswith("r") and x[3] == t]
            memory[f"{t}_rss_slope_mib_per_min_during_rounds"] = slope_per_min(load_samples)
            memory[f"{t}_rss_samples"] = [{"t_s": round(a, 1), "rss_mib": round(b, 2), "at": c}
                                          for a, b, c, x in rss_samples if x == t]
        memory["mock_final_rss_kib"] = mem_kb([mock_p.pid])[0]
        memory["nginx_final_rss_kib"] = mem_kb([nginx_p.pid] + children(nginx_p.pid))[0]
        memory["redis_final_rss_kib"] = mem_kb([redis_p.pid])[0]
        stats_mock = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{mock_port}/stats", timeout=5).read())
        stats_redis = redis_stats(redis_port)
        stats_redis["port"] = redis_port
        stats_redis["version"] = (subprocess.run([args.redis_server, "--version"], capture_output=True, text=True)
                                  .stdout.strip().split(" sha=")[0])
        # Livery logs each switch to its local fallback ("redis unavailable") once.
        stats_redis["livery_log_lines_about_redis_fallback"] = count_lines(lr_log, "redis unavailable")
        stats_redis["fallbacks_by_phase"] = {
            "open streams": memory.get("livery-redis_fallbacks_while_opening_streams", 0),
            **{p: sum(m.get("redis_fallbacks", 0) for m in per[p]["livery-redis"]) for p in per}}
        servers_cpu = cpu_seconds([mock_p.pid, livery_p.pid, livery_r_p.pid, redis_p.pid, nginx_p.pid]
                                  + children(nginx_p.pid))
    finally:
        procs.stop_all()
    # The durable ledger of each Livery (read after they stopped and flushed).
    ledger = {}
    for t, up in usage_paths.items():
        base = os.path.dirname(up)
        ledger[t] = {"spool_dir_exists": os.path.isdir(os.path.join(base, "usage-spool")),
                     "sqlite_events": ledger_rows(os.path.join(base, "usage.db")),
                     "jsonl_records": sum(1 for _ in open(up, "rb")) if os.path.exists(up) else None}
    log(f"ledger: {ledger}; redis: {stats_redis.get('script_calls')} script calls, "
        f"{stats_redis.get('dbsize')} keys, fallback log lines {stats_redis['livery_log_lines_about_redis_fallback']}")
    # Other people's work on this machine during the run (the rest of the busy time).
    t = os.times()
    ours = servers_cpu + t.user + t.system + t.children_user + t.children_system
    elapsed = time.time() - started_at
    foreign = max(0.0, machine_busy_s() - busy0 - ours)
    info["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    info["foreign_cpu_s_during_run"] = round(foreign, 1)
    info["foreign_cpu_share_of_machine"] = round(foreign / (elapsed * (os.cpu_count() or 1)), 3)
    steal = machine_steal_s() - steal0
    info["steal_cpu_s_during_run"] = round(steal, 1)
    info["steal_share_of_machine"] = round(steal / (elapsed * (os.cpu_count() or 1)), 3)

    summary = summarise(per, rates, memory, duration, rounds, n_streams)
    summary["soak"] = soak
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "benches/load/run.sh" + build_kind(args.livery_bin)[0]
                   + (" --quick" if args.quick else ""),
        "machine": info,
        "settings": {
            "rounds": rounds, "phase_seconds": duration, "connections": 64, "rates": rates,
            "streams_per_target_per_round": n_streams, "stream_chunks": STREAM_CHUNKS,
            "stream_gap_ms": STREAM_GAP_MS, "open_streams": OPEN_STREAMS, "body": BODY,
            "livery_features": ["host+key auth", "platform key header",
                                "sealed tenant credential unsealed per request" if credential else "no sealed credential (vault unavailable)",
                                "limits on the bench plan (requests/min, tokens/min, tokens/month, concurrency), never refusing",
                                "usage ledger: spool + SQLite sink (serve defaults)", "usage JSONL mirror",
                                "RUST_LOG unset (default info; the per-request usage line is at debug), stderr to a file"],
            "livery_limits": {"livery": "local", "livery-redis": "redis on loopback, redis_timeout_ms 25 (default), fail_open"},
            "redis": "redis-server, --save '' --appendonly no, pinned with the servers",
            "nginx": "1 worker, upstream keepalive 64, proxy_http_version 1.1, proxy_buffering off, access_log on",
        },
        "mock_stats": stats_mock,
        "redis_stats": stats_redis,
        "ledger": ledger,
        "summary": summary,
        "raw": {p: {t: [{k: v for k, v in m.items() if k not in ("ttfb_us", "ttft_us", "event_delay_us")} for m in ms]
                    for t, ms in per[p].items()} for p in per},
        "elapsed_s": round(time.time() - started_at, 1),
    }
    os.makedirs(out_dir, exist_ok=True)
    stem = "latest-quick" if args.quick else "latest"
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    md = markdown(doc)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"done in {doc['elapsed_s']} s; wrote {out_dir}/{stem}.md and .json")


def summarise(per, rates, memory, duration, rounds, n_streams):
    s = {"targets": {}, "ratios": {}, "checks": []}
    per10k = lambda ms, k: med([m[k] / m["ok"] * 1e4 for m in ms if m["ok"] and k in m])
    for t in TARGETS:
        row = {}
        mx = per["max"][t]
        row["max_rps"] = med([m["rps"] for m in mx])
        row["max_p50_us"] = med([m["p50_us"] for m in mx])
        row["max_p99_us"] = med([m["p99_us"] for m in mx])
        row["max_proxy_cpu_s_per_10k"] = per10k(mx, "proxy_cpu_s")
        row["max_mock_cpu_s_per_10k"] = per10k(mx, "mock_cpu_s")
        row["max_redis_cpu_s_per_10k"] = per10k(mx, "redis_cpu_s")
        row["max_non_200"] = sum(m["non_200"] for m in mx)
        for r in rates:
            ms = per[f"rate{r}"][t]
            for k in ("p50_us", "p90_us", "p99_us", "p99_9_us"):
                row[f"rate{r}_{k}"] = med([m[k] for m in ms])
            row[f"rate{r}_rps"] = med([m["rps"] for m in ms])
            row[f"rate{r}_non_200"] = sum(m["non_200"] for m in ms)
            row[f"rate{r}_sustained"] = all(m["rps"] >= 0.95 * r and not m["non_200"] for m in ms)
            row[f"rate{r}_proxy_cpu_s_per_10k"] = per10k(ms, "proxy_cpu_s")
            row[f"rate{r}_mock_cpu_s_per_10k"] = per10k(ms, "mock_cpu_s")
            row[f"rate{r}_redis_cpu_s_per_10k"] = per10k(ms, "redis_cpu_s")
        ttfb = [x for m in per["stream"][t] for x in m["ttfb_us"]]
        ttft = [x for m in per["stream"][t] for x in m["ttft_us"]]
        ev = [x for m in per["stream"][t] for x in m["event_delay_us"]]
        row["stream_ttfb_p50_us"] = pct(ttfb, .5)
        row["stream_ttfb_p99_us"] = pct(ttfb, .99)
        row["stream_ttft_p50_us"] = pct(ttft, .5)
        row["stream_ttft_p99_us"] = pct(ttft, .99)
        row["stream_event_delay_p50_us"] = pct(ev, .5)
        row["stream_event_delay_p99_us"] = pct(ev, .99)
        row["stream_samples"] = len(ttfb)
        row["stream_event_samples"] = len(ev)
        s["targets"][t] = row

    d, n = s["targets"]["direct"], s["targets"]["nginx"]

    def sub(a, b):
        return None if a is None or b is None else a - b

    def ratio(a, b):
        return None if a is None or b is None or b <= 0 else a / b

    ra = s["ratios"]
    for r in rates:
        for q in ("p50", "p99"):
            na = sub(n[f"rate{r}_{q}_us"], d[f"rate{r}_{q}_us"])
            e = {"nginx": na}
            for lv in LIVERIES:
                la = sub(s["targets"][lv][f"rate{r}_{q}_us"], d[f"rate{r}_{q}_us"])
                e[lv] = la
                e[f"{lv}_over_nginx"] = ratio(la, na)
            ra[f"rate{r}_{q}_added_us"] = e
    ra["mock_headroom_direct_over_nginx"] = ratio(d["max_rps"], n["max_rps"])
    ra["mock_cpu_share_during_nginx_max"] = med([m["mock_cpu_s"] / m["wall_s"] for m in per["max"]["nginx"] if m["wall_s"]])
    for lv in LIVERIES:
        row = s["targets"][lv]
        ra[f"throughput_{lv}_over_nginx"] = ratio(row["max_rps"], n["max_rps"])
        ra[f"throughput_{lv}_over_direct"] = ratio(row["max_rps"], d["max_rps"])
        ra[f"mock_headroom_direct_over_{lv}"] = ratio(d["max_rps"], row["max_rps"])
        ra[f"mock_cpu_share_during_{lv}_max"] = med([m["mock_cpu_s"] / m["wall_s"] for m in per["max"][lv] if m["wall_s"]])
    for k in ("ttfb_p50", "ttft_p50", "event_delay_p50", "event_delay_p99"):
        ra[f"stream_{k}_added_us"] = {t: sub(s["targets"][t][f"stream_{k}_us"], d[f"stream_{k}_us"])
                                      for t in ["nginx"] + LIVERIES}
    s["memory"] = memory

    def check(target, name, value, limit, ok, unit=""):
        s["checks"].append({"gateway": target, "target": name, "measured": value, "limit": limit, "met": ok,
                            "unit": unit})

    ref = 2000 if 2000 in rates else rates[0]
    for lv in LIVERIES:
        a50, a99 = ra[f"rate{ref}_p50_added_us"][f"{lv}_over_nginx"], ra[f"rate{ref}_p99_added_us"][f"{lv}_over_nginx"]
        check(lv, f"added p50 @{ref} req/s <= 1.5x nginx's", a50, 1.5, a50 is not None and a50 <= 1.5, "x")
        check(lv, f"added p99 @{ref} req/s <= 2x nginx's", a99, 2.0, a99 is not None and a99 <= 2.0, "x")
        tr = ra[f"throughput_{lv}_over_nginx"]
        check(lv, "max throughput >= 80% of nginx's", tr, 0.8, tr is not None and tr >= 0.8, "x")
        tt = ra["stream_ttfb_p50_added_us"][lv]
        check(lv, "stream TTFB (first event) added < 200 µs (p50)", tt, 200, tt is not None and tt < 200, "µs")
        tt = ra["stream_ttft_p50_added_us"][lv]
        check(lv, "stream first content event added < 200 µs (p50)", tt, 200, tt is not None and tt < 200, "µs")
        rs = memory.get(f"{lv}_rss_with_streams_kib")
        ok_streams = memory.get(f"{lv}_streams_open") == OPEN_STREAMS
        check(lv, f"RSS < 40 MB with {OPEN_STREAMS} open streams", rs and rs / 1024, 40 * 1e6 / 2**20,
              bool(rs) and ok_streams and rs * 1024 < 40e6, "MiB")
    return s


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def markdown(doc):
    s = doc["summary"]
    t = s["targets"]
    m = doc["machine"]
    st = doc["settings"]
    mem = s["memory"]
    L = []
    L.append(f"# Livery load benchmark — {doc['date']}\n")
    L.append(f"`{doc['command']}` on {m['nproc']} × {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
             f"load generator (oha, stream client) on CPU {m['cpu_split']['load_generator_cpu']}, "
             f"mock + nginx + both Livery instances + Redis on CPU {m['cpu_split']['servers_cpu']}. "
             f"Commit {m['git_commit']} (Livery build: {m.get('livery_build', 'release')}); {m['nginx']}; {m['oha']}; {doc.get('redis_stats', {}).get('version', 'redis')}. "
             f"Load average at start {' '.join(m['loadavg_at_start'])}, "
             f"at end {' '.join(m['loadavg_at_end'])}; CPU time used by other processes during the run: "
             f"{m['foreign_cpu_s_during_run']} s ({100 * m['foreign_cpu_share_of_machine']:.0f}% of the machine); "
             f"CPU time the hypervisor gave to other guests (steal): {m.get('steal_cpu_s_during_run', '?')} s "
             f"({100 * m.get('steal_share_of_machine', 0):.0f}% of the machine). "
             f"Run time {doc['elapsed_s']:.0f} s.\n")
    L.append(f"{st['rounds']} round(s), target order rotated; {st['phase_seconds']} s per oha phase, 64 connections; "
             f"medians over rounds. Latencies in µs. Livery: {'; '.join(st['livery_features'])}. "
             f"\"Livery + Redis limits\": the same configuration with `[limits] backend = \"redis\"` "
             f"(a redis-server on loopback, no persistence).\n")
    L.append("| | " + " | ".join(LABELS[x] for x in TARGETS) + " |")
    L.append("|---|" + "---:|" * len(TARGETS))
    row = lambda label, key, digits=0: L.append(
        f"| {label} | " + " | ".join(fmt(t[x].get(key), digits) for x in TARGETS) + " |")
    row("max throughput, req/s (closed loop)", "max_rps")
    for r in st["rates"]:
        L.append(f"| {r:,} req/s: p50 / p90 / p99 / p99.9 | " + " | ".join(
            " / ".join(fmt(t[x][f"rate{r}_{q}_us"]) for q in ("p50", "p90", "p99", "p99_9"))
            + ("" if t[x][f"rate{r}_sustained"] else " (not sustained)") for x in TARGETS) + " |")
    row("stream: time to first event (TTFB) p50", "stream_ttfb_p50_us")
    row("stream: time to first event (TTFB) p99", "stream_ttfb_p99_us")
    row(f"stream: time to first content event p50 (mock: +{STREAM_GAP_MS} ms gap)", "stream_ttft_p50_us")
    row("stream: time to first content event p99", "stream_ttft_p99_us")
    row("stream: event delay after the mock sent it, p50", "stream_event_delay_p50_us")
    row("stream: event delay after the mock sent it, p99", "stream_event_delay_p99_us")
    ref = 2000 if 2000 in st["rates"] else st["rates"][0]
    row(f"proxy CPU s / 10k req @{ref:,} req/s", f"rate{ref}_proxy_cpu_s_per_10k", 2)
    row(f"Redis CPU s / 10k req @{ref:,} req/s", f"rate{ref}_redis_cpu_s_per_10k", 2)
    row(f"mock CPU s / 10k req @{ref:,} req/s", f"rate{ref}_mock_cpu_s_per_10k", 2)
    row("proxy CPU s / 10k req at max", "max_proxy_cpu_s_per_10k", 2)
    row("Redis CPU s / 10k req at max", "max_redis_cpu_s_per_10k", 2)
    mib = lambda k: fmt(mem[k] / 1024, 1) if mem.get(k) is not None else "–"
    L.append(f"| RSS idle / with {st['open_streams']:,} open streams, MiB (nginx: master + worker; "
             f"mock: while Livery's streams are open) | "
             f"{mib('mock_idle_rss_kib')} / {mib('mock_rss_with_livery_streams_kib')} "
             f"| {mib('nginx_rss_before_streams_kib')} / {mib('nginx_rss_with_streams_kib')} "
             f"| {mib('livery_idle_rss_kib')} / {mib('livery_rss_with_streams_kib')} "
             f"| {mib('livery-redis_idle_rss_kib')} / {mib('livery-redis_rss_with_streams_kib')} "
             f"(Redis {mib('redis_idle_rss_kib')} / {mib('redis_rss_with_livery-redis_streams_kib')}) |")
    L.append(f"| Livery's RSS with {st['open_streams']:,} open streams: anonymous / file-backed "
             f"(of it on 2 MiB pages), MiB | | "
             f"| {mib('livery_rss_anon_with_streams_kib')} / {mib('livery_rss_file_with_streams_kib')} "
             f"({mib('livery_file_pmd_with_streams_kib')}) "
             f"| {mib('livery-redis_rss_anon_with_streams_kib')} / {mib('livery-redis_rss_file_with_streams_kib')} "
             f"({mib('livery-redis_file_pmd_with_streams_kib')}) |")
    L.append(f"| RSS after the rounds, MiB | {mib('mock_final_rss_kib')} | {mib('nginx_final_rss_kib')} "
             f"| {mib('livery_final_rss_kib')} | {mib('livery-redis_final_rss_kib')} (Redis {mib('redis_final_rss_kib')}) |")
    L.append("")
    ra = s["ratios"]
    L.append("| ratio (one run; \"added\" = target minus direct) | Livery | Livery + Redis limits |")
    L.append("|---|---:|---:|")
    for r in st["rates"]:
        for q in ("p50", "p99"):
            a = ra[f"rate{r}_{q}_added_us"]
            L.append(f"| added {q} @{r:,} req/s: Livery / nginx (µs) | " + " | ".join(
                f"{fmt(a[lv])} / {fmt(a['nginx'])} = {fmt(a[f'{lv}_over_nginx'], 2)}×" for lv in LIVERIES) + " |")
    L.append("| max throughput Livery / nginx | " + " | ".join(
        fmt(ra[f"throughput_{lv}_over_nginx"], 2) for lv in LIVERIES) + " |")
    L.append(f"| mock headroom: its own max / what it served at Livery's max (at nginx's: "
             f"{fmt(ra['mock_headroom_direct_over_nginx'], 1)}×) | " + " | ".join(
                 f"{fmt(ra[f'mock_headroom_direct_over_{lv}'], 1)}×" for lv in LIVERIES) + " |")
    L.append(f"| mock CPU share of the server core at Livery's max (at nginx's: "
             f"{fmt(100 * (ra['mock_cpu_share_during_nginx_max'] or 0))}%) | " + " | ".join(
                 f"{fmt(100 * (ra[f'mock_cpu_share_during_{lv}_max'] or 0))}%" for lv in LIVERIES) + " |")
    for k, label in (("ttfb_p50", "stream TTFB (first event) added p50"),
                     ("ttft_p50", "stream first content event added p50"),
                     ("event_delay_p50", "stream per-event delay added p50"),
                     ("event_delay_p99", "stream per-event delay added p99")):
        a = ra[f"stream_{k}_added_us"]
        L.append(f"| {label}, Livery / nginx (µs) | " + " | ".join(
            f"{fmt(a[lv])} / {fmt(a['nginx'])}" for lv in LIVERIES) + " |")
    L.append("| Livery RSS slope during the rounds (MiB/min; not a 10-min soak) | " + " | ".join(
        fmt(mem.get(f"{lv}_rss_slope_mib_per_min_during_rounds"), 3) for lv in LIVERIES) + " |")
    if s.get("soak"):
        L.append(f"| Livery RSS slope, {s['soak']['minutes']}-min soak at 2,000 req/s (MiB/min) | "
                 f"{fmt(s['soak']['rss_slope_mib_per_min'], 3)} | – |")
    L.append("")
    rs = doc.get("redis_stats") or {}
    lg = doc.get("ledger") or {}
    L.append("Features checked after the run: " + "; ".join(
        f"{LABELS[lv]}: {fmt(lg.get(lv, {}).get('sqlite_events'))} events in the SQLite ledger, "
        f"{fmt(lg.get(lv, {}).get('jsonl_records'))} JSONL records, spool "
        f"{'present' if lg.get(lv, {}).get('spool_dir_exists') else 'missing'}" for lv in LIVERIES)
        + f"; Redis served {fmt(rs.get('script_calls'))} admission script calls ({fmt(rs.get('dbsize'))} keys at the end), "
        f"Livery logged {fmt(rs.get('livery_log_lines_about_redis_fallback'))} switch(es) to its local fallback "
        f"(Redis slower than redis_timeout_ms = 25 on the shared core"
        + (": " + ", ".join(f"{k} {v}" for k, v in (rs.get("fallbacks_by_phase") or {}).items() if v) if any(
            (rs.get("fallbacks_by_phase") or {}).values()) else "") + ").\n")
    L.append("| issue-7 target | Livery | met | Livery + Redis limits | met |")
    L.append("|---|---:|:---:|---:|:---:|")
    names = []
    for c in s["checks"]:
        if c["target"] not in names:
            names.append(c["target"])
    for name in names:
        cells = []
        for lv in LIVERIES:
            c = next((c for c in s["checks"] if c["target"] == name and c["gateway"] == lv), None)
            cells += [f"{fmt(c['measured'], 2)} {c['unit']}", "yes" if c["met"] else "**no**"] if c else ["–", "–"]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
