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
    # One definition of the arguments for both entry points (training/__main__.py is argparse only:
    # importing it costs nothing; Ray is imported in run()).
    from training.__main__ import add_arguments

    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the training described by ``args``; configuration errors surface as ``HiVLPError``."""
    # Imported here: `hivlp-milvus --help` and the other subcommands must not pay for Ray.
    from training.trainer import cli

    return cli(args.config, list(args.overrides), dry_run=args.dry_run)
