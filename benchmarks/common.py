"""Shared benchmark plumbing: machine info, timers, interleaving, JSON, the benchmark model, caches.

Everything measured here is wall-clock time on a shared machine, so every benchmark
* interleaves its contenders (query by query or in alternating rounds) so noise hits all of them,
* reports ratios computed from the same run, and
* records the machine, the load average and the library versions next to the numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PLOTS_DIR = BENCH_DIR / "plots"
CACHE_DIR = Path(os.environ.get("HIVLP_BENCH_CACHE", BENCH_DIR / ".cache"))
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------- machine


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _proc_value(path: str, key: str) -> str | None:
    """What follows ``key:`` on the first line of a ``/proc`` file that starts with ``key`` (``None``: no such line)."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def _mem_gib() -> float | None:
    kib = _proc_value("/proc/meminfo", "MemTotal")  # "16318480 kB"
    return round(int(kib.split()[0]) / 2**20, 1) if kib else None


def rss_mib() -> float:
    """Resident set size of this process (MiB)."""
    kib = _proc_value("/proc/self/status", "VmRSS")
    return int(kib.split()[0]) / 1024 if kib else float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_rev() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    return {
        "hostname": platform.node(),
        "cpu": _proc_value("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": int(sys.modules["torch"].get_num_threads()) if "torch" in sys.modules else None,
        "versions": {
            m: _version(m) for m in ("pymilvus", "milvus-lite", "faiss-cpu", "numpy", "torch", "ray", "hivlp-milvus")
        },
        "git": git_rev(),
    }


# ---------------------------------------------------------------------- timing


class Timer:
    """``with Timer() as t: ...; t.s`` (seconds, perf_counter)."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s = time.perf_counter() - self._t0


def latency_stats(samples_s: Sequence[float], per_call_items: int = 1) -> dict[str, float]:
    """p50 / p99 / mean latency in ms and throughput (items per second of summed call time)."""
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    total = float(a.sum())
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50) * 1e3),
        "p99_ms": float(np.percentile(a, 99) * 1e3),
        "mean_ms": float(a.mean() * 1e3),
        "qps": float(a.size * per_call_items / total) if total > 0 else float("inf"),
    }


def interleaved(
    contenders: Mapping[str, Callable[[int], Any]], n_items: int, *, rounds: int = 1, seed: int = 0, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Run ``fn(i)`` for every contender and item ``i``, contenders shuffled per item.

    Query by query, the order of the contenders is re-drawn, so machine noise (other tenants,
    frequency changes, GC) lands on all contenders alike. Returns per contender the list of
    latencies (seconds) and the outputs of the first round (index = item).
    """
    rng = random.Random(seed)
    names = list(contenders)
    for name in names:  # warm-up: first-call costs (imports, caches) are not measured
        for i in range(min(warmup, n_items)):
            contenders[name](i)
    times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[Any]] = {n: [None] * n_items for n in names}
    for r in range(rounds):
        for i in range(n_items):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                out = contenders[name](i)
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    outputs[name][i] = out
    return times, outputs


def interleaved_queries(
    contenders: Mapping[str, Callable[[slice], Any]],
    n_single: int,
    n_batches: int,
    nq_batch: int,
    *,
    label: str,
    seed: int = 0,
    warmup: int = 1,
) -> tuple[dict[str, list[float]], dict[str, list[Any]], dict[str, list[float]], dict[str, list[Any]]]:
    """:func:`interleaved` over query slices: ``n_single`` single queries, then ``n_batches`` batches of ``nq_batch``.

    Each contender maps a slice of the query arrays to one result per query. Returns the latencies
    and the results per query (batches flattened) of the single run, then the same of the batch run.
    """
    log(f"[{label}] {len(contenders)} contenders x {n_single} single queries (interleaved)")
    fns = {name: (lambda i, f=f: f(slice(i, i + 1))) for name, f in contenders.items()}
    t_single, out_single = interleaved(fns, n_single, seed=seed, warmup=warmup)
    log(f"[{label}] {len(contenders)} contenders x {n_batches} batches of {nq_batch}")
    fns = {name: (lambda i, f=f: f(slice(i * nq_batch, (i + 1) * nq_batch))) for name, f in contenders.items()}
    t_batch, out_batch = interleaved(fns, n_batches, seed=seed + 1, warmup=0)
    flat = {name: [ids for call in out for ids in call] for name, out in out_single.items()}
    flat_b = {name: [ids for call in out for ids in call] for name, out in out_batch.items()}
    return t_single, flat, t_batch, flat_b


