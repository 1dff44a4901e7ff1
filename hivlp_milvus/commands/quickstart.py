"""``hivlp-milvus quickstart``: the main job a new user runs first (``make demo``).

Synthetic shapes (or, with ``--data emoji``, the emoji corpus) → Ray Train (CPU workers) → the
fusion block alone on the funnel's own hard negatives and its score mix (``--fusion-steps``) →
Milvus Lite ingest → evaluation through Milvus (two-stage funnel, and three-stage with the fusion
block re-scoring the funnel's top ``--fusion-limit``) → latency of the funnel vs exact high-dim
search → example searches. Offline (the emoji packages are fetched once with npm), embedded
defaults, safe to re-run: finished stages are reused (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from hivlp_milvus.commands.common import QUICKSTART_COLLECTION as COLLECTION
from hivlp_milvus.commands.common import QUICKSTART_WORK_DIR

STAGES = 6
# --data choice -> the shipped training config it trains with.
DATA_CONFIGS = {"shapes": "quickstart", "emoji": "emoji"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="data (synthetic shapes, or --data emoji) -> Ray Train -> Milvus Lite -> eval table -> example searches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--work-dir",
        default=QUICKSTART_WORK_DIR,
        help="where data, model and hivlp.db go (the default is where `search` and `serving:app` look)",
    )
    p.add_argument("--train-size", type=int, default=10000, help="synthetic training images")
    p.add_argument("--val-size", type=int, default=500, help="synthetic validation images")
    p.add_argument("--test-size", type=int, default=1000, help="test images ingested into Milvus")
    p.add_argument("--epochs", type=int, default=None, help="default: training/configs/quickstart.yaml")
    p.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers")
    p.add_argument("--coarse-limit", type=int, default=50, help="shortlist size of the funnel")
    p.add_argument(
        "--fusion-limit",
        type=int,
        nargs="+",
        default=[20],
        metavar="M",
        help="the eval table's three-stage rows re-score the funnel's top M (10 <= M <= --coarse-limit) with the "
        "fusion block, one row per M (0: none); stage 5 times each stage of a three-stage search at each M",
    )
    p.add_argument(
        "--fusion-queries",
        type=int,
        default=100,
        metavar="N",
        help="queries per direction of the three-stage row and its two-stage twin (the scorer costs ~4 ms a "
        "candidate on one core), and at most 50 for stage 5's per-stage times; all when the test set has no more",
    )
    p.add_argument(
        "--fusion-steps",
        type=int,
        default=200,
        metavar="N",
        help="after training, steps of the fusion block alone on the funnel's own hard negatives, then the "
        "score mix chosen on the validation split (training/fusion_finetune.py; 0: skip). 200 keep the demo under "
        "10 minutes and gain ~2.7 points of R@1 at M = 20; 800 gain ~5.8 and take ~3.5 minutes more",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete the work dir first")
    p.add_argument(
        "--data",
        choices=tuple(DATA_CONFIGS),
        default="shapes",
        help="shapes: synthetic scenes (default); emoji: real emoji drawings fetched once with npm, "
        "trained on apple + google, tested on twitter (docs/data.md; the --*-size options do not apply)",
    )
    p.set_defaults(func=run)


def _stage(n: int, text: str) -> float:
    print(f"\n[{n}/{STAGES}] {text}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sizes = {"train": args.train_size, "val": args.val_size, "test": args.test_size}

    t = time.perf_counter()
    data_dir = _prepare_data(work, sizes, args)
    print(f"      done in {time.perf_counter() - t:.1f} s")

    t = _stage(2, f"training the tiny HiVLP with Ray Train ({args.workers} CPU workers)")
    model_dir = _train(work, data_dir, args)
    _finetune_fusion(model_dir, data_dir, args)
    print(f"      done in {time.perf_counter() - t:.1f} s -> {model_dir}")

    t = _stage(3, f"ingesting the test split into Milvus Lite ({work / 'hivlp.db'}, collection {COLLECTION!r})")
    collection, model, test_records = _ingest(work, data_dir, model_dir, args.test_size)
    print(f"      done in {time.perf_counter() - t:.1f} s")

    t = _stage(4, "evaluation through Milvus: low only / high only / hierarchical / hierarchical + fusion")
    fusion_limits = _fusion_limits(model, args)
    table = _evaluate(collection, test_records, args, fusion_limits)
    print(table.format())
    table.save_json(work / "eval.json")
    print(f"      done in {time.perf_counter() - t:.1f} s (saved {work / 'eval.json'})")

    t = _stage(5, "latency: hierarchical search vs exact single-stage high-dim search")
    latency = _latency(collection, test_records, args.coarse_limit)
    n_fused = min(50, args.fusion_queries or 50)  # the fusion stage's ~4 ms a candidate: a few dozen queries
    latency |= _fusion_latency(collection, test_records, args.coarse_limit, fusion_limits, n_fused)
    (work / "latency.json").write_text(json.dumps(latency, indent=2) + "\n")
    print(f"      done in {time.perf_counter() - t:.1f} s")

    _stage(6, "example searches")
    _examples(collection, test_records, args.coarse_limit)

    print(f"\nquickstart finished in {time.perf_counter() - started:.0f} s.")
    print(f"model: {model_dir}\nMilvus Lite db: {work / 'hivlp.db'} (collection {COLLECTION!r})")
    # The defaults of `search` and `serving:app` are this layout relative to the current directory.
    here = work == (Path.cwd() / QUICKSTART_WORK_DIR).resolve()
    flags = "" if here else f" --model {model_dir} --uri {work / 'hivlp.db'}"
    env = "" if here else f"HIVLP_CHECKPOINT={model_dir} HIVLP_MILVUS_URI={work / 'hivlp.db'} "
    print(f'search it: hivlp-milvus search "a small red circle"{flags}')
    if getattr(model, "has_fusion", False):
        print(f'three stages: hivlp-milvus search "a small red circle" --fusion-limit 20{flags}')
    print(f"serve it:  {env}serve run serving:app      (then open http://127.0.0.1:8000/)")
    return 0


def _prepare_data(work: Path, sizes: dict[str, int], args: argparse.Namespace) -> Path:
    """Stage 1: the synthetic scenes, or the emoji data set (npm fetch once, then reused)."""
    if args.data != "emoji":
        _stage(1, f"synthetic image-caption scenes {sizes} -> {work / 'data'}")
        return _ensure_data(work / "data", sizes, args.seed)
    from hivlp_milvus.data import emoji

    _stage(1, f"emoji drawings (npm: train on apple + google, test on twitter) -> {work / 'emoji'}")
    dataset = emoji.write_dataset(work / "emoji")  # the fixed split: --seed varies training only
    print(dataset.summary())
    return dataset.root


def _ensure_data(data_dir: Path, sizes: dict[str, int], seed: int) -> Path:
    from hivlp_milvus.data import synthetic

    stamp = data_dir / "dataset.json"
    if stamp.exists():
        meta = json.loads(stamp.read_text())
        same = (meta.get("sizes"), meta.get("seed"), meta.get("version")) == (sizes, seed, synthetic.GENERATOR_VERSION)
        if same:
            print("      reusing the existing data set")
            return data_dir
        shutil.rmtree(data_dir)
    synthetic.write_splits(data_dir, sizes, seed=seed)
    return data_dir


def _train(work: Path, data_dir: Path, args: argparse.Namespace) -> Path:
    from training.config import load_config
    from training.trainer import run_training

    overrides = [
        f"run.work_dir={work}",  # exports <work>/model, where `serve run serving:app` looks
        "data.synthetic=null",
        f"data.train={data_dir}",
        "data.train_split=train",
        f"data.val={data_dir}",
        "data.val_split=val",
        f"optim.seed={args.seed}",
        f"scaling.num_workers={args.workers}",
    ]
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    cfg = load_config(DATA_CONFIGS[args.data], overrides)
    _forget_outdated_run(cfg)
    result = run_training(cfg)
    print(result.summary())
    return result.model_dir


def _finetune_fusion(model_dir: Path, data_dir: Path, args: argparse.Namespace) -> None:
    """Stage 2, second part: the fusion block on the funnel's own hard negatives, and the score mix.

    Skipped for a model without a fusion block, and when the exported model already carries its
    chosen mix (a re-run reusing a finished training run).
    """
    from hivlp_milvus.data import load_source
    from hivlp_milvus.model import HiVLP
    from training.fusion_finetune import FusionFinetuneConfig, finetune_fusion

    model = HiVLP.from_pretrained(model_dir)
    if not model.has_fusion or model.fusion_score_weight is not None or args.fusion_steps <= 0:
        return
    train = list(load_source(data_dir, split="train"))
    val = list(load_source(data_dir, split="val"))
    # Mined and mixed at the table's (largest) M, inside the table's coarse shortlist.
    limit = (
        min(max(args.fusion_limit), args.coarse_limit) if any(args.fusion_limit) else FusionFinetuneConfig.mine_limit
    )
    budget = FusionFinetuneConfig(
        steps=args.fusion_steps, seed=args.seed, mine_limit=limit, coarse_limit=args.coarse_limit
    )
    report = finetune_fusion(model, train, val, budget)
    print(f"      {report.summary()}")
    model.save_pretrained(model_dir)


def _evaluate(collection: Any, records: list, args: argparse.Namespace, fusion_limits: tuple[int, ...]) -> Any:
    """Stage 4: the eval table, with the three-stage row when the model has a fusion block."""
    from hivlp_milvus.eval_search import evaluate_collection

    captions = sum(len(r.captions) for r in records)
    # A subset only when there are more queries than asked for (captions outnumber images).
    subset = args.fusion_queries if args.fusion_queries and captions > args.fusion_queries else None
    return evaluate_collection(
        collection,
        records,
        coarse_ks=(args.coarse_limit,),
        fusion_limits=fusion_limits,
        fusion_queries=subset,
    )


def _fusion_limits(model: Any, args: argparse.Namespace) -> tuple[int, ...]:
    """The ``--fusion-limit`` values that can give a row (10 <= M <= coarse limit, a model with a fusion block)."""
    asked = tuple(m for m in args.fusion_limit if m)
    if asked and not getattr(model, "has_fusion", False):
        print("      the model has no fusion block: no three-stage row")
        return ()
    # The table's R@10 needs 10 hits, and the fusion stage re-scores part of the shortlist.
    for m in (m for m in asked if not 10 <= m <= args.coarse_limit):
        print(f"      --fusion-limit {m} is outside [10, --coarse-limit {args.coarse_limit}]: no row for it")
    return tuple(m for m in asked if 10 <= m <= args.coarse_limit)


def _forget_outdated_run(cfg: Any) -> None:
    """Start the quickstart's training over when its model config changed since the last run.

    Re-running a run name resumes it, and a resume with another model is refused (rightly, for
    a user's experiment). The quickstart owns its run directory, so after an upgrade that changes
    the ``tiny`` config it retrains instead of stopping with that error.
    """
    from training.trainer import existing_run_model, model_differences, run_directory

    existing = existing_run_model(cfg)
    if existing is None:
        return
    differs = model_differences(existing, cfg.model.resolve())
    if differs:
        print(f"      the model config changed since the last run ({', '.join(differs)}): training from scratch")
        shutil.rmtree(run_directory(cfg))


def _ingest(work: Path, data_dir: Path, model_dir: Path, test_size: int) -> tuple[Any, Any, list]:
    import hivlp_milvus
    from hivlp_milvus.data import load_source
    from hivlp_milvus.errors import ModelMismatchError
    from hivlp_milvus.model import HiVLP

    model = HiVLP.from_pretrained(model_dir)
    uri = str(work / "hivlp.db")
    try:
        hivlp_milvus.HierarchicalCollection.open(COLLECTION, uri=uri, model=model)
    except ModelMismatchError:
        # The model was retrained: its vectors are not comparable with the stored ones.
        print("      the collection holds another model's vectors: recreating it")
        hivlp_milvus.HierarchicalCollection.open(COLLECTION, uri=uri).drop()
    except hivlp_milvus.CollectionNotFoundError:
        pass  # ingest creates it, sizing the index from the source
    source = load_source(data_dir, split="test")
    # One image row and five caption rows per test record: sizes the IVF index of a new collection.
    report = hivlp_milvus.ingest(
        source, uri=uri, collection_name=COLLECTION, model=model, skip_existing=True, expected_rows=6 * test_size
    )
    print(report)
    collection = hivlp_milvus.HierarchicalCollection.open(COLLECTION, uri=uri, model=model)
    return collection, model, list(load_source(data_dir, split="test"))


def _latency(collection: Any, records: list, coarse_limit: int, n_queries: int = 100) -> dict[str, float]:
    """Median single-query latency of the funnel and of exact high-dim search, interleaved."""
    captions = [r.captions[0] for r in records[:n_queries]]
    queries = collection.model.embed_texts(captions)
    timings: dict[str, list[float]] = {"hierarchical": [], "exact_high": []}
    for i in range(len(captions)):
        q = queries[i]
        t0 = time.perf_counter()
        collection.hierarchical_search(q, limit=10, coarse_limit=coarse_limit, modality="image", output_fields=[])
        t1 = time.perf_counter()
        collection.search(q, level="high", limit=10, modality="image", output_fields=[])
        t2 = time.perf_counter()
        timings["hierarchical"].append(t1 - t0)
        timings["exact_high"].append(t2 - t1)
    out = {f"{k}_p50_ms": 1000 * statistics.median(v) for k, v in timings.items()}
    out["speedup"] = out["exact_high_p50_ms"] / out["hierarchical_p50_ms"]
    out["gallery_rows"] = collection.count()
    print(
        f"      {len(captions)} text queries over {out['gallery_rows']} rows: hierarchical "
        f"(coarse_limit={coarse_limit}) p50 {out['hierarchical_p50_ms']:.1f} ms, exact high-dim p50 "
        f"{out['exact_high_p50_ms']:.1f} ms ({out['speedup']:.2f}x). Milvus Lite at this size is "
        "dominated by per-call overhead; see BENCHMARKS.md for large galleries."
    )
    return out


def _fusion_latency(
    collection: Any, records: list, coarse_limit: int, fusion_limits: tuple[int, ...], n_queries: int = 50
) -> dict[str, float]:
    """Median per-stage time of single-caption three-stage searches at each M (the fusion stage reads images)."""
    out: dict[str, float] = {}
    captions = [r.captions[0] for r in records[:n_queries]]
    for m in fusion_limits:
        stages: dict[str, list[float]] = {}
        for caption in captions:
            timings = collection.hierarchical_search(
                caption, limit=10, coarse_limit=coarse_limit, fusion_limit=m, modality="image", output_fields=[]
            ).timings
            for stage, seconds in timings.items():
                stages.setdefault(stage, []).append(seconds)
        medians = {k.removesuffix("_s"): 1000 * statistics.median(v) for k, v in stages.items()}
        out |= {f"fusion@{m}_{stage}_p50_ms": ms for stage, ms in medians.items()}
        parts = ", ".join(f"{stage} {ms:.1f}" for stage, ms in medians.items())
        print(
            f"      {len(captions)} caption queries, three stages at fusion_limit={m}: p50 ms per stage: {parts} "
            f"({medians['fusion'] / m:.2f} ms per fused candidate)"
        )
    return out


def _examples(collection: Any, records: list, coarse_limit: int) -> None:
    picks = [records[0], records[len(records) // 2]]
    for record in picks:
        query = record.captions[0]
        hits = collection.hierarchical_search(query, limit=3, coarse_limit=coarse_limit)[0]
        print(f'\n  text -> images: "{query}"')
        for hit in hits:
            mark = "  <- the captioned image" if hit["entity"].get("key") == record.id else ""
            print(f"    {hit['distance']:.3f}  {hit['entity'].get('reference')}{mark}")
    record = records[1]
    hits = collection.hierarchical_search(Path(record.image_uri), limit=3, coarse_limit=coarse_limit)[0]
    print(f"\n  image -> captions: {record.image_uri}")
    print(f'    (its own first caption: "{record.captions[0]}")')
    for hit in hits:
        print(f"    {hit['distance']:.3f}  {hit['entity'].get('reference')}")
