"""The load section of ``BENCHMARKS.md`` (``load.json``: batching on/off; ``load_mixed.json``: the route mix)
and its plot, latency and throughput against concurrent clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import fmt, md_table

PLOT = "load_latency_vs_clients.png"


def plot(result: dict[str, Any], plots_dir: Path) -> Path:
    """p50/p99 latency and requests/s against clients, batching on and off; the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {("http", True): "C0", ("http", False): "C3", ("handle", True): "C2", ("handle", False): "C1"}
    for (path, batching), color in styles.items():
        rows = sorted(
            (s for s in result["summary"] if s.get("path", "http") == path and s["batching"] is batching),
            key=lambda s: s["clients"],
        )
        if not rows:
            continue
        label = f"{path}, batching {'on' if batching else 'off'}"
        xs = [s["clients"] for s in rows]
        lat.plot(xs, [s["p99_ms"] for s in rows], "o-", color=color, label=f"p99, {label}")
        lat.plot(xs, [s["p50_ms"] for s in rows], "o--", color=color, alpha=0.6, label=f"p50, {label}")
        thr.plot(xs, [s["rps"] for s in rows], "o-", color=color, label=label)
    for ax, title in ((lat, "latency (ms)"), (thr, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(f"search: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots_dir / PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _batching(res: dict[str, Any]) -> list[str]:
    rows = []
    for s in res["summary"]:
        rows.append(
            [
                "HTTP `POST /search`" if s.get("path", "http") == "http" else "handle `Searcher.search`",
                s["clients"],
                "on" if s["batching"] else "off",
                fmt(s["rps"]),
                fmt(s["p50_ms"]),
                fmt(s["p99_ms"]),
                fmt(s["mean_query_batch"], 2),
                s["errors"],
                f"{s['wrong_answers']} / {s['checked']}",
                fmt(s["cores_busy"], 2),
            ]
        )
    head = ["path", "clients", "batching", "req/s", "p50 ms", "p99 ms", "queries per search", "errors"]
    head.append("wrong / checked")
    by = {(s.get("path", "http"), s["clients"], s["batching"]): s for s in res["summary"]}
    gains = [
        f"{p} at {c} clients {by[(p, c, True)]['rps'] / by[(p, c, False)]['rps']:.2f}× the requests/s, p99 "
        f"{by[(p, c, True)]['p99_ms'] / by[(p, c, False)]['p99_ms']:.2f}×"
        for p in ("http", "handle")
        for c in res["levels"]
        if (p, c, True) in by and (p, c, False) in by and by[(p, c, False)]["rps"] and by[(p, c, False)]["p99_ms"]
    ]
    machine = res.get("machine") or {}
    loadavg = machine.get("loadavg_at_end")
    notes = [f"Machine: {machine.get('cores', '?')} cores, load average {loadavg} (1/5/15 min) at the end."]
    if max((s["mean_query_batch"] for s in res["summary"] if s["batching"]), default=1.0) < 1.1:
        notes.append(
            "**No search batch of more than one query formed in this run**: queries never queued at the Searcher "
            "(the serve processes got the share of the cores shown above), so the on/off differences here are the "
            "machine's noise, not batching."
        )
    return [
        "### Cross-request batching in the Searcher (on vs off, interleaved)",
        "",
        f"`hivlp-milvus bench load --compare-batching`: text-to-image searches (limit 10) against the real "
        f"app on a Ray started by the benchmark (2 CPUs, one replica per deployment) over {res['rows']:,} rows "
        f"(synthetic, {res['model']} model) in Milvus Lite, by two paths: HTTP `POST /search` (encoder, Serve's "
        "proxy and the ingress included) and the Searcher's handle with encoded queries (the stage batching acts "
        f"on). {res['duration_s']:.0f} s per run, {res['repeats']} runs per cell, on and off alternating which "
        "goes first (medians shown). Answers are checked against the same query sent alone (HTTP: 8 check "
        "queries; handle: all 64): the ids must match.",
        "",
        md_table([*head, "serve cores busy"], rows),
        "",
        "Batching on vs off: " + ("; ".join(gains) or "–") + ".",
        "",
        " ".join(notes),
        "",
        f"![latency and throughput vs clients](benchmarks/plots/{PLOT})",
        "",
    ]


def _mixed(res: dict[str, Any]) -> list[str]:
    rows = [
        [f"`{route}`", r["requests"], *(fmt(r[k]) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")), r["errors"] or "-"]
        for route, r in res["routes"].items()
    ]
    cpu = res.get("cpu") or {}
    mix = ", ".join(f"{k} {v:g}" for k, v in res["mix"].items() if v)
    return [
        "### Mixed load (`hivlp-milvus bench load`)",
        "",
        f"{res['clients']} clients for {res['wall_s']} s against "
        f"{'`serve run` of the app (started by the benchmark)' if res.get('started') else res['url']} on "
        f"collection `{res.get('collection')}` ({res.get('collection_rows')} rows); "
        f"route weights {mix}. {res['requests']} requests, **{fmt(res['rps'])} req/s**, errors by status: "
        f"{res['errors'] or 'none'}; wrong answers {res['wrong_answers']} of {res['checked']} checked; "
        f"serve processes used {fmt(cpu.get('cores_busy'), 2)} cores of {cpu.get('machine_cores', '?')}.",
        "",
        md_table(["route", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
        "",
    ]


def load_section(batching: dict[str, Any] | None, mixed: dict[str, Any] | None) -> str:
    """Markdown for ``load.json`` and ``load_mixed.json`` (either may be missing)."""
    lines = ["## Load (concurrent HTTP clients)", ""]
    if batching:
        lines += _batching(batching)
    if mixed:
        lines += _mixed(mixed)
    if not batching and not mixed:
        lines += ["Not measured yet (`hivlp-milvus bench load --compare-batching`, `bench load --start`).", ""]
    return "\n".join(lines)
