"""Quality on the emoji corpus with trained towers frozen: per level, coarse dim, loss terms, seeds, text towers.

The full sweep (``benchmarks/emoji_sweep.py``: every run trains both towers) costs ~5 CPU-minutes a
run, which a 2-core machine shared by many jobs cannot give 20 times in an hour. This benchmark
measures the same questions where they live, in the projection heads:

1. the towers of one trained emoji model (``--model``, e.g. the quickstart's, 260 steps of batch
   256) encode every image and caption of the train, test and held-out splits **once**;
2. **per level**: the model's own heads on those features (exactly ``evaluate(model, ...)``);
3. **the ``low_dim`` sweep and the loss ablation**: fresh (low, high) heads and temperatures are
   trained on the cached features with the HiVLP loss (``HiVLPLoss``: both InfoNCE terms, the
   consistency KL, the shortlist CE from the same fraction of the run as ``emoji.yaml``) for every
   ``low_dim`` and seed, and with each term off in turn; the towers do not move, so what the coarse
   dim and each term change is what the heads can do with the same features;
4. **text towers**: the same head training on all-MiniLM-L6-v2 sentence features (pretrained,
   frozen) instead of the emoji model's own text tower, the image tower unchanged: on emoji never
   trained on, does a text tower that knows English find what the from-scratch one cannot?

Every result lands in ``results/quality_emoji_heads.json``; the features are cached in
``benchmarks/.cache/emoji_features/`` (keyed by model fingerprint), so a rerun only trains heads.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CACHE_DIR, Timer, log, write_result

SPLITS = ("train", "test", "heldout")
EVAL_SPLITS = ("test", "heldout")
DEFAULT_LOW_DIMS = (4, 8, 16, 32, 64)
DEFAULT_SEEDS = (0, 1, 2)
COARSE_KS = (10, 50)
ABLATION: dict[str, dict[str, float]] = {
    "full": {},
    "no consistency": {"consistency": 0.0},
    "no shortlist": {"shortlist": 0.0},
}
#: The emoji recipe (training/configs/emoji.yaml) for heads: AdamW, warm-up + cosine, the loss weights.
LR, WEIGHT_DECAY, WARMUP_FRACTION, SHORTLIST_START_FRACTION = 1e-3, 0.05, 50 / 260, 150 / 260


def _features(model: Any, records: list[Any], *, text_model: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Tower outputs (before the heads) of every image and caption of ``records``."""
    import torch

    image_parts, text_parts = [], []
    captions = [c for r in records for c in r.captions]
    with torch.no_grad():
        for s in range(0, len(records), batch_size):
            pixels = model.preprocess_images([r.image for r in records[s : s + batch_size]])
            image_parts.append(model.image_tower(pixels).numpy())
        for s in range(0, len(captions), batch_size):
            tok = text_model.tokenize(captions[s : s + batch_size])
            text_parts.append(text_model.text_tower(tok["input_ids"], tok["attention_mask"]).numpy())
    return {
        "image": np.concatenate(image_parts).astype(np.float32),
        "text": np.concatenate(text_parts).astype(np.float32),
        "image_group": np.array([r.relevance_group for r in records]),
        "text_group": np.array([r.relevance_group for r in records for _ in r.captions]),
        "text_owner": np.array([i for i, r in enumerate(records) for _ in r.captions]),
    }


def cached_features(
    model: Any, data: dict[str, list[Any]], *, text_model: Any, tag: str, cache: Path
) -> dict[str, dict[str, np.ndarray]]:
    """``_features`` of every split, read from / written to ``cache`` (one ``.npz`` per split)."""
    out = {}
    for split in SPLITS:
        path = cache / f"{tag}-{split}.npz"
        if path.exists():
            with np.load(path) as z:
                out[split] = {k: z[k] for k in z.files}
            continue
        with Timer() as t:
            out[split] = _features(model, data[split], text_model=text_model)
        log(f"emoji heads: {tag} {split} features in {t.s:.0f}s")
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out[split])
    return out