# ---------------------------------------------------------------------- JSON


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_result(
    name: str, payload: Mapping[str, Any], *, results_dir: Path | None = None, command: str | None = None
) -> Path:
    """Write ``results_dir/<name>.json`` with the machine info and a timestamp."""
    out_dir = Path(results_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "schema_version": SCHEMA_VERSION,
        "date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "command": command or _command_line(),
        "machine": machine_info(),
        **payload,
    }
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _command_line() -> str:
    argv = list(sys.argv) if sys.argv else []
    if argv and Path(argv[0]).name == "hivlp-milvus":
        return " ".join(["hivlp-milvus", *argv[1:]])
    if argv and argv[0].endswith(".py") and "benchmarks" in argv[0]:
        return " ".join(["python -m benchmarks." + Path(argv[0]).stem, *argv[1:]])
    return " ".join(argv)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- the benchmark model


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe of ``training/configs/quickstart.yaml``, for a single-process loop.

    Read from the shipped quickstart config (one source of truth), so the benchmarks train the way
    ``make demo`` does: AdamW with decay on matrices only, linear warm-up then cosine
    (``training.loop.lr_factor``), gradient clipping, and the HiVLP loss with the shortlist term
    switched on at the same *fraction* of the run as in the quickstart (step 140 of 234), so a
    shorter or longer run keeps the curriculum (docs/objective.md: the term from step 0 collapses
    a from-scratch model).
    """

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    clip_norm: float
    loss: Mapping[str, Any]
    shortlist_start_fraction: float
    source: str = "training/configs/quickstart.yaml"

    @classmethod
    def quickstart(cls) -> Recipe:
        from training.config import load_config

        cfg = load_config("quickstart")
        optim = cfg.optim
        loss = dict(cfg.loss)
        start = int(loss.pop("shortlist_start_step", 0))
        total = optim.max_steps
        if total is None:
            per_step = optim.batch_size * cfg.scaling.num_workers * optim.grad_accum_steps
            total = optim.epochs * (cfg.data.synthetic.train // per_step) if cfg.data.synthetic else 0
        return cls(
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            warmup_steps=optim.warmup_steps,
            min_lr_ratio=optim.min_lr_ratio,
            clip_norm=optim.clip_norm,
            loss=loss,
            shortlist_start_fraction=start / total if total else 0.0,
        )

    def loss_config(self, steps: int, **overrides: Any) -> Any:
        """The ``LossConfig`` for a run of ``steps`` steps: the recipe's weights, then ``overrides``.

        ``shortlist_start_step`` is the recipe's fraction of ``steps`` unless overridden; the loss
        never all-gathers (one process).
        """
        from hivlp_milvus.model.loss import LossConfig

        data = {
            **self.loss,
            "shortlist_start_step": round(self.shortlist_start_fraction * steps),
            "gather": False,
            **overrides,
        }
        return LossConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": dict(self.loss), "betas": list(self.betas)}


def train_in_process(
    model: Any,
    records: Sequence[Any],
    *,
    steps: int,
    batch_size: int = 256,
    recipe: Recipe | None = None,
    loss: Any = None,
    seed: int = 0,
    step_offset: int = 0,
    log_every: int = 20,
    label: str = "train",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train ``model`` on ``records`` for ``steps`` optimizer steps in this process (no Ray).

    The loop of the Ray Train worker without the distribution: per-epoch shuffles of the records
    (drop-last batches of ``batch_size``), one caption drawn per image per step, relevance groups
    as positives, ``HiVLPLoss(out, groups, step=)``, AdamW + warm-up/cosine of ``recipe``
    (default: the quickstart's). Deterministic for a given ``seed``. ``loss`` (a ``LossConfig``)
    replaces ``recipe.loss_config(steps)``; ``step_offset`` continues a previous run's loss
    curriculum. ``precision`` is ``optim.precision`` (``auto``: bf16 autocast where the device runs
    it natively); the step is the training loop's own (``training.step.forward_loss``). Leaves the
    model in eval mode; returns what was run and the last loss.
    """
    import torch

    from hivlp_milvus.device import check_training_precision, training_autocast_dtype
    from hivlp_milvus.model.loss import HiVLPLoss
    from training.loop import lr_factor
    from training.step import forward_loss

    check_training_precision(precision, model.device)
    dtype = training_autocast_dtype(precision, model.device)

    recipe = recipe or Recipe.quickstart()
    loss_cfg = loss if loss is not None else recipe.loss_config(steps)
    if loss_cfg.itm and not getattr(model, "has_fusion", False):
        loss_cfg = dataclasses.replace(loss_cfg, itm=0.0)  # the recipe's itm needs a fusion block (micro has none)
    n = len(records)
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in [2, {n}] (the number of records), got {batch_size}")
    pixels = model.preprocess_images([r.image for r in records])
    group_ids: dict[str, int] = {}
    groups = torch.tensor([group_ids.setdefault(r.relevance_group, len(group_ids)) for r in records])
    captions = [list(r.captions) for r in records]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=tuple(recipe.betas),
        eps=recipe.eps,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_factor(s, warmup_steps=recipe.warmup_steps, total_steps=steps, min_lr_ratio=recipe.min_lr_ratio),
    )
    loss_fn = HiVLPLoss(loss_cfg)
    torch.manual_seed(seed)  # dropout
    order = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    perm, pos = torch.randperm(n, generator=order), 0
    parts: dict[str, float] = {}
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        tok = model.tokenize([captions[i][rng.integers(len(captions[i]))] for i in idx.tolist()])
        batch = {"pixel_values": pixels[idx], "group": groups[idx]}
        res = forward_loss(
            model, loss_fn, batch, tok["input_ids"], tok["attention_mask"], step=step_offset + step, dtype=dtype
        )
        opt.zero_grad(set_to_none=True)
        res.total.backward()
        if recipe.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, recipe.clip_norm)
        opt.step()
        sched.step()
        parts = {"total": float(res.total.detach()), **{k: float(v) for k, v in res.parts.items()}}
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(f"{label}: step {step + 1}/{steps} loss {parts['total']:.3f} ({time.perf_counter() - t0:.0f}s)")
    seconds = time.perf_counter() - t0
    model.eval()
    return {
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": steps * batch_size / seconds if seconds > 0 else None,
        "batch_size": batch_size,
        "n_train": n,
        "seed": seed,
        "precision": "fp32" if dtype is None else "bf16",
        "loss_config": loss_cfg.to_dict(),
        "last_loss": parts,
        "recipe": recipe.to_dict(),
    }


