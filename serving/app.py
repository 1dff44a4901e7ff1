"""The Serve application builder: ``serve run serving:build_app key=value ...`` and ``serving:app``.

The graph is ``Ingress -> (TextEncoder, ImageEncoder, Searcher[, FusionScorer])``; the
FusionScorer (the third search stage) is built only when the checkpoint has a fusion block. Every argument of
:class:`AppArgs` is set by exactly one rule, the first that applies:

1. a builder arg: ``key=value`` on the ``serve run`` command line, or ``args:`` of a Serve config
   file (``serving/config.yaml``, the RayService's ``serveConfigV2``);
2. the environment variable ``HIVLP_<KEY>`` (``HIVLP_COLLECTION``, ``HIVLP_MAX_BATCH_SIZE``, ...);
3. the default below (the quickstart's layout relative to the current directory)::

    checkpoint            HIVLP_CHECKPOINT      hivlp_work/model
    milvus_uri            HIVLP_MILVUS_URI      hivlp_work/hivlp.db      (Milvus Lite)
    milvus_token          HIVLP_MILVUS_TOKEN    (none)
    milvus_db_name        HIVLP_MILVUS_DB_NAME  (none: the default database)
    milvus_secure, milvus_server_pem_path, milvus_server_name, milvus_ca_pem_path,
    milvus_client_pem_path, milvus_client_key_path   HIVLP_MILVUS_...   (none: TLS as the URI says)
    collection            HIVLP_COLLECTION      quickstart
    api_key               HIVLP_API_KEY         (none: no authentication)

So values that differ between deployments (paths, the collection, secrets) belong in the
environment, and ``serving/config.yaml`` leaves them out: an arg there would hide the variable.

The ``milvus_*`` args become one :class:`~hivlp_milvus.connection.ConnectionOptions`
(:attr:`ResolvedArgs.connection`) that the Searcher connects with; the ingest route writes
through the Searcher, so it uses the same token and TLS files.

Relative paths (the checkpoint, a Lite ``.db``, the certificate and key files) are made absolute
when the app is built, because Ray replicas do not necessarily run in the directory ``serve run``
was started from. Nothing is opened here: a missing checkpoint or collection fails when the
replicas start, with a message saying what to run.
"""

# No `from __future__ import annotations` here: Serve reads the builder's parameter annotation
# at runtime to turn `key=value` args into AppArgs, and a string annotation would defeat that.

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from hivlp_milvus.connection import ConnectionOptions, is_server_uri, redact_uri
from hivlp_milvus.content import ContentOptions
from hivlp_milvus.errors import ConfigError
from serving.encoders import MAX_IMAGE_PIXELS, ImageEncoder, TextEncoder
from serving.fusion import FusionScorer
from serving.ingress import Ingress, IngressSettings
from serving.searcher import Searcher

logger = logging.getLogger("ray.serve")

ENV_PREFIX = "HIVLP_"


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run serving:build_app checkpoint=DIR ...``).

    An arg not given falls back to its ``HIVLP_<NAME>`` environment variable, then to the default
    (see the module docstring). Unknown args are an error, so a typo does not go unnoticed.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field("hivlp_work/model", min_length=1, description="HiVLP checkpoint directory")
    milvus_uri: str = Field(
        "hivlp_work/hivlp.db", min_length=1, description="Milvus Lite .db path or http(s):// server URI"
    )
    milvus_token: str | None = Field(None, description="Milvus server token (user:password or API key)")
    milvus_db_name: str | None = Field(None, description="Milvus database (servers; none: the default database)")
    milvus_secure: bool | None = Field(None, description="TLS to the Milvus server (implied by https://)")
    milvus_server_pem_path: str | None = Field(None, description="the Milvus server's certificate (one-way TLS)")
    milvus_server_name: str | None = Field(None, description="the name the server's certificate was issued for")
    milvus_ca_pem_path: str | None = Field(None, description="the CA of the certificates (two-way TLS)")
    milvus_client_pem_path: str | None = Field(None, description="this app's certificate (two-way TLS)")
    milvus_client_key_path: str | None = Field(None, description="this app's private key (two-way TLS)")
    collection: str = Field("quickstart", min_length=1, description="collection name")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer <key>' on all routes but /healthz")
    max_batch_size: int = Field(32, ge=1, le=1024, description="encoder @serve.batch max_batch_size")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0, description="encoder @serve.batch wait for a full batch")
    num_gpus: float | None = Field(
        None,
        ge=0.0,
        description="GPUs per encoder replica; None: the cluster's GPUs split between both encoders' replicas "
        "at their autoscaling ceiling (at most 1 each; 0 without GPUs)",
    )
    max_encoder_replicas: int = Field(2, ge=1, le=64, description="autoscaling ceiling of each encoder")
    min_encoder_replicas: int = Field(
        1, ge=1, le=64, description="autoscaling floor of each encoder (at most max_encoder_replicas)"
    )
    searcher_replicas: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Searcher replicas; forced to 1 for Milvus Lite (.db is single-process)",
    )
    search_batching: bool = Field(True, description="run concurrent compatible searches as one multi-query search")
    ingress_replicas: int = Field(
        1,
        ge=1,
        le=64,
        description="Ingress (HTTP) replicas; with 2 or more, a lost ingress leaves the others answering at once",
    )
    backend_timeout_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="seconds the ingress waits for an encoder, the Searcher or the FusionScorer before a 504",
    )
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="413 above")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=64 * 64, le=400_000_000, description="413 above")
    fusion_max_batch_size: int = Field(
        8, ge=1, le=256, description="FusionScorer @serve.batch max_batch_size (searches, each with its M pairs)"
    )
    fusion_num_gpus: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="GPUs of the FusionScorer replica; 0 (default): the CPU, so it never competes with the "
        "encoders' GPU shares for a place",
    )
    allow_http: bool = Field(
        False, description="the fusion stage may fetch http(s):// image references (server-side requests: opt in)"
    )


