"""Retrieval metrics: chunked == an independent full-matrix reference, funnel edge cases, evaluate()."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from collection_rows import unit

from hivlp_milvus.cli import build_parser
from hivlp_milvus.data import Record
from hivlp_milvus.errors import BadRecordError
from hivlp_milvus.eval import (
    EvalTable,
    evaluate,
    evaluate_embeddings,
    retrieval_metrics,
)

# --------------------------------------------------------------------------- reference (full matrix)


def _ref_order(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Gallery indices by score desc; ties: irrelevant before relevant, then lower index first."""
    return np.lexsort((np.arange(len(scores)), relevant.astype(int), -scores))


def _ref_first_rank(order: np.ndarray, relevant: np.ndarray) -> int:
    hits = np.flatnonzero(relevant[order])
    return int(hits[0]) + 1 if len(hits) else 0


def _ref_ranks(query, gallery, q_groups, g_groups, coarse_k=None):
    """Rank per query by full sorting: one level (arrays) or the funnel (``.low``/``.high``, shortlist ``coarse_k``)."""
    g_groups = np.asarray(g_groups, dtype=object)
    low_scores, high_scores = (  # an array is its own only level
        getattr(query, level, query).astype(np.float64) @ getattr(gallery, level, gallery).T.astype(np.float64)
        for level in ("low", "high")
    )
    ranks, survived = [], []
    for i, group in enumerate(q_groups):
        relevant = g_groups == group
        order = _ref_order(low_scores[i], relevant)
        if coarse_k is not None:
            head, tail = order[:coarse_k], order[coarse_k:]
            head = head[_ref_order(high_scores[i][head], relevant[head])]
            survived.append(bool(relevant[head].any()))
            order = np.concatenate([head, tail])
        ranks.append(_ref_first_rank(order, relevant))
    return np.array(ranks), np.array(survived)


def _ref_metrics(image, text, image_groups, text_groups, ks=(1, 5, 10), coarse_k=None):
    """open_clip metrics of :func:`_ref_ranks`: ``image``, ``text`` arrays, or ``.low``/``.high`` and ``coarse_k``."""
    out = {}
    directions = {
        "image_to_text": (image, text, image_groups, text_groups),
        "text_to_image": (text, image, text_groups, image_groups),
    }
    for name, (query, gallery, q_groups, g_groups) in directions.items():
        ranks, survived = _ref_ranks(query, gallery, q_groups, g_groups, coarse_k)
        valid = ranks > 0
        for k in ks:
            out[f"{name}_R@{k}"] = float(np.mean(ranks[valid] <= k))
        out[f"{name}_mean_rank"] = float(np.mean(ranks[valid]))
        out[f"{name}_median_rank"] = float(np.median(ranks[valid]))
        if coarse_k is not None:
            out[f"{name}_shortlist_recall"] = float(np.mean(survived[valid]))
    out["AR"] = float(np.mean([v for key, v in out.items() if "_R@" in key]))
    return out


# --------------------------------------------------------------------------- fixtures


def _quantised(rng: np.random.Generator, shape: tuple[int, int], step: float = 1 / 64) -> np.ndarray:
    # Multiples of 1/64 in [-2, 2] with d <= 32: every dot product is exact in float32 and float64,
    # so the chunked code and the reference see identical scores (and identical ties).
    return (np.round(rng.normal(size=shape).clip(-2, 2) / step) * step).astype(np.float32)


def _make_dataset(seed: int = 0, n_images: int = 60, coarse_levels: int = 3):
    """Multi-caption images (0–4 captions), duplicate groups, a caption-less image, noisy texts."""
    rng = np.random.default_rng(seed)
    image_groups = [f"g{i % 45}" for i in range(n_images)]  # 15 groups appear twice: duplicate content
    caps = rng.integers(0, 5, size=n_images)
    caps[0] = 0  # an image with no caption: its image->text query has no relevant item
    text_groups = [g for g, c in zip(image_groups, caps, strict=True) for _ in range(c)]
    high_i = _quantised(rng, (n_images, 24))
    owners = np.repeat(np.arange(n_images), caps)
    high_t = (np.round((high_i[owners] + _quantised(rng, (len(owners), 24))) * 32) / 64).astype(np.float32)
    image = SimpleNamespace(low=high_i[:, :coarse_levels].copy(), high=high_i)
    return image, SimpleNamespace(low=high_t[:, :coarse_levels].copy(), high=high_t), image_groups, text_groups


