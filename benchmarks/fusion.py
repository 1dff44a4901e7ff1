"""Fusion benchmark: does the third stage earn its place? Two stages vs three at M = 10, 20, 50.

For each model directory given (e.g. the quickstart model before and after
``training/fusion_finetune.py``), the synthetic test split is ingested into a Milvus Lite
collection and measured through Milvus with ``hivlp_milvus.eval_search.evaluate_collection``:
R@1/5/10 and AR of ``hier@K`` and ``hier@K+fusion@M`` on the first ``--queries`` queries of each
direction (the same queries for both rows), then the median per-stage time of single-caption
three-stage searches and the fusion stage's cost per candidate. Writes ``results/fusion.json``.

    python -m benchmarks.fusion --model before=/tmp/m0 --model after=runs/quickstart/model \
        --data runs/quickstart/data
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import log, write_result

FUSION_LIMITS = (10, 20, 50)


def measure(
    model_dir: Path, data_dir: Path, *, queries: int, coarse_limit: int, timed: int, db: Path
) -> dict[str, Any]:
    """The table rows and per-stage times of one model on the test split."""
    import hivlp_milvus
    from hivlp_milvus.data import load_source
    from hivlp_milvus.eval_search import evaluate_collection
    from hivlp_milvus.model import HiVLP

    model = HiVLP.from_pretrained(model_dir)
    records = list(load_source(data_dir, split="test"))
    name = f"fusion_{model.fingerprint}"
    t0 = time.perf_counter()
    hivlp_milvus.ingest(
        load_source(data_dir, split="test"), uri=str(db), collection_name=name, model=model, skip_existing=True
    )
    collection = hivlp_milvus.HierarchicalCollection.open(name, uri=str(db), model=model)
    log(f"ingested in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    table = evaluate_collection(
        collection,
        records,
        coarse_ks=(coarse_limit,),
        fusion_limits=FUSION_LIMITS,
        fusion_queries=queries,
        progress=False,
    )
    log(f"evaluated in {time.perf_counter() - t0:.0f} s\n{table.format()}")
    stages: dict[str, dict[str, float]] = {}
    captions = [r.captions[0] for r in records[:timed]]
    for m in FUSION_LIMITS:
        samples: dict[str, list[float]] = {}
        for caption in captions:
            res = collection.hierarchical_search(
                caption, limit=10, coarse_limit=coarse_limit, fusion_limit=m, modality="image", output_fields=[]
            )
            for stage, seconds in res.timings.items():
                samples.setdefault(stage.removesuffix("_s"), []).append(1000 * seconds)
        medians = {stage: statistics.median(v) for stage, v in samples.items()}
        medians["fusion_per_candidate"] = medians["fusion"] / m
        stages[str(m)] = medians
        log(f"M={m}: p50 ms {medians}")
    return {
        "model": str(model_dir),
        "fingerprint": model.fingerprint,
        "score_weight": model.fusion_score_weight,
        "rows": table.rows,
        "meta": table.meta,
        "stage_p50_ms": stages,
        "timed_queries": len(captions),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="LABEL=DIR", help="a model to measure")
    p.add_argument("--data", required=True, type=Path, help="the synthetic data set (its test split is used)")
    p.add_argument("--queries", type=int, default=200, help="queries per direction of the compared rows")
    p.add_argument("--timed", type=int, default=20, help="single-caption searches timed per M")
    p.add_argument("--coarse-limit", type=int, default=50)
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    models = {}
    with tempfile.TemporaryDirectory(prefix="hivlp_fusion_bench_") as tmp:
        for spec in args.model:
            label, _, directory = spec.partition("=")
            models[label] = measure(
                Path(directory),
                args.data,
                queries=args.queries,
                coarse_limit=args.coarse_limit,
                timed=args.timed,
                db=Path(tmp) / "fusion.db",
            )
    path = write_result(
        "fusion",
        {"fusion_limits": list(FUSION_LIMITS), "coarse_limit": args.coarse_limit, "models": models},
        results_dir=args.results_dir,
    )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
