"""The ``quality_emoji.json`` section of ``BENCHMARKS.md`` (and of docs/data.md): quality on real data.

``python -m benchmarks.report_emoji`` prints the section, so docs/data.md can carry the same tables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR
from benchmarks.report import md_table

LEVEL_HEAD = [
    "split (gallery)",
    "level",
    "i2t R@1",
    "i2t R@5",
    "i2t R@10",
    "t2i R@1",
    "t2i R@5",
    "t2i R@10",
    "AR",
    "AR/high",
    "shortlist recall",
]
COMMAND = "hivlp-milvus bench quality --data emoji"


def pct(x: float | None, nd: int = 2) -> str:
    """A fraction as a percentage, ``–`` for missing."""
    return "–" if x is None else f"{100 * x:.{nd}f}"


def spread(stat: dict[str, Any] | None, nd: int = 2) -> str:
    """``mean ± std`` (in %) of an aggregate entry; the mean alone for one seed."""
    if not stat:
        return "–"
    if stat.get("std") is None:
        return pct(stat["mean"], nd)
    return f"{pct(stat['mean'], nd)} ± {pct(stat['std'], nd)}"


def _split_label(split: str, block: dict[str, Any]) -> str:
    n = block["n_images"]
    what = "twitter test" if split == "test" else "held-out emoji"
    return f"{what} ({n:,}; chance R@1 {100 / n:.2f})"


def level_rows(rows: dict[str, dict[str, float]], label: str, low_dim: int, high_dim: int) -> list[list[str]]:
    """Table rows, one per level of an ``EvalTable``'s rows (fractions), in funnel order."""
    high = rows["high"]["AR"]
    names = {"low": f"low ({low_dim}-d)", "high": f"high ({high_dim}-d)"}
    out = []
    for i, (level, row) in enumerate(rows.items()):
        out.append(
            [
                label if i == 0 else "",
                names.get(level, level),
                *(pct(row.get(f"image_to_text_R@{k}")) for k in (1, 5, 10)),
                *(pct(row.get(f"text_to_image_R@{k}")) for k in (1, 5, 10)),
                pct(row["AR"]),
                pct(row["AR"] / high if high > 0 else None),
                pct(row.get("shortlist_recall")),
            ]
        )
    return out


def _run(res: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in res["runs"] if r["name"] == name), None)


def per_level_section(res: dict[str, Any]) -> list[str]:
    seed = res["seeds"][0]
    main = _run(res, f"full-d32-s{seed}")
    if main is None:
        return ["Per level: not measured yet (the low_dim 32 run of the first seed).", ""]
    rows: list[list[str]] = []
    for split, block in main["splits"].items():
        rows += level_rows(block["rows"], _split_label(split, block), main["low_dim"], main["high_dim"])
    lines = [
        f"### Per level (seed {seed}, low_dim 32 / high_dim 256, the full loss)",
        "",
        "In memory (`hivlp_milvus.eval.evaluate`), the whole twitter test split and the held-out split. "
        "hier@K = shortlist K by the low vector, re-ranked by the high one; shortlist recall = share "
        "of queries whose first relevant item is in the shortlist. Recalls in %.",
        "",
        md_table(LEVEL_HEAD, rows),
        "",
    ]
    fusion = next((r for r in res["runs"] if r["kind"] == "fusion" and "milvus" in r), None)
    if fusion:
        m = fusion["milvus"]
        n = fusion["splits"]["test"]["n_images"]
        lines += [
            f"With the fusion term trained (`loss.itm` 1, seed {fusion['seed']}) and measured through Milvus Lite "
            f"(`hivlp_milvus.eval_search`, the {n:,} test drawings and their captions ingested; "
            f"ingest {m['ingest_s']:.0f} s, evaluation {m['eval_s']:.0f} s):",
            "",
            md_table(LEVEL_HEAD, level_rows(m["rows"], "twitter test (Milvus)", 32, fusion["high_dim"])),
            "",
        ]
    else:
        lines += [
            "No hier+fusion row: the fusion term is off in these runs (`--fusion` adds one run with it on "
            "and the rows through Milvus).",
            "",
        ]
    return lines