def _tied_dataset(seed: int, n: int = 30):
    """Low vectors with few distinct values (integers, half the captions zero): many exactly equal
    scores, across relevant and irrelevant items and at the shortlist boundary."""
    rng = np.random.default_rng(seed)
    high_i = _quantised(rng, (n, 8))
    noisy = np.repeat(high_i, 2, axis=0) + _quantised(rng, (2 * n, 8))
    high_t = (np.round(noisy * 32) / 64).astype(np.float32)
    low_i = rng.integers(-1, 2, size=(n, 2)).astype(np.float32)
    low_t = np.repeat(low_i, 2, axis=0) * rng.integers(0, 2, size=(2 * n, 1)).astype(np.float32)
    groups = [f"g{i % 24}" for i in range(n)]
    text = SimpleNamespace(low=low_t, high=high_t)
    return SimpleNamespace(low=low_i, high=high_i), text, groups, [g for g in groups for _ in range(2)]


def _assert_same(got: dict, want: dict) -> None:
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# --------------------------------------------------------------------------- chunked == full


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize(
    ("make", "seed", "level"), [(_make_dataset, 0, "high"), (_make_dataset, 1, "high"), (_tied_dataset, 5, "low")]
)
def test_retrieval_metrics_chunked_equals_full_reference(make, seed, level, chunk_size):
    # The tied level: ties are pessimistic (an irrelevant item equal to the best relevant one ranks ahead) in any chunk.
    image, text, image_groups, text_groups = make(seed)
    image, text = getattr(image, level), getattr(text, level)
    got = retrieval_metrics(image, text, image_groups, text_groups, chunk_size=chunk_size)
    _assert_same(got, _ref_metrics(image, text, image_groups, text_groups))
    assert 0 < got["AR"] < 1  # neither trivial nor perfect: the check has something to compare


@pytest.mark.parametrize(
    ("feats", "groups", "expected"),
    [
        # A collapsed embedding scores worst, not best: every other item ties and ranks ahead.
        (
            np.ones((20, 4), np.float32),
            [str(i) for i in range(20)],
            {"image_to_text_R@10": 0, "text_to_image_mean_rank": 20},
        ),
        # Perfect, with images 0 and 3 in one group: a text of that group is "found" by either image.
        (
            np.eye(6, dtype=np.float32),
            ["a", "b", "c", "a", "d", "e"],
            {"image_to_text_R@1": 1, "text_to_image_R@1": 1, "AR": 1},
        ),
    ],
    ids=["collapsed", "perfect"],
)
def test_known_embeddings_give_known_metrics(feats, groups, expected):
    got = retrieval_metrics(feats, feats, groups, groups, ks=(1, 10))
    assert {key: got[key] for key in expected} == expected


# --------------------------------------------------------------------------- the funnel


def _funnel(image, text, image_groups, text_groups, coarse_k, **kw):
    """The funnel's metrics with one shortlist size alone: the ``hier@coarse_k`` row of evaluate_embeddings."""
    return evaluate_embeddings(image, text, image_groups, text_groups, coarse_ks=(coarse_k,), **kw).rows[
        f"hier@{coarse_k}"
    ]


@pytest.mark.parametrize("chunk_size", [5, 7, 1024])
@pytest.mark.parametrize(
    ("make", "seed", "coarse_ks"),
    [
        # Text->image galleries (60) are larger than coarse_k except at 59+; image->text has ~120 texts.
        (partial(_make_dataset, coarse_levels=2), 3, (1, 4, 17, 59)),
        # Many items tie at the shortlist boundary, so which of them enter the shortlist (irrelevant
        # first, then by index) decides the funnel's ranks.
        (_tied_dataset, 11, (2, 5, 11, 29)),
        (_tied_dataset, 12, (2, 5, 11, 29)),
    ],
    ids=["seed3", "ties11", "ties12"],
)
def test_hierarchical_equals_full_reference(make, seed, coarse_ks, chunk_size):
    image, text, image_groups, text_groups = make(seed)
    # All shortlist sizes in one pass (smaller ones are cut from the largest), and each alone.
    table = evaluate_embeddings(image, text, image_groups, text_groups, coarse_ks=coarse_ks, chunk_size=chunk_size)
    for coarse_k in coarse_ks:
        want = _ref_metrics(image, text, image_groups, text_groups, coarse_k=coarse_k)
        _assert_same(table.rows[f"hier@{coarse_k}"], want)
        alone = _funnel(image, text, image_groups, text_groups, coarse_k, chunk_size=64)
        assert alone == table.rows[f"hier@{coarse_k}"]


