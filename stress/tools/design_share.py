#!/usr/bin/env python3
"""Splits the on-CPU samples of a `stress churn` run, phase by phase, into each design's
own code (the registry and its channel) and everything else (the harness and tokio).

A sample counts as the design's when any frame of its stack is the design's code, so
the allocator and the kernel count where the design called them. Each phase's window
skips its first SKIP_HEAD seconds (populating the world) and its last SKIP_TAIL
(teardown). CPU per call is the window's busy cores over the phase's rate in the
report, so the windows must be long (`--duration 4s` or more).

    RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=1 \
        CARGO_TARGET_DIR=target/fp cargo build --release -p stress
    perf record -e cpu-clock -F 5000 -g -o churn.data \
        target/fp/release/stress churn --duration 4s > churn.out
    perf script -i churn.data -F tid,time,ip,sym > churn.script
    python3 stress/tools/design_share.py churn.out churn.script

usage: design_share.py STRESS_OUTPUT PERF_SCRIPT [SKIP_HEAD SKIP_TAIL]"""
import collections, re, sys

DESIGN = {
    "switchboard": r"^switchboard::|^<?baselines::switchboard::|drop_in_place<switchboard::|^papaya::|^seize::|^crossbeam_epoch::|^<?arc_swap::",
    "dashmap": r"^<?dashmap::|^<?baselines::dashmap::|tokio::sync::mpsc|drop_in_place<tokio::sync::mpsc",
    "mutex": r"^<?baselines::mutex::|tokio::sync::mpsc|drop_in_place<tokio::sync::mpsc|std::sys::sync::mutex",
}
# What the rest is, by the innermost frame that names one of these.
REST = [
    ("tokio parking (each yield polls the I/O driver)", r"park_yield|park_internal|Context::park|epoll_wait|Driver::park"),
    ("clock reads (tokio's worker loop and timer)", r"clock_gettime|Instant::now|Instant>::elapsed"),
    ("the harness's model (ledgers, world)", r"^stress::(world|ledger|client|tally|serial)"),
    ("the drivers' loop", r"^stress::(scenarios::load|rng)"),
    ("tokio's scheduler", r"^tokio::runtime"),
    ("the allocator", r"malloc|_int_free|cfree|unlink_chunk"),
]
out, script = sys.argv[1], sys.argv[2]
head = float(sys.argv[3]) if len(sys.argv) > 3 else 0.7
tail = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
phases = []
for line in open(out, errors="replace"):
    m = re.match(r"\[\s*([\d.]+)s\] (\w+): (switchboard|dashmap|mutex)\s*$", line.strip())
    if m:
        phases.append((float(m.group(1)), m.group(2), m.group(3)))
    elif re.match(r"\[\s*([\d.]+)s\]", line.strip()):
        phases.append((float(re.match(r"\[\s*([\d.]+)s\]", line.strip()).group(1)), None, None))
HZ = 5000
rates, result = {}, {}
for line in open(out, errors="replace"):
    m = re.match(r"\s+(switchboard|dashmap|mutex)\s+([\d.]+) (k|M)/s", line)
    if m and m.group(1) not in rates:
        rates[m.group(1)] = float(m.group(2)) * (1e3 if m.group(3) == "k" else 1e6)
samples, cur, t0 = [], None, None
for line in open(script, errors="replace"):
    if not line.strip():
        if cur: samples.append(cur)
        cur = None
        continue
    if line[0] not in " \t":
        t = float(line.split()[1].rstrip(":"))
        t0 = t if t0 is None else t0
        cur = (t - t0, [])
    elif cur is not None:
        s = line.strip()
        cur[1].append(s.split(" ", 1)[1] if " " in s else s)
if cur: samples.append(cur)
for i, (start, scen, who) in enumerate(phases):
    if who is None:
        continue
    end = phases[i + 1][0] if i + 1 < len(phases) else samples[-1][0]
    lo, hi = start + head, end - tail
    win = [s for s in samples if lo <= s[0] < hi]
    pat = re.compile(DESIGN[who])
    own, rest = 0, collections.Counter()
    for s in win:
        if any(pat.search(f) for f in s[1]):
            own += 1
            continue
        what = next((name for f in s[1] for name, p in REST if re.search(p, f)), "other")
        rest[what] += 1
    share = own / max(1, len(win))
    cores = len(win) / (hi - lo) / HZ
    row = {"share": share, "cores": cores}
    if who in rates:
        row["cpu_ns"] = cores / rates[who] * 1e9
        row["own_ns"] = share * row["cpu_ns"]
        row["rest_ns"] = row["cpu_ns"] - row["own_ns"]
    result[who] = row
    print(f"{scen}/{who}: window {lo:.1f}-{hi:.1f}s, {len(win)} samples ({cores:.2f} cores busy), "
          f"design's own code {100*share:.1f}%" + (
          f"; per op {row['cpu_ns']:.0f} ns of CPU: {row['own_ns']:.0f} the design's, {row['rest_ns']:.0f} the rest"
          if "cpu_ns" in row else ""))
    for what, n in rest.most_common():
        print(f"    {100 * n / max(1, len(win)):5.1f}% {what}")
if "switchboard" in result and "dashmap" in result and "cpu_ns" in result["dashmap"]:
    sb, dm = result["switchboard"], result["dashmap"]
    print(f"ratio of CPU per op {dm['cpu_ns']/sb['cpu_ns']:.2f}; of the designs' own code alone "
          f"{dm['own_ns']/sb['own_ns']:.2f}; with switchboard's own code free "
          f"{dm['cpu_ns']/sb['rest_ns']:.2f}")
