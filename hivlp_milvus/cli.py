"""The ``hivlp-milvus`` command: quickstart, train, ingest, search, eval, bench.

Subcommands live in :mod:`hivlp_milvus.commands`, one module each; this file only wires them.
Registering a command imports nothing heavy: each command imports its room (torch, Ray,
``training/``, ``benchmarks/``) inside ``run``, so ``hivlp-milvus --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from hivlp_milvus import __version__, commands
from hivlp_milvus.errors import HiVLPError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivlp-milvus",
        description="HiVLP coarse-to-fine image-text retrieval on Milvus (Ray Train, Ray Serve).",
    )
    parser.add_argument("--version", action="version", version=f"hivlp-milvus {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):  # commands/common.py holds shared arguments, not a command
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    # A command that owns its own parser elsewhere (``train``: training/__main__.py) receives the
    # arguments argparse does not know here; every other command rejects them as usual.
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "forward_arguments", False):
        args.forwarded = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except HiVLPError as exc:
        # Our own errors already say what to do: print them without a traceback.
        print(f"hivlp-milvus {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