def env_var(name: str) -> str:
    """The environment variable of an :class:`AppArgs` field (``collection`` -> ``HIVLP_COLLECTION``)."""
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True)
class ResolvedArgs:
    """AppArgs with the environment and defaults applied and local paths made absolute."""

    args: AppArgs
    checkpoint: str
    milvus_uri: str
    milvus_token: str | None
    collection: str
    api_key: str | None
    lite: bool
    workdir: str
    connection: ConnectionOptions


def resolve_args(args: AppArgs, environ: Mapping[str, str] | None = None, cwd: str | None = None) -> ResolvedArgs:
    """Apply the precedence: builder arg, then ``HIVLP_<NAME>`` environment variable, then default.

    Args:
        args: the builder args; only the ones given (``args.model_fields_set``) count as given.
        environ: the environment (default ``os.environ``); empty variables count as unset.
        cwd: the directory relative paths are resolved against (default: the current one).

    Returns:
        The resolved values.

    Raises:
        pydantic.ValidationError: an environment variable holds an invalid value.
        ConfigError: ``min_encoder_replicas`` is above ``max_encoder_replicas``.
    """
    env = os.environ if environ is None else environ
    from_env = {name: env[env_var(name)] for name in AppArgs.model_fields if env.get(env_var(name))}
    given = {name: value for name, value in args.model_dump(exclude_unset=True).items() if value not in (None, "")}
    merged = AppArgs.model_validate({**from_env, **given})
    # Checked on the merged values, not per source: a floor given as an arg may rest on a ceiling
    # from the environment.
    if merged.min_encoder_replicas > merged.max_encoder_replicas:
        raise ConfigError(
            f"min_encoder_replicas ({merged.min_encoder_replicas}) is above max_encoder_replicas "
            f"({merged.max_encoder_replicas}); raise max_encoder_replicas or lower min_encoder_replicas"
        )
    cwd = os.path.abspath(cwd or os.getcwd())
    lite = not is_server_uri(merged.milvus_uri)

    def local(path: str | None) -> str | None:
        return None if path is None else _absolute(path, cwd)

    milvus_uri = _absolute(merged.milvus_uri, cwd) if lite else merged.milvus_uri
    connection = ConnectionOptions(
        uri=milvus_uri,
        token=merged.milvus_token or None,
        db_name=merged.milvus_db_name or "",
        secure=merged.milvus_secure,
        server_pem_path=local(merged.milvus_server_pem_path),
        server_name=merged.milvus_server_name or None,
        ca_pem_path=local(merged.milvus_ca_pem_path),
        client_pem_path=local(merged.milvus_client_pem_path),
        client_key_path=local(merged.milvus_client_key_path),
    )
    return ResolvedArgs(
        args=merged,
        checkpoint=_absolute(merged.checkpoint, cwd),
        milvus_uri=milvus_uri,
        milvus_token=merged.milvus_token,
        collection=merged.collection,
        api_key=merged.api_key,
        lite=lite,
        workdir=cwd,
        connection=connection,
    )


def _absolute(path: str, cwd: str) -> str:
    # join keeps absolute paths as they are
    return os.path.join(cwd, os.path.expanduser(path))


def gpus_per_encoder_replica(gpus: float, max_encoder_replicas: int) -> float:
    """Each encoder replica's share when both encoders may scale to ``max_encoder_replicas``.

    A whole GPU per replica would leave the second encoder unscheduled on a one-GPU machine; the
    share lets every replica up to the autoscaling ceiling fit, and never exceeds one GPU.
    Ray takes GPU fractions to four decimals, so the share is rounded down to that.
    """
    if gpus <= 0:
        return 0.0
    return min(1.0, math.floor(gpus / (2 * max_encoder_replicas) * 10_000) / 10_000)


