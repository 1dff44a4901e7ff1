"""Quality benchmark: what the coarse dimension and each loss term are worth, measured by retrieval.

Trains the ``tiny`` config from scratch in this process (``benchmarks.common.train_in_process``:
the quickstart recipe, no Ray) for ``--steps`` steps of batch 256 on the synthetic training split
(10k scenes, ``split_seed(0, "train")``) — same seed, data and batch order for every run — and
evaluates each model on the 1,000-image test split (5,000 captions) with
``hivlp_milvus.eval.evaluate``: low-only, high-only and the funnel at K = 10 and 50.

* **sweep**: ``low_dim`` in ``--low-dims`` (default 4 8 16 32) with the full loss, high_dim 256.
  Where does low-only start to trail high-only, and does the funnel still keep ≥ 99 % of the
  high-only AR there (the Quality target of DESIGN.md)?
* **ablation**: the rows of docs/objective.md's table at low_dim 32 (the full row is the sweep's
  run at 32 when the sweep has it).

``--smoke`` runs the ``micro`` config for a few steps on tiny sets (checks the benchmark works).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Recipe, Timer, log, train_in_process, write_result

#: The loss ablation of docs/objective.md ("Config switches"), as LossConfig weights.
ABLATION: dict[str, dict[str, float]] = {
    "high only (one level)": {"low": 0.0, "high": 1.0, "consistency": 0.0, "shortlist": 0.0},
    "two InfoNCE": {"low": 1.0, "high": 1.0, "consistency": 0.0, "shortlist": 0.0},
    "+ consistency": {"low": 1.0, "high": 1.0, "consistency": 1.0, "shortlist": 0.0},
    "+ shortlist": {"low": 1.0, "high": 1.0, "consistency": 0.0, "shortlist": 0.5},
    "full": {"low": 1.0, "high": 1.0, "consistency": 1.0, "shortlist": 0.5},
}
DEFAULT_LOW_DIMS = (4, 8, 16, 32)
COARSE_KS = (10, 50)
TARGET = 0.99


def summarise(rows: dict[str, dict[str, float]], coarse_ks: Sequence[int] = COARSE_KS) -> dict[str, Any]:
    """The numbers the report shows, from an ``EvalTable``'s rows (fractions, not %)."""
    high = rows["high"]["AR"]
    out: dict[str, Any] = {
        "AR": {level: row["AR"] for level, row in rows.items()},
        "t2i_R@1": {level: row["text_to_image_R@1"] for level, row in rows.items()},
        "low_over_high": rows["low"]["AR"] / high if high > 0 else None,
    }
    for k in coarse_ks:
        out[f"hier@{k}_over_high"] = rows[f"hier@{k}"]["AR"] / high if high > 0 else None
        out[f"shortlist_recall@{k}"] = rows[f"hier@{k}"]["shortlist_recall"]
    return out


def one_run(
    name: str,
    base_config: Any,
    low_dim: int,
    weights: dict[str, float],
    train: list[Any],
    test: list[Any],
    *,
    steps: int,
    batch_size: int,
    recipe: Recipe,
    seed: int,
    coarse_ks: Sequence[int],
) -> dict[str, Any]:
    from hivlp_milvus.eval import evaluate
    from hivlp_milvus.model import create_model

    config = dataclasses.replace(base_config, low_dim=low_dim)
    log(f"quality: {name} (low_dim {low_dim}, high_dim {config.high_dim}, weights {weights}), {steps} steps")
    model = create_model(config, texts=[c for r in train for c in r.captions], seed=seed)
    info = train_in_process(
        model,
        train,
        steps=steps,
        batch_size=batch_size,
        recipe=recipe,
        loss=recipe.loss_config(steps, **weights),
        seed=seed,
        label=f"quality {name}",
    )
    with Timer() as t:
        table = evaluate(model, test, coarse_ks=coarse_ks, progress=False)
    summary = summarise(table.rows, coarse_ks)
    log(
        f"  AR low {100 * summary['AR']['low']:.2f} high {100 * summary['AR']['high']:.2f} "
        + " ".join(f"hier@{k} {100 * summary['AR'][f'hier@{k}']:.2f}" for k in coarse_ks)
        + f" | t2i R@1 high {100 * summary['t2i_R@1']['high']:.2f} | train {info['seconds']:.0f}s eval {t.s:.0f}s"
    )
    return {
        "name": name,
        "low_dim": low_dim,
        "high_dim": config.high_dim,
        "weights": weights,
        "train": info,
        "eval_s": t.s,
        "eval_meta": {k: v for k, v in table.meta.items() if k != "skipped_examples"},
        "rows": table.rows,
        "summary": summary,
    }


