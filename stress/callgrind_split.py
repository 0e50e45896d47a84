#!/usr/bin/env python3
"""Split a callgrind profile (collected inside the driver tasks' polls, or the receivers')
into registry / channel / harness / scheduler, per operation.

Self cost goes by the source file of the (possibly inlined) line, else by the owner of the
containing symbol (the first non-std crate named in it). Functions owned by no one (std,
core, libc: the allocator, memcpy, the clock) are transparent: their self cost is handed to
their callers in proportion to the cost of each caller's calls, up the graph.
usage: callgrind_split.py callgrind.out OPS [--top N] [--channel-by-file]

`--channel-by-file` counts every line of the channel's files (`src/channel.rs`,
`src/sync/bounded_queue.rs`, `src/sync/waker_slot.rs`), send side included, and
tokio's `sync` module (DashMap's channel) as the channel; by default the send side
goes to the registry. Profiles taken with `--dump-instr=yes` (for `locked_rmws.py`)
are read too.

Recipe (the README's "harness" paragraph under "Load test"): build with
`RUSTFLAGS="-C symbol-mangling-version=v0" CARGO_PROFILE_RELEASE_DEBUG=1 cargo build
--release -p stress`, then collect one design's driver polls only, e.g.
`valgrind --tool=callgrind '--toggle-collect=stress::scenarios::load::drive::<baselines::switchboard*'
target/release/stress churn --duration 300ms --json churn.json`, and pass the design's
operations from the JSON (`scenarios.churn.contenders.<design>.run.ops`) as OPS."""
import os, re, sys, collections

# The repository this script sits in: its `src/` is switchboard, the registry.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Set by `--channel-by-file`; see the usage.
CHANNEL_BY_FILE = '--channel-by-file' in sys.argv

STD = {'core', 'std', 'alloc', '__rustc', 'hashbrown_std'}
REG = {'switchboard', 'baselines', 'dashmap', 'papaya', 'crossbeam_epoch', 'crossbeam_utils',
       'seize', 'arc_swap', 'foldhash', 'slab', 'hashbrown', 'lock_api', 'parking_lot',
       'parking_lot_core'}

def cat_file(f):
    f = f or ''
    if '/stress/src/' in f: return 'harness'
    if '/benches/baselines/' in f: return 'registry'
    if f.startswith(ROOT + '/src/'):
        # The channel's receive side is told apart by symbol (see `cat_sym`).
        if re.search(r'/src/(channel\.rs|sync/bounded_queue\.rs|sync/waker_slot\.rs)$', f):
            return 'channel' if CHANNEL_BY_FILE else None
        return 'registry'
    if re.search(r'/(dashmap|papaya|crossbeam-epoch|arc-swap|foldhash|seize|slab|lock_api|parking_lot)-', f): return 'registry'
    if CHANNEL_BY_FILE and re.search(r'/tokio-[\d.]+/src/sync/', f): return 'channel'
    if re.search(r'/tokio-[\d.]+/src/(runtime|task)/', f): return 'sched'
    return None

def cat_sym(s):
    if re.search(r'Channel<[^>]*>>::(poll_recv|try_recv|ready|own_rx_waker|park|try_recv_waiting)\b|'
                 r'as baselines::contender::Inbox|channel::Receiver<stress::message::Msg>>::recv|'
                 r'tokio::sync::mpsc::(chan::Rx|bounded::Receiver|list::Rx)|'
                 r'drop_in_place::<tokio::sync::mpsc::bounded::Receiver|'
                 r'drop_in_place::<switchboard::channel::Receiver|'
                 r'channel::Receiver<stress::message::Msg> as core::ops::drop::Drop|BoundedQueue<[^>]*>>::pop', s):
        return 'channel'
    if re.search(r'sip::Hasher|RandomState as core::hash::BuildHasher|serde_json', s): return 'registry'
    for tok in re.findall(r'(?:^|[<\s(,&\[*])([A-Za-z_][A-Za-z0-9_]*)::', s):
        if tok in STD: continue
        if tok == 'tokio':
            if re.search(r'tokio::sync::mpsc', s): return 'registry'
            if re.search(r'tokio::sync::(notify|Notify)', s): return 'harness'
            return 'sched'
        if tok == 'stress': return 'harness'
        if tok in REG: return 'registry'
        return 'other:' + tok
    return None  # pure std/libc: transparent

def parse(path):
    files, fns = {}, {}
    selfc = collections.Counter(); calls = collections.Counter()
    fl = fi = fn = cfn = None; pending = False
    npos = 1  # position columns before the cost: `line`, or `instr line`
    def nm(tab, v):
        m = re.match(r'\((\d+)\)(?: (.*))?$', v)
        if m:
            if m.group(2) is not None: tab[m.group(1)] = m.group(2)
            return tab.get(m.group(1), '?')
        return v
    for line in open(path, errors='replace'):
        line = line.rstrip('\n')
        if not line: continue
        c = line[0]
        if c.isdigit() or c in '+-*':
            parts = line.split()
            if len(parts) < npos + 1: continue
            cost = int(parts[npos])
            if pending:
                calls[(fi or fl, fn, cfn)] += cost; pending = False
            else:
                selfc[(fi or fl, fn)] += cost
            continue
        if line.startswith('positions:'):
            npos = len(line.split()) - 1
            continue
        k, _, v = line.partition('=')
        if k == 'fl': fl = nm(files, v); fi = None
        elif k in ('fi', 'fe'): fi = nm(files, v)
        elif k == 'fn': fn = nm(fns, v); fi = None
        elif k in ('cfl', 'cfi'): nm(files, v)
        elif k == 'cfn': cfn = nm(fns, v)
        elif k == 'calls': pending = True
    return selfc, calls

def main():
    path, ops = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[sys.argv.index('--top') + 1]) if '--top' in sys.argv else 0
    selfc, calls = parse(path)
    out = collections.Counter(); detail = collections.Counter()
    pend = collections.Counter()
    alloc_total = 0
    for (f, s), n in selfc.items():
        c = cat_file(f) or cat_sym(s)
        if c is None:
            pend[s] += n
            if re.search(r'malloc|free|memalign|alloc|tcache|Counting|heap::track|thread_stripe', s): alloc_total += n
        else:
            out[c] += n; detail[(c, s)] += n
    callers = collections.defaultdict(collections.Counter)
    for (f, s, callee), n in calls.items():
        callers[callee][(f, s)] += n
    for _ in range(30):
        nxt = collections.Counter()
        for t, n in pend.items():
            cs = callers.get(t)
            if not cs: out['unattributed'] += n; continue
            tot = sum(cs.values())
            for (f, s), w in cs.items():
                share = n * w / tot
                c = cat_file(f) or cat_sym(s)
                if c is None: nxt[s] += share
                else: out[c] += share; detail[(c, s + '  [via std]')] += share
        pend = nxt
        if not pend: break
    total = sum(selfc.values())
    print(f"total {total:,} instructions, {ops:.0f} ops: {total/ops:,.0f} per op")
    for c, n in sorted(out.items(), key=lambda x: -x[1]):
        print(f"  {c:14s} {n/ops:8,.0f} per op")
    print(f"  (allocator and counting-allocator self cost within the above: {alloc_total/ops:,.0f} per op)")
    if top:
        for (c, s), n in sorted(detail.items(), key=lambda x: -x[1])[:top]:
            print(f"    {n/ops:7,.0f}  {c:9s} {s[:170]}")
main()
