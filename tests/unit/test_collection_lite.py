"""HierarchicalCollection on an in-process Milvus Lite (.db in tmp_path): schema, writes, the funnel.

The same behaviour tests run over gRPC against a real Milvus server in
tests/integration/test_collection_server.py (which re-uses the tests of this module with its own
``env`` fixture). No mocks: every test talks to Milvus, and str/image queries are encoded by the
real ``micro`` HiVLP model (random init: its vectors are arbitrary, but an item's own vector is
its exact best match, which is what the assertions use).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collection_rows import assert_same, brute_force, created, row, unique, unit
from milvus_server import free_port

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect, is_lite
from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import (
    BadRecordError,
    CollectionExistsError,
    CollectionNotFoundError,
    DimensionMismatchError,
    FilterError,
    MilvusUnavailableError,
    ModelMismatchError,
    ProfileError,
    QueryError,
    SchemaMismatchError,
    SearchLimitError,
)
from hivlp_milvus.ids import text_key
from hivlp_milvus.model import create_model, get_config
from hivlp_milvus.model.embedding import HierarchicalEmbedding
from hivlp_milvus.search import SearchResults

LOW, HIGH = 16, 64  # the micro config's dims
N_IMAGES = 120  # + 2 captions each = 360 rows
COLORS = ["red", "green", "blue"]
DATA_SEED = 3

logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # expected RPC errors are asserted, not logged


@lru_cache(maxsize=1)
def records() -> tuple[Any, ...]:
    """The synthetic image-caption records every collection here is built from (record i is the same for any n)."""
    return tuple(synthetic.generate(N_IMAGES, seed=DATA_SEED, image_size=32, captions_per_image=2))


def captions() -> list[str]:
    return [c for r in records() for c in r.captions]


def micro_model(seed: int = 0, **config: int) -> Any:
    """The real ``micro`` HiVLP model (vocabulary trained from the captions); ``config`` overrides dims."""
    cfg = dataclasses.replace(get_config("micro"), **config)
    return create_model(cfg, texts=captions(), seed=seed)


@dataclass(frozen=True)
class Env:
    """Where the collections of a test module live, and which engine answers there.

    ``engine`` is what the suite knows independently of the library: ``"lite"`` for a ``.db`` path
    or ``milvus-lite server``, ``"cpu"`` / ``"gpu"`` for a Milvus server (tests/milvus_server.py).
    """

    uri: str
    token: str = ""
    engine: str = "lite"

    def client(self) -> Any:
        return connect(self.uri, token=self.token)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(str(tmp_path_factory.mktemp("lite") / "hivlp.db"))


@pytest.fixture(scope="module")
def client(env: Env) -> Any:
    return env.client()


@lru_cache(maxsize=4)
def _embedded(model: Any) -> tuple[Any, Any]:
    return model.embed_images([r.image for r in records()]), model.embed_texts(captions())


def make_rows(model: Any, n_images: int = N_IMAGES) -> list[dict[str, Any]]:
    """Rows of the first ``n_images`` records encoded by ``model``: the image, and its two captions.

    Keys are the record index (``"4"``, captions ``"4#0"``, ``"4#1"``); a caption row's reference is
    its text, so ``rows[k]["reference"]`` is a query that must find row ``k`` itself.
    """
    img, txt = _embedded(model)
    images = [
        row(
            str(i),
            "image",
            img.low[i],
            img.high[i],
            reference=f"/data/img_{i}.png",
            attributes={"color": COLORS[i % 3], "n": i, "tag": 'x" or id > 0 or "' if i == 7 else "plain"},
        )
        for i in range(n_images)
    ]
    texts = [
        row(
            text_key(str(i), j),
            "text",
            txt.low[2 * i + j],
            txt.high[2 * i + j],
            reference=cap,
            attributes={"color": COLORS[i % 3], "n": i, "tag": "plain"},
        )
        for i in range(n_images)
        for j, cap in enumerate(records()[i].captions)
    ]
    return images + texts


@pytest.fixture(scope="module")
def model() -> Any:
    return micro_model()


@pytest.fixture(scope="module")
def other_models() -> dict[str, Any]:
    """Real micro models that differ from ``model`` in one recorded property each."""
    return {
        "low_dim": micro_model(low_dim=8),
        "high_dim": micro_model(high_dim=32),
        "fingerprint": micro_model(seed=1),
    }


@pytest.fixture(scope="module")
def populated(client: Any, model: Any) -> Iterator[tuple[HierarchicalCollection, list[dict]]]:
    """A read-only collection with images and captions, flushed so the IVF index is used; ``model`` attached."""
    rows = make_rows(model)
    with created(client, "pop", model=model, expected_rows=len(rows)) as col:
        assert col.upsert(rows) == len(rows)
        col.flush()
        yield col, rows


# ---------------------------------------------------------------------- create / open


def test_create_records_properties(env: Env, client: Any, model: Any) -> None:
    with created(client, model=model, description="props") as col:
        name = col.name
        props = client.describe_collection(name)["properties"]
        assert (
            props.items()
            >= {
                "hivlp.schema_version": "2",
                "hivlp.model_fingerprint": model.fingerprint,
                "hivlp.low_dim": str(LOW),
                "hivlp.high_dim": str(HIGH),
                "hivlp.profile": col.profile.tag,
            }.items()
        )
        assert len(model.fingerprint) == 16
        assert (col.name, col.low_dim, col.high_dim, col.model, col.client) == (name, LOW, HIGH, model, client)
        assert col.is_lite == (env.engine == "lite")
        assert col.profile.name == env.engine  # auto: lite on Lite, gpu on a GPU server, else cpu
        assert col.max_rows_per_request > 1000
        desc = col.describe()
        assert desc["count"] == 0
        assert desc["fingerprint"] == model.fingerprint
        assert set(desc["indexes"]) == {"vec_low", "vec_high"}
        assert desc["indexes"]["vec_high"]["index_type"] == "FLAT"
        assert desc["indexes"]["vec_low"]["metric_type"] == "IP"


def test_create_twice_and_exist_ok(client: Any) -> None:
    with created(client, low_dim=LOW, high_dim=HIGH) as col:
        name = col.name
        with pytest.raises(CollectionExistsError, match="exist_ok"):
            HierarchicalCollection.create(name, client=client, low_dim=LOW, high_dim=HIGH)
        again = HierarchicalCollection.create(name, client=client, low_dim=LOW, high_dim=HIGH, exist_ok=True)
        assert again.name == name
        assert again.profile.tag == col.profile.tag
        with pytest.raises(ModelMismatchError, match="high_dim"):
            HierarchicalCollection.create(name, client=client, low_dim=LOW, high_dim=HIGH * 2, exist_ok=True)


def test_create_needs_valid_dims(client: Any, model: Any) -> None:
    for dims, match in (
        ({"low_dim": LOW}, None),
        ({"low_dim": 0, "high_dim": HIGH}, None),
        ({"low_dim": 8, "model": model}, "model"),
    ):
        with pytest.raises(DimensionMismatchError, match=match):
            HierarchicalCollection.create(unique(), client=client, **dims)


def test_open_unknown_lists_existing(client: Any, populated: tuple) -> None:
    col, _ = populated
    with pytest.raises(CollectionNotFoundError, match=col.name):
        HierarchicalCollection.open("no_such_collection", client=client)


def test_open_foreign_collection(client: Any) -> None:
    name = unique("foreign")
    client.create_collection(name, dimension=4)  # pymilvus' quick setup: an id and a vector, no hivlp properties
    try:
        with pytest.raises(SchemaMismatchError, match="not created by hivlp_milvus"):
            HierarchicalCollection.open(name, client=client)
    finally:
        client.drop_collection(name)


def test_reopen_with_mismatching_model(client: Any, populated: tuple, model: Any, other_models: dict) -> None:
    col, rows = populated
    twin = micro_model()  # another instance of the same weights: the same fingerprint
    assert twin is not model
    same = HierarchicalCollection.open(col.name, client=client, model=twin)
    assert same.model is twin
    assert same.count() == len(rows)
    # The attached model encodes the queries: a caption's text finds that caption row, exactly.
    hit = same.hierarchical_search(rows[N_IMAGES + 5]["reference"], limit=1, modality="text")[0][0]
    assert hit["id"] == rows[N_IMAGES + 5]["id"]
    mismatches = {
        "low_dim": r"low_dim: collection 16, model 8.*new collection",
        "high_dim": "high_dim: collection 64, model 32",
        "fingerprint": r"fingerprint.*checkpoint",
    }
    for differs_in, match in mismatches.items():
        with pytest.raises(ModelMismatchError, match=match):
            HierarchicalCollection.open(col.name, client=client, model=other_models[differs_in])
    with pytest.raises(ModelMismatchError):
        col.check_model(other_models["fingerprint"])


def test_collection_without_fingerprint_accepts_same_dims(client: Any, other_models: dict) -> None:
    with created(client, low_dim=LOW, high_dim=HIGH) as col:
        opened = HierarchicalCollection.open(col.name, client=client, model=other_models["fingerprint"])
        assert opened.fingerprint == ""
        assert opened.model is other_models["fingerprint"]
        with pytest.raises(ModelMismatchError, match="low_dim: collection 16, model 8"):
            opened.model = other_models["low_dim"]


# ---------------------------------------------------------------------- writes


def test_upsert_validates_before_writing(client: Any, model: Any) -> None:
    with created(client, model=model) as col:
        rows = make_rows(model, n_images=3)
        bad_batches = [  # (rows, error, match); the first two are whole batches with one bad row
            (
                [*rows[:4], {**rows[4], "vec_high": np.zeros(HIGH + 1, np.float32)}, *rows[5:]],
                DimensionMismatchError,
                r"row 4 .*vec_high",
            ),
            ([{**rows[0], "vec_low": [0.1] * (LOW - 1)}, *rows[1:]], DimensionMismatchError, "vec_low"),
            ([{k: v for k, v in rows[0].items() if k != "key"}], BadRecordError, "missing fields"),
            ([{**rows[0], "modality": "audio"}], BadRecordError, "modality"),
            ([{**rows[0], "vec_low": np.full(LOW, np.nan, dtype=np.float32)}], BadRecordError, "NaN"),
        ]
        for bad, error, match in bad_batches:
            with pytest.raises(error, match=match):
                col.upsert(bad)
        assert col.count() == 0  # nothing was written

        assert col.upsert(rows) == len(rows)
        assert col.upsert(rows[:2]) == 2  # re-ingest overwrites, never duplicates
        assert col.count() == len(rows)
        ids = [r["id"] for r in rows]
        assert col.existing_ids([*ids[:3], 12345]) == set(ids[:3])
        got = {g["id"]: g for g in col.get(ids[:2])}
        assert got[ids[0]]["reference"] == rows[0]["reference"]
        assert "vec_high" not in got[ids[0]]
        vec = col.get([ids[0]], output_fields=["vec_high"])[0]["vec_high"]
        np.testing.assert_allclose(vec, rows[0]["vec_high"], atol=1e-6)
        assert col.upsert([]) == 0


def test_delete_by_ids_and_filter(client: Any, model: Any) -> None:
    with created(client, model=model) as col:
        rows = make_rows(model, n_images=6)  # 6 images + 12 captions
        col.upsert(rows)
        assert col.delete(ids=[rows[0]["id"], rows[1]["id"], 999]) == 2
        assert col.count() == len(rows) - 2
        assert (
            col.delete(filter='modality == {m} and attributes["color"] == {c}', filter_params={"m": "text", "c": "red"})
            == 4
        )
        assert col.count() == len(rows) - 6
        assert col.count('modality == "text"') == 8
        assert col.delete(ids=[r["id"] for r in rows], filter="modality == {m}", filter_params={"m": "image"}) == 4
        assert col.count() == 8
        assert col.delete(ids=[]) == 0
        with pytest.raises(FilterError):
            col.delete()


def test_drop(client: Any) -> None:
    col = HierarchicalCollection.create(unique(), client=client, low_dim=LOW, high_dim=HIGH)
    col.drop()
    assert not client.has_collection(col.name)
    with pytest.raises(CollectionNotFoundError):
        HierarchicalCollection.open(col.name, client=client)


# ---------------------------------------------------------------------- search


def test_auto_rerank_follows_the_engine(env: Env, populated: tuple, model: Any) -> None:
    """Lite: the client path (measured faster there); a Milvus server: the server path."""
    col, *_ = populated
    q = model.embed_texts(["a small red circle"])
    expected = "client" if env.engine == "lite" else "server"
    assert col.hierarchical_search(q, limit=3).rerank == expected
    assert col.hierarchical_search(q, limit=3, filter='key != "x"').rerank == expected
    for forced in ("client", "server"):
        assert col.hierarchical_search(q, limit=3, rerank=forced).rerank == forced


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_funnel_equals_brute_force_when_coarse_covers_everything(populated: tuple, rerank: str) -> None:
    col, rows = populated
    q = HierarchicalEmbedding(
        np.stack([rows[3]["vec_low"], rows[200]["vec_low"]]), np.stack([rows[3]["vec_high"], rows[200]["vec_high"]])
    )
    res = col.hierarchical_search(q, limit=15, coarse_limit=len(rows), rerank=rerank, output_fields=["key", "modality"])
    assert isinstance(res, SearchResults)
    assert len(res) == 2
    assert set(res.timings) >= {"encode_s", "coarse_s", "fine_s"}
    for qi in range(2):
        assert_same(res[qi], brute_force(rows, q.high[qi], 15))
        assert all(set(h) == {"id", "distance", "coarse_distance", "entity"} for h in res[qi])
        assert all(set(h["entity"]) == {"key", "modality"} for h in res[qi])
    # Under a filter: equal to brute force over the matching rows.
    res = col.hierarchical_search(
        q,
        limit=10,
        coarse_limit=len(rows),
        rerank=rerank,
        filter='attributes["color"] == {c}',
        filter_params={"c": "blue"},
    )
    for qi in range(2):
        assert_same(res[qi], brute_force(rows, q.high[qi], 10, keep=lambda r: r["attributes"]["color"] == "blue"))


def test_both_rerank_paths_agree(populated: tuple) -> None:
    col, rows = populated
    queries = [rows[N_IMAGES + 10]["reference"], "a huge green square on a white background", records()[9].image]
    a = col.hierarchical_search(queries, limit=5, coarse_limit=50, rerank="client")
    b = col.hierarchical_search(queries, limit=5, coarse_limit=50, rerank="server")
    auto = col.hierarchical_search(queries, limit=5, coarse_limit=50)
    for x, y, z in zip(a, b, auto, strict=True):
        assert len(x) == 5
        assert [h["id"] for h in x] == [h["id"] for h in y] == [h["id"] for h in z]
        np.testing.assert_allclose([h["distance"] for h in x], [h["distance"] for h in y], atol=1e-4)
        assert [h["entity"] for h in x] == [h["entity"] for h in y]


def test_text_and_image_queries_use_the_model_and_default_modality(
    populated: tuple, model: Any, tmp_path: Path
) -> None:
    """str and image queries go through the real model: each finds its own row, at inner product 1."""
    col, rows = populated
    caption = rows[N_IMAGES + 9]  # record 4's second caption
    assert caption["key"] == text_key("4", 1)
    # A text query searches images by default: exactly brute force over the images.
    res = col.hierarchical_search(caption["reference"], limit=5, coarse_limit=N_IMAGES)
    assert all(h["entity"]["modality"] == "image" for h in res[0])
    q = model.embed_texts([caption["reference"]])
    assert_same(res[0], brute_force([r for r in rows if r["modality"] == "image"], q.high[0], 5))
    # ... and its own caption row when told to search texts.
    res = col.hierarchical_search(caption["reference"], limit=3, modality="text")
    assert res[0][0]["id"] == caption["id"]
    assert res[0][0]["distance"] == pytest.approx(1.0, abs=1e-4)
    # An image (PIL) finds captions by default, and itself when searching images.
    image = records()[4].image
    res = col.hierarchical_search(image, limit=3, coarse_limit=2 * N_IMAGES)
    assert len(res[0]) == 3
    assert all(h["entity"]["modality"] == "text" for h in res[0])
    q = model.embed_images([image])
    assert_same(res[0], brute_force([r for r in rows if r["modality"] == "text"], q.high[0], 3))
    path = tmp_path / "img_4.png"
    image.save(path)
    png = io.BytesIO()
    image.save(png, format="PNG")
    for form in (image, path, png.getvalue(), np.asarray(image)):  # PIL, a file, encoded bytes, an HWC array
        res = col.hierarchical_search(form, limit=2, modality="image", output_fields=["key"])
        assert res[0][0]["entity"]["key"] == "4", type(form).__name__
        assert res[0][0]["distance"] == pytest.approx(1.0, abs=1e-4)
        assert res[0][1]["distance"] < 1.0 - 1e-4
    # An embedding searches everything unless told otherwise.
    emb = model.embed_texts([rows[N_IMAGES + 4]["reference"]])
    assert col.hierarchical_search(emb, limit=1)[0][0]["entity"]["key"] == text_key("2", 0)


def test_batched_equals_one_by_one(populated: tuple, model: Any) -> None:
    col, _ = populated
    texts = [records()[i].captions[i % 2] for i in range(6)]
    # Texts on both rerank paths, and their embeddings (which index like a list) on the default one.
    for queries, rerank in ((texts, "client"), (texts, "server"), (model.embed_texts(texts), "auto")):
        batched = col.hierarchical_search(queries, limit=4, coarse_limit=40, rerank=rerank)
        single = [col.hierarchical_search(queries[i], limit=4, coarse_limit=40, rerank=rerank)[0] for i in range(6)]
        assert [[h["id"] for h in hits] for hits in batched] == [[h["id"] for h in hits] for hits in single]


def test_filters_restrict_every_hit(populated: tuple) -> None:
    col, rows = populated
    q = HierarchicalEmbedding(rows[10]["vec_low"][None], rows[10]["vec_high"][None])
    for rerank in ("client", "server"):
        res = col.hierarchical_search(
            q,
            limit=20,
            filter='attributes["color"] == {c} and attributes["n"] < {n}',
            filter_params={"c": "red", "n": 50},
            output_fields=["attributes"],
            rerank=rerank,
        )
        assert res[0]
        assert all(h["entity"]["attributes"]["color"] == "red" and h["entity"]["attributes"]["n"] < 50 for h in res[0])
        res = col.hierarchical_search(q, limit=5, filter='key == "nothing"', rerank=rerank)
        assert res == [[]]
        # An injection attempt through filter_params matches literally: only the one row tagged with it.
        res = col.hierarchical_search(
            q,
            limit=50,
            filter='attributes["tag"] == {t}',
            filter_params={"t": 'x" or id > 0 or "'},
            rerank=rerank,
            output_fields=["key"],
        )
        assert [h["entity"]["key"] for h in res[0]] == ["7"]
        res = col.hierarchical_search(
            q, limit=5, filter="key == {k}", filter_params={"k": '" or id > 0 or "'}, rerank=rerank
        )
        assert res == [[]]
    low = col.search(
        q, level="low", limit=10, filter="modality == {m}", filter_params={"m": "text"}, output_fields=["modality"]
    )
    assert len(low[0]) == 10
    assert all(h["entity"]["modality"] == "text" for h in low[0])


def test_single_level_search(populated: tuple) -> None:
    col, rows = populated
    q = HierarchicalEmbedding(rows[50]["vec_low"][None], rows[50]["vec_high"][None])
    high = col.search(q, level="high", limit=8)
    assert_same(high[0], brute_force(rows, q.high[0], 8))
    low = col.search(q, level="low", limit=8, output_fields=[])
    assert len(low[0]) == 8
    assert low[0][0]["id"] == rows[50]["id"]
    assert low[0][0]["entity"] == {}


ONES = HierarchicalEmbedding(np.ones((1, LOW), np.float32), np.ones((1, HIGH), np.float32))

# id: (query, keyword arguments, error, match); a ``level`` argument calls ``search``, else ``hierarchical_search``
BAD_QUERIES = {
    "text-without-model": ("a dog", {}, QueryError, "model="),
    "path-without-model": (Path("/x.png"), {}, QueryError, "model="),
    "int": (42, {}, QueryError, None),
    "empty-list": ([], {}, QueryError, None),
    "unknown-rerank": (ONES, {"rerank": "gpu"}, QueryError, "rerank"),
    "unknown-modality": (ONES, {"modality": "audio"}, QueryError, "modality"),
    "low-dim": (HierarchicalEmbedding(ONES.low[:, :8], ONES.high), {}, DimensionMismatchError, "low_dim"),
    "unknown-level": (ONES, {"level": "middle"}, QueryError, None),
    "coarse-below-limit": (ONES, {"limit": 20, "coarse_limit": 10}, SearchLimitError, "smaller than limit"),
    "coarse-above-max": (ONES, {"limit": 10, "coarse_limit": 20000}, SearchLimitError, "16384"),
    "zero-limit": (ONES, {"limit": 0}, SearchLimitError, None),
    "high-above-max": (ONES, {"level": "high", "limit": 20000}, SearchLimitError, None),
}


@pytest.mark.parametrize(("query", "kwargs", "error", "match"), BAD_QUERIES.values(), ids=BAD_QUERIES)
def test_bad_queries(populated: tuple, query: Any, kwargs: dict, error: type, match: str | None) -> None:
    col = HierarchicalCollection.open(populated[0].name, client=populated[0].client)  # no model attached
    assert col.model is None
    with pytest.raises(error, match=match):
        (col.search if "level" in kwargs else col.hierarchical_search)(query, **kwargs)


@pytest.mark.parametrize(
    ("expr", "params"),
    [
        ("key ==== 1", None),
        ("no_such_field == 1", None),
        ('key == "unterminated', None),
        ("key == {k}", None),
        ("key == {k}", {"k": None}),
    ],
)
def test_malformed_filter(populated: tuple, expr: str, params: dict | None) -> None:
    with pytest.raises(FilterError):
        populated[0].hierarchical_search(ONES, limit=3, filter=expr, filter_params=params)


def test_unreachable_server_fails_fast() -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(MilvusUnavailableError, match=rf"127\.0\.0\.1:{port}.*check the server is running"):
        connect(f"http://127.0.0.1:{port}", retries=2, timeout=1)
    assert time.monotonic() - t0 < 10
    with pytest.raises(MilvusUnavailableError):
        HierarchicalCollection.open("x", uri=f"http://127.0.0.1:{port}")


def test_profiles_resolve_against_this_milvus(env: Env, client: Any) -> None:
    from hivlp_milvus.profiles import _server_refuses, load_profile, resolve_profile

    before = set(client.list_collections())
    assert _server_refuses(client, load_profile("cpu")) is None
    assert set(client.list_collections()) == before  # the probe collection is always dropped
    assert resolve_profile("auto", client).name == env.engine
    name = unique()
    if env.engine == "cpu":
        # An explicitly requested GPU profile on a CPU server is refused, not silently replaced.
        try:
            with pytest.raises(ProfileError, match="GPU"):
                HierarchicalCollection.create(name, client=client, low_dim=LOW, high_dim=HIGH, profile="gpu")
        finally:
            if client.has_collection(name):
                client.drop_collection(name)
        return
    with created(client, low_dim=LOW, high_dim=HIGH, profile="gpu") as col:
        # Lite accepts GPU index names but has no GPU index: the recorded profile says what was built.
        expected = {"lite": "lite:IVF_FLAT", "gpu": "gpu:GPU_IVF_FLAT"}[env.engine]
        assert col.profile.tag == expected
        assert col.describe()["indexes"]["vec_low"]["index_type"] == expected.split(":")[1]
        reopened = HierarchicalCollection.open(col.name, client=client)
        assert reopened.profile == col.profile


def test_connect_uri_forms(tmp_path: Path) -> None:
    from hivlp_milvus.errors import ConfigError

    plain = connect(str(tmp_path / "store_without_suffix"))  # any scheme-less path is Milvus Lite
    assert is_lite(plain)
    with pytest.raises(ConfigError, match="scheme"):
        connect("ftp://example.org/x")
    with pytest.raises(ConfigError, match="does not exist"):
        connect(str(tmp_path / "missing_dir" / "x.db"))


def test_modality_gap_does_not_empty_cross_modal_ann_results(client: Any) -> None:
    """Images and texts in separate regions of the space (the modality gap of contrastive models).

    With one IVF index over both modalities, a text query's nearest cells hold only texts and a
    modality restriction to images returned nothing; per-modality partitions give each modality its
    own cells, so the coarse stage always finds images.
    """
    rng = np.random.default_rng(7)
    low_dim, high_dim, n = 8, 16, 400
    axis = np.zeros(low_dim, np.float32)
    axis[0] = 4.0
    rows = []
    for modality, sign in (("image", 1.0), ("text", -1.0)):
        low = unit(rng.normal(size=(n, low_dim)).astype(np.float32) + sign * axis)
        high = unit(rng.normal(size=(n, high_dim)))
        rows += [row(f"{modality}-{i}", modality, low[i], high[i]) for i in range(n)]
    # The default index sizing (expected_rows unknown): many IVF cells for few rows, as when a
    # source's length is not known before ingest; it made every cross-modal result empty.
    with created(client, "gap", low_dim=low_dim, high_dim=high_dim) as col:
        col.upsert(rows)
        col.flush()  # seal the segments so the IVF index (not a brute-force growing segment) is searched
        text_like = np.asarray([r["vec_low"] for r in rows if r["modality"] == "text"][:16])
        highs = np.asarray([r["vec_high"] for r in rows if r["modality"] == "text"][:16])
        queries = HierarchicalEmbedding(text_like, highs)
        coarse = col.search(queries, level="low", limit=10, modality="image", output_fields=["modality"])
        funnel = col.hierarchical_search(
            queries, limit=10, coarse_limit=40, modality="image", output_fields=["modality"]
        )
        for hits in [*coarse, *funnel]:
            assert len(hits) == 10
            assert {h["entity"]["modality"] for h in hits} == {"image"}
