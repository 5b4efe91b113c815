"""Draw a results JSON of bench/run.py as a PNG: one panel per row, one bar per system.

    bench/.venv/bin/python bench/chart.py bench/results/<stamp>.json out.png

Runs in bench/.venv (matplotlib), which bench/run.py creates; run.py itself needs only
the standard library.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"accel": "#2a9d8f", "nginx": "#457b9d", "varnish": "#e76f51"}
LABELS = {"accel": "accel", "nginx": "nginx", "varnish": "Varnish"}


def draw(document: dict, output: Path) -> None:
    summary = document["summary"]
    columns = 3
    rows = math.ceil(len(summary) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows),
                                squeeze=False)
    for axis, entry in zip(axes.flat, summary, strict=False):
        names = list(entry["systems"])
        unit = entry["unit"]
        key = "mib_per_s" if unit == "MiB/s" else "req_per_s"
        values = [entry["systems"][n].get(key, 0.0) for n in names]
        bars = axis.bar([LABELS.get(n, n) for n in names], values,
                        color=[COLOURS.get(n, "#999999") for n in names])
        top = max(values) if any(values) else 1.0
        axis.set_ylim(0, top * 1.22)
        for bar, name, value in zip(bars, names, values, strict=True):
            m = entry["systems"][name]
            if "n/a" in m:
                text = "n/a"
            else:
                text = f"{value:,.0f}\np99 {m['p99_ms']:.1f} ms"
            axis.text(bar.get_x() + bar.get_width() / 2, max(value, 0) + top * 0.02, text,
                      ha="center", va="bottom", fontsize=8)
        axis.set_title(f"{entry['title']} ({unit})", fontsize=10)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    for axis in list(axes.flat)[len(summary):]:
        axis.set_visible(False)
    settings = document["settings"]
    figure.suptitle(
        f"accel vs nginx proxy_cache vs Varnish, one pinned server core "
        f"(wrk {settings['connections']} connections, median of "
        f"{settings['repetitions']} x {settings['duration']:g} s)\n"
        f"accel {document['versions']['accel']}, {document['versions']['nginx']}, "
        f"{document['versions']['varnish']}, {document['timestamp']}",
        fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=110)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
