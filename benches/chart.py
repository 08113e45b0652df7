#!/usr/bin/env python3
"""Draws benches/chart.svg from the `chart <panel> <arm> <x> <value>` lines that
`cargo bench --all-features --bench peers` and `--bench fleet` print (benches/summary.sh chart
pipes them here).

Several runs' lines may be piped in at once (each point is then the median of its runs, the upper one of an even count).

Left panel: CPU time per request against the number of threads (each with its own clone).
Right panel: time until every caller has sent, against the number of callers in a refresh storm
(log-log). Third panel (when `chart fleet ...` lines are given): K replicas waiting on one token
request through Redis, time from the token's write to the last replica having it. Standard
library only.

    grep '^chart ' peers-output.txt | python3 benches/chart.py > benches/chart.svg
"""

import math
import sys
from collections import defaultdict

COLOURS = {
    "layer": "#d62728",
    "set_request_header": "#7f7f7f",
    "floor_watch": "#7f7f7f",
    "floor_watch_request": "#bcbd22",
    "rwlock": "#1f77b4",
    "mutex": "#2ca02c",
    "once_cell": "#9467bd",
    "aliri_tokens": "#ff7f0e",
    "notified": "#d62728",
    "polling": "#7f7f7f",
}
LABELS = {
    "layer": "this crate's layer",
    "set_request_header": "SetRequestHeader x2, static (floor)",
    "floor_watch": "bare tasks on one watch (floor)",
    "floor_watch_request": "the same, each sending its request (floor)",
    "rwlock": "tokio RwLock<Option<Token>> (design card)",
    "mutex": "std Mutex per request (Go ReuseTokenSource)",
    "once_cell": "tokio OnceCell replaced at expiry",
    "aliri_tokens": "aliri_tokens TokenWatcher",
    "notified": "RedisStore, waiters woken by pub/sub",
    "polling": "same store, waiters polling (before)",
}
DASHED = {"set_request_header", "floor_watch", "floor_watch_request", "polling"}

W, H = 460, 350  # one panel
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 40, 150


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks(lo, hi, log):
    if log:
        ticks, decade = [], 10 ** math.floor(math.log10(lo))
        while decade <= hi * 1.0001:
            ticks += [m * decade for m in (1, 2, 5) if lo / 1.0001 <= m * decade <= hi * 1.0001]
            decade *= 10
        return ticks or [lo, hi]
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 4)) if span > 0 else 1
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2) if start + i * step <= hi + 1e-9]


def panel(x0, series, title, xlabel, ylabel, xlog, ylog, xfmt, yfmt, xs_all):
    out = []
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    values = [v for pts in series.values() for _, v in pts]
    ylo, yhi = min(values), max(values)
    if ylog:
        ylo, yhi = ylo / 1.3, yhi * 1.3
    else:
        pad = (yhi - ylo) * 0.15 or yhi * 0.05
        ylo, yhi = max(0, ylo - pad), yhi + pad
    xlo, xhi = min(xs_all), max(xs_all)
    f = (lambda v: math.log10(v)) if xlog else (lambda v: v)
    g = (lambda v: math.log10(v)) if ylog else (lambda v: v)

    def px(x):
        return x0 + LEFT + (f(x) - f(xlo)) / ((f(xhi) - f(xlo)) or 1) * pw

    def py(y):
        return TOP + ph - (g(y) - g(ylo)) / ((g(yhi) - g(ylo)) or 1) * ph

    out.append(f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-weight="bold">{esc(title)}</text>')
    out.append(f'<rect x="{x0 + LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for t in nice_ticks(ylo, yhi, ylog):
        if ylo <= t <= yhi:
            y = py(t)
            out.append(f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 + LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{yfmt(t)}</text>')
    for x in xs_all:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{xfmt(x)}</text>')
    out.append(f'<text x="{x0 + LEFT + pw / 2}" y="{TOP + ph + 34}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(
        f'<text transform="translate({x0 + 16},{TOP + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>'
    )
    for i, (arm, pts) in enumerate(series.items()):
        pts = sorted(pts)
        colour = COLOURS.get(arm, "#000")
        dash = ' stroke-dasharray="5,4"' if arm in DASHED else ""
        width = 3 if arm in ("layer", "notified") else 1.6
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>')
        ly = TOP + ph + 52 + i * 13
        out.append(
            f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="{width}"{dash}/>'
        )
        out.append(f'<text x="{x0 + LEFT + 28}" y="{ly}">{esc(LABELS.get(arm, arm))}</text>')
    return out


def main():
    data = defaultdict(lambda: defaultdict(list))
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 5 and parts[0] == "chart":
            _, name, arm, x, value = parts
            data[name][arm].append((float(x), float(value)))
    # Several runs' lines may be piped in: each point is the median of its runs.
    for panel_data in data.values():
        for arm, pts in panel_data.items():
            by_x = defaultdict(list)
            for x, v in pts:
                by_x[x].append(v)
            panel_data[arm] = [(x, sorted(vs)[len(vs) // 2]) for x, vs in by_x.items()]
    if "threads" not in data or "storm" not in data:
        sys.exit("chart.py: no `chart threads ...` or `chart storm ...` lines on stdin")
    threads = sorted({x for pts in data["threads"].values() for x, _ in pts})
    callers = sorted({x for pts in data["storm"].values() for x, _ in pts})
    body = panel(
        0, data["threads"], "Per-request cost against threads (2-core VM)",
        "threads, each with its own clone", "CPU ns per request", True, False,
        lambda x: f"{x:g}", lambda y: f"{y:g}", threads,
    )
    body += panel(
        W, data["storm"], "Refresh storm: cold cache, 20 ms token request",
        "concurrent callers", "ms until every caller has sent", True, True,
        lambda x: f"{x:,.0f}", lambda y: f"{y:g}", callers,
    )
    panels = 2
    if "fleet" in data:
        replicas = sorted({x for pts in data["fleet"].values() for x, _ in pts})
        body += panel(
            2 * W, data["fleet"], "Fleet: replicas waiting on one token request",
            "replicas (tasks, each with its own Redis connections)",
            "ms from the write to the last replica", True, True,
            lambda x: f"{x:g}", lambda y: f"{y:g}", replicas,
        )
        panels = 3
    print(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{panels * W}" height="{H}" '
        f'font-family="sans-serif" font-size="11">'
    )
    print(f'<rect width="{panels * W}" height="{H}" fill="white"/>')
    print("\n".join(body))
    print("</svg>")


if __name__ == "__main__":
    main()
