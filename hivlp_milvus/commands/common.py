"""Arguments several commands share: where the model and the collection are, how to reach Milvus, the device.

Defaults follow the quickstart's outputs, so after ``make demo`` (``hivlp-milvus quickstart``) the
next commands need no arguments when run from the same directory. One precedence everywhere, the
same as ``serving:app``: a command-line flag, else an environment variable, else the quickstart's
layout relative to the current directory::

    model        --model        HIVLP_CHECKPOINT     hivlp_work/model
    Milvus       --uri          HIVLP_MILVUS_URI     hivlp_work/hivlp.db   (Milvus Lite)
    token        --token        HIVLP_MILVUS_TOKEN   (none)
    collection   --collection   HIVLP_COLLECTION     quickstart

This module is not a command (it has no ``register``); :mod:`hivlp_milvus.cli` skips it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hivlp_milvus.device import DEVICE_CHOICES  # light: torch is imported only when a device is resolved
from hivlp_milvus.errors import CheckpointError, CollectionNotFoundError

#: What ``hivlp-milvus quickstart`` writes by default (``--work-dir``), and the collection it fills.
QUICKSTART_WORK_DIR = "hivlp_work"
QUICKSTART_COLLECTION = "quickstart"

DEFAULTS = {
    "checkpoint": f"{QUICKSTART_WORK_DIR}/model",
    "milvus_uri": f"{QUICKSTART_WORK_DIR}/hivlp.db",
    "collection": QUICKSTART_COLLECTION,
}
ENVIRONMENT = {
    "checkpoint": "HIVLP_CHECKPOINT",
    "milvus_uri": "HIVLP_MILVUS_URI",
    "milvus_token": "HIVLP_MILVUS_TOKEN",
    "collection": "HIVLP_COLLECTION",
}


def default(name: str) -> str | None:
    """The default of setting ``name``: its environment variable when set and non-empty, else the quickstart's."""
    value = os.environ.get(ENVIRONMENT[name], "")
    return value or DEFAULTS.get(name)


def _add_with_default(parser: Any, flag: str, name: str, text: str, note: str = "") -> None:
    """``flag`` defaulting to setting ``name`` (:func:`default`), its help saying where the default comes from."""
    parser.add_argument(
        flag,
        default=default(name),
        help=f"{text}; default ${ENVIRONMENT[name]}, else {DEFAULTS[name]}{note}. Now: %(default)s",
    )


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model DIR`` with the quickstart's checkpoint as the default."""
    _add_with_default(
        parser, "--model", "checkpoint", "checkpoint directory (save_pretrained)", " (what `make demo` writes)"
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (see :func:`hivlp_milvus.device.resolve_device`)."""
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the model runs: auto = CUDA when usable, else CPU (default); cuda fails with the reason "
        "when it cannot be used. On CUDA the encoders run in mixed precision (bf16, fp16 before Ampere)",
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The Milvus location, the collection, credentials and TLS files (the fields of ``ConnectionOptions``)."""
    group = parser.add_argument_group("Milvus connection")
    _add_with_default(group, "--uri", "milvus_uri", "Milvus Lite path or server URL (http(s)://host:19530)")
    _add_with_default(group, "--collection", "collection", "collection name")
    group.add_argument(
        "--token",
        default=default("milvus_token"),
        help=f"server token (user:password or API key); default ${ENVIRONMENT['milvus_token']} "
        "(the environment keeps it out of the process list)",
    )
    group.add_argument("--db-name", default="", help="Milvus database on a server (default: the default database)")
    group.add_argument("--secure", action="store_true", default=None, help="TLS to the server")
    for flag, text in (
        ("--server-pem-path", "TLS: the server's certificate (one-way TLS)"),
        ("--server-name", "TLS: the name the server's certificate is for"),
        ("--ca-pem-path", "mutual TLS: the CA certificate"),
        ("--client-pem-path", "mutual TLS: this client's certificate"),
        ("--client-key-path", "mutual TLS: this client's key"),
    ):
        group.add_argument(flag, default=None, help=text)


def connection_options(args: argparse.Namespace) -> Any:
    """A ``ConnectionOptions`` from the arguments :func:`add_connection_arguments` added."""
    from hivlp_milvus.connection import TLS_OPTIONS, ConnectionOptions

    tls = {name: getattr(args, name) for name in TLS_OPTIONS}  # the flags carry ConnectionOptions' names
    return ConnectionOptions(uri=args.uri, token=args.token, db_name=args.db_name, **tls)


_RUN_THE_DEMO = "run `make demo` (or `hivlp-milvus quickstart`) in this directory first"


def checkpoint_dir(directory: str) -> str:
    """``directory`` if it exists, else an error that says how to get a model."""
    if not Path(directory).is_dir():
        raise CheckpointError(
            f"no checkpoint directory at {directory}: {_RUN_THE_DEMO}, or pass --model DIR "
            f"(or set {ENVIRONMENT['checkpoint']})"
        )
    return directory


def load_model(directory: str, device: str) -> Any:
    """``HiVLP.from_pretrained(directory, device)``, saying how to get a model when there is none."""
    from hivlp_milvus.model import HiVLP

    return HiVLP.from_pretrained(checkpoint_dir(directory), device=device)


def open_collection(args: argparse.Namespace, model: Any) -> Any:
    """Open ``args.collection`` at ``args.uri`` (the connection arguments) for searching with ``model``."""
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.connection import is_server_uri

    if not is_server_uri(args.uri) and not Path(args.uri).exists():
        # Connecting would create an empty database here and then report a missing collection.
        raise CollectionNotFoundError(
            f"no Milvus Lite database at {args.uri}: {_RUN_THE_DEMO}, or pass --uri (a .db path or "
            f"http(s)://host:19530; or set {ENVIRONMENT['milvus_uri']})"
        )
    return HierarchicalCollection.open(args.collection, client=connection_options(args).connect(), model=model)
