#!/usr/bin/env python3
"""Reconnect storm and connection accept rate against a running sidestream (loopback only).

    tests/benches/storm.py storm  --pid PID [--port 8070] [--clients 8000] [--rounds 5]
    tests/benches/storm.py accept --pid PID [--port 8070] [--max 15000] [--step 500]
    (--path '/sse/{topic}' --port 8090 for nchan; the default path is sidestream's bench topic)

storm: first the steady state (the clients connected one after another, at most 50 opening
at a time, held idle), then ROUNDS times: all CLIENTS SSE clients connect at once, each reads
its response head, holds 1 s, closes. It samples the server's RSS every 100 ms and prints
one JSON line: RSS before the first client, with all clients idle, the peak over the storm,
and 35 s after the last round (once instances are reaped), plus how many clients were
served in each round (every one must be).

accept: opens SSE subscribers as fast as it can in steps of STEP (all of a step at once) and
reports new subscribers per second per step until the first failure or MAX.

Every phase is bounded in count and time. Needs only the Python standard library; raise the
fd limit (ulimit -n) above CLIENTS + 100.
"""

import argparse
import asyncio
import json
import os
import time

HEAD_TIMEOUT_S = 30


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


SOURCE_IPS = 32


async def open_subscriber(port, path, index):
    """Connects from 127.0.0.(2 + index % 32) (the per-IP connection limit, like fanbench's
    --src-ips), sends an SSE request, waits for the response head; returns the streams."""
    source = f"127.0.0.{2 + index % SOURCE_IPS}"
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), HEAD_TIMEOUT_S
    )
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
    if not head.startswith(b"HTTP/1.1 200"):
        writer.close()
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return reader, writer


async def close_all(writers):
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


class Sampler:
    """The server's peak RSS while it runs, sampled every 100 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0, True

    async def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.1)


async def storm(args):
    result = {"clients": args.clients, "rounds": args.rounds, "rss_before_kib": rss_kib(args.pid)}
    # The steady state: connected one after another (50 in flight), all idle.
    gate = asyncio.Semaphore(50)

    async def gently(i):
        async with gate:
            return await open_subscriber(args.port, args.path.format(topic=f"storm-steady-{i % 100}"), i)

    opened = await asyncio.gather(*(gently(i) for i in range(args.clients)), return_exceptions=True)
    writers = [o[1] for o in opened if not isinstance(o, BaseException)]
    await asyncio.sleep(2)
    result["steady_served"] = len(writers)
    result["rss_steady_kib"] = rss_kib(args.pid)
    await close_all(writers)
    await asyncio.sleep(2)

    sampler = Sampler(args.pid)
    sampling = asyncio.create_task(sampler.run())
    served = []
    for round_no in range(args.rounds):

        async def one(i):
            _, writer = await open_subscriber(args.port, args.path.format(topic=f"storm-{round_no}-{i % 100}"), i)
            await asyncio.sleep(1)
            writer.close()
            await writer.wait_closed()

        outcomes = await asyncio.gather(*(one(i) for i in range(args.clients)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        served.append(args.clients - len(failures))
        if failures:
            result.setdefault("first_failure", repr(failures[0]))
    sampler.running = False
    await sampling
    result["served_per_round"] = served
    result["rss_peak_kib"] = sampler.peak
    await asyncio.sleep(35)
    result["rss_35s_after_kib"] = rss_kib(args.pid)
    result["peak_over_steady"] = round(sampler.peak / max(result["rss_steady_kib"], 1), 2)
    result["after_minus_before_mib"] = round((result["rss_35s_after_kib"] - result["rss_before_kib"]) / 1024, 1)
    print(json.dumps(result))
    return 0 if all(s == args.clients for s in served) else 1


async def accept(args):
    writers, steps = [], []
    try:
        while len(writers) < args.max:
            count = min(args.step, args.max - len(writers))
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(
                    open_subscriber(
                        args.port, args.path.format(topic=f"accept-{(len(writers) + i) % 100}"), len(writers) + i
                    )
                    for i in range(count)
                ),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
            ok = [o[1] for o in outcomes if not isinstance(o, BaseException)]
            writers.extend(ok)
            steps.append({"open": len(writers), "per_second": round(len(ok) / elapsed)})
            if len(ok) < count:
                failure = next(o for o in outcomes if isinstance(o, BaseException))
                steps[-1]["first_failure"] = repr(failure)
                break
    finally:
        await close_all(writers)
    rates = [s["per_second"] for s in steps]
    print(json.dumps({"accepted": len(writers), "median_per_second": sorted(rates)[len(rates) // 2], "steps": steps}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["storm", "accept"])
    parser.add_argument("--pid", type=int, required=True, help="the server's pid (for RSS)")
    parser.add_argument("--port", type=int, default=8070)
    parser.add_argument("--path", default="/bench/{topic}", help="subscribe path; {topic} is replaced")
    parser.add_argument("--clients", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max", type=int, default=15000)
    parser.add_argument("--step", type=int, default=500)
    args = parser.parse_args()
    if not os.path.exists(f"/proc/{args.pid}"):
        parser.error(f"no process {args.pid}")
    return asyncio.run(storm(args) if args.mode == "storm" else accept(args))


if __name__ == "__main__":
    raise SystemExit(main())
