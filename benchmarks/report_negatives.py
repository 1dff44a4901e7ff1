"""The ``negatives.json`` section of ``BENCHMARKS.md`` (and docs/objective.md): the negatives ablation.

Standalone (it does not import ``benchmarks.report``), so ``report.py`` can import it at the top.
Every cell is the mean over seeds ± the sample standard deviation across them, so a difference
between variants can be read against the seed-to-seed spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Getter = Callable[[dict[str, Any]], float | None]

#: (column, getter) of the table; recalls in percent.
COLUMNS: tuple[tuple[str, Getter], ...] = (
    ("t2i R@1 low", lambda r: 100 * r["rows"]["low"]["text_to_image_R@1"]),
    ("t2i R@1 high", lambda r: 100 * r["rows"]["high"]["text_to_image_R@1"]),
    ("i2t R@1 low", lambda r: 100 * r["rows"]["low"]["image_to_text_R@1"]),
    ("i2t R@1 high", lambda r: 100 * r["rows"]["high"]["image_to_text_R@1"]),
    ("AR hier@50", lambda r: 100 * r["rows"]["hier@50"]["AR"] if "hier@50" in r["rows"] else None),
    ("fusion t2i R@1 (high top-M)", lambda r: 100 * r["fusion"]["fusion_t2i_R@1"] if r.get("fusion") else None),
    ("fusion beats hardest neg.", lambda r: 100 * r["fusion"]["pairwise_acc_vs_hardest"] if r.get("fusion") else None),
    ("last itm loss", lambda r: r["last_loss"].get("itm")),
)


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def ablation_table(res: dict[str, Any]) -> list[str]:
    """Markdown table rows, one per variant, in the order the runner ran them."""
    variants = list(dict.fromkeys(r["variant"] for r in res.get("runs", [])))
    head = ["variant", "seeds", *(name for name, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in variants:
        runs = [r for r in res["runs"] if r["variant"] == variant]
        cells = [f"`{variant}`", str(len(runs))]
        for name, get in COLUMNS:
            values = [v for v in (get(r) for r in runs) if v is not None]
            cells.append(_cell(values, 3 if name == "last itm loss" else 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def negatives_section(res: dict[str, Any] | None) -> str:
    """Markdown for ``benchmarks/results/negatives.json`` (a stub when it was not measured)."""
    if not res:
        return "## Negatives (issue #12)\n\nNot measured yet (`python -m benchmarks.negatives`).\n"
    variants = res.get("variants", {})
    options = ", ".join(f"`{v}`: {o or 'the quickstart loss'}" for v, o in variants.items())
    fusion = next((r["fusion"] for r in res.get("runs", []) if r.get("fusion")), None)
    lines = [
        "## Negatives (issue #12): hard negatives, the queue, ITM's negatives",
        "",
        f"`benchmarks/negatives.py`: model `{res.get('config')}`, {res.get('steps')} steps of batch "
        f"{res.get('batch_size')} on {res.get('n_train')} synthetic training scenes (the quickstart recipe, "
        f"in one process), evaluated on {res.get('n_test')} test scenes; seeds {res.get('seeds')}. "
        f"Variants (LossConfig overrides): {options}. Cells: mean ± standard deviation over the seeds.",
        "",
        *ablation_table(res),
        "",
    ]
    if fusion:
        lines += [
            f"Fusion columns: {fusion['queries']} test captions; the scorer re-ranks the high level's top "
            f"{fusion['m']} images, and is asked to prefer the true image to the high level's most similar "
            "wrong one (50 % = it cannot tell them apart). An untrained `itm` loss is ln 2 = 0.693.",
            "",
        ]
    return "\n".join(lines)
