#!/usr/bin/env python3
"""LiteLLM's proxy as the incumbent (issue 7's optional target), side by side
with Livery and the mock in the same run; driven by benches/load/incumbent.sh.

LiteLLM runs as its `litellm --config` CLI starts it (one uvicorn worker, its
default logging), with a master key so that requests are authenticated as they
are through Livery, and one model routed to the same livery-mock. Livery runs
the load harness's configuration (every feature on). Both are pinned to the
server CPU with the mock; the load generator to the other CPU. LiteLLM serves
tens of requests per second on one core, so instead of the harness's fixed
rates this compares: maximum throughput (closed loop, 64 connections), latency
with one request in flight, latency at a fixed rate LiteLLM sustains
(`--rate`, open loop), time to the first event of a stream, CPU per request and
RSS. Medians over rounds, the target order rotated each round.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

TARGETS = ["direct", "livery", "litellm"]
LABELS = {"direct": "direct mock", "livery": "Livery", "litellm": "LiteLLM proxy"}

LITELLM_YAML = """model_list:
  - model_name: demo
    litellm_params:
      model: openai/mock-1
      api_base: {mock_url}/v1
      api_key: {platform_key}
general_settings:
  master_key: {key}
"""


def pids_of(p):
    return [p.pid] + H.children(p.pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--litellm", required=True, help="the litellm executable")
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rate", type=int, default=25)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tmp", default=None, help="working directory (default: a new temporary one)")
    args = ap.parse_args()
    args.out = args.out or os.path.join(args.root, "benches/load/results")
    args.tmp = args.tmp or tempfile.mkdtemp(prefix="livery-incumbent.")
    args.livery_bin = os.path.join(args.root, "target/release/livery")
    # The load generator and this driver on the load CPU, like the harness.
    os.sched_setaffinity(0, {args.load_cpu})
    procs = H.Procs(args.tmp)
    started = time.time()
    steal0 = H.machine_steal_s()
    try:
        mock, mock_url = H.start_mock(procs, args, args.server_cpu)
        env = H.bench_env()
        credential = H.seal_credential(args, env)
        cfg = H.render_config(args, mock_url, os.path.join(args.tmp, "usage.jsonl"), credential)
        livery, livery_port = H.start_livery(procs, args, args.server_cpu, "livery", cfg, env)
        yaml = os.path.join(args.tmp, "litellm.yaml")
        with open(yaml, "w") as f:
            f.write(LITELLM_YAML.format(mock_url=mock_url, key=H.TENANT_KEY, platform_key=H.PLATFORM_KEY))
        litellm_port = H.free_port()
        litellm = procs.start("litellm", H.pinned(args.server_cpu, [
            args.litellm, "--config", yaml, "--host", "127.0.0.1", "--port", str(litellm_port)]),
            stdout=subprocess.DEVNULL)
        H.wait_http(litellm_port, "/health/liveliness", timeout=120)
        ports = {"direct": int(mock_url.rsplit(":", 1)[1]), "livery": livery_port,
                 "litellm": litellm_port}
        procs_of = {"direct": mock, "livery": livery, "litellm": litellm}
        H.log(f"up: {ports}")
        # Warm-up (LiteLLM's first requests load its routing and cost tables).
        for t in TARGETS:
            H.oha(args, ports[t], 3, conns=8)
        idle_rss = {t: H.mem_kb(pids_of(procs_of[t]))[0] / 1024 for t in TARGETS}

        per = {t: {"max": [], "one": [], "rate": [], "ttfb": [], "cpu_per_10k": []} for t in TARGETS}
        for r in range(args.rounds):
            order = TARGETS[r % len(TARGETS):] + TARGETS[:r % len(TARGETS)]
            H.log(f"round {r + 1}/{args.rounds}: {order}")
            for t in order:
                pids = pids_of(procs_of[t])
                c0 = H.cpu_seconds(pids)
                m = H.oha(args, ports[t], args.duration)
                cpu = H.cpu_seconds(pids) - c0
                per[t]["max"].append(m)
                if m["ok"]:
                    per[t]["cpu_per_10k"].append(cpu / m["ok"] * 10000)
                per[t]["one"].append(H.oha(args, ports[t], args.duration, conns=1))
                per[t]["rate"].append(H.oha(args, ports[t], args.duration, rate=args.rate, conns=8))
                for _ in range(args.streams):
                    ttfb, _, _, _, _ = H.one_stream(ports[t])
                    per[t]["ttfb"].append(ttfb)
                H.log(f"  {t:>8}: max {m['rps']:.0f} req/s, one in flight p50 "
                      f"{per[t]['one'][-1]['p50_us']} µs, at {args.rate} req/s p50 "
                      f"{per[t]['rate'][-1]['p50_us']} µs")
        after_rss = {t: H.mem_kb(pids_of(procs_of[t]))[0] / 1024 for t in TARGETS}
    finally:
        procs.stop_all()

    def med_of(t, phase, key):
        return H.med([x[key] for x in per[t][phase] if x.get(key) is not None])

    summary = {}
    for t in TARGETS:
        summary[t] = {
            "max_rps": med_of(t, "max", "rps"),
            "max_p50_us": med_of(t, "max", "p50_us"),
            "one_p50_us": med_of(t, "one", "p50_us"),
            "one_p99_us": med_of(t, "one", "p99_us"),
            "rate_p50_us": med_of(t, "rate", "p50_us"),
            "rate_p99_us": med_of(t, "rate", "p99_us"),
            "rate_non_200": sum(x["non_200"] for x in per[t]["rate"]),
            "ttfb_p50_us": H.pct(per[t]["ttfb"], 0.5),
            "cpu_s_per_10k": H.med(per[t]["cpu_per_10k"]) if per[t]["cpu_per_10k"] else None,
            "rss_idle_mib": round(idle_rss[t], 1),
            "rss_after_mib": round(after_rss[t], 1),
        }
    elapsed = time.time() - started
    steal = H.machine_steal_s() - steal0
    litellm_version = subprocess.run(
        [os.path.join(os.path.dirname(args.litellm), "python"), "-c",
         "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True).stdout.strip() or "?"
    commit = subprocess.run(["git", "-C", args.root, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
           "litellm": litellm_version, "rounds": args.rounds, "duration_s": args.duration,
           "rate": args.rate, "steal_share_of_machine": round(steal / (elapsed * (os.cpu_count() or 1)), 3),
           "elapsed_s": round(elapsed), "summary": summary, "per_round": per}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "incumbent.json"), "w") as f:
        json.dump(doc, f, indent=1)
    s = summary
    rows = [
        ("max throughput, req/s (closed loop, 64 connections)", "max_rps"),
        ("p50 latency at maximum throughput, µs", "max_p50_us"),
        ("one request in flight: p50 / p99, µs", ("one_p50_us", "one_p99_us")),
        (f"{args.rate} req/s (open loop): p50 / p99, µs", ("rate_p50_us", "rate_p99_us")),
        ("stream: time to first event p50, µs", "ttfb_p50_us"),
        ("CPU s / 10k requests at maximum throughput", "cpu_s_per_10k"),
        ("RSS idle (after warm-up) / after the rounds, MiB", ("rss_idle_mib", "rss_after_mib")),
    ]

    def cell(t, k):
        if isinstance(k, tuple):
            return " / ".join(H.fmt(s[t][x], 1 if "mib" in x else 0) for x in k)
        return H.fmt(s[t][k], 2 if k == "cpu_s_per_10k" else 0)

    L = [f"# Livery against LiteLLM's proxy — {doc['date']}\n",
         f"`benches/load/incumbent.sh`, commit {commit}, LiteLLM {litellm_version}; load generator on CPU "
         f"{args.load_cpu}, the mock, Livery and LiteLLM on CPU {args.server_cpu}; {args.rounds} rounds of "
         f"{args.duration} s per phase, medians; steal {100 * doc['steal_share_of_machine']:.0f}% of the "
         f"machine; run time {doc['elapsed_s']} s. Livery: the load harness's configuration (auth, sealed "
         f"key unsealed per request, local limits, usage ledger and JSONL mirror). LiteLLM: `litellm "
         f"--config` with a master key and one model on the same mock, its defaults otherwise.\n",
         "| | " + " | ".join(LABELS[t] for t in TARGETS) + " |",
         "|---|" + "---:|" * len(TARGETS)]
    for label, k in rows:
        L.append(f"| {label} | " + " | ".join(cell(t, k) for t in TARGETS) + " |")
    lv, ll = s["livery"], s["litellm"]
    if lv["max_rps"] and ll["max_rps"]:
        L.append(f"\nLivery's maximum throughput is {lv['max_rps'] / ll['max_rps']:.0f}× LiteLLM's; "
                 f"with one request in flight Livery adds {lv['one_p50_us'] - s['direct']['one_p50_us']:.0f} µs "
                 f"at p50 to the mock's own latency and LiteLLM "
                 f"{ll['one_p50_us'] - s['direct']['one_p50_us']:.0f} µs.")
    if ll["rate_non_200"] or lv["rate_non_200"]:
        L.append(f"\nNon-200 answers at {args.rate} req/s: Livery {lv['rate_non_200']}, LiteLLM {ll['rate_non_200']}.")
    with open(os.path.join(args.out, "incumbent.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    H.log(f"wrote {os.path.join(args.out, 'incumbent.md')}")
    print("\n".join(L))


if __name__ == "__main__":
    main()
