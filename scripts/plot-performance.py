#!/usr/bin/env python3
"""Draws docs/performance.svg from target/pipeline.json (written by the `pipeline` bench).

Two panels against offered load (changes/s): achieved throughput, and the latency
ingress -> push request (p50, p99, p99.9). Standard library only: the SVG is written by hand.

    python3 scripts/plot-performance.py [target/pipeline.json] [docs/performance.svg]
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target" / "pipeline.json"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "docs" / "performance.svg"
data = json.loads(src.read_text())
sweep = data["sweep"]
offered = [p["offered"] for p in sweep]

W, H, M = 460, 300, 55  # one panel: width, height, margin


def panel(x0, title, series, y_label, y_max):
    x_max = max(offered) * 1.05
    def sx(v):
        return x0 + M + (W - 2 * M) * v / x_max
    def sy(v):
        return H - M + 10 - (H - 2 * M) * v / y_max
    parts = [f'<text x="{x0 + W / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>']
    parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(x_max)}" y2="{sy(0)}" stroke="black"/>')
    parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(y_max)}" stroke="black"/>')
    for i in range(6):
        v = y_max * i / 5
        parts.append(f'<text x="{sx(0) - 6}" y="{sy(v) + 4}" text-anchor="end" font-size="10">{v:,.0f}</text>')
        parts.append(f'<line x1="{sx(0)}" y1="{sy(v)}" x2="{sx(x_max)}" y2="{sy(v)}" stroke="#ddd"/>')
    for v in offered:
        parts.append(f'<text x="{sx(v)}" y="{sy(0) + 14}" text-anchor="middle" font-size="10">{v // 1000}k</text>')
    parts.append(f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">offered changes/s</text>')
    parts.append(f'<text x="{x0 + 12}" y="{H / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 {x0 + 12} {H / 2})">{y_label}</text>')
    for n, (name, color, values) in enumerate(series):
        points = " ".join(f"{sx(x)},{sy(y)}" for x, y in zip(offered, values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in zip(offered, values):
            parts.append(f'<circle cx="{sx(x)}" cy="{sy(y)}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{sx(0) + 10}" y="{sy(y_max) + 14 + 14 * n}" font-size="11" fill="{color}">{name}</text>')
    return parts


achieved = [p["achieved"] for p in sweep]
lat = {k: [p[k] for p in sweep] for k in ("p50_ms", "p99_ms", "p999_ms")}
throughput_max = max(max(offered), max(achieved)) * 1.1
latency_max = max(max(v) for v in lat.values()) * 1.15
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "Throughput", [("achieved changes/s", "#1f77b4", achieved), ("offered", "#aaaaaa", offered)], "changes/s", throughput_max)
svg += panel(W, "Latency ingress → push request", [("p50", "#2ca02c", lat["p50_ms"]), ("p99", "#ff7f0e", lat["p99_ms"]), ("p99.9", "#d62728", lat["p999_ms"])], "ms", latency_max)
svg.append("</svg>")
out.write_text("\n".join(svg) + "\n")
print(f"wrote {out}")
