"""Shared benchmark plumbing: machine info, timers, interleaving, JSON, the benchmark model, caches.

Everything measured here is wall-clock time on a shared machine, so every benchmark
* interleaves its contenders (query by query or in alternating rounds) so noise hits all of them,
* reports ratios computed from the same run, and
* records the machine, the load average and the library versions next to the numbers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Resident set size of this process (MiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


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
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": _torch_threads(),
        "versions": {
            m: _version(m) for m in ("pymilvus", "milvus-lite", "faiss-cpu", "numpy", "torch", "ray", "hivlp-milvus")
        },
        "git": git_rev(),
    }


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(sys.modules["torch"].get_num_threads())


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


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
        "date": now_iso(),
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


def train_tiny_model(
    out_dir: Path,
    *,
    seconds: float = 180.0,
    n_train: int = 10000,
    seed: int = 0,
    batch_size: int = 128,
    config: str = "tiny",
    init_dir: Path | None = None,
) -> Path:
    """Train the tiny HiVLP in this process for a fixed time budget and save it to ``out_dir``.

    The same recipe as ``training/configs/quickstart.yaml`` (AdamW 3e-4, 50-step warm-up, clip
    1.0, the default HiVLP loss) but a single-process loop, so benchmarks need neither Ray nor the
    quickstart. The benchmark only needs embeddings whose low/high relation is that of a trained
    model, not the best model.
    """
    import torch

    from hivlp_milvus.data import synthetic
    from hivlp_milvus.model import create_model
    from hivlp_milvus.model.loss import HiVLPLoss, LossConfig

    torch.manual_seed(seed)
    records = synthetic.generate(n_train, seed=seed + 1000)
    prev_steps = 0
    if init_dir is not None and (Path(init_dir) / "config.json").exists():  # continue a previous run
        from hivlp_milvus.model import HiVLP

        model = HiVLP.from_pretrained(init_dir)
        try:
            prev_steps = int(json.loads((Path(init_dir) / "bench_train.json").read_text())["steps"])
        except (OSError, KeyError, ValueError):
            prev_steps = 0
    else:
        model = create_model(config, texts=[c for r in records for c in r.captions], seed=seed)
    model.train()
    pixels = model.preprocess_images([r.image for r in records])
    group_names = sorted({r.group for r in records})
    gid = {g: i for i, g in enumerate(group_names)}
    groups = torch.tensor([gid[r.group] for r in records], dtype=torch.long)
    loss_fn = HiVLPLoss(LossConfig(gather=False))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    step = prev_steps
    while time.perf_counter() - t0 < seconds:
        idx = rng.choice(n_train, size=batch_size, replace=False)
        caps = [records[i].captions[rng.integers(len(records[i].captions))] for i in idx]
        tok = model.tokenize(caps)
        for g in opt.param_groups:
            g["lr"] = 3e-4 * min(1.0, (step + 1) / 50)
        out = model(pixels[idx], tok["input_ids"], tok["attention_mask"])
        loss = loss_fn(out, groups[idx]).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"train step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / "bench_train.json").write_text(
        json.dumps(
            {
                "steps": step,
                "seconds": time.perf_counter()
                - t0
                + (
                    json.loads((Path(init_dir) / "bench_train.json").read_text()).get("seconds", 0) if prev_steps else 0
                ),
                "batch_size": batch_size,
                "n_train": n_train,
            }
        )
    )
    return out_dir


def obtain_model(model_dir: str | Path | None = None, *, train_seconds: float = 180.0) -> tuple[Any, dict[str, Any]]:
    """The model the benchmark embeds with: ``--model DIR`` if given, else the cached trained tiny model.

    Returns ``(model, info)``; info says where it came from.
    """
    from hivlp_milvus.model import HiVLP

    if model_dir:
        return HiVLP.from_pretrained(model_dir), {"source": "given", "path": str(model_dir)}
    cached = CACHE_DIR / "model"
    if not (cached / "config.json").exists():
        log(f"training the tiny model in-process for {train_seconds:.0f}s -> {cached}")
        train_tiny_model(cached, seconds=train_seconds)
    info = {"source": "benchmarks/common.py:train_tiny_model (cached)", "path": str(cached)}
    with contextlib.suppress(OSError):
        info.update(json.loads((cached / "bench_train.json").read_text()))
    return HiVLP.from_pretrained(cached), info


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
        if existing:  # the gallery is the same whatever text queries were drawn with it
            z = np.load(existing[0], allow_pickle=False)
            base = {k: z[k] for k in z.files}
        else:
            base = embed_gallery(model, n, seed=seed, n_queries=n_queries, cache=cache, chunk=chunk)
        if cache and qpath.exists():
            z = np.load(qpath, allow_pickle=False)
            q = {k: z[k] for k in z.files}
        else:
            recs = synthetic_generate(n_queries, seed + 1)
            e = model.embed_images([r.image for r in recs], batch_size=256)
            q = {"q_low": np.asarray(e.low, np.float32), "q_high": np.asarray(e.high, np.float32)}
            if cache:
                CACHE_DIR.mkdir(parents=True, exist_ok=True)
                np.savez(qpath, **q)
        out = {k: v for k, v in base.items() if k not in ("q_low", "q_high", "q_label")}
        out.update(q)
        return out
    if cache and path.exists():
        z = np.load(path, allow_pickle=False)
        return {k: z[k] for k in z.files}
    rng = np.random.default_rng(seed)
    qidx = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    lows, highs, groups, qcaps = [], [], [], {}
    qset = set(int(i) for i in qidx)
    done = 0
    t0 = time.perf_counter()
    it = synthetic.generate_iter(n, seed=seed)
    for start in range(0, n, chunk):
        recs = [next(it) for _ in range(min(chunk, n - start))]
        emb = model.embed_images([r.image for r in recs], batch_size=256)
        lows.append(np.asarray(emb.low, np.float32))
        highs.append(np.asarray(emb.high, np.float32))
        for j, r in enumerate(recs):
            groups.append(r.group)
            if start + j in qset:
                qcaps[start + j] = r.captions[0]
        done += len(recs)
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


def synthetic_generate(n: int, seed: int) -> list[Any]:
    from hivlp_milvus.data import synthetic

    return synthetic.generate(n, seed=seed)


def parse_sizes(values: Iterable[str] | None, default: Sequence[int]) -> list[int]:
    """``["10k", "1M", "2000"]`` -> ``[10000, 1000000, 2000]``."""
    if not values:
        return list(default)
    out = []
    for v in values:
        for part in str(v).split(","):
            p = part.strip().lower()
            if not p:
                continue
            mult = 1
            if p.endswith("k"):
                mult, p = 1000, p[:-1]
            elif p.endswith("m"):
                mult, p = 1_000_000, p[:-1]
            out.append(int(float(p) * mult))
    return out
