"""One module per ``hivlp-milvus`` subcommand.

Each module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=run`` (``run(args) -> int``). :mod:`hivlp_milvus.cli` discovers them, so adding a command
never touches the others.
"""
