"""The negatives ablation of issue #12: base / +hard-neg / +queue / +itm-hardest, several seeds each.

Each run trains a model with a fusion block from scratch in this process with
``benchmarks.common.train_in_process`` — the quickstart recipe (``loss.itm: 1.0``, sampled ITM
negatives, the shortlist curriculum), no Ray — on the synthetic training split, then evaluates on
the synthetic test split with ``hivlp_milvus.eval.evaluate`` (low-only, high-only, funnel). One
variant changes one ``LossConfig`` option against the base:

* ``+hard-neg``: ``hard_negative_beta`` (Robinson et al. 2021 / VLDeformer's hard negatives);
* ``+queue``: ``queue_size`` past embeddings as extra negatives (MoCo / COTS / XBM);
* ``+itm-hardest``: ``itm_negatives: hardest`` instead of ALBEF's softmax sampling;
* ``-itm``: the ``itm`` term off (its effect on the low and high levels; no scorer to measure).

Besides R@1 per level it measures the fusion scorer, whose weak training the previous session
diagnosed (last ``itm`` loss 0.548 against ln 2): on ``--fusion-queries`` test captions, the
fusion stage's t2i R@1 when it re-ranks the high level's top ``--fusion-m`` images (next to the
high level's own R@1 on the same queries), and its pairwise accuracy against the high level's
hardest wrong image. Results: ``benchmarks/results/negatives.json``; the table:
``benchmarks/report_negatives.py`` (BENCHMARKS.md and docs/objective.md).

On a shared machine the runs can go in parallel processes (one ``--seeds``/``--variants`` pair
each, ``--name negatives_s<seed>_<variant>``, ``--threads 1``); ``--merge FILES...`` then combines
their result files into ``negatives.json``.

``--config micro`` (the measured default on this shared 2-core machine) adds a one-layer fusion
block to the micro model, whose 4×4 patch grid gives the scorer 16 image tokens. ``--smoke`` runs
a few steps of it on tiny sets (checks the runner works).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Recipe, Timer, log, train_in_process, write_result

#: LossConfig overrides of each variant, on top of the quickstart recipe's loss.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "+hard-neg": {"hard_negative_beta": 0.5},
    "+queue": {"queue_size": 256},
    "+itm-hardest": {"itm_negatives": "hardest"},
    # The itm term itself off: what matching training does to the two retrieval levels (the fusion
    # block then gets no gradient, so its scorer is not measured).
    "-itm": {"itm": 0.0},
}
COARSE_KS = (10, 50)


def fusion_check(model: Any, test: list[Any], *, queries: int, m: int) -> dict[str, float]:
    """t2i R@1 of high-only vs high top-``m`` re-ranked by the fusion scorer, and pairwise accuracy.

    A hit is an image of the query caption's relevance group (as in ``evaluate``).
    """
    images = [r.image for r in test]
    groups = np.array([r.relevance_group for r in test])
    picked = test[:queries]
    captions = [r.captions[0] for r in picked]
    gallery = model.embed_images(images).high
    sims = model.embed_texts(captions).high @ gallery.T
    high_hits, fusion_hits, pair_wins = 0, 0, 0
    for q, record in enumerate(picked):
        top = np.argsort(-sims[q])[:m]
        scores = model.score_pairs([images[i] for i in top], captions[q])
        high_hits += int(groups[top[0]] == record.relevance_group)
        fusion_hits += int(groups[top[int(np.argmax(scores))]] == record.relevance_group)
        wrong = np.where(groups != record.relevance_group, sims[q], -np.inf)
        hard = int(np.argmax(wrong))
        pos, neg = model.score_pairs([images[q], images[hard]], captions[q])
        pair_wins += int(pos > neg)
    return {
        "queries": queries,
        "m": m,
        "high_t2i_R@1": high_hits / queries,
        "fusion_t2i_R@1": fusion_hits / queries,
        "pairwise_acc_vs_hardest": pair_wins / queries,
    }


def one_run(
    variant: str, seed: int, base_config: Any, train: list[Any], test: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    from hivlp_milvus.eval import evaluate
    from hivlp_milvus.model import create_model

    recipe = Recipe.quickstart()
    loss = recipe.loss_config(args.steps, **VARIANTS[variant])
    model = create_model(base_config, texts=[c for r in train for c in r.captions], seed=seed)
    info = train_in_process(
        model, train, steps=args.steps, batch_size=args.batch_size, recipe=recipe, loss=loss, seed=seed,
        label=f"negatives {variant} seed {seed}", log_every=max(1, args.steps // 4),
    )  # fmt: skip
    with Timer() as t:
        table = evaluate(model, test, coarse_ks=COARSE_KS, progress=False)
        fusion = (
            fusion_check(model, test, queries=args.fusion_queries, m=args.fusion_m)
            if model.has_fusion and loss.itm > 0
            else None
        )
    rows = {
        name: {k: row[k] for k in ("AR", "image_to_text_R@1", "text_to_image_R@1") if k in row}
        for name, row in table.rows.items()
    }
    log(
        f"  {variant} seed {seed}: t2i R@1 low {100 * rows['low']['text_to_image_R@1']:.1f} "
        f"high {100 * rows['high']['text_to_image_R@1']:.1f} | itm {info['last_loss'].get('itm', float('nan')):.3f}"
        + (f" | fusion R@1 {100 * fusion['fusion_t2i_R@1']:.1f}" if fusion else "")
        + f" | train {info['seconds']:.0f}s eval {t.s:.0f}s"
    )
    return {
        "variant": variant,
        "seed": seed,
        "overrides": VARIANTS[variant],
        "loss_config": loss.to_dict(),
        "train_seconds": info["seconds"],
        "last_loss": info["last_loss"],
        "eval_s": t.s,
        "rows": rows,
        "fusion": fusion,
    }


def model_config(name: str) -> Any:
    """``tiny`` as shipped (it has a fusion block); ``micro`` plus a one-layer fusion block."""
    from hivlp_milvus.model.config import FusionConfig, get_config

    config = get_config(name)
    if config.fusion is None:
        config = dataclasses.replace(config, fusion=FusionConfig(layers=1, heads=2, width=64))
    return config


def run(args: argparse.Namespace) -> Path:
    import torch

    from hivlp_milvus.data import synthetic

    t0 = time.perf_counter()
    if args.smoke:
        args.config, args.n_train, args.n_test, args.batch_size, args.steps = "micro", 64, 40, 16, 3
        args.fusion_queries, args.fusion_m = 5, 3
    base_config = model_config(args.config)
    torch.set_num_threads(args.threads)
    size = base_config.image.image_size
    train = synthetic.generate(args.n_train, seed=synthetic.split_seed(0, "train"), image_size=size)
    test = synthetic.generate(args.n_test, seed=synthetic.split_seed(0, "test"), image_size=size, id_prefix="t")
    log(f"negatives: {args.n_train} train / {args.n_test} test scenes at {size} px")
    runs: list[dict[str, Any]] = []
    path = Path()
    for seed in args.seeds:  # seed-major: a run cut short still has whole seeds of every variant
        for variant in args.variants:
            runs.append(one_run(variant, seed, base_config, train, test, args))
            path = write_result(  # after every run, so a long ablation leaves its partial results
                args.name,
                {
                    "smoke": args.smoke,
                    "config": args.config + ("" if get_fusion(args.config) else "+fusion(1 layer, 2 heads, 64)"),
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "n_train": args.n_train,
                    "n_test": args.n_test,
                    "seeds": list(args.seeds),
                    "variants": {v: VARIANTS[v] for v in args.variants},
                    "coarse_ks": list(COARSE_KS),
                    "torch_threads": args.threads,
                    "runs": runs,
                    "wall_s": time.perf_counter() - t0,
                },
            )
    return path


def merge(parts: list[Path], name: str = "negatives") -> Path:
    """Combine per-process result files (one seed or variant each, run in parallel) into one.

    The settings must agree; the runs are ordered by seed, then in :data:`VARIANTS` order.
    """
    import json

    docs = [json.loads(p.read_text()) for p in parts]
    keys = ("config", "steps", "batch_size", "n_train", "n_test", "torch_threads")
    settings = {k: docs[0][k] for k in keys}
    for path, doc in zip(parts, docs, strict=True):
        if {k: doc[k] for k in keys} != settings:
            raise ValueError(f"{path} was run with other settings than {parts[0]}: {keys}")
    order = list(VARIANTS)
    runs = sorted((r for d in docs for r in d["runs"]), key=lambda r: (r["seed"], order.index(r["variant"])))
    variants = [v for v in order if any(r["variant"] == v for r in runs)]
    return write_result(
        name,
        {
            "smoke": any(d["smoke"] for d in docs),
            **settings,
            "seeds": sorted({r["seed"] for r in runs}),
            "variants": {v: VARIANTS[v] for v in variants},
            "coarse_ks": docs[0]["coarse_ks"],
            "runs": runs,
            "merged_from": [p.name for p in parts],
            "wall_s": max(d["wall_s"] for d in docs),
            "cpu_parallel_processes": len(docs),
        },
    )


def get_fusion(name: str) -> Any:
    """The shipped config's own fusion block (``None`` for micro)."""
    from hivlp_milvus.model.config import get_config

    return get_config(name).fusion


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--config", default="micro", choices=["micro", "tiny"])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=4_000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--fusion-queries", type=int, default=100)
    ap.add_argument("--fusion-m", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="negatives", help="results/<name>.json")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="merge these result files into --name")
    args = ap.parse_args(argv)
    print(merge(args.merge, args.name) if args.merge else run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
