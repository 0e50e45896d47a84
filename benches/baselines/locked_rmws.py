#!/usr/bin/env python3
"""Locked read-modify-writes per operation, from a callgrind profile.

Usage: locked_rmws.py CALLGRIND_OUT OPERATIONS

The profile must come from `valgrind --tool=callgrind --dump-instr=yes ...`, so that
it counts executions per instruction address. Each object it names is disassembled
with `objdump -d`; the locked instructions are those with a `lock` prefix (a SeqCst
fence is `lock or` on the stack) and `xchg` with a memory operand (always locked).
Prints, per function and kind, how many ran per operation (executions divided by
OPERATIONS), then the totals. See README, "Where a churn cycle's instructions go".
"""
import collections
import re
import subprocess
import sys


def parse(path):
    """Exclusive executions per (object, address), and each address's function."""
    names, costs, function_of = {}, collections.defaultdict(int), {}

    def resolve(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), "?")

    obj = fn = None
    last, call_line = 0, False
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        if line.startswith("ob="):
            obj = resolve("ob", line[3:])
        elif line.startswith("cob="):
            resolve("ob", line[4:])
        elif line.startswith("fn="):
            fn = resolve("fn", line[3:])
        elif line.startswith("cfn="):
            resolve("fn", line[4:])
        elif line.startswith("calls="):
            call_line = True  # the next cost line is a call's inclusive cost
        elif line[0] in "0123456789+-*":
            parts = line.split()
            a = parts[0]
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] in "+-":
                step = int(a[1:], 16) if a[1:].startswith("0x") else int(a[1:])
                addr = last + step if a[0] == "+" else last - step
            elif a == "*":
                addr = last
            else:
                addr = int(a)
            last = addr
            if call_line:
                call_line = False
                continue
            if len(parts) >= 3:
                costs[(obj, addr)] += int(parts[2])
                function_of[(obj, addr)] = fn
    return costs, function_of


def main():
    path, operations = sys.argv[1], int(sys.argv[2])
    costs, function_of = parse(path)
    by_object = collections.defaultdict(set)
    for obj, addr in costs:
        by_object[obj].add(addr)
    per_function, totals = collections.defaultdict(float), collections.Counter()
    for obj, addrs in by_object.items():
        if not obj or obj == "?":
            continue
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                                 capture_output=True, text=True).stdout
        for line in listing.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
            if not m or int(m.group(1), 16) not in addrs:
                continue
            ins = m.group(2).strip()
            if ins.startswith("lock"):
                kind = "lock " + ins.split()[1]
            elif re.match(r"xchg\s", ins) and "(" in ins:
                kind = "xchg (memory)"
            else:
                continue
            key = (obj, int(m.group(1), 16))
            n = costs[key] / operations
            per_function[(function_of[key], kind)] += n
            totals[kind] += n
    for (fn, kind), n in sorted(per_function.items(), key=lambda item: -item[1]):
        if n >= 0.005:
            print(f"{n:7.3f}  {kind:14s} {fn}")
    print(f"total {sum(totals.values()):.2f} per operation:",
          ", ".join(f"{kind} {n:.2f}" for kind, n in totals.most_common()))


if __name__ == "__main__":
    main()
