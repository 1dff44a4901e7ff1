"""Index profiles: loading, Lite mapping, limits, nlist/nprobe sizing."""

from __future__ import annotations

from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collection_rows import row, unit
from fakes import ServerLikeClient

from hivlp_milvus.errors import ConfigError, ProfileError, SearchLimitError
from hivlp_milvus.profiles import (
    IndexProfile,
    fallback_profile,
    lite_equivalent,
    load_profile,
    nlist_for,
    profile_variants,
    resolve_profile,
)


def test_all_profiles_load_with_ip_and_flat_high() -> None:
    for name in ("gpu", "cpu", "lite"):
        for variant in profile_variants(name):
            p = load_profile(name, variant)
            assert isinstance(p, IndexProfile)
            assert p.metric_type == "IP"
            assert p.high.index_type == "FLAT"
            assert p.coarse_cap <= 16384
            assert p.tag == f"{name}:{variant}"


@pytest.mark.parametrize(
    ("profile", "attribute", "expected"),
    [
        (("gpu",), "variant", "GPU_IVF_FLAT"),
        (("gpu",), "coarse_cap", 256),
        (("gpu",), "fallback", "cpu"),
        (("gpu",), "high.mmap", True),
        (("gpu", "GPU_IVF_PQ"), "coarse_cap", 1024),
        (("gpu:GPU_CAGRA",), "coarse_cap", 1024),
        (("cpu",), "variant", "IVF_FLAT"),
        (("cpu",), "coarse_cap", 16384),
        (("cpu", "hnsw"), "low.index_type", "HNSW"),
        (("lite",), "variant", "IVF_FLAT"),
        (("lite",), "high.mmap", False),
        (("lite", "FLAT"), "low.index_type", "FLAT"),
    ],
)
def test_defaults_and_caps(profile: tuple[str, ...], attribute: str, expected: object) -> None:
    assert attrgetter(attribute)(load_profile(*profile)) == expected


def test_unknown_profile_and_variant() -> None:
    with pytest.raises(ProfileError, match=r"unknown index profile 'tpu'; choose one of \['cpu', 'gpu', 'lite'\]"):
        load_profile("tpu")
    with pytest.raises(ProfileError, match="GPU_CAGRA"):
        load_profile("cpu", "GPU_CAGRA")


@pytest.mark.parametrize(
    ("profile", "lite_tag"),
    [
        (("gpu",), "lite:IVF_FLAT"),
        (("gpu", "GPU_IVF_PQ"), "lite:IVF_FLAT"),
        (("gpu", "GPU_CAGRA"), "lite:IVF_FLAT"),
        (("cpu", "HNSW"), "lite:HNSW"),
    ],
)
def test_gpu_names_map_to_lite_indexes(profile: tuple[str, ...], lite_tag: str) -> None:
    assert lite_equivalent(load_profile(*profile)).tag == lite_tag


def test_without_a_client_profiles_resolve_to_lite() -> None:
    # No client = embedded default: auto is lite, a named profile is mapped.
    assert resolve_profile("auto").tag == "lite:IVF_FLAT"
    assert resolve_profile("gpu").name == "lite"


@pytest.mark.parametrize(
    ("profile", "limits", "coarse_limit"),
    [
        (("gpu",), (10,), 100),
        (("gpu",), (20,), 200),
        (("gpu",), (30,), 256),  # default capped by GPU_IVF_FLAT's top-k
        (("gpu",), (10, 10), 10),
        (("gpu", "GPU_CAGRA"), (10, 1024), 1024),
    ],
)
def test_validate_limits_returns_the_coarse_limit(profile: tuple[str, ...], limits: tuple, coarse_limit: int) -> None:
    assert load_profile(*profile).validate_limits(*limits) == coarse_limit


