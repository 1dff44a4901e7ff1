"""``python -m training --config CONFIG [key.sub=value ...]``: train HiVLP with Ray Train.

The same arguments and code as ``hivlp-milvus train``.
"""

from __future__ import annotations

import argparse
import sys

from hivlp_milvus.errors import HiVLPError


def build_parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    """The argument parser shared by ``python -m training`` and ``hivlp-milvus train``."""
    parser = argparse.ArgumentParser(prog=prog, description="Train HiVLP with Ray Train.")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for configuration and data errors)."""
    args = build_parser().parse_args(argv)
    from training.trainer import cli

    try:
        return cli(args.config, list(args.overrides), dry_run=args.dry_run)
    except HiVLPError as exc:
        print(f"python -m training: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
