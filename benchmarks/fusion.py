"""Fusion benchmark: does the third stage earn its place? Two stages vs three at M = 10, 20, 50.

Each ``--case LABEL=MODEL_DIR:DATA_DIR[:SPLIT]`` (split default ``test``; ``heldout`` for the
emoji set's never-trained emoji) ingests that split into its own Milvus Lite database and measures
it through Milvus with ``hivlp_milvus.eval_search.evaluate_collection``: R@1/5/10 and AR of
``hier@K`` and ``hier@K+fusion@M`` on the same ``--queries`` queries of each direction (drawn
evenly from the split by a seeded shuffle: the manifests are ordered, e.g. by emoji code point),
then the median per-stage time of single-caption three-stage searches and the fusion stage's cost
per candidate. Each case records its data set (``dataset.json``'s generator), split and the model's
fingerprint, and ``results/fusion.json`` is rewritten after every case; ``--merge`` keeps the
cases of the existing file that this run does not re-measure.

    python -m benchmarks.fusion --case synthetic=QS/model:QS/data \
        --case twitter=EQS/model:EQS/emoji:test --case heldout=EQS/model:EQS/emoji:heldout
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, log, write_result

FUSION_LIMITS = (10, 20, 50)


@dataclass(frozen=True)
class Case:
    """One measurement: a model on one split of one data set, under a label."""

    label: str
    model_dir: Path
    data_dir: Path
    split: str = "test"


def parse_case(spec: str) -> Case:
    """``LABEL=MODEL_DIR:DATA_DIR[:SPLIT]`` -> :class:`Case` (an ``argparse`` type)."""
    label, eq, rest = spec.partition("=")
    parts = rest.split(":")
    if not eq or not label or len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(
            f"--case {spec!r}: write LABEL=MODEL_DIR:DATA_DIR or LABEL=MODEL_DIR:DATA_DIR:SPLIT "
            "(e.g. heldout=runs/emoji/model:data/emoji:heldout)"
        )
    return Case(label, Path(parts[0]), Path(parts[1]), *parts[2:])


def data_name(data_dir: Path) -> str:
    """The data set's name: the last part of ``dataset.json``'s generator (``emoji``, ``synthetic``), else the dir."""
    try:
        generator = json.loads((data_dir / "dataset.json").read_text())["generator"]
    except (OSError, ValueError, KeyError, TypeError):
        return data_dir.name
    return str(generator).rsplit(".", 1)[-1]


def merge_cases(old: dict[str, Any] | None, new: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    """The cases to write: ``new`` over the ``old`` file's cases, which are kept only when measured alike.

    A case measured with other fusion limits or another coarse limit (``setup``'s keys) would not
    compare with the new ones in one table, so such an old file's cases are dropped.
    """
    same_setup = old is not None and all(old.get(k) == v for k, v in setup.items())
    return {**(old.get("cases", {}) if same_setup else {}), **new}


def measure(case: Case, *, queries: int, coarse_limit: int, timed: int, seed: int | None, db: Path) -> dict[str, Any]:
    """The table rows and per-stage times of one case."""
    import hivlp_milvus
    from hivlp_milvus.data import load_source
    from hivlp_milvus.eval_search import evaluate_collection
    from hivlp_milvus.model import HiVLP

    model = HiVLP.from_pretrained(case.model_dir)
    records = list(load_source(case.data_dir, split=case.split))
    if seed is not None:  # the gallery is the whole split either way; only which queries come first changes
        random.Random(seed).shuffle(records)
    name = f"fusion_{model.fingerprint}"
    t0 = time.perf_counter()
    hivlp_milvus.ingest(
        load_source(case.data_dir, split=case.split),
        uri=str(db),
        collection_name=name,
        model=model,
        skip_existing=True,
    )
    collection = hivlp_milvus.HierarchicalCollection.open(name, uri=str(db), model=model)
    log(f"{case.label}: ingested in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    table = evaluate_collection(
        collection,
        records,
        coarse_ks=(coarse_limit,),
        fusion_limits=FUSION_LIMITS,
        fusion_queries=queries,
        progress=False,
    )
    evaluated_s = time.perf_counter() - t0
    log(f"{case.label}: evaluated in {evaluated_s:.0f} s\n{table.format()}")
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
        log(f"{case.label} M={m}: p50 ms {medians}")
    return {
        "data": data_name(case.data_dir),
        "data_dir": str(case.data_dir),
        "split": case.split,
        "model": str(case.model_dir),
        "fingerprint": model.fingerprint,
        "score_weight": model.fusion_score_weight,
        "query_seed": seed,
        "rows": table.rows,
        "meta": table.meta,
        "evaluate_s": evaluated_s,
        "stage_p50_ms": stages,
        "timed_queries": len(captions),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--case",
        action="append",
        required=True,
        type=parse_case,
        metavar="LABEL=MODEL_DIR:DATA_DIR[:SPLIT]",
        help="a model on one split (default test) of a data set; repeat for several",
    )
    p.add_argument("--queries", type=int, default=200, help="queries per direction of the compared rows")
    p.add_argument(
        "--query-seed", type=int, default=0, help="seed of the shuffle that picks the queries (-1: the manifest order)"
    )
    p.add_argument("--timed", type=int, default=20, help="single-caption searches timed per M")
    p.add_argument("--coarse-limit", type=int, default=50)
    p.add_argument("--merge", action="store_true", help="keep the existing fusion.json's other cases")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    labels = [c.label for c in args.case]
    if len(set(labels)) != len(labels):
        p.error(f"--case labels must differ, got {labels}")
    setup = {"fusion_limits": list(FUSION_LIMITS), "coarse_limit": args.coarse_limit}
    old = None
    if args.merge:
        path = Path(args.results_dir or RESULTS_DIR) / "fusion.json"
        old = json.loads(path.read_text()) if path.exists() else None
    if old is not None and not merge_cases(old, {}, setup):
        log(f"--merge: nothing kept from the existing file ({[old.get(k) for k in setup]} vs {list(setup.values())})")
    cases: dict[str, Any] = {}
    seed = None if args.query_seed < 0 else args.query_seed
    with tempfile.TemporaryDirectory(prefix="hivlp_fusion_bench_") as tmp:
        for i, case in enumerate(args.case):  # one database per case: two splits never share a gallery
            cases[case.label] = measure(
                case,
                queries=args.queries,
                coarse_limit=args.coarse_limit,
                timed=args.timed,
                seed=seed,
                db=Path(tmp) / f"case{i}.db",
            )
            doc = {**setup, "cases": merge_cases(old, cases, setup)}
            path = write_result("fusion", doc, results_dir=args.results_dir)  # after each case: a crash keeps them
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
