"""``hivlp-milvus train``: train HiVLP with Ray Train (the same code as ``python -m training``).

The arguments are defined once, in ``training/__main__.py``; this command forwards everything
after ``train`` to that parser when it runs, so parsing ``hivlp-milvus --help`` (or any other
subcommand) never imports ``training`` (hivlp_milvus does not depend on the training room).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand (its options are parsed by ``training.__main__`` in ``run``)."""
    parser = subparsers.add_parser(
        "train",
        add_help=False,  # `train --help` is forwarded, so it shows the training parser's options
        help="train a HiVLP model with Ray Train (CPU, one GPU node or a multi-node GPU cluster); "
        "`hivlp-milvus train --help` lists its options",
        description="Train HiVLP from a YAML config plus key.sub=value overrides. See docs/training.md.",
    )
    # forward_arguments: hivlp_milvus.cli hands the arguments it does not know to run, as args.forwarded.
    parser.set_defaults(func=run, forward_arguments=True, forwarded=[])


def run(args: argparse.Namespace) -> int:
    """Parse the forwarded arguments with the training parser and run the training."""
    # Imported here: `hivlp-milvus --help` and the other subcommands must not pay for training/Ray.
    from training.__main__ import build_parser
    from training.trainer import cli

    options = build_parser(prog="hivlp-milvus train").parse_args(list(args.forwarded))
    return cli(options.config, list(options.overrides), dry_run=options.dry_run)
