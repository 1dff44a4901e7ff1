"""Index profiles (``schemas/profiles.yaml``): which index each vector field gets, and its limits.

A profile names the ANN index of ``vec_low`` (one of several variants) and the exact index of
``vec_high`` (always FLAT), with build/search parameters and the top-k cap of the coarse index.
``resolve_profile`` picks the profile for a given Milvus: Milvus Lite gets ``lite``; a server gets
``gpu`` when it accepts GPU indexes and ``cpu`` otherwise.

A profile also carries its measured search plan (:class:`PlanModel`, per engine): the cost of one
exact search against coarse -> fine, and the shortlist that keeps fidelity as the collection grows.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from hivlp_milvus.errors import ConfigError, MilvusError, MilvusUnavailableError, ProfileError, SearchLimitError

logger = logging.getLogger(__name__)

MILVUS_MAX_TOPK = 16384

# IVF sizing.  nlist ~ 4*sqrt(N) is the usual rule of thumb (FAISS wiki: 4..16*sqrt(N)); the floor
# keeps small collections from ending up with a handful of huge lists, the cap is Milvus' range.
NLIST_MIN = 16
NLIST_MAX = 65536
# An IVF search returns at most the rows held by the lists it probes, and list sizes are uneven;
# nprobe is raised so the probed lists hold on average this many times coarse_limit rows.
_NPROBE_OVERSAMPLE = 4.0
_MIN_POINTS_PER_LIST = 39
_CAGRA_ALIGN = 32  # knowhere rounds CAGRA's itopk_size up to a multiple of 32


def nlist_for(expected_rows: int) -> int:
    """The IVF ``nlist`` for a collection expected to hold ``expected_rows`` rows.

    ``4 * sqrt(N)``, at most ``N / 39`` (k-means wants >= 39 training points per list; FAISS warns
    below that) and clamped to ``[16, 65536]``: e.g. 10k rows -> 256, 20k -> 512, 100k -> 1265,
    1M -> 4000.

    Args:
        expected_rows: how many rows the collection is expected to hold (order of magnitude).

    Returns:
        The number of IVF lists.
    """
    n = max(int(expected_rows), 1)
    nlist = min(round(4.0 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST)
    return int(min(max(nlist, NLIST_MIN), NLIST_MAX))


@dataclass(frozen=True)
class IndexSpec:
    """The index of one vector field.

    Attributes:
        index_type: Milvus index type (``GPU_IVF_FLAT``, ``IVF_FLAT``, ``HNSW``, ``FLAT`` ...).
        build_params: ``params`` of ``IndexParams.add_index`` (``nlist`` may still be ``"auto"``).
        search_params: default ``params`` of a search on this field.
        max_topk: the largest ``limit`` one search on this index accepts.
        mmap: whether the field's data is memory-mapped (servers only).
    """

    index_type: str
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    max_topk: int = MILVUS_MAX_TOPK
    mmap: bool = False

    @property
    def is_ivf(self) -> bool:
        return "IVF" in self.index_type

    @property
    def nlist(self) -> int | None:
        value = self.build_params.get("nlist")
        return int(value) if isinstance(value, int) else None


ENGINES = ("lite", "server")
PLAN_COSTS = ("exact", "hierarchical")


@dataclass(frozen=True)
class PlanCost:
    """A linear cost model of one search plan, in seconds, fitted by ``benchmarks/plan.py``.

    ``base + nq * per_query + rows * (per_row + nq * per_row_query) + nq * coarse_limit * per_candidate``:
    a request's fixed price, a price per query (results, per-query requests), a scan shared by the
    batch, a scan per query, and (coarse -> fine only) the shortlist's fetch and re-rank.
    """

    base: float = 0.0
    per_query: float = 0.0
    per_row: float = 0.0
    per_row_query: float = 0.0
    per_candidate: float = 0.0

    def seconds(self, rows: int, nq: int, coarse_limit: int = 0) -> float:
        """Predicted seconds for ``nq`` queries over ``rows`` rows with a ``coarse_limit`` shortlist."""
        scan = rows * (self.per_row + nq * self.per_row_query)
        return self.base + nq * self.per_query + scan + nq * coarse_limit * self.per_candidate


@dataclass(frozen=True)
class PlanModel:
    """The measured search plan of one profile on one engine (``plan.<engine>`` in the yaml).

    Attributes:
        engine: ``lite`` (Milvus Lite) or ``server``.
        exact: cost of one exact search on ``vec_high``.
        hierarchical: cost of coarse -> fine (the engine's default re-rank path).
        coarse_curve: ``(rows, per_hit)`` ascending: at up to ``rows`` rows a shortlist of
            ``per_hit * limit`` keeps >= 0.99 of the exact top-``limit`` (measured at limit 10).
        switch_ratio: the funnel runs only where predicted at most this share of exact's time.
            Near the crossover the two plans are within the model's error and the exact one is
            never less faithful, so it keeps the tie (0.8 measured: at 100k rows on Lite a
            prediction of 0.94x was 1.19x).
    """

    engine: str
    exact: PlanCost
    hierarchical: PlanCost
    coarse_curve: tuple[tuple[int, float], ...]
    switch_ratio: float = 0.8

    def coarse_per_hit(self, rows: int | None) -> float:
        """Shortlist per final hit for a collection of ``rows`` rows (``None``: the largest measured).

        The first curve point at or above ``rows`` (never less than measured); past the last point,
        extrapolated on the log-log slope of the last two (a shortlist grows with the collection).
        """
        curve = self.coarse_curve
        if rows is None:
            return curve[-1][1]
        for n, per_hit in curve:
            if rows <= n:
                return per_hit
        if len(curve) < 2:
            return curve[-1][1]
        (n0, p0), (n1, p1) = curve[-2], curve[-1]
        slope = max(math.log(p1 / p0) / math.log(n1 / n0), 0.0) if n1 > n0 and p0 > 0 else 0.0
        return p1 * (rows / n1) ** slope

    def default_coarse_limit(self, n: int, rows: int | None) -> int:
        """``ceil(per_hit * n)`` for ``n`` final hits (or fusion candidates), at least ``n``."""
        return max(n, math.ceil(self.coarse_per_hit(rows) * n - 1e-9))

    def choose(self, rows: int | None, nq: int, coarse_limit: int) -> str:
        """``"hierarchical"`` where coarse -> fine is predicted clearly cheaper (``switch_ratio``), else ``"exact"``.

        An unknown size (``None``) keeps the funnel: it is the plan that scales.
        """
        if rows is None:
            return "hierarchical"
        funnel = self.hierarchical.seconds(rows, nq, coarse_limit)
        return "hierarchical" if funnel <= self.switch_ratio * self.exact.seconds(rows, nq) else "exact"


def _plan_models(raw: dict[str, Any] | None) -> dict[str, PlanModel]:
    out: dict[str, PlanModel] = {}
    for engine, spec in (raw or {}).items():
        if engine not in ENGINES:
            raise ProfileError(f"plan engine must be one of {ENGINES}, got {engine!r} (schemas/profiles.yaml)")
        curve = tuple(sorted((int(p["rows"]), float(p["per_hit"])) for p in spec["coarse_curve"]))
        if not curve or any(p < 1 for _, p in curve):
            raise ProfileError(f"plan.{engine}.coarse_curve needs points with per_hit >= 1 (schemas/profiles.yaml)")
        # float(): YAML 1.1 reads "3e-07" (no dot) as a string.
        costs = {plan: PlanCost(**{k: float(v) for k, v in spec["cost"][plan].items()}) for plan in PLAN_COSTS}
        ratio = float(spec.get("switch_ratio", 0.8))
        out[engine] = PlanModel(engine=engine, coarse_curve=curve, switch_ratio=ratio, **costs)
    return out


@dataclass(frozen=True)
class IndexProfile:
    """A named index profile: the index of ``vec_low`` (one variant) and of ``vec_high``.

    Attributes:
        name: ``gpu``, ``cpu`` or ``lite``.
        variant: the ``vec_low`` variant (its index type, e.g. ``GPU_IVF_FLAT``).
        low: index of ``vec_low`` (coarse, ANN).
        high: index of ``vec_high`` (fine, FLAT).
        metric_type: always ``IP`` (vectors are L2-normalised).
        fallback: profile to use when a server refuses this one (``gpu`` -> ``cpu``).
        milvus_max_topk: Milvus' own cap on ``limit``.
        plans: the measured search plan per engine (``lite`` / ``server``), see :class:`PlanModel`.
    """

    name: str
    variant: str
    low: IndexSpec
    high: IndexSpec
    metric_type: str = "IP"
    fallback: str | None = None
    milvus_max_topk: int = MILVUS_MAX_TOPK
    plans: dict[str, PlanModel] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def plan_model(self, *, lite: bool) -> PlanModel | None:
        """The measured plan on Milvus Lite (``lite=True``) or a server; ``None`` if not measured."""
        return self.plans.get("lite" if lite else "server")

    def default_coarse_limit(self, n: int, *, num_rows: int | None, lite: bool) -> int:
        """The default shortlist for ``n`` final hits (or fusion candidates) on a collection of ``num_rows``.

        From the profile's measured recall curve (:meth:`PlanModel.default_coarse_limit`), capped by
        the coarse index; without a measured plan, ``max(10 * n, 100)``.
        """
        model = self.plan_model(lite=lite)
        wanted = model.default_coarse_limit(n, num_rows) if model else max(10 * n, 100)
        return max(min(wanted, self.coarse_cap), min(n, self.coarse_cap))

    @property
    def tag(self) -> str:
        """``name:variant``, what the collection records in ``hivlp.profile``."""
        return f"{self.name}:{self.variant}"

    @property
    def coarse_cap(self) -> int:
        """The largest ``coarse_limit`` the ``vec_low`` index accepts."""
        return min(self.low.max_topk, self.milvus_max_topk)

    @property
    def fine_cap(self) -> int:
        """The largest ``limit`` of the exact ``vec_high`` stage."""
        return min(self.high.max_topk, self.milvus_max_topk)

    def with_expected_rows(self, expected_rows: int | None) -> IndexProfile:
        """A copy whose ``nlist: auto`` is sized for ``expected_rows`` (see :func:`nlist_for`)."""
        if self.low.build_params.get("nlist") != "auto":
            return self
        rows = expected_rows if expected_rows is not None else _data()["default_expected_rows"]
        return self.with_low_build_params({"nlist": nlist_for(rows)})

    def with_low_build_params(self, params: dict[str, Any]) -> IndexProfile:
        """A copy with ``vec_low`` build params overridden (e.g. the ones a collection was built with)."""
        return replace(self, low=replace(self.low, build_params=dict(self.low.build_params, **params)))

    def index_params(self, *, lite: bool = False, fields: Sequence[str] = ("vec_low", "vec_high")) -> Any:
        """``pymilvus.IndexParams`` for the vector fields (``nlist: auto`` must be resolved first).

        Args:
            lite: build for Milvus Lite. pymilvus 3 sends build params as flat key/value pairs
                (``nlist=...``), which a server reads but Milvus Lite 3.2 ignores (it reads only a
                JSON ``params`` entry and silently builds nlist=128); for Lite the params are sent
                nested under ``params``.
            fields: the fields to index (both by default; ``("vec_low",)`` to rebuild the coarse one).

        Raises:
            ConfigError: ``nlist`` is still ``"auto"``.
        """
        from pymilvus import MilvusClient

        if self.low.build_params.get("nlist") == "auto":
            raise ConfigError("nlist is 'auto': call profile.with_expected_rows(n) before building indexes")
        params = MilvusClient.prepare_index_params()
        specs = {"vec_low": self.low, "vec_high": self.high}
        for field_name in fields:
            spec = specs[field_name]
            build = dict(spec.build_params)
            if lite and build:
                build = {"params": build}
            params.add_index(field_name, index_type=spec.index_type, metric_type=self.metric_type, params=build)
        return params

    def low_search_params(self, limit: int, *, num_rows: int | None = None) -> dict[str, Any]:
        """Search params for the coarse stage returning ``limit`` hits.

        IVF: ``nprobe`` is at least ``nprobe_fraction * nlist`` (when the profile sets one) and is
        raised so the probed lists hold ~4x ``limit`` rows on average when ``num_rows`` is known
        (an IVF search cannot return more rows than its probed lists hold).
        HNSW: ``ef`` is raised to at least ``limit`` (Milvus requires ``ef >= k``).
        GPU_CAGRA: ``itopk_size`` is raised to at least ``limit``, rounded up to a multiple of 32.
        """
        params = dict(self.low.search_params)
        fraction = float(params.pop("nprobe_fraction", 0.0) or 0.0)
        nlist = self.low.nlist
        if self.low.is_ivf and "nprobe" in params and nlist:
            wanted = [int(params["nprobe"]), math.ceil(fraction * nlist)]
            if num_rows:
                wanted.append(math.ceil(_NPROBE_OVERSAMPLE * limit * nlist / num_rows))
            params["nprobe"] = min(max(wanted), nlist)
        if self.low.index_type == "HNSW":
            params["ef"] = max(int(params.get("ef", limit)), limit)
        if self.low.index_type == "GPU_CAGRA":
            # CAGRA keeps itopk_size candidates and cannot return more (knowhere: k <= itopk_size);
            # some Milvus versions do not derive it from k, and coarse_limit reaches 1024.
            itopk = max(int(params.get("itopk_size", 0) or 0), limit)
            params["itopk_size"] = -(-itopk // _CAGRA_ALIGN) * _CAGRA_ALIGN
        return {"metric_type": self.metric_type, "params": params}

    def high_search_params(self) -> dict[str, Any]:
        """Search params for the exact ``vec_high`` stage."""
        return {"metric_type": self.metric_type, "params": dict(self.high.search_params)}

    def validate_limits(self, limit: int, coarse_limit: int | None = None) -> int:
        """Check ``limit`` / ``coarse_limit`` against this profile's caps.

        Args:
            limit: number of final hits per query.
            coarse_limit: shortlist size of the coarse stage; ``None`` means
                ``max(10 * limit, 100)`` capped by the coarse index's top-k cap.

        Returns:
            The coarse limit to use.

        Raises:
            SearchLimitError: a limit is not a positive int, ``limit`` exceeds the cap of the coarse
                index (the funnel needs ``coarse_limit >= limit``), or ``coarse_limit`` is below
                ``limit`` or above the cap.
        """
        cap = self.coarse_cap
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise SearchLimitError(f"limit must be a positive int, got {limit!r}")
        if limit > cap:
            raise SearchLimitError(
                f"limit={limit} exceeds the top-k cap {cap} of {self.low.index_type} (profile {self.tag!r}); "
                f"use a smaller limit or a profile variant with a larger cap (e.g. {_bigger_cap_hint(self)})"
            )
        if coarse_limit is None:
            return min(max(10 * limit, 100), cap)
        if isinstance(coarse_limit, bool) or not isinstance(coarse_limit, int) or coarse_limit < 1:
            raise SearchLimitError(f"coarse_limit must be a positive int, got {coarse_limit!r}")
        if coarse_limit < limit:
            raise SearchLimitError(
                f"coarse_limit={coarse_limit} is smaller than limit={limit}: the coarse shortlist must hold at "
                "least the final number of hits"
            )
        if coarse_limit > cap:
            raise SearchLimitError(
                f"coarse_limit={coarse_limit} exceeds the top-k cap {cap} of {self.low.index_type} "
                f"(profile {self.tag!r}); use coarse_limit <= {cap} or a variant with a larger cap "
                f"(e.g. {_bigger_cap_hint(self)})"
            )
        return coarse_limit


def fallback_profile(profile: IndexProfile, expected_rows: int | None = None) -> IndexProfile:
    """The profile to use when a server cannot build ``profile``'s ``vec_low`` index (``gpu`` -> ``cpu``).

    The fallback keeps ``profile``'s ``nlist`` when both are IVF-sized; otherwise it is sized for
    ``expected_rows``.

    Raises:
        ProfileError: ``profile`` has no fallback.
    """
    if not profile.fallback:
        raise ProfileError(f"profile {profile.tag} has no fallback profile; choose another profile explicitly")
    return _nlist_from(load_profile(profile.fallback), profile).with_expected_rows(expected_rows)


def _nlist_from(target: IndexProfile, source: IndexProfile) -> IndexProfile:
    """``target``, its ``nlist: auto`` replaced by ``source``'s ``nlist`` when ``source`` has one."""
    if target.low.build_params.get("nlist") == "auto" and source.low.nlist:
        return target.with_low_build_params({"nlist": source.low.nlist})
    return target


def _bigger_cap_hint(profile: IndexProfile) -> str:
    if profile.name == "gpu":
        return "gpu:GPU_IVF_PQ or gpu:GPU_CAGRA (1024), cpu:IVF_FLAT (16384)"
    return f"Milvus' maximum is {MILVUS_MAX_TOPK}"


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files("schemas").joinpath("profiles.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _spec(raw: dict[str, Any], default_topk: int) -> IndexSpec:
    return IndexSpec(
        index_type=str(raw["index_type"]),
        build_params=dict(raw.get("build") or {}),
        search_params=dict(raw.get("search") or {}),
        max_topk=int(raw.get("max_topk", default_topk)),
        mmap=bool(raw.get("mmap", False)),
    )


def profile_variants(name: str) -> list[str]:
    """The ``vec_low`` variants of profile ``name``."""
    return list(_raw_profile(name)["vec_low"]["variants"])


def _raw_profile(name: str) -> dict[str, Any]:
    profiles = _data()["profiles"]
    if name not in profiles:
        raise ProfileError(f"unknown index profile {name!r}; choose one of {sorted(profiles)} or 'auto'")
    return profiles[name]


def load_profile(name: str, variant: str | None = None) -> IndexProfile:
    """Load profile ``name`` (``gpu``, ``cpu``, ``lite``) from ``schemas/profiles.yaml``.

    Args:
        name: the profile name, or ``"name:variant"`` (the form recorded in ``hivlp.profile``).
        variant: the ``vec_low`` index variant (e.g. ``GPU_CAGRA``); ``None`` = the profile's default.

    Returns:
        The profile (``nlist`` may still be ``"auto"``; see :meth:`IndexProfile.with_expected_rows`).

    Raises:
        ProfileError: unknown profile or variant.
    """
    if ":" in name:
        name, _, tagged = name.partition(":")
        variant = variant or tagged
    data = _data()
    raw = _raw_profile(name)
    max_topk = int(data.get("milvus_max_topk", MILVUS_MAX_TOPK))
    variants = raw["vec_low"]["variants"]
    variant = (variant or raw["vec_low"]["default"]).upper()
    if variant not in variants:
        raise ProfileError(f"profile {name!r} has no vec_low variant {variant!r}; choose one of {sorted(variants)}")
    return IndexProfile(
        name=name,
        variant=variant,
        low=_spec(variants[variant], max_topk),
        high=_spec(raw["vec_high"], max_topk),
        metric_type=str(data.get("metric_type", "IP")),
        fallback=raw.get("fallback"),
        milvus_max_topk=max_topk,
        plans=_plan_models(raw.get("plan")),
    )


def lite_equivalent(profile: IndexProfile) -> IndexProfile:
    """The ``lite`` profile closest to ``profile``: GPU indexes become IVF_FLAT / FLAT.

    Milvus Lite accepts GPU index names at ``create_index`` but has no GPU index, so a collection
    created there with a GPU profile would silently not be what its properties say.
    """
    if profile.name == "lite":
        return profile
    aliases = _data().get("lite_aliases", {})
    lite_variants = profile_variants("lite")
    variant = profile.variant if profile.variant in lite_variants else aliases.get(profile.variant, "IVF_FLAT")
    mapped = _nlist_from(load_profile("lite", variant), profile)
    logger.info("Milvus Lite has no %s index: using profile %s instead of %s", profile.variant, mapped.tag, profile.tag)
    return mapped


def resolve_profile(
    name: str | IndexProfile = "auto", client: Any = None, *, variant: str | None = None
) -> IndexProfile:
    """The profile to use on the Milvus behind ``client``.

    * Milvus Lite: ``auto`` -> ``lite``; a GPU/CPU profile maps to its Lite equivalent
      (GPU_IVF_FLAT / GPU_IVF_PQ / GPU_CAGRA -> IVF_FLAT, GPU_BRUTE_FORCE -> FLAT).
    * A server: ``auto`` -> ``gpu`` if the server accepts the GPU index (probed by creating it on a
      throw-away collection), else ``cpu`` with a logged warning. An explicitly requested profile
      is used as is.

    Args:
        name: ``"auto"``, a profile name, ``"name:variant"``, or an :class:`IndexProfile`.
        client: a connected ``MilvusClient``; ``None`` resolves ``auto`` to ``lite`` without probing.
        variant: the ``vec_low`` variant for a named profile.

    Returns:
        The resolved profile.

    Raises:
        ProfileError: unknown profile/variant.
    """
    from hivlp_milvus.connection import is_lite

    lite = client is None or is_lite(client)
    if name == "auto" and not lite:
        gpu = load_profile("gpu", variant if variant and variant.startswith("GPU_") else None)
        refused = _server_refuses(client, gpu)
        if refused is None:
            return gpu
        cpu = load_profile(gpu.fallback or "cpu", variant if variant and not variant.startswith("GPU_") else None)
        logger.warning(
            "Milvus refused the %s index (%s); falling back to profile %s. Use a GPU Milvus image "
            "(milvusdb/milvus:*-gpu) for GPU indexes.",
            gpu.low.index_type,
            refused,
            cpu.tag,
        )
        return cpu
    # Milvus Lite maps any profile to its Lite equivalent (``lite`` itself is kept as is).
    profile = name if isinstance(name, IndexProfile) else load_profile("lite" if name == "auto" else name, variant)
    return lite_equivalent(profile) if lite else profile


def _server_refuses(client: Any, profile: IndexProfile) -> str | None:
    """``None`` if the server accepts ``profile``'s vec_low index, else the server's reason.

    Raises:
        MilvusUnavailableError: the server stopped answering (an outage is not a refusal).
    """
    from pymilvus import DataType, MilvusClient

    from hivlp_milvus.connection import guarded

    probe = f"hivlp_probe_{uuid.uuid4().hex[:12]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=16)
    build = {k: (NLIST_MIN if v == "auto" else v) for k, v in profile.low.build_params.items()}
    params = MilvusClient.prepare_index_params()
    params.add_index("v", index_type=profile.low.index_type, metric_type=profile.metric_type, params=build)
    milvus = guarded(client, f" (probing index {profile.low.index_type})")
    try:
        milvus.create_collection(probe, schema=schema)
        milvus.create_index(probe, params)
    except MilvusUnavailableError:
        raise
    except MilvusError as exc:  # the server's refusal is the answer, whatever its code
        return str(exc)
    finally:
        try:
            milvus.drop_collection(probe)
        except MilvusError as exc:
            logger.debug("could not drop probe collection %s: %s", probe, exc)
    return None