def _gpus_available() -> float:
    """GPUs in the Ray cluster when connected, else on this machine (0 when unsure).

    Cheap on purpose (no torch import): the package builds ``app`` at import, in every replica.
    """
    import sys

    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0))
        if "torch" in sys.modules:
            return float(sys.modules["torch"].cuda.device_count())
        gpus = "/proc/driver/nvidia/gpus"
        return float(len(os.listdir(gpus))) if os.path.isdir(gpus) else 0.0
    except Exception:  # detection is best effort; num_gpus=... overrides it
        return 0.0


def build_app(args: AppArgs) -> serve.Application:
    """Build the HiVLP search application (the ``serving:build_app`` builder).

    Args:
        args: the builder args (a dict from ``serve run``/YAML is validated into :class:`AppArgs`).

    Returns:
        The bound application: ``Ingress`` over ``TextEncoder``, ``ImageEncoder``, ``Searcher`` and,
        for a checkpoint with a fusion block, ``FusionScorer``.

    Raises:
        pydantic.ValidationError: an unknown arg or an out-of-range value (in an arg or a variable).
        ConfigError: ``min_encoder_replicas`` above ``max_encoder_replicas``.
    """
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(dict(args or {}))
    resolved = resolve_args(args)
    opts = resolved.args
    gpus = opts.num_gpus
    if gpus is None:
        gpus = gpus_per_encoder_replica(_gpus_available(), opts.max_encoder_replicas)

    actor: dict[str, Any] = {"num_cpus": 0.5}
    if gpus > 0:
        actor["num_gpus"] = gpus
    encoder_options = {
        "ray_actor_options": actor,
        # Room for two full batches per replica: one running, one filling.
        "max_ongoing_requests": max(64, 2 * opts.max_batch_size),
        "autoscaling_config": {
            "min_replicas": opts.min_encoder_replicas,
            "max_replicas": opts.max_encoder_replicas,
            "target_ongoing_requests": max(2, opts.max_batch_size // 2),
        },
    }
    encoder_args = (resolved.checkpoint, opts.max_batch_size, opts.batch_wait_timeout_s, gpus > 0)
    text = TextEncoder.options(**encoder_options).bind(*encoder_args)
    image = ImageEncoder.options(**encoder_options).bind(*encoder_args)

    replicas = opts.searcher_replicas or (1 if resolved.lite else 2)
    if resolved.lite and replicas != 1:
        logger.warning(
            "Milvus Lite (%s) is single-process: running 1 Searcher replica, not %d",
            redact_uri(resolved.milvus_uri),
            replicas,
        )
        replicas = 1
    # One ConnectionOptions (URI, token, database, TLS files) for the Searcher, which also serves
    # the ingest route: every Milvus call of the app goes through it.
    searcher = Searcher.options(num_replicas=replicas).bind(
        resolved.checkpoint,
        resolved.milvus_uri,
        resolved.collection,
        connection=resolved.connection,
        batch_queries=opts.search_batching,
    )
    settings = IngressSettings(
        collection=resolved.collection,
        api_key=resolved.api_key,
        max_image_bytes=opts.max_image_bytes,
        max_image_pixels=opts.max_image_pixels,
        # base64 costs 4/3 of the bytes; 1 MiB for JSON, other fields and ingest captions.
        max_body_bytes=opts.max_image_bytes * 4 // 3 + 1024 * 1024,
        media_root=resolved.workdir,
        backend_timeout_s=opts.backend_timeout_s,
    )
    fusion = None
    if checkpoint_has_fusion(resolved.checkpoint):
        # Built only for a checkpoint with a fusion block; without one, fusion_limit is a 422.
        fusion_actor: dict[str, Any] = {"num_cpus": 0.25}
        if opts.fusion_num_gpus > 0:
            fusion_actor["num_gpus"] = opts.fusion_num_gpus
        fusion = FusionScorer.options(ray_actor_options=fusion_actor).bind(
            resolved.checkpoint,
            opts.fusion_max_batch_size,
            opts.batch_wait_timeout_s,
            ContentOptions(allow_http=opts.allow_http),
            resolved.workdir,
            opts.fusion_num_gpus > 0,
        )
    return Ingress.options(num_replicas=opts.ingress_replicas).bind(text, image, searcher, settings, fusion)


def checkpoint_has_fusion(checkpoint: str) -> bool:
    """Whether the checkpoint's ``config.json`` has a fusion block (``False`` when it cannot be read).

    Only the JSON is read (nothing is loaded at build time); a missing or broken checkpoint fails
    when the replicas start, with the encoders' message.
    """
    try:
        with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("fusion") is not None
