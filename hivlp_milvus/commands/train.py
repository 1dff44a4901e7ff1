"""``hivlp-milvus train``: train HiVLP with Ray Train (the same code as ``python -m training``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a HiVLP model with Ray Train (CPU, one GPU node or a multi-node GPU cluster)",
        description="Train HiVLP from a YAML config plus key.sub=value overrides. Re-running with the same "
        "run.name and run.storage_path resumes from the newest checkpoint. See docs/training.md.",
    )
    parser.add_argument(
        "--config",
        default="quickstart",
        help="a YAML file, or a shipped config: quickstart (CPU), flickr30k, coco (GPU). Default: quickstart",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as optim.lr=3e-4 scaling.num_workers=4 run.name=exp2 (values are YAML)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config (after overrides) and exit without training",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the training described by ``args``; configuration errors surface as ``HiVLPError``."""
    # Imported here: `hivlp-milvus --help` and the other subcommands must not pay for Ray.
    from training.trainer import cli

    return cli(args.config, list(args.overrides), dry_run=args.dry_run)
