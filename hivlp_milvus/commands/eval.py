"""``hivlp-milvus eval``: retrieval metrics of a checkpoint on a data set (low, high, funnel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hivlp_milvus.commands.common import add_device_argument, add_model_argument, checkpoint_dir
from hivlp_milvus.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="measure image-text retrieval (R@K, AR) at the low, high and coarse-to-fine level",
        description="Embed a data set with a HiVLP checkpoint and print low-only, high-only and "
        "hierarchical (shortlist coarse-K by the low vector, re-rank by the high one) retrieval metrics.",
    )
    add_model_argument(parser)
    add_device_argument(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="data: a synthetic root or split dir, Karpathy .json, .csv/.jsonl/.parquet, HF save_to_disk dir",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split to evaluate (default: 'test' when the data has split directories)",
    )
    parser.add_argument("--image-root", type=Path, default=None, help="image directory of a Karpathy JSON")
    parser.add_argument("--coarse-k", type=int, nargs="+", default=[10, 50, 100], help="funnel shortlist sizes")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], dest="ks", help="R@K cut-offs")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries scored at once (memory bound)")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="also write the table here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and data, evaluate, print the table (and write JSON when asked)."""
    if min(args.coarse_k) < 1 or min(args.ks) < 1 or (args.limit is not None and args.limit < 1):
        raise ConfigError("--coarse-k, --k and --limit must be positive integers")
    from hivlp_milvus.data import load_source
    from hivlp_milvus.eval import evaluate

    model = checkpoint_dir(args.model)  # evaluate() loads it on args.device
    # A directory of split sub-directories (what write_splits makes) is evaluated on its test split.
    data = Path(args.data)
    nested = (data / "test" / "manifest.jsonl").is_file() and not (data / "manifest.jsonl").exists()
    split = "test" if args.split is None and nested else args.split
    source = load_source(args.data, split=split, image_root=args.image_root, limit=args.limit)
    table = evaluate(
        model,
        source,
        coarse_ks=args.coarse_k,
        ks=args.ks,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        device=args.device,
    )
    table.meta.update({"model": str(args.model), "data": str(args.data), "split": split})
    print(f"{source.description}: {source.report}")
    print(table.format())
    if args.json_out is not None:
        print(f"wrote {table.save_json(args.json_out)}")
    return 0
