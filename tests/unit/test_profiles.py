"""Index profiles: loading, Lite mapping, limits, nlist/nprobe sizing."""

from __future__ import annotations

import pytest

from hivlp_milvus.errors import ConfigError, ProfileError, SearchLimitError
from hivlp_milvus.profiles import (
    IndexProfile,
    lite_equivalent,
    load_profile,
    nlist_for,
    profile_names,
    profile_variants,
    resolve_profile,
    validate_limits,
)


def test_all_profiles_load_with_ip_and_flat_high() -> None:
    assert set(profile_names()) == {"gpu", "cpu", "lite"}
    for name in profile_names():
        for variant in profile_variants(name):
            p = load_profile(name, variant)
            assert isinstance(p, IndexProfile)
            assert p.metric_type == "IP"
            assert p.high.index_type == "FLAT"
            assert p.coarse_cap <= 16384
            assert p.tag == f"{name}:{variant}"


def test_defaults_and_caps() -> None:
    gpu = load_profile("gpu")
    assert gpu.variant == "GPU_IVF_FLAT"
    assert gpu.coarse_cap == 256
    assert gpu.fallback == "cpu"
    assert gpu.high.mmap
    assert load_profile("gpu", "GPU_IVF_PQ").coarse_cap == 1024
    assert load_profile("gpu:GPU_CAGRA").coarse_cap == 1024
    assert load_profile("cpu").variant == "IVF_FLAT"
    assert load_profile("cpu").coarse_cap == 16384
    assert load_profile("cpu", "hnsw").low.index_type == "HNSW"
    lite = load_profile("lite")
    assert lite.variant == "IVF_FLAT"
    assert not lite.high.mmap
    assert load_profile("lite", "FLAT").low.index_type == "FLAT"


def test_unknown_profile_and_variant() -> None:
    with pytest.raises(ProfileError, match="unknown index profile"):
        load_profile("tpu")
    with pytest.raises(ProfileError, match="GPU_CAGRA"):
        load_profile("cpu", "GPU_CAGRA")


def test_gpu_names_map_to_lite_indexes() -> None:
    assert lite_equivalent(load_profile("gpu")).tag == "lite:IVF_FLAT"
    assert lite_equivalent(load_profile("gpu", "GPU_IVF_PQ")).tag == "lite:IVF_FLAT"
    assert lite_equivalent(load_profile("gpu", "GPU_CAGRA")).tag == "lite:IVF_FLAT"
    assert lite_equivalent(load_profile("cpu", "HNSW")).tag == "lite:HNSW"
    # No client = embedded default: auto is lite, a named profile is mapped.
    assert resolve_profile("auto").tag == "lite:IVF_FLAT"
    assert resolve_profile("gpu").name == "lite"


def test_validate_limits_messages_name_cap_and_profile() -> None:
    gpu = load_profile("gpu")
    assert gpu.validate_limits(10) == 100
    assert gpu.validate_limits(20) == 200
    assert gpu.validate_limits(30) == 256  # default capped by GPU_IVF_FLAT's top-k
    assert gpu.validate_limits(10, 10) == 10
    with pytest.raises(SearchLimitError, match=r"256.*GPU_IVF_FLAT.*gpu:GPU_IVF_FLAT"):
        gpu.validate_limits(10, 300)
    with pytest.raises(SearchLimitError, match=r"256.*gpu:GPU_IVF_FLAT"):
        gpu.validate_limits(300)
    assert load_profile("gpu", "GPU_CAGRA").validate_limits(10, 1024) == 1024
    with pytest.raises(SearchLimitError, match="1024"):
        load_profile("gpu", "GPU_IVF_PQ").validate_limits(10, 1025)
    with pytest.raises(SearchLimitError, match="16384"):
        validate_limits(10, 16385)
    with pytest.raises(SearchLimitError, match="smaller than limit"):
        validate_limits(50, 20)
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(SearchLimitError):
            validate_limits(bad)  # type: ignore[arg-type]


def test_nlist_rule() -> None:
    assert nlist_for(10) == 16
    assert nlist_for(10_000) == 256  # N/39 caps 4*sqrt(N)=400
    assert nlist_for(20_000) == 512
    assert nlist_for(100_000) == 1265
    assert nlist_for(1_000_000) == 4000
    assert nlist_for(10**12) == 65536


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


def test_search_params_sizing() -> None:
    lite = load_profile("lite").with_low_build_params({"nlist": 512})
    sp = lite.low_search_params(100)
    assert sp["metric_type"] == "IP"
    assert sp["params"] == {"nprobe": 128}
    cpu = load_profile("cpu").with_low_build_params({"nlist": 1000})
    assert cpu.low_search_params(100)["params"]["nprobe"] == 100  # a tenth of the lists
    assert load_profile("cpu").with_low_build_params({"nlist": 64}).low_search_params(10)["params"]["nprobe"] == 32
    # 4x oversampling: 4 * 500 * 1000 / 10000 = 200 lists
    assert cpu.low_search_params(500, num_rows=10_000)["params"]["nprobe"] == 200
    assert cpu.low_search_params(5000, num_rows=10_000)["params"]["nprobe"] == 1000  # capped at nlist
    assert load_profile("cpu", "HNSW").low_search_params(500)["params"]["ef"] == 500
    assert load_profile("cpu", "HNSW").low_search_params(10)["params"]["ef"] == 128
