#!/usr/bin/env python3
"""Where a profile's samples go, by code region, with the kernel's share of each.

`perf report` shows self time per symbol; a per-connection cost is spread over a few hundred
symbols (the kernel's accept and send paths, page faults, the allocator, tokio, pingora, us),
so it answers "which *region* costs what" badly. This reads a profile recorded with call
graphs (`PERF=dwarf tests/benches/cpu_split.sh ...`, i.e. `perf record --call-graph dwarf`)
and counts, for each region named below, the samples whose stack passes through it
(inclusive), and how many of those were in the kernel. `--faults` lists the user-space
frames that took the page faults instead.

  tests/benches/perf_fold.py PERF.data [--region NAME=SUBSTRING ...] [--faults]

Regions default to the connect path's (accept loop, head read, lane, stream task, send,
page faults, allocator). A sample counts once per region however deep the recursion.
"""
import argparse
import collections
import re
import subprocess
import sys

DEFAULT_REGIONS = [
    ("pingora accept loop (all a connection task does)", "run_endpoint"),
    ("  accept4 (kernel)", "__sys_accept4"),
    ("  task spawn (bind_new_task)", "bind_new_task"),
    ("ConnectionLimit::process_new", "process_new"),
    ("  its reads and writes (through HeaderLimited)", "HeaderLimited"),
    ("  RequestHeader built for the router", "RequestHeader"),
    ("  the SSE lane's routing (PollLane, CanonicalPath)", "PollLane"),
    ("  sse::start (subscribe, frame the first chunk)", "sse::start"),
    ("SSE stream task (SseStream::run)", "SseStream::run"),
    ("send (kernel, incl. loopback delivery)", "__sys_sendto"),
    ("recv (kernel)", "__sys_recvfrom"),
    ("epoll_wait (kernel)", "do_epoll_wait"),
    ("epoll_ctl (kernel)", "do_epoll_ctl"),
    ("page faults", "exc_page_fault"),
    ("allocator (jemalloc)", "_rjem_"),
    ("futex (thread wake-ups)", "futex"),
]


def stacks(data):
    """Each sample's frames, leaf first."""
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip,sym"],
        check=True, capture_output=True, text=True,
    ).stdout
    for block in out.split("\n\n"):
        frames = []
        for line in block.strip().splitlines():
            parts = line.strip().split(" ", 1)
            frames.append(parts[1] if len(parts) == 2 else parts[0])
        if frames:
            yield frames


def in_kernel(frames):
    return any(f.startswith(("entry_SYSCALL", "asm_", "ret_from_fork")) for f in frames)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--region", action="append", default=[], metavar="NAME=SUBSTRING")
    parser.add_argument("--faults", action="store_true")
    args = parser.parse_args()
    regions = [tuple(r.split("=", 1)) for r in args.region] or DEFAULT_REGIONS
    total = 0
    counts = collections.Counter()
    kernel = collections.Counter()
    faults = collections.Counter()
    for frames in stacks(args.data):
        total += 1
        k = in_kernel(frames)
        for name, needle in regions:
            if any(needle in f for f in frames):
                counts[name] += 1
                kernel[name] += k
        if args.faults and any("exc_page_fault" in f for f in frames):
            at = max(i for i, f in enumerate(frames) if "asm_exc_page_fault" in f)
            ours = [f for f in frames[at + 1:]
                    if not re.match(r"(_rjem|extent|pac_|pai_|arena|tcache|edata|base_|\[unknown\])", f)
                    and "(inlined)" not in f]
            faults[" < ".join(f[:70] for f in ours[:3])] += 1
    if total == 0:
        sys.exit("perf_fold.py: no samples (recorded with --call-graph dwarf?)")
    print(f"{total} samples; inclusive share of all samples (kernel share of it)")
    for name, _ in regions:
        print(f"{counts[name] * 100 / total:6.1f} % ({kernel[name] * 100 / total:5.1f} % kernel)  {name}")
    if args.faults:
        print("\npage faults by the user-space frames that took them:")
        for where, n in faults.most_common(15):
            print(f"{n:6d}  {where}")


if __name__ == "__main__":
    main()