def findings(sweep: list[dict[str, Any]], coarse_ks: Sequence[int] = COARSE_KS) -> dict[str, Any]:
    """Where low-only trails high-only (< 99 % of its AR) and where the funnel still holds (≥ 99 %)."""
    by_dim = sorted(sweep, key=lambda r: r["low_dim"])
    k = max(coarse_ks)

    def holds(r: dict[str, Any], key: str) -> bool:
        v = r["summary"][key]
        return v is not None and v >= TARGET

    trailing = [r["low_dim"] for r in by_dim if not holds(r, "low_over_high")]
    funnel = [r["low_dim"] for r in by_dim if holds(r, f"hier@{k}_over_high")]
    return {
        "target": TARGET,
        "coarse_k": k,
        "low_trails_at": trailing,
        "funnel_holds_at": funnel,
        "smallest_low_dim_funnel_holds": min(funnel) if funnel else None,
        "largest_low_dim_low_trails": max(trailing) if trailing else None,
    }


def run(
    *,
    smoke: bool = False,
    steps: int = 240,
    low_dims: Sequence[int] = DEFAULT_LOW_DIMS,
    ablation: bool = True,
    ablation_low_dim: int = 32,
    batch_size: int = 256,
    n_train: int = 10_000,
    n_test: int = 1_000,
    seed: int = 0,
    threads: int | None = 2,
    results_dir: Path | None = None,
    name: str = "quality",
) -> Path:
    import torch

    from hivlp_milvus.data import synthetic
    from hivlp_milvus.model.config import get_config

    t0 = time.perf_counter()
    config_name = "tiny"
    if smoke:
        config_name, n_train, n_test, batch_size = "micro", 64, 40, 16
        steps = min(steps, 3)
    base_config = get_config(config_name)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with Timer() as t_data:
            train = synthetic.generate(
                n_train, seed=synthetic.split_seed(seed, "train"), image_size=base_config.image.image_size
            )
            test = synthetic.generate(
                n_test, seed=synthetic.split_seed(seed, "test"), image_size=base_config.image.image_size, id_prefix="t"
            )
        log(f"quality: {n_train} train / {n_test} test scenes generated in {t_data.s:.0f}s")
        recipe = Recipe.quickstart()
        common = {
            "steps": steps,
            "batch_size": batch_size,
            "recipe": recipe,
            "seed": seed,
            "coarse_ks": COARSE_KS,
        }
        sweep = [
            one_run(f"full@{d}", base_config, d, ABLATION["full"], train, test, **common) for d in sorted(low_dims)
        ]
        # The sweep's full run at ablation_low_dim is the ablation's "full" row: not trained twice.
        reuse = next((r for r in sweep if r["low_dim"] == ablation_low_dim), None)
        rows = [
            {**reuse, "name": "full", "reused": reuse["name"]}
            if label == "full" and reuse is not None
            else one_run(label, base_config, ablation_low_dim, weights, train, test, **common)
            for label, weights in (ABLATION.items() if ablation else ())
        ]
    finally:
        torch.set_num_threads(previous_threads)
    return write_result(
        name,
        {
            "smoke": smoke,
            "config": config_name,
            "high_dim": base_config.high_dim,
            "steps": steps,
            "batch_size": batch_size,
            "n_train": n_train,
            "n_test": n_test,
            "n_test_captions": sum(len(r.captions) for r in test),
            "seed": seed,
            "coarse_ks": list(COARSE_KS),
            "torch_threads": threads,
            "recipe": recipe.to_dict(),
            "data_s": t_data.s,
            "sweep": sweep,
            "ablation": rows,
            "ablation_low_dim": ablation_low_dim,
            "findings": findings(sweep) if sweep else None,
            "wall_s": time.perf_counter() - t0,
        },
        results_dir=results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--low-dims", type=int, nargs="+", default=list(DEFAULT_LOW_DIMS))
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--name", default="quality", help="results/<name>.json (bench all: quality_quick)")
    a = ap.parse_args(argv)
    print(run(smoke=a.smoke, steps=a.steps, low_dims=a.low_dims, ablation=not a.no_ablation, name=a.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