def test_hierarchical_with_full_shortlist_is_high_only_exactly():
    image, text, image_groups, text_groups = _make_dataset(seed=4)
    high_only = retrieval_metrics(image.high, text.high, image_groups, text_groups)
    for coarse_k in (len(text_groups), 10_000):
        hier = _funnel(image, text, image_groups, text_groups, coarse_k, chunk_size=9)
        assert {k: hier[k] for k in high_only} == high_only
        assert hier["shortlist_recall"] == 1.0
    # And a shortlist of one is low-only retrieval at R@1.
    low_only = retrieval_metrics(image.low, text.low, image_groups, text_groups)
    one = _funnel(image, text, image_groups, text_groups, 1)
    assert one["image_to_text_R@1"] == low_only["image_to_text_R@1"]


def test_evaluate_embeddings_rows_and_shortlist_recall_is_low_recall_at_k():
    image, text, image_groups, text_groups = _make_dataset(seed=2)
    table = evaluate_embeddings(image, text, image_groups, text_groups, coarse_ks=(5, 10), ks=(1, 5, 10))
    assert list(table.rows) == ["low", "high", "hier@5", "hier@10"]
    assert table.rows["low"] == retrieval_metrics(image.low, text.low, image_groups, text_groups)
    assert table.rows["high"] == retrieval_metrics(image.high, text.high, image_groups, text_groups)
    for k in (5, 10):
        for direction in ("image_to_text", "text_to_image"):
            # With exact search, the first relevant item survives a top-k shortlist iff low R@k hits it.
            assert table.rows[f"hier@{k}"][f"{direction}_shortlist_recall"] == table.rows["low"][f"{direction}_R@{k}"]
    assert table.meta["low_dim"] == 3
    assert table.meta["high_dim"] == 24