def take(feats: dict[str, np.ndarray], limit: int | None) -> dict[str, np.ndarray]:
    """Every n-th image of a split's features (at most ``limit``) with all of their captions."""
    n = len(feats["image"])
    if not limit or n <= limit:
        return feats
    keep = np.arange(0, n, -(-n // limit))
    remap = np.full(n, -1)
    remap[keep] = np.arange(len(keep))
    texts = np.isin(feats["text_owner"], keep)
    return {
        "image": feats["image"][keep],
        "image_group": feats["image_group"][keep],
        "text": feats["text"][texts],
        "text_group": feats["text_group"][texts],
        "text_owner": remap[feats["text_owner"][texts]],
    }


def evaluate_heads(image_head: Any, text_head: Any, feats: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """The per-level rows (fractions) of ``heads`` on one split's cached features."""
    import torch

    from hivlp_milvus.eval import evaluate_embeddings

    with torch.no_grad():
        img = image_head(torch.from_numpy(feats["image"]))
        txt = text_head(torch.from_numpy(feats["text"]))
    table = evaluate_embeddings(
        _np(img),
        _np(txt),
        list(feats["image_group"]),
        list(feats["text_group"]),
        coarse_ks=COARSE_KS,
    )
    return table.rows


def _np(e: Any) -> Any:
    from hivlp_milvus.model.embedding import HierarchicalEmbedding

    return HierarchicalEmbedding(e.low.detach().numpy(), e.high.detach().numpy())


def train_heads(
    train: dict[str, np.ndarray],
    *,
    low_dim: int,
    high_dim: int = 256,
    seed: int,
    weights: dict[str, float],
    steps: int,
    batch_size: int,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fresh separate (low, high) heads and temperatures trained on cached features with ``HiVLPLoss``.

    One caption drawn per image per step, relevance groups as positives (the in-process training
    loop's batches, ``benchmarks.common.train_in_process``), AdamW with warm-up + cosine.
    """
    import torch

    from hivlp_milvus.model.embedding import HiVLPOutput
    from hivlp_milvus.model.heads import build_head
    from hivlp_milvus.model.loss import HiVLPLoss, LossConfig
    from training.loop import lr_factor

    torch.manual_seed(seed)
    image_head = build_head("separate", train["image"].shape[1], low_dim, high_dim)
    text_head = build_head("separate", train["text"].shape[1], low_dim, high_dim)
    scales = torch.nn.Parameter(torch.full((2,), float(np.log(1 / 0.07))))
    params = [*image_head.parameters(), *text_head.parameters()]
    opt = torch.optim.AdamW(
        [{"params": params, "weight_decay": WEIGHT_DECAY}, {"params": [scales], "weight_decay": 0.0}], lr=LR
    )
    warmup = max(1, round(WARMUP_FRACTION * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=warmup, total_steps=steps, min_lr_ratio=0.0)
    )
    cfg = {"shortlist_start_step": round(SHORTLIST_START_FRACTION * steps), "gather": False, "itm": 0.0, **weights}
    loss_fn = HiVLPLoss(LossConfig.from_dict(cfg))
    image_x, text_x = torch.from_numpy(train["image"]), torch.from_numpy(train["text"])
    _, groups = np.unique(train["image_group"], return_inverse=True)
    groups_t = torch.from_numpy(groups)
    by_owner: list[list[int]] = [[] for _ in range(len(image_x))]
    for j, owner in enumerate(train["text_owner"]):
        by_owner[owner].append(j)
    rng = np.random.default_rng(seed)
    n = len(image_x)
    perm, pos = rng.permutation(n), 0
    cap = float(np.log(100.0))
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        tidx = [by_owner[i][rng.integers(len(by_owner[i]))] for i in idx]
        s = scales.clamp(max=cap).exp()
        out = HiVLPOutput(image_head(image_x[idx]), text_head(text_x[tidx]), s[0], s[1])
        res = loss_fn(out, groups=groups_t[idx], step=step)
        opt.zero_grad(set_to_none=True)
        res.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    image_head.eval()
    text_head.eval()
    return image_head, text_head, {"last_loss": float(res.total.detach()), "loss_config": cfg}


def _ar_ratio(rows: dict[str, Any], level: str) -> float | None:
    high = rows["high"]["AR"]
    return rows[level]["AR"] / high if high > 0 else None


def trailing_dim(sweep: list[dict[str, Any]], trail: float = 0.99, fallback: int = 8) -> int:
    """The largest swept dim at which low-only keeps less than ``trail`` of high-only's AR on test."""
    dims = [r["low_dim"] for r in sweep if (_ar_ratio(r["splits"]["test"], "low") or 1.0) < trail]
    return max(dims) if dims else fallback


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and seed-to-seed spread (sample std) of the headline numbers per (tower, loss, low_dim)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["text_tower"], r["loss"], r["low_dim"]), []).append(r)
    out = []
    for (tower, loss, low_dim), rs in groups.items():
        entry: dict[str, Any] = {
            "text_tower": tower,
            "loss": loss,
            "low_dim": low_dim,
            "seeds": [r["seed"] for r in rs],
        }
        for split in EVAL_SPLITS:
            values: dict[str, list[float]] = {}
            for r in rs:
                rows = r["splits"][split]
                for level in ("low", "high", "hier@10", "hier@50"):
                    values.setdefault(f"AR_{level}", []).append(rows[level]["AR"])
                    values.setdefault(f"t2i_R@1_{level}", []).append(rows[level]["text_to_image_R@1"])
                    values.setdefault(f"i2t_R@1_{level}", []).append(rows[level]["image_to_text_R@1"])
                values.setdefault("low_over_high", []).append(_ar_ratio(rows, "low") or 0.0)
                values.setdefault("hier@50_over_high", []).append(_ar_ratio(rows, "hier@50") or 0.0)
                values.setdefault("low_minus_high", []).append(rows["low"]["AR"] - rows["high"]["AR"])
                values.setdefault("shortlist_recall@50", []).append(rows["hier@50"]["shortlist_recall"])
            entry[split] = {
                k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None}
                for k, v in values.items()
            }
        out.append(entry)
    return out


def run(
    *,
    model_dir: Path | str,
    data_dir: Path | str = "data/emoji",
    steps: int = 200,
    batch_size: int = 256,
    low_dims: Sequence[int] = DEFAULT_LOW_DIMS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    ablation_low_dim: int | str = "auto",
    minilm: bool = False,
    test_limit: int | None = 510,
    threads: int | None = 1,
    results_dir: Path | None = None,
    cache_dir: Path | None = None,
    name: str = "quality_emoji_heads",
) -> Path:
    """Cache the features, measure everything and write ``results/<name>.json``; returns its path."""
    import torch

    from benchmarks.emoji_sweep import load_data
    from hivlp_milvus.model import HiVLP

    if threads:
        torch.set_num_threads(threads)
    data = load_data(Path(data_dir))
    model = HiVLP.from_pretrained(model_dir).eval()
    cache = Path(cache_dir or CACHE_DIR / "emoji_features")
    key = hashlib.sha256((model.fingerprint + str(Path(data_dir).resolve())).encode()).hexdigest()[:12]
    towers = {"own": cached_features(model, data, text_model=model, tag=f"{key}-own", cache=cache)}
    per_level = {
        split: evaluate_heads(model.image_head, model.text_head, towers["own"][split]) for split in EVAL_SPLITS
    }
    runs: list[dict[str, Any]] = []
    # The sweep's test rows: a fixed, evenly spread subset (evaluation costs as much as training here).
    subset = {"heldout": towers["own"]["heldout"], "test": take(towers["own"]["test"], test_limit)}

    def measure(tower: str, loss: str, low_dim: int, seed: int) -> None:
        feats = towers[tower]
        if tower != "own":
            subset.update(heldout=feats["heldout"], test=take(feats["test"], test_limit))
        with Timer() as t:
            img_head, txt_head, info = train_heads(
                feats["train"], low_dim=low_dim, seed=seed, weights=ABLATION[loss], steps=steps, batch_size=batch_size
            )
            splits = {split: evaluate_heads(img_head, txt_head, subset[split]) for split in EVAL_SPLITS}
        run = {"text_tower": tower, "loss": loss, "low_dim": low_dim, "seed": seed, "splits": splits, "seconds": t.s}
        runs.append({**run, **info})
        write()
        test = splits["test"]
        log(
            f"emoji heads: {tower} {loss} d{low_dim} s{seed}: test AR low {100 * test['low']['AR']:.2f} "
            f"high {100 * test['high']['AR']:.2f} hier@50 {100 * test['hier@50']['AR']:.2f}; heldout t2i R@1 "
            f"{100 * splits['heldout']['high']['text_to_image_R@1']:.2f} ({t.s:.0f}s)"
        )

    def write() -> Path:  # after each stage: an interrupted run still leaves what it measured
        return write_result(
            name,
            {
                "model_dir": str(model_dir),
                "model": {
                    "low_dim": model.config.low_dim,
                    "high_dim": model.config.high_dim,
                    "fingerprint": model.fingerprint,
                },
                "data_dir": str(data_dir),
                "steps": steps,
                "test_limit": test_limit,
                "batch_size": batch_size,
                "low_dims": sorted(low_dims),
                "seeds": list(seeds),
                "ablation_low_dims": ablation_dims,
                "ablation_rule": str(ablation_low_dim),
                "coarse_ks": list(COARSE_KS),
                "splits": {
                    s: {"images": len(data[s]), "captions": sum(len(r.captions) for r in data[s])} for s in SPLITS
                },
                "feature_dims": {
                    t: {"image": f["train"]["image"].shape[1], "text": f["train"]["text"].shape[1]}
                    for t, f in towers.items()
                },
                "per_level": per_level,
                "runs": runs,
                "aggregate": aggregate(runs),
            },
            results_dir=results_dir,
        )

    # auto: where seed 0's low-only starts to trail; all: at every swept dim (runs are cheap here).
    ablation_dims: list[int] | None = (
        sorted(low_dims)
        if ablation_low_dim == "all"
        else None
        if ablation_low_dim == "auto"
        else [int(d) for d in str(ablation_low_dim).split(",")]
    )
    for seed in seeds:  # the most wanted runs first
        for d in sorted(low_dims):
            measure("own", "full", d, seed)
        if ablation_dims is None:
            ablation_dims = [trailing_dim(runs)]
            log(f"emoji heads: the loss ablation runs at low_dim {ablation_dims[0]}")
        for d in ablation_dims:
            for loss in (x for x in ABLATION if x != "full"):
                measure("own", loss, d, seed)
    path = write()
    if minilm:
        from benchmarks.emoji_sweep import RunSpec, load_train_config
        from hivlp_milvus.model import create_model

        text_model = create_model(
            load_train_config(RunSpec("minilm", "emoji_minilm", 32, 0)).model.resolve(), seed=0
        ).eval()
        towers["minilm"] = cached_features(model, data, text_model=text_model, tag=f"{key}-minilm", cache=cache)
        for seed in seeds:
            measure("minilm", "full", 32, seed)
        path = write()
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained emoji model (save_pretrained directory)")
    ap.add_argument("--data", default="data/emoji", help="the emoji data set directory (written if absent)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--low-dims", type=int, nargs="+", default=list(DEFAULT_LOW_DIMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument(
        "--ablation-low-dim", default="auto", help="low_dims (4,8,16), all, or auto: where low-only trails (seed 0)"
    )
    ap.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2 text features (slow on a CPU)")
    ap.add_argument("--test-limit", type=int, default=510, help="test images per sweep run (0: the whole split)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-waiting on a busy machine)")
    ap.add_argument("--name", default="quality_emoji_heads")
    a = ap.parse_args(argv)
    path = run(
        model_dir=a.model,
        data_dir=a.data,
        steps=a.steps,
        low_dims=a.low_dims,
        seeds=a.seeds,
        ablation_low_dim=a.ablation_low_dim,
        minilm=a.minilm,
        threads=a.threads,
        test_limit=a.test_limit or None,
        name=a.name,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
