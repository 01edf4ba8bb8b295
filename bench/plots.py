"""PNG plots of an end-to-end report (bench/e2e.py JSON).

    python bench/plots.py bench/results/e2e.json          # writes next to the JSON

  TAG_latency_vs_batch.png    ms per batch vs batch size, one panel per beam (headline catalog)
  TAG_speedup_vs_catalog.png  speed-up over our constrained attention decode vs catalog size
                              (the --catalog-cell batch/beam), end to end and decode phase
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STYLE = {
    "hf_generate": dict(color="black", marker="o", ls="-"),
    "attention_constrained": dict(color="tab:gray", marker="s", ls="-"),
    "hf_encoder": dict(color="tab:brown", marker="v", ls=":"),
    "fast_encoder": dict(color="tab:olive", marker="^", ls=":"),
    "mlp_encoder": dict(color="tab:pink", marker="<", ls=":"),
}
FAMILY_COLORS = {"reference": "tab:orange", "cpu": "tab:blue", "triton": "tab:green"}


def _style(name: str) -> dict[str, Any]:
    if name in STYLE:
        return STYLE[name]
    backend = name.split("[", 1)[-1].split("]", 1)[0] if "[" in name else ""
    color = FAMILY_COLORS.get(backend, "tab:purple")
    if name.startswith("sidmlp++"):
        return dict(color="tab:red", marker="D", ls="-")
    if name.endswith("+fast_encoder"):
        return dict(color="tab:cyan", marker="P", ls="--")
    return dict(color=color, marker="o", ls="-")


def _lines(ax, names, points) -> None:
    """One line per provider name: points(name) -> [(x, y), ...] (no line when empty)."""
    for name in names:
        pts = points(name)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name, **_style(name))


def _log_axes(ax, xlabel: str, ylabel: str, title: str, xbase: int = 10) -> None:
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _save(plt, fig, legend_ax, title: str, path: Path) -> Path:
    """Legend right of legend_ax, suptitle, tight layout, write the PNG and close the figure."""
    legend_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(report: dict[str, Any], out_dir: str | Path, tag: str = "e2e") -> dict[str, Path]:
    """Write the plots of `report` into out_dir; returns {'latency_png': ..., 'speedup_png': ...} (those drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    cells = report.get("cells", [])
    head = report.get("config", {}).get("headline", {})
    machine = report.get("machine", {})
    subtitle = (f"{machine.get('cpu', '?')}, {report.get('config', {}).get('threads', '?')} threads, fp32, "
                f"load {report.get('load_average', {}).get('start')}")

    # Latency vs batch on the headline catalog, one panel per beam.
    hc = [c for c in cells if c["catalog"] == head.get("catalog")]
    beams = sorted({c["beam"] for c in hc})
    if hc and len({c["batch"] for c in hc}) > 1:
        fig, axes = plt.subplots(1, len(beams), figsize=(6 * len(beams), 4.5), squeeze=False)
        for ax, beam in zip(axes[0], beams):
            sub = sorted((c for c in hc if c["beam"] == beam), key=lambda c: c["batch"])
            names = sorted({n for c in sub for n in c["providers"]})
            _lines(ax, names, lambda name: [(c["batch"], c["providers"][name]["median_ms"]) for c in sub
                                            if c["providers"].get(name, {}).get("median_ms")])
            # The machine is shared: show each cell's 1-minute load so inflated points are visible.
            for c in sub:
                load = (c.get("loadavg") or [None])[0]
                if load is not None:
                    ax.annotate(f"load {load:.1f}", (c["batch"], 1.0), xycoords=("data", "axes fraction"),
                                fontsize=7, ha="center", va="top", alpha=0.6)
            _log_axes(ax, "batch (users)", "ms per batch (median)", f"{head.get('catalog')}, beam {beam}", xbase=2)
        written["latency_png"] = _save(plt, fig, axes[0][-1], f"End-to-end latency vs batch\n{subtitle}",
                                       out_dir / f"{tag}_latency_vs_batch.png")

    # Speed-up over the constrained attention decode vs catalog size at one (batch, beam).
    by_cell: dict[tuple[int, int], list[dict]] = {}
    for c in cells:
        by_cell.setdefault((c["batch"], c["beam"]), []).append(c)
    multi = {k: v for k, v in by_cell.items() if len({c["catalog"] for c in v}) > 1}
    if multi:
        key = max(multi, key=lambda k: (len(multi[k]), k == (head.get("batch"), head.get("beam"))))
        sub = sorted(multi[key], key=lambda c: c["num_items"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
        for ax, field, title in ((axes[0][0], "speedup_vs_attention", "end to end"),
                                 (axes[0][1], "decode_speedup_vs_attention", "decode phase")):
            names = sorted({n for c in sub for n, p in c["providers"].items() if field in p})
            _lines(ax, names, lambda name: [(c["num_items"], c["providers"][name][field]) for c in sub
                                            if field in c["providers"].get(name, {})])
            for c in sub:
                ax.annotate(c["catalog"], (c["num_items"], 1), fontsize=7, rotation=90, va="bottom", alpha=0.6)
            ax.axhline(1.0, color="black", lw=0.8)
            _log_axes(ax, "catalog items", "speed-up over attention_constrained", f"{title}, batch {key[0]}, beam {key[1]}")
        written["speedup_png"] = _save(plt, fig, axes[0][1], f"Speed-up vs catalog size\n{subtitle}",
                                       out_dir / f"{tag}_speedup_vs_catalog.png")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="an e2e JSON report (bench/e2e.py); PNGs are written next to it")
    p.add_argument("--tag", default=None, help="file stem of the PNGs (default: the JSON's stem)")
    args = p.parse_args(argv)
    report = json.loads(args.report.read_text())
    for name, path in make_plots(report, args.report.parent, args.tag or args.report.stem).items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