@pytest.mark.parametrize(
    ("profile", "limits", "match"),
    [
        (("gpu",), (10, 300), r"256.*GPU_IVF_FLAT.*gpu:GPU_IVF_FLAT"),
        (("gpu",), (300,), r"256.*gpu:GPU_IVF_FLAT"),
        (("gpu", "GPU_IVF_PQ"), (10, 1025), "1024"),
        (("lite",), (10, 16385), "16384"),
        (("lite",), (50, 20), "smaller than limit"),
        *[(("lite",), (bad,), None) for bad in (0, -1, 1.5, True, "10")],
    ],
)
def test_validate_limits_messages_name_cap_and_profile(profile: tuple[str, ...], limits: tuple, match: str) -> None:
    with pytest.raises(SearchLimitError, match=match):
        load_profile(*profile).validate_limits(*limits)


@pytest.mark.parametrize(
    ("rows", "nlist"),
    [(10, 16), (10_000, 256), (20_000, 512), (100_000, 1265), (1_000_000, 4000), (10**12, 65536)],
)
def test_nlist_rule(rows: int, nlist: int) -> None:
    assert nlist_for(rows) == nlist  # at 10k rows N/39 = 256 caps 4*sqrt(N) = 400


def test_index_params_need_resolved_nlist_and_nest_params_for_lite() -> None:
    p = load_profile("cpu")
    with pytest.raises(ConfigError):
        p.index_params()
    p = p.with_expected_rows(20_000)
    assert p.low.build_params["nlist"] == 512
    server = {ip.field_name: ip.get_index_configs() for ip in p.index_params()}
    assert server["vec_low"]["nlist"] == 512
    assert server["vec_low"]["index_type"] == "IVF_FLAT"
    lite = {ip.field_name: ip.get_index_configs() for ip in p.index_params(lite=True)}
    assert lite["vec_low"]["params"] == {"nlist": 512}
    assert lite["vec_high"] == {"metric_type": "IP", "index_type": "FLAT"}


@pytest.mark.parametrize(
    ("profile", "nlist", "limit", "num_rows", "params"),
    [
        (("lite",), 512, 100, None, {"nprobe": 128}),
        (("cpu",), 1000, 100, None, {"nprobe": 100}),  # a tenth of the lists
        (("cpu",), 64, 10, None, {"nprobe": 32}),
        (("cpu",), 1000, 500, 10_000, {"nprobe": 200}),  # 4x oversampling: 4 * 500 * 1000 / 10000 lists
        (("cpu",), 1000, 5000, 10_000, {"nprobe": 1000}),  # capped at nlist
        (("cpu", "HNSW"), None, 500, None, {"ef": 500}),
        (("cpu", "HNSW"), None, 10, None, {"ef": 128}),
        (("gpu", "GPU_CAGRA"), None, 10, None, {"itopk_size": 64}),  # knowhere's floor
        (("gpu", "GPU_CAGRA"), None, 65, None, {"itopk_size": 96}),  # >= k, a multiple of 32
        (("gpu", "GPU_CAGRA"), None, 200, None, {"itopk_size": 224}),
        (("gpu", "GPU_CAGRA"), None, 1024, None, {"itopk_size": 1024}),  # the coarse cap
    ],
)
def test_search_params_sizing(
    profile: tuple[str, ...], nlist: int | None, limit: int, num_rows: int | None, params: dict
) -> None:
    p = load_profile(*profile)
    p = p.with_low_build_params({"nlist": nlist}) if nlist else p
    assert p.low_search_params(limit, num_rows=num_rows) == {"metric_type": "IP", "params": params}


def test_cagra_itopk_size_keeps_a_larger_setting() -> None:
    cagra = load_profile("gpu", "GPU_CAGRA")
    assert cagra.coarse_cap == 1024
    custom = replace(cagra, low=replace(cagra.low, search_params={"itopk_size": 512}))
    assert custom.low_search_params(100)["params"]["itopk_size"] == 512  # a larger setting is kept


def test_fallback_profile_keeps_nlist() -> None:
    gpu = load_profile("gpu").with_expected_rows(20_000)
    cpu = fallback_profile(gpu)
    assert cpu.tag == "cpu:IVF_FLAT"
    assert cpu.low.nlist == gpu.low.nlist == 512
    assert fallback_profile(load_profile("gpu", "GPU_CAGRA"), 10_000).low.nlist == 256  # sized from rows
    with pytest.raises(ProfileError, match="no fallback"):
        fallback_profile(load_profile("cpu"))


