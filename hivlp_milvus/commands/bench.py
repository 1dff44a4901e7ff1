"""``hivlp-milvus bench``: run the benchmarks (search, ingest, serve, train, quality, load); regenerate BENCHMARKS.md.

The benchmarks live in the top-level benchmarks/ directory of a source checkout (next to
hivlp_milvus/), which is not part of the installed package: clone the repository and run this
from its root (`make bench` does: it creates .venv, installs the project and runs `bench all`).
Elsewhere the command stops with this advice before importing anything.

    hivlp-milvus bench all                     # what `make bench` runs (search to 100k, quality shortened)
    hivlp-milvus bench search --sizes 10k 100k 1M
    hivlp-milvus bench quality                 # low_dim sweep + loss ablation (~8 training runs)
    hivlp-milvus bench quality --data emoji --data-dir DIR [--model DIR]   # the same on the emoji corpus
    hivlp-milvus bench report                  # BENCHMARKS.md from benchmarks/results/*.json
    hivlp-milvus bench search --smoke          # seconds; checks the benchmark works
    hivlp-milvus bench engine --lite25-python .venv-lite25/bin/python   # the same requests on Milvus' C++ engine
    hivlp-milvus bench load --start            # N clients for T s on `serve run` of ./hivlp_work, then stops it
    hivlp-milvus bench load --url http://127.0.0.1:8000 --clients 16 --duration 30
    hivlp-milvus bench load --compare-batching # searcher batching on/off at 1, 8, 32 clients (interleaved)
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from hivlp_milvus.errors import ConfigError

WHAT = ("search", "ingest", "serve", "train", "quality", "engine", "load", "all", "report")

#: ``bench load`` flags passed through to ``benchmarks/load.py`` (flag -> attribute).
LOAD_FLAGS = {
    "--url": "url",
    "--api-key": "api_key",
    "--workdir": "workdir",
    "--clients": "clients",
    "--duration": "duration",
    "--max-requests": "max_requests",
    "--mix": "mix",
    "--repeats": "repeats",
    "--records": "records",
}

#: What ``bench all`` runs of the quality benchmark: one training run instead of eight, so that
#: ``make bench`` stays near its time budget (the full sweep is ``bench quality``). Written to
#: ``quality_quick.json``, so it never replaces a full run's ``quality.json``.
QUALITY_IN_ALL = {"steps": 120, "low_dims": (32,), "ablation": False, "name": "quality_quick"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the benchmarks and regenerate BENCHMARKS.md (needs a source checkout: run from the repo root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        choices=WHAT,
        help="which benchmark ('all' = search, ingest, serve, train, a short quality run, then report)",
    )
    p.add_argument(
        "--sizes",
        nargs="*",
        default=None,
        help="search: gallery sizes (default 10k 100k 1M; 'all': 10k 100k); ingest: rows of the precomputed test (30k)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the benchmark works (no timings worth reading)"
    )
    p.add_argument("--model", default=None, help="HiVLP checkpoint directory (default: train/cached tiny model)")
    p.add_argument(
        "--real-max",
        default="10k",
        help="search: largest gallery of real model embeddings (100k = ~10 min of encoding)",
    )
    p.add_argument("--rebuild", action="store_true", help="search, engine: rebuild the cached databases / collections")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train: optimizer steps per run (default 40); quality: training steps per model (default 240; "
        "--data emoji: 260, the emoji recipe's; 'all' runs quality with 120 steps at low_dim 32 only)",
    )
    p.add_argument(
        "--low-dims",
        type=int,
        nargs="+",
        default=None,
        help="quality: the low_dim sweep (default 4 8 16 32; the loss ablation runs at 32)",
    )
    p.add_argument(
        "--ablation-low-dim",
        type=int,
        default=None,
        help="quality: the low_dim of the loss ablation (default 32; 8 is where low-only starts to trail)",
    )
    p.add_argument(
        "--data",
        choices=("shapes", "emoji"),
        default="shapes",
        help="quality: synthetic shapes (default) or the emoji corpus: per level, low_dim sweep, loss ablation, "
        "3 seeds (benchmarks/emoji_sweep.py, every run trains; with --model, benchmarks/emoji_heads.py: that "
        "model's towers frozen, heads retrained)",
    )
    p.add_argument(
        "--data-dir", default="data/emoji", help="quality --data emoji: the emoji data set (written if absent)"
    )
    p.add_argument("--uri", default=None, help="engine: a running Milvus server to send the requests to")
    p.add_argument("--token", default=None, help="engine: the server's token, if any")
    p.add_argument(
        "--lite25-python",
        default=None,
        help="engine: a Python with milvus-lite==2.5.* installed; its C++ server is started and stopped",
    )
    load = p.add_argument_group("load (benchmarks/load.py; defaults sized for 2 cores)")
    load.add_argument("--url", default=None, help="a running app (default http://127.0.0.1:8000)")
    load.add_argument("--api-key", default=None, help="the app's API key, if it needs one")
    load.add_argument("--start", action="store_true", help="run `serve run` on --workdir/hivlp_work, stop it after")
    load.add_argument("--workdir", default=None, help="--start: the directory holding hivlp_work/ (default .)")
    load.add_argument("--clients", type=int, default=None, help="concurrent clients (default 8)")
    load.add_argument("--duration", type=float, default=None, help="seconds of load per run (default 10)")
    load.add_argument("--max-requests", type=int, default=None, help="requests per run at most (default 5000)")
    load.add_argument(
        "--mix", default=None, help="route weights (default search_text=6,search_image=2,encode=1,ingest=1)"
    )
    load.add_argument("--compare-batching", action="store_true", help="searcher batching on/off, interleaved")
    load.add_argument("--levels", type=int, nargs="+", default=None, help="--compare-batching: clients (1 8 32)")
    load.add_argument("--repeats", type=int, default=None, help="--compare-batching: runs per setting (default 2)")
    load.add_argument("--records", type=int, default=None, help="--compare-batching: synthetic scenes (default 500)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md afterwards")
    p.set_defaults(func=run)


def _benchmarks() -> Any:
    """Import the top-level ``benchmarks`` package (from the repo root or the cwd)."""
    candidates = [Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "benchmarks" / "common.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            try:
                return importlib.import_module("benchmarks")
            except ImportError:
                continue
    raise ConfigError(
        "the benchmarks/ directory was not found: `hivlp-milvus bench` runs the benchmarks of a source checkout; "
        "run it from the repository root (the directory with benchmarks/ and hivlp_milvus/)"
    )


def _serve(args: argparse.Namespace, root: Path) -> int:
    out = root / "results" / ("serve_smoke.json" if args.smoke else "serve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(root / "serve.py"), "--out", str(out)]
    if args.smoke:
        cmd += ["--requests", "32", "--concurrency", "8"]
    # A separate process: the load generator and Ray Serve must not share this interpreter's GIL.
    return subprocess.call(cmd, cwd=str(root.parent))


def load_command(args: argparse.Namespace, script: Path) -> list[str]:
    """The ``benchmarks/load.py`` command line for ``bench load`` (only the flags given are passed)."""
    cmd = [sys.executable, str(script)]
    for flag, attr in LOAD_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            cmd += [flag, str(value)]
    if getattr(args, "start", False):
        cmd.append("--start")
    if getattr(args, "compare_batching", False):
        cmd.append("--compare-batching")
        if args.levels:
            cmd += ["--levels", *map(str, args.levels)]
    if args.smoke:  # seconds: checks the benchmark works
        cmd += ["--duration", "2", "--max-requests", "200"]
        if getattr(args, "compare_batching", False):
            cmd += ["--levels", "1", "4", "--repeats", "1", "--records", "40"]
        cmd += ["--out", str(script.parent / "results" / ("load_smoke.json"))]
    return cmd


def _load(args: argparse.Namespace, root: Path) -> int:
    workdir = Path(args.workdir or ".").resolve()
    if not workdir.is_dir():  # else subprocess dies with a FileNotFoundError traceback about the cwd
        raise ConfigError(
            f"--workdir {args.workdir}: no such directory; give the directory holding hivlp_work/ "
            "(the quickstart's output), or leave --workdir out to use the current one"
        )
    # A separate process: the load generator must not share this interpreter (or its GIL) with anything.
    return subprocess.call(load_command(args, root / "load.py"), cwd=str(workdir))


def run(args: argparse.Namespace) -> int:
    root = Path(_benchmarks().__file__).resolve().parent  # fails early with a clear message outside a checkout
    from benchmarks.common import parse_sizes

    what = args.what
    smoke = bool(args.smoke)
    suffix = "_smoke" if smoke else ""
    rc = 0
    if what in ("search", "all"):
        from benchmarks import search

        # `bench all` (make bench) stops at 100k to stay near a ~20 min budget; the 1M gallery
        # alone takes ~10 min to build and ~15 min to measure here: `bench search --sizes ... 1M`.
        full = [10_000, 100_000] if what == "all" else [10_000, 100_000, 1_000_000]
        sizes = parse_sizes(args.sizes, [500] if smoke else full)
        search.run(
            sizes,
            smoke=smoke,
            model_dir=args.model,
            real_max=parse_sizes([args.real_max], [])[0],
            rebuild=args.rebuild,
            # `all` measures fewer sizes: its own file, so it never replaces a full run's 1M result.
            name=("search_quick" if what == "all" and args.sizes is None else "search") + suffix,
        )
    if what in ("ingest", "all"):
        from benchmarks import ingest

        ingest.run(
            smoke=smoke,
            rows=parse_sizes(args.sizes if what == "ingest" else None, [30_000])[0],
            model_dir=args.model,
            name="ingest" + suffix,
        )
    if what in ("serve", "all"):
        rc = _serve(args, root) or rc
    if what == "load":  # not part of `all`: it needs a running app (--url) or the quickstart (--start)
        rc = _load(args, root) or rc
    if what in ("train", "all"):
        from benchmarks import train

        train.run(smoke=smoke, steps=args.steps or 40, name="train" + suffix)
    # The sweep options given on the command line: each benchmark keeps its own defaults for the rest.
    sweep = {"low_dims": tuple(args.low_dims or ()), "ablation_low_dim": args.ablation_low_dim}
    sweep = {k: v for k, v in sweep.items() if v}
    steps = {"steps": args.steps} if args.steps else {}
    if what == "quality" and args.data == "emoji" and args.model:
        from benchmarks import emoji_heads  # a trained model: its towers frozen, the heads swept (minutes)

        emoji_heads.run(model_dir=args.model, data_dir=args.data_dir, **sweep, name="quality_emoji_heads" + suffix)
    elif what == "quality" and args.data == "emoji":
        from benchmarks import emoji_sweep  # every run trains both towers (~2.5 min a run here in bf16, ~22 runs)

        emoji_sweep.run(data_dir=args.data_dir, **steps, **sweep, name="quality_emoji" + suffix)
    elif what in ("quality", "all"):
        from benchmarks import quality

        if what == "all":
            quality.run(smoke=smoke, **{**QUALITY_IN_ALL, "name": QUALITY_IN_ALL["name"] + suffix})
        else:
            quality.run(smoke=smoke, **steps, **sweep, name="quality" + suffix)
    if what == "engine":  # not part of `all`: it needs a second Milvus (another venv or a server)
        from benchmarks import engine

        engine.run(
            parse_sizes(args.sizes, [2_000] if smoke else [100_000, 1_000_000]),
            uri=args.uri,
            lite25_python=args.lite25_python,
            token=args.token,
            smoke=smoke,
            rebuild=args.rebuild,
            name="engine" + suffix,
        )
    if (
        what in ("report", "engine")
        or (what == "load" and args.compare_batching)
        or (what == "all" and not args.no_report)
    ) and not smoke:
        from benchmarks import report

        path = report.write_report()
        print(f"wrote {path}")
    return rc
