#!/usr/bin/env python3
"""SVG picture of a fanbench comparison (compare.sh's JSON lines), no third-party modules.

    plot.py results.jsonl [more.jsonl ...] [-o out.svg] [--commit abc1234]

Three panels, one group of bars per scenario and one bar per peer: server CPU µs per
delivery (publish phase CPU / messages received), p99 latency (ms) and server RSS KiB per
idle connection. Labels are `peer-scenario` (compare.sh's `sidestream-sse-n1000-m100-r10`);
repeated runs (REPEAT=3) are shown by their median, as summarize.py's readers would."""
import argparse
import html
import json
import statistics
import sys

COLOURS = ["#3a6fd8", "#e0832f", "#2e9d4b", "#b14fc4", "#d0302f", "#6b7280"]
METRICS = [
    ("µs CPU per delivery", "lower is better",
     lambda r: (r.get("server_cpu_s") or {}).get("publish", 0) * 1e6 / r["received_total"]
     if r.get("received_total") else None),
    ("p99 latency, ms", "lower is better", lambda r: r.get("lat_p99_ms")),
    ("KiB per connection (RSS, idle)", "lower is better",
     lambda r: r["server_rss_per_idle_conn_b"] / 1024 if r.get("server_rss_per_idle_conn_b") is not None else None),
]


def load(paths):
    rows = []
    for path in paths:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def split_label(label):
    peer, _, scenario = label.partition("-")
    return peer, scenario or label


def medians(rows):
    """{metric index: {scenario: {peer: value}}}, plus the peer and scenario order."""
    peers, scenarios, values = [], [], {}
    for row in rows:
        peer, scenario = split_label(row["label"])
        if peer not in peers:
            peers.append(peer)
        if scenario not in scenarios:
            scenarios.append(scenario)
        for index, (_, _, read) in enumerate(METRICS):
            value = read(row)
            if value is not None:
                values.setdefault((index, scenario, peer), []).append(value)
    table = {k: statistics.median(v) for k, v in values.items()}
    return peers, scenarios, table


def fmt(value):
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(rows, title):
    peers, scenarios, table = medians(rows)
    bar_h, gap, label_w, panel_w, pad = 12, 8, 230, 330, 24
    group_h = bar_h * len(peers) + gap
    panel_h = group_h * len(scenarios) + 40
    width = label_w + panel_w * len(METRICS) + pad
    height = panel_h + 80
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="system-ui, sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="{pad}" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    # Legend.
    x = pad
    for i, peer in enumerate(peers):
        out.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + 16}" y="44">{html.escape(peer)}</text>')
        x += 24 + 7 * len(peer)
    top = 70
    for s, scenario in enumerate(scenarios):
        y = top + 20 + s * group_h + bar_h * len(peers) / 2 + 4
        out.append(f'<text x="{label_w - 8}" y="{y:.0f}" text-anchor="end">{html.escape(scenario)}</text>')
    for m, (name, hint, _) in enumerate(METRICS):
        left = label_w + m * panel_w
        inner = panel_w - 70
        best = max([table.get((m, sc, p), 0) for sc in scenarios for p in peers] or [0]) or 1
        out.append(f'<text x="{left}" y="{top}" font-weight="bold">{html.escape(name)}</text>')
        out.append(f'<text x="{left}" y="{top + 12}" fill="#6b7280">{hint}</text>')
        out.append(f'<line x1="{left}" y1="{top + 18}" x2="{left}" y2="{top + panel_h - 20}" stroke="#9aa1ad"/>')
        for s, scenario in enumerate(scenarios):
            for p, peer in enumerate(peers):
                value = table.get((m, scenario, peer))
                y = top + 20 + s * group_h + p * bar_h
                if value is None:
                    out.append(f'<text x="{left + 4}" y="{y + bar_h - 2}" fill="#9aa1ad">n/a</text>')
                    continue
                w = max(1.0, inner * value / best)
                colour = COLOURS[p % len(COLOURS)]
                out.append(f'<rect x="{left + 1}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colour}">'
                           f'<title>{html.escape(peer)} {html.escape(scenario)}: {fmt(value)}</title></rect>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}">{fmt(value)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="fanbench JSON lines (compare.sh's OUT)")
    parser.add_argument("-o", "--out", help="the SVG to write (default: results with .svg)")
    parser.add_argument("--commit", default="", help="the commit measured, shown in the title")
    args = parser.parse_args()
    rows = load(args.results)
    if not rows:
        sys.exit(f"plot.py: no results in {', '.join(args.results)}")
    out = args.out or args.results[0].rsplit(".", 1)[0] + ".svg"
    title = "sidestream fan-out comparison" + (f" at {args.commit}" if args.commit else "")
    with open(out, "w") as fh:
        fh.write(render(rows, title))
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