# ---------------------------------------------------------------------- GPU index built, then failing


class GpuBuildFailsFake(ServerLikeClient):
    """FAKE (no GPU Milvus exists here): the server-looking Milvus Lite client of ``tests/fakes.py``.

    It accepts GPU index types when asked to create them, as GPU Milvus images and the profile probe
    do, but reports their build as ``Failed`` once data is indexed: the failure the empty-collection
    probe cannot see. Everything else is Milvus Lite.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.gpu_indexes: set[tuple[str, str]] = set()

    def create_index(self, collection_name: str, index_params: Any, **kwargs: Any) -> None:
        for param in index_params:
            if str(param.index_type).startswith("GPU_"):
                self.gpu_indexes.add((collection_name, param.field_name))
        super().create_index(collection_name, index_params, **kwargs)

    def drop_index(self, collection_name: str, index_name: str, **kwargs: Any) -> None:
        self.gpu_indexes.discard((collection_name, index_name))
        self.real.drop_index(collection_name, index_name, **kwargs)

    def describe_index(self, collection_name: str, index_name: str, **kwargs: Any) -> dict[str, Any]:
        info = dict(self.real.describe_index(collection_name, index_name, **kwargs))
        if (collection_name, index_name) in self.gpu_indexes:
            info["state"] = "Failed"
        return info


def _unit_rows(n: int, low_dim: int, high_dim: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    return [row(str(i), "image", unit(rng.normal(size=low_dim)), unit(rng.normal(size=high_dim))) for i in range(n)]


def test_failed_gpu_build_falls_back_to_cpu_after_the_real_build(tmp_path: Path) -> None:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.connection import connect
    from hivlp_milvus.model.embedding import HierarchicalEmbedding

    fake = GpuBuildFailsFake(connect(str(tmp_path / "gpu.db")))
    col = HierarchicalCollection.create("g", client=fake, low_dim=8, high_dim=16, expected_rows=2_000)
    assert col.profile.tag == "gpu:GPU_IVF_FLAT"  # the probe on an empty collection said yes
    nlist = col.profile.low.nlist
    rows = _unit_rows(60, 8, 16)
    col.upsert(rows)
    assert col.check_index(fallback=True) != "Failed"  # it fell back
    assert col.profile.tag == "cpu:IVF_FLAT"
    assert col.profile.low.nlist == nlist
    assert fake.describe_index("g", "vec_low")["index_type"] == "IVF_FLAT"
    assert ("g", "vec_low") not in fake.gpu_indexes
    reopened = HierarchicalCollection.open("g", client=fake)
    assert reopened.profile.tag == "cpu:IVF_FLAT"
    assert reopened.properties["hivlp.profile"] == "cpu:IVF_FLAT"
    q = HierarchicalEmbedding(rows[7]["vec_low"], rows[7]["vec_high"])
    # rerank="client": this server-looking Lite has no filter templating for the server path.
    assert reopened.hierarchical_search(q, limit=1, coarse_limit=60, rerank="client")[0][0]["id"] == rows[7]["id"]


def test_failed_build_without_fallback_is_a_profile_error(tmp_path: Path) -> None:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.connection import connect

    fake = GpuBuildFailsFake(connect(str(tmp_path / "gpu.db")))
    col = HierarchicalCollection.create("g", client=fake, low_dim=8, high_dim=16, profile="gpu")
    col.upsert(_unit_rows(10, 8, 16))
    with pytest.raises(ProfileError, match=r"failed to build the GPU_IVF_FLAT index.*profile='cpu'"):
        col.check_index(fallback=False)
    assert col.profile.tag == "gpu:GPU_IVF_FLAT"
    col.flush()  # flushing starts the real build: the failure is caught there, and falls back
    assert col.profile.tag == "cpu:IVF_FLAT"
