"""``hivlp-milvus ingest``: encode a data set with a checkpoint and upsert it into a collection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hivlp_milvus.commands import common
from hivlp_milvus.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ingest`` subcommand."""
    parser = subparsers.add_parser(
        "ingest",
        help="encode images + captions and upsert them into a HiVLP collection",
        description="Read a data set, encode every image and caption with a HiVLP checkpoint (or take "
        "precomputed vectors), and upsert one row per image / caption into a Milvus collection. "
        "Re-running is idempotent; --skip-existing resumes an interrupted run without re-encoding.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="data: a manifest dir, Karpathy .json, .csv/.jsonl/.parquet, or an HF save_to_disk dir",
    )
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (save_pretrained)")
    common.add_connection_arguments(parser)
    parser.add_argument(
        "--profile", default="auto", help="index profile of a collection this run creates: auto, lite, cpu, gpu"
    )
    common.add_device_argument(parser)
    parser.add_argument(
        "--image-root", type=Path, default=None, help="resolve relative image paths of SOURCE against this directory"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="Ray Data encoder actors at most (--distributed)")
    parser.add_argument("--split", default=None, help="split to read when the data has several")
    parser.add_argument("--limit", type=int, default=None, help="ingest the first N records only")
    parser.add_argument("--batch-size", type=int, default=64, help="images / captions per encoder batch")
    parser.add_argument(
        "--write-batch-rows", type=int, default=None, help="rows per upsert (default: sized under 64 MB)"
    )
    parser.add_argument(
        "--skip-existing", action="store_true", help="skip rows already in the collection (fast resume)"
    )
    parser.add_argument(
        "--distributed", action="store_true", help="encode with a Ray Data actor pool (ray.init() if needed)"
    )
    parser.add_argument("--no-create", action="store_true", help="fail if the collection does not exist")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="also write the report here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Ingest and print the report (failed records are listed in it; the exit code stays 0)."""
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be a positive integer")
    from hivlp_milvus.data import load_source
    from hivlp_milvus.ingest import IngestOptions, ingest

    connection = common.connection_options(args)
    sizes = {"batch_size": args.batch_size, "write_batch_rows": args.write_batch_rows, "num_workers": args.num_workers}
    # Checked before the source is read: a bad --batch-size fails at once, not after a long read.
    IngestOptions.build(**sizes)
    source = load_source(args.source, split=args.split, limit=args.limit, image_root=args.image_root)
    report = ingest(
        source,
        connection=connection,
        collection_name=args.collection,
        model=args.model,
        **sizes,
        skip_existing=args.skip_existing,
        distributed=args.distributed,
        progress=not args.no_progress,
        create=not args.no_create,
        profile=args.profile,
        device=args.device,
    )
    print(report)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0
