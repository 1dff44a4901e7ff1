"""Plots of a search benchmark result: latency vs fidelity per gallery, QPS vs gallery size."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Any


def _one_per_size(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One gallery per size for the QPS-vs-size plot: generated vectors where both exist (so the
    curve is one data model end to end), else what there is."""
    by: dict[int, dict[str, Any]] = {}
    for s in sizes:
        if s["rows"] not in by or s["label"].startswith(("gen-", "gen-check")):
            by[s["rows"]] = s
    return list(by.values())


def plot(result: dict[str, Any], plots_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    files = []
    colors = {
        "hier-client": "C0",
        "hier-server": "C1",
        "exact-high": "C3",
        "ann-high": "C2",
        "low-only": "C4",
        "faiss-funnel": "C5",
        "faiss-exact": "C7",
    }
    for size in result["sizes"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for kind, c in colors.items():
            pts = [(r["single"]["p50_ms"], r["fidelity@10"]) for r in size["contenders"] if r["kind"] == kind]
            if not pts:
                continue
            pts.sort()
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=c, label=kind, s=22)
            # The Pareto front: each point more faithful than every faster one.
            front = [
                p
                for p, best in zip(pts, accumulate((y for _, y in pts), max, initial=-1.0), strict=False)
                if p[1] > best
            ]
            ax.plot([p[0] for p in front], [p[1] for p in front], color=c, lw=1)
        ax.axhline(0.99, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per single query (ms, log)")
        ax.set_ylabel("fidelity@10 vs exact high-dim")
        ax.set_title(
            f"{size['label']}: latency vs fidelity ({size['rows']:,} rows, {size['low_dim']}/{size['high_dim']} dims)"
        )
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        f = plots_dir / f"search_pareto_{size['label']}.png"
        fig.tight_layout()
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    # QPS vs gallery size: the best contender of each kind with fidelity >= 0.99 (exact ones always).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, mode in zip(axes, ("single", "batch32"), strict=False):
        for kind, c in colors.items():
            pts = [
                (size["rows"], max(r[mode]["qps"] for r in ok))
                for size in sorted(_one_per_size(result["sizes"]), key=lambda s: s["rows"])
                if (
                    ok := [
                        r
                        for r in size["contenders"]
                        if r["kind"] == kind and (r["fidelity@10"] >= 0.99 or kind == "low-only")
                    ]
                )
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=kind)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size (rows)")
        ax.set_ylabel("queries / s")
        ax.set_title(
            f"QPS vs gallery size ({'single queries' if mode == 'single' else 'batches of 32'}),\n"
            "best config with fidelity@10 >= 0.99 (low-only: any)"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    f = plots_dir / "search_qps_vs_size.png"
    fig.tight_layout()
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    return files