def tower_section(res: dict[str, Any]) -> list[str]:
    seed = res["seeds"][0]
    scratch, minilm = _run(res, f"full-d32-s{seed}"), _run(res, f"minilm-d32-s{seed}")
    if not (scratch and minilm):
        return []
    head = ["text tower", "split", "i2t R@1", "t2i R@1", "t2i R@10", "AR high", "AR hier@50", "AR low"]
    rows = []
    for label, r in (("from scratch (BERT 3×128, own WordPiece)", scratch), ("all-MiniLM-L6-v2 (pretrained)", minilm)):
        for split, block in r["splits"].items():
            rs = block["rows"]
            rows.append(
                [
                    label if split == "test" else "",
                    _split_label(split, block),
                    pct(rs["high"]["image_to_text_R@1"]),
                    pct(rs["high"]["text_to_image_R@1"]),
                    pct(rs["high"]["text_to_image_R@10"]),
                    pct(rs["high"]["AR"]),
                    pct(rs["hier@50"]["AR"]),
                    pct(rs["low"]["AR"]),
                ]
            )
    return [
        f"### Text tower: from scratch vs pretrained (seed {seed}, low_dim 32)",
        "",
        "The same schedule, image tower from scratch in both; R@K of the high level. Recalls in %.",
        "",
        md_table(head, rows),
        "",
    ]


#: Columns of the low_dim sweep tables (the whole-tower runs and the frozen-tower heads).
SWEEP_HEAD = (
    "low_dim",
    "seeds",
    "split",
    "AR low",
    "AR high",
    "AR hier@50",
    "low − high",
    "low / high",
    "hier@50 / high",
)