def train_tiny_model(
    out_dir: Path,
    *,
    steps: int = 120,
    n_train: int = 10000,
    seed: int = 0,
    batch_size: int = 256,
    config: str = "tiny",
    init_dir: Path | None = None,
) -> Path:
    """Train the tiny HiVLP in this process for ``steps`` steps and save it to ``out_dir``.

    :func:`train_in_process` with the quickstart recipe on the synthetic training split (the
    quickstart's data: ``split_seed(seed, "train")``), so benchmarks need neither Ray nor the
    quickstart. ``init_dir`` continues a previous run (fresh optimizer and schedule, the loss
    curriculum continues). The benchmarks only need embeddings whose low/high relation is that of a
    trained model, not the best model.
    """
    from hivlp_milvus.data import synthetic
    from hivlp_milvus.model import create_model

    records = synthetic.generate(n_train, seed=synthetic.split_seed(seed, "train"))
    prev: dict[str, Any] = {}
    if init_dir is not None and (Path(init_dir) / "config.json").exists():  # continue a previous run
        from hivlp_milvus.model import HiVLP

        model = HiVLP.from_pretrained(init_dir)
        with contextlib.suppress(OSError, ValueError):
            prev = json.loads((Path(init_dir) / "bench_train.json").read_text())
    else:
        model = create_model(config, texts=[c for r in records for c in r.captions], seed=seed)
    prev_steps = int(prev.get("steps", 0))
    info = train_in_process(
        model, records, steps=steps, batch_size=batch_size, seed=seed, step_offset=prev_steps, label="train tiny"
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    info["steps"] += prev_steps
    info["seconds"] += float(prev.get("seconds", 0.0))
    (out_dir / "bench_train.json").write_text(json.dumps(_jsonable(info)))
    return out_dir


def obtain_model(model_dir: str | Path | None = None, *, train_steps: int = 120) -> tuple[Any, dict[str, Any]]:
    """The model the benchmark embeds with: ``--model DIR`` if given, else the cached trained tiny model.

    Returns ``(model, info)``; info says where it came from.
    """
    from hivlp_milvus.model import HiVLP

    if model_dir:
        return HiVLP.from_pretrained(model_dir), {"source": "given", "path": str(model_dir)}
    cached = CACHE_DIR / "model"
    if not (cached / "config.json").exists():
        log(f"training the tiny model in-process for {train_steps} steps -> {cached}")
        train_tiny_model(cached, steps=train_steps)
    info = {"source": "benchmarks/common.py:train_tiny_model (cached)", "path": str(cached)}
    with contextlib.suppress(OSError, ValueError):
        info.update(json.loads((cached / "bench_train.json").read_text()))
    if "recipe" not in info:
        log(f"note: the cached model {cached} predates the quickstart recipe; delete it to retrain")
    return HiVLP.from_pretrained(cached), info


def smoke_model(n_scenes: int) -> tuple[Any, dict[str, Any]]:
    """The smoke runs' model: untrained ``micro`` with the vocabulary of ``n_scenes`` synthetic scenes, and its info."""
    from hivlp_milvus.data import synthetic
    from hivlp_milvus.model import create_model

    texts = [c for r in synthetic.generate(n_scenes, seed=1) for c in r.captions]
    return create_model("micro", texts=texts, seed=0), {"source": "untrained micro model (smoke)"}


def embed_gallery(
    model: Any,
    n: int,
    *,
    seed: int = 7,
    n_queries: int = 500,
    cache: bool = True,
    chunk: int = 5000,
    query_kind: str = "text",
) -> dict[str, np.ndarray]:
    """Real model embeddings of a synthetic gallery of ``n`` images and ``n_queries`` caption queries.

    Gallery = ``synthetic.generate(n, seed)`` images (not the training seed). Queries = the first
    caption of ``n_queries`` gallery images drawn at random; their label is the image index, and
    every gallery image of the same scene ``group`` counts as relevant too.
    Cached as ``.cache/emb_<fingerprint>_<n>_<seed>.npz``.
    """
    from hivlp_milvus.data import synthetic

    fp = str(getattr(model, "fingerprint", "x"))[:12]
    path = CACHE_DIR / f"emb_{fp}_{n}_{seed}_{n_queries}.npz"
    if query_kind == "image":
        # Image -> image queries: held-out images (another seed), no labels. The gallery part is shared
        # with the text-query cache file when it exists.
        qpath = CACHE_DIR / f"embq_img_{fp}_{n_queries}_{seed + 1}.npz"
        existing = sorted(CACHE_DIR.glob(f"emb_{fp}_{n}_{seed}_*.npz")) if cache else []
        base = (  # the gallery is the same whatever text queries were drawn with it
            dict(np.load(existing[0], allow_pickle=False))
            if existing
            else embed_gallery(model, n, seed=seed, n_queries=n_queries, cache=cache, chunk=chunk)
        )
        if cache and qpath.exists():
            q = dict(np.load(qpath, allow_pickle=False))
        else:
            recs = synthetic.generate(n_queries, seed=seed + 1)
            e = model.embed_images([r.image for r in recs], batch_size=256)
            q = {"q_low": np.asarray(e.low, np.float32), "q_high": np.asarray(e.high, np.float32)}
            if cache:
                CACHE_DIR.mkdir(parents=True, exist_ok=True)
                np.savez(qpath, **q)
        return {**{k: v for k, v in base.items() if k not in ("q_low", "q_high", "q_label")}, **q}
    if cache and path.exists():
        return dict(np.load(path, allow_pickle=False))
    rng = np.random.default_rng(seed)
    qidx = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    lows, highs, groups, qcaps = [], [], [], {}
    qset = set(int(i) for i in qidx)
    t0 = time.perf_counter()
    it = synthetic.generate_iter(n, seed=seed)
    for start in range(0, n, chunk):
        recs = [next(it) for _ in range(min(chunk, n - start))]
        emb = model.embed_images([r.image for r in recs], batch_size=256)
        lows.append(np.asarray(emb.low, np.float32))
        highs.append(np.asarray(emb.high, np.float32))
        groups += [r.group for r in recs]
        qcaps.update({start + j: r.captions[0] for j, r in enumerate(recs) if start + j in qset})
        done = start + len(recs)
        log(f"embedded {done}/{n} images ({done / (time.perf_counter() - t0):.0f}/s)")
    caps = [qcaps[int(i)] for i in qidx]
    qemb = model.embed_texts(caps, batch_size=256)
    _, ginv = np.unique(np.asarray(groups), return_inverse=True)
    out = {
        "low": np.concatenate(lows),
        "high": np.concatenate(highs),
        "q_low": np.asarray(qemb.low, np.float32),
        "q_high": np.asarray(qemb.high, np.float32),
        "q_label": qidx.astype(np.int64),
        "group": ginv.astype(np.int64),
    }
    if cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def parse_sizes(values: Iterable[str] | None, default: Sequence[int]) -> list[int]:
    """``["10k", "1M", "2000"]`` -> ``[10000, 1000000, 2000]`` (commas separate sizes too)."""
    if not values:
        return list(default)
    parts = [p.strip().lower() for v in values for p in str(v).split(",") if p.strip()]
    mult = {"k": 1000, "m": 1_000_000}
    return [int(float(p[:-1]) * mult[p[-1]]) if p[-1] in mult else int(float(p)) for p in parts]