def test_bad_inputs_raise():
    feats = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="groups"):
        retrieval_metrics(feats, feats, ["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(feats, feats, ["a", "b", "c"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="2-d"):
        retrieval_metrics(np.zeros(3), feats, ["a", "b", "c"], ["a", "b", "c"])


# --------------------------------------------------------------------------- the table


def test_eval_table_format_and_json_round_trip(tmp_path):
    table = evaluate_embeddings(*_make_dataset(seed=6), coarse_ks=(10,))
    text = table.format()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["level", "i2t", "R@1", "i2t"]
    assert [line.split()[0] for line in lines[2:5]] == ["low", "high", "hier@10"]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
    assert f"{100 * table.rows['high']['AR']:.2f}" in lines[3]
    path = table.save_json(tmp_path / "sub" / "eval.json")
    assert EvalTable.from_dict(json.loads(path.read_text())) == table  # rows and meta


# --------------------------------------------------------------------------- evaluate(model, records)


class ProjectionModelDouble:
    """Test double of the HiVLP embedding interface (``embed_images`` / ``embed_texts``).

    Images are small uint8 arrays whose pixels encode a scene id; texts say "scene N". Both map to a
    fixed random vector of N (plus a little per-modality noise), so retrieval is good but not perfect.
    """

    fingerprint = "double-0"

    def __init__(self, n_scenes: int = 50, low_dim: int = 4, high_dim: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.codes = rng.normal(size=(n_scenes, high_dim)).astype(np.float32)
        self.low_proj = rng.normal(size=(high_dim, low_dim)).astype(np.float32)
        self.calls: list[int] = []

    def _embed(self, ids: list[int], salt: int) -> SimpleNamespace:
        # Noise per (modality, id), not per batch: the result must not depend on how items are batched.
        noise = np.stack([np.random.default_rng([salt, i]).normal(size=self.codes.shape[1]) for i in ids])
        high = self.codes[ids] + 0.3 * noise.astype(np.float32)
        return SimpleNamespace(low=unit(high @ self.low_proj), high=unit(high))

    def embed_images(self, images, batch_size=64):
        self.calls.append(len(images))
        if any(isinstance(im, str) and im == "broken" for im in images):
            raise BadRecordError("cannot decode image 'broken'")
        return self._embed([int(im[0, 0, 0]) for im in images], salt=1)

    def embed_texts(self, texts, batch_size=256):
        return self._embed([int(t.split()[-1]) for t in texts], salt=2)


def _records(n: int) -> list[Record]:
    """Scene ``i % 50`` (its id in the pixels and in 1-3 captions), the double's input format."""
    return [
        Record(
            id=f"r{i}",
            image=np.full((2, 2, 3), i % 50, dtype=np.uint8),
            captions=[f"scene {i % 50}"] * (1 + i % 3),
            group=f"s{i % 50}",
        )
        for i in range(n)
    ]


def test_evaluate_with_model_double_matches_evaluate_embeddings():
    records = _records(70)
    model = ProjectionModelDouble()
    table = evaluate(model, records, coarse_ks=(5, 200), batch_size=16, progress=False)
    assert model.calls == [16, 16, 16, 16, 6]
    images = model.embed_images([r.image for r in records])
    texts = model.embed_texts([c for r in records for c in r.captions])
    groups = [r.group for r in records]
    direct = evaluate_embeddings(
        images, texts, groups, [r.group for r in records for _ in r.captions], coarse_ks=(5, 200)
    )
    assert table.rows == direct.rows
    assert table.meta["model_fingerprint"] == "double-0"
    assert table.meta["skipped"] == 0
    assert table.rows["high"]["AR"] > table.rows["low"]["AR"]  # 16-d beats 4-d on this double


def test_evaluate_skips_unloadable_images_and_text_only_records():
    records = _records(12)
    records[3] = Record(id="bad", image="broken", captions=["scene 3"], group="s3")
    records.append(Record(id="text-only", captions=["scene 1"]))
    table = evaluate(ProjectionModelDouble(), records, coarse_ks=(5,), batch_size=4, progress=False)
    assert table.meta["skipped"] == 2
    assert table.meta["n_images"] == 11
    assert any("bad" in s for s in table.meta["skipped_examples"])


def test_eval_command_parses():
    args = build_parser().parse_args(
        [
            "eval",
            "--model",
            "ckpt",
            "--data",
            "data/test",
            "--coarse-k",
            "10",
            "20",
            "--limit",
            "5",
            "--json",
            "o.json",
        ]
    )
    assert args.command == "eval"
    assert args.func.__module__ == "hivlp_milvus.commands.eval"
    assert args.coarse_k == [10, 20]
    assert args.limit == 5
    assert str(args.json_out) == "o.json"
    assert args.split is None
    assert args.ks == [1, 5, 10]


def test_eval_command_loads_the_checkpoint_it_is_given(tmp_path, capsys):
    """``eval --model DIR`` evaluates exactly the model ``save_pretrained`` wrote there."""
    from hivlp_milvus.cli import main
    from hivlp_milvus.data import load_source, synthetic
    from hivlp_milvus.model import HiVLP, create_model

    synthetic.write_splits(tmp_path / "data", {"train": 2, "test": 20}, seed=5, image_size=32, progress=False)
    test = list(load_source(tmp_path / "data", split="test"))
    saved_model = create_model("micro", texts=[c for r in test for c in r.captions], seed=0)
    saved_model.save_pretrained(tmp_path / "ckpt")
    # Another model of the same config: the command must not evaluate a fresh initialisation.
    other = create_model("micro", tokenizer=saved_model.tokenizer, seed=1)

    out_json = tmp_path / "out" / "eval.json"
    argv = ["eval", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data"), "--coarse-k", "3", "500"]
    assert main([*argv, "--json", str(out_json), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "hier@3" in printed
    assert "read 20 records" in printed  # the test split was chosen by default
    saved = json.loads(out_json.read_text())
    assert list(saved["rows"]) == ["low", "high", "hier@3", "hier@500"]
    assert saved["meta"]["n_texts"] == 100
    assert saved["meta"]["split"] == "test"
    assert saved["meta"]["model"] == str(tmp_path / "ckpt")
    assert saved["meta"]["model_fingerprint"] == saved_model.fingerprint != other.fingerprint

    loaded = HiVLP.from_pretrained(tmp_path / "ckpt")
    expected = evaluate(loaded, test, coarse_ks=(3, 500), progress=False)
    unrelated = evaluate(other, test, coarse_ks=(3, 500), progress=False)
    for row, metrics in expected.rows.items():
        assert saved["rows"][row] == pytest.approx(metrics, abs=1e-9), row
    # The table tells models apart, so the equality above says which weights were evaluated.
    assert any(saved["rows"][r] != pytest.approx(m, abs=1e-9) for r, m in unrelated.rows.items())
    assert saved["rows"]["hier@500"]["AR"] == saved["rows"]["high"]["AR"]