def _agg(res: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return sorted((a for a in res["aggregate"] if a["kind"] == kind), key=lambda a: (a["low_dim"], a["label"]))


def sweep_section(res: dict[str, Any], splits: Sequence[str] = ("test", "heldout")) -> list[str]:
    head = list(SWEEP_HEAD)
    rows = []
    for a in _agg(res, "sweep"):
        for split in splits:
            s = a[split]
            rows.append(
                [
                    str(a["low_dim"]) if split == splits[0] else "",
                    str(len(a["seeds"])) if split == splits[0] else "",
                    split,
                    spread(s["AR_low"]),
                    spread(s["AR_high"]),
                    spread(s["AR_hier@50"]),
                    spread(s["low_minus_high"]),
                    spread(s["low_over_high"], 1),
                    spread(s["hier@50_over_high"], 1),
                ]
            )
    return [
        "### The `low_dim` sweep (high_dim 256, the full loss)",
        "",
        "Mean ± sample standard deviation over seeds (the seed changes the initialisation, the batch "
        "order and the captions drawn; the split is fixed). AR in %; `low − high` in AR points.",
        "",
        md_table(head, rows),
        "",
    ]


def ablation_section(res: dict[str, Any]) -> list[str]:
    dim = res.get("ablation_low_dim")
    entries = [a for a in _agg(res, "sweep") if a["low_dim"] == dim] + [
        a for a in _agg(res, "ablation") if a["low_dim"] == dim
    ]
    if len(entries) < 2:
        return []
    head = ["loss", "seeds", "split", "AR low", "AR high", "AR hier@50", "low − high", "low / high"]
    rows = []
    for a in entries:
        label = "full" if a["kind"] == "sweep" else a["label"].rsplit("-d", 1)[0].replace("_", " ")
        for split in ("test", "heldout"):
            s = a[split]
            rows.append(
                [
                    label if split == "test" else "",
                    str(len(a["seeds"])) if split == "test" else "",
                    split,
                    spread(s["AR_low"]),
                    spread(s["AR_high"]),
                    spread(s["AR_hier@50"]),
                    spread(s["low_minus_high"]),
                    spread(s["low_over_high"], 1),
                ]
            )
    rule = (
        "the largest swept dim at which the first seed's low-only AR trails high-only's by more than 1 %"
        if res.get("ablation_rule") == "auto"
        else "given on the command line"
    )
    return [
        f"### Loss ablation at low_dim {dim}, each HiVLP term off in turn",
        "",
        f"low_dim {dim}: {rule}. Same schedule and seeds as the sweep; mean ± std. AR in %.",
        "",
        md_table(head, rows),
        "",
    ]


def emoji_section(res: dict[str, Any]) -> str:
    """Markdown for ``quality_emoji.json``."""
    splits = res["splits"]
    lines = [
        "## Quality on real data: the emoji corpus",
        "",
        f"`{COMMAND}` (`benchmarks/emoji_sweep.py`): the tiny model trained in one process on the apple + "
        f"google drawings ({splits['train']['images']:,} images), tested on the twitter drawings of seen "
        f"emoji (an unseen style) and of held-out emoji (never trained on). Schedule: {res['steps']} steps "
        f"of batch {res['batch_size']} (the quickstart: 260 × 256), `training/configs/emoji.yaml`'s "
        "recipe with warm-up and the shortlist term's start scaled to the run, the fusion term off. "
        f"Sweep runs are evaluated on a fixed subset of {res.get('test_limit') or 'all'} test drawings "
        "(evenly spread in manifest order) and the whole held-out split; the per-level and tower runs on "
        f"the whole test split. Training + evaluation: {res['compute_s'] / 60:.0f} min summed over "
        f"{len(res['runs'])} runs on the shared 2-core machine.",
        "",
    ]
    lines += per_level_section(res)
    lines += tower_section(res)
    lines += sweep_section(res)
    lines += ablation_section(res)
    return "\n".join(lines)


HEADS_COMMAND = (
    "python -m benchmarks.emoji_heads --model hivlp_work/model --data hivlp_work/emoji"
    "  # after hivlp-milvus quickstart --data emoji"
)


def _stat_rows(entries: list[dict[str, Any]], first: Any, keys: Sequence[str]) -> list[list[str]]:
    rows = []
    for a in entries:
        for split in ("test", "heldout"):
            s = a[split]
            rows.append(
                [
                    first(a) if split == "test" else "",
                    str(len(a["seeds"])) if split == "test" else "",
                    split,
                    *(spread(s[k], 1 if "over" in k else 2) for k in keys),
                ]
            )
    return rows


def heads_section(res: dict[str, Any]) -> str:
    """Markdown for ``quality_emoji_heads.json`` (``benchmarks/emoji_heads.py``)."""
    model, splits = res["model"], res["splits"]
    lines = [
        "## Quality on real data: the emoji corpus (trained towers, heads re-trained)",
        "",
        f"`{HEADS_COMMAND}`. The model: `{res['model_dir']}` (low {model['low_dim']}-d, high "
        f"{model['high_dim']}-d; an emoji quickstart's: `training/configs/emoji.yaml`, 260 steps of batch 256). Its "
        f"towers encode the {splits['train']['images']:,} training drawings and their captions, the "
        f"{splits['test']['images']:,} twitter test drawings ({splits['test']['captions']:,} captions) and the "
        f"{splits['heldout']['images']:,} held-out ones once; recalls in %.",
        "",
        "### Per level (the model as trained, in memory, whole splits)",
        "",
    ]
    rows: list[list[str]] = []
    for split, levels in res["per_level"].items():
        n = splits[split]["images"]
        label = f"{'twitter test' if split == 'test' else 'held-out emoji'} ({n:,}; chance R@1 {100 / n:.2f})"
        rows += level_rows(levels, label, model["low_dim"], model["high_dim"])
    lines += [
        md_table(LEVEL_HEAD, rows),
        "",
        "No hier+fusion row here: this model predates the fusion block. The same model with `tiny`'s "
        "block added and fine-tuned alone has its two- and three-stage rows in the Fusion section.",
        "",
    ]
    keys = ("AR_low", "AR_high", "AR_hier@50", "low_minus_high", "low_over_high", "hier@50_over_high")
    head = list(SWEEP_HEAD)
    sweep = sorted(
        (a for a in res["aggregate"] if a["text_tower"] == "own" and a["loss"] == "full"), key=lambda a: a["low_dim"]
    )
    test_n = res.get("test_limit") or splits["test"]["images"]
    lines += [
        "### The `low_dim` sweep on frozen towers (high_dim 256, the full loss)",
        "",
        f"Fresh low and high heads and temperatures trained on the cached tower features for {res['steps']} "
        f"steps of batch {res['batch_size']} (one caption drawn per drawing, the emoji recipe: AdamW 1e-3, "
        "warm-up + cosine, the shortlist term from 58 % of the run), per `low_dim` and seed; the towers do not "
        "move, so the table isolates what the coarse dimension costs given the features. Mean ± sample std "
        f"over seeds; test = a fixed, evenly spread {test_n} of the twitter test drawings, heldout = all "
        f"{splits['heldout']['images']}. `low − high` in AR points.",
        "",
        md_table(head, _stat_rows(sweep, lambda a: str(a["low_dim"]), keys)),
        "",
    ]
    dims = res.get("ablation_low_dims") or []
    ablation = [
        a
        for d in dims
        for a in [x for x in sweep if x["low_dim"] == d]
        + sorted(
            (x for x in res["aggregate"] if x["text_tower"] == "own" and x["loss"] != "full" and x["low_dim"] == d),
            key=lambda x: x["loss"],
        )
    ]
    if len(ablation) > 1:
        rule = {
            "auto": "the largest swept dim at which seed 0's low-only AR trails high-only's by more than 1 %",
            "all": "every swept dim",
        }.get(res.get("ablation_rule"), "the dims where low-only trails high-only most (given on the command line)")
        lines += [
            f"### Loss ablation (frozen towers), each HiVLP term off in turn, at low_dim {', '.join(map(str, dims))}",
            "",
            f"Dims: {rule}. Same heads training and seeds as the sweep.",
            "",
            md_table(
                ["low_dim", "loss", *head[1:]],
                [
                    [str(a["low_dim"]) if r[0] else "", *r]
                    for a in ablation
                    for r in _stat_rows([a], lambda a: a["loss"], keys)
                ],
            ),
            "",
        ]
    towers = sorted(
        (a for a in res["aggregate"] if a["low_dim"] == 32 and a["loss"] == "full"), key=lambda a: a["text_tower"]
    )
    if len(towers) > 1:
        t_keys = ("t2i_R@1_high", "i2t_R@1_high", "AR_high", "AR_hier@50")
        lines += [
            "### Text tower: the model's own (from scratch) vs all-MiniLM-L6-v2 (pretrained), both frozen",
            "",
            md_table(
                ["text tower", "seeds", "split", "t2i R@1 high", "i2t R@1 high", "AR high", "AR hier@50"],
                _stat_rows(towers, lambda a: a["text_tower"], t_keys),
            ),
            "",
        ]
    return "\n".join(lines)


def emoji_sections(results_dir: Path | None = None) -> list[str]:
    """The emoji sections for ``BENCHMARKS.md``: whichever of the two results exist."""
    rd = Path(results_dir or RESULTS_DIR)
    out = []
    for name, render in (("quality_emoji", emoji_section), ("quality_emoji_heads", heads_section)):
        path = rd / f"{name}.json"
        if path.exists():
            out.append(render(json.loads(path.read_text())))
    return out


def main(argv: list[str] | None = None) -> int:
    print("\n".join(emoji_sections(Path(argv[0]) if argv else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
