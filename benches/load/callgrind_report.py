#!/usr/bin/env python3
"""Instructions per request from callgrind dumps (callgrind.sh writes them).

    callgrind_report.py own REQUESTS BIN DUMP...
        the whole process per request, the main thread's share, and the 25
        functions with the most instructions of their own (every thread)
    callgrind_report.py files REQUESTS DUMP [BASE_DUMP BASE_REQUESTS]
        one thread's instructions per request by the source file they were
        written in: inlined code counts in its own file (hyper's, h2's, the
        standard library's) rather than in the function it was inlined into,
        which is what a release build's profile otherwise shows. With
        BASE_DUMP (e.g. livery-floor's, counted over BASE_REQUESTS), the
        difference per request and file, largest first: what the first build
        does that the second does not.

A cost line after a `calls=` line is the callee's inclusive cost, not the
caller's own, so it is skipped.
"""

import collections
import re
import sys


def read(path):
    """Own instructions by function and by source file of one dump."""
    names = {}

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        key = (kind, m.group(1))
        if m.group(2) is not None:
            names[key] = m.group(2)
        return names.get(key, rest)

    by_fn, by_file = collections.Counter(), collections.Counter()
    fn = fl = fi = None
    callee_cost = False
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            fn, fi = name("fn", line[3:].strip()), None
        elif line.startswith("fl="):
            fl, fi = name("fl", line[3:].strip()), None
        elif line.startswith(("fi=", "fe=")):
            fi = name("fl", line[3:].strip())
        elif line.startswith("cfn="):
            name("fn", line[4:].strip())
        elif line.startswith(("cfl=", "cfi=")):
            name("fl", line[4:].strip())
        elif line.startswith("calls="):
            callee_cost = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2:
                if callee_cost:
                    callee_cost = False
                else:
                    cost = int(parts[1])
                    by_fn[fn] += cost
                    by_file[short(fi or fl or "?")] += cost
    return by_fn, by_file


def short(path):
    """A source path without the registry's, toolchain's and checkout's prefixes."""
    path = re.sub(r".*/registry/src/[^/]*/", "", path)
    path = re.sub(r"/rustc/[0-9a-f]*/library/", "std:", path)
    return re.sub(r"^/.*?/(src|benches)/", r"\1/", path, count=1)


def own(n, binary, paths):
    total_by_fn = collections.Counter()
    per_thread = []
    for path in paths:
        by_fn, _ = read(path)
        per_thread.append(sum(by_fn.values()))
        total_by_fn.update(by_fn)
    total = sum(total_by_fn.values())
    print(f"{binary}: {total / n:,.0f} instructions per request ({total:,} over {n:,} requests)")
    # The other threads' share moves between runs with how many events the
    # ledger shipped while the counters ran (the warm-up's tail included);
    # the main thread's is the steadier figure for a change to the request
    # path, and the shipper's per shipped event for one to the ledger.
    print(f"  main thread (the request path) {per_thread[0] / n:,.0f}, "
          f"other threads (usage ledger, mirror) {(total - per_thread[0]) / n:,.0f}")
    print("\ninstructions of their own per request, top 25:")
    for f, c in total_by_fn.most_common(25):
        print(f"{c / n:9,.0f}  {100 * c / total:5.1f}%  {f[:110]}")


def files(n, path, base=None, base_n=None):
    _, mine = read(path)
    if base is None:
        print(f"{sum(mine.values()) / n:,.0f} instructions per request; by source file, top 40:")
        for f, c in mine.most_common(40):
            print(f"{c / n:9,.0f}  {f}")
        return
    _, theirs = read(base)
    mine = {f: c / n for f, c in mine.items()}
    theirs = {f: c / base_n for f, c in theirs.items()}
    print(f"{sum(mine.values()):,.0f} against {sum(theirs.values()):,.0f} instructions per "
          "request; the difference by source file, top 40 (this / base):")
    diff = {f: mine.get(f, 0) - theirs.get(f, 0) for f in set(mine) | set(theirs)}
    for f, d in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:40]:
        print(f"{d:+9,.0f}  {mine.get(f, 0):8,.0f} / {theirs.get(f, 0):8,.0f}  {f}")


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "own":
        own(n, sys.argv[3], sys.argv[4:])
    elif mode == "files":
        base, base_n = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, None)
        files(n, sys.argv[3], base, base_n)
    else:
        sys.exit(__doc__)
