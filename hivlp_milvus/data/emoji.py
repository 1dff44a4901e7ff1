"""The emoji corpus: the same Unicode emoji drawn by three design teams, with names and keywords.

Sources (npm packages, pinned; fetched by :mod:`hivlp_milvus.data.npm`):

* ``emoji-datasource-apple`` / ``-google`` / ``-twitter`` 16.0.0: ``package/img/VENDOR/64/*.png``
  (64-px drawings, skin-tone variants too) and ``package/emoji.json`` (Unicode name, short
  names, category, subcategory, ``unified`` code points, ``has_img_VENDOR``);
* ``emojilib`` 4.0.3: ``package/dist/emoji-en-US.json``, English keywords per emoji character.

The protocol (written by :func:`write_dataset`, read back with ``load_source(DIR, split=...)``):
one record per (vendor, emoji); ``group`` is the emoji, so every vendor's drawing of it is
relevant to its captions. A fixed, seeded 10 % of the emoji is held out of training in every
style; of the rest, 10 % are validation emoji. ``train`` holds the apple and google drawings of
every emoji that is not held out; ``val``, ``test`` and ``heldout`` hold the twitter drawings of
the validation, test and held-out emoji: an unseen drawing style of seen emoji, and an unseen
style of unseen emoji. docs/data.md describes it in full.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivlp_milvus.data.emoji_entries import Emoji, captions_for, read_emoji_entries
from hivlp_milvus.data.npm import NpmPackage, fetch_tarballs
from hivlp_milvus.errors import DataError

__all__ = [
    "DATASOURCES",
    "EMOJILIB",
    "SPLITS",
    "VENDORS",
    "Emoji",
    "EmojiDataset",
    "assign_splits",
    "build_from_tarballs",
    "captions_for",
    "read_emoji_entries",
    "write_dataset",
]

GENERATOR = "hivlp_milvus.data.emoji"
# Bump when the captions, splits or layout change: a data set written by an older version is rebuilt.
GENERATOR_VERSION = 1
EMOJILIB = NpmPackage(
    "emojilib",
    "4.0.3",
    "sha512-KbWiYre9aRSaPbHrHZIz9zmoM+21LAsK1VFJtnTh1VCtWE/rNMDviGhQTmselFl95dhqtGlY22iH0leG5BuW0g==",
)
DATASOURCES = {
    "apple": NpmPackage(
        "emoji-datasource-apple",
        "16.0.0",
        "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
    ),
    "google": NpmPackage(
        "emoji-datasource-google",
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
    "twitter": NpmPackage(
        "emoji-datasource-twitter",
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
}
VENDORS = tuple(DATASOURCES)
TEST_VENDOR = "twitter"
SPLITS = ("train", "val", "test", "heldout")
IMAGE_SIZE = 64
EMOJILIB_MEMBER = "package/dist/emoji-en-US.json"
EMOJI_JSON_MEMBER = "package/emoji.json"


@dataclass(frozen=True)
class EmojiDataset:
    """A written emoji data set.

    Attributes:
        root: the directory (``load_source(root, split=...)`` reads it).
        info: the contents of ``root/dataset.json``: parameters, package versions, split sizes.
        reused: the directory already held this data set, nothing was written.
    """

    root: Path
    info: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def manifest(self, split: str) -> Path:
        """``root/<split>/manifest.jsonl``."""
        return self.root / split / "manifest.jsonl"

    def summary(self) -> str:
        """One line per split: records and distinct emoji."""
        lines = [f"emoji data set in {self.root}" + (" (already there, reused)" if self.reused else "")]
        for split in SPLITS:
            sizes = self.info.get("splits", {}).get(split, {})
            lines.append(f"  {split:8s} {sizes.get('records', 0):5d} images of {sizes.get('emoji', 0):4d} emoji")
        return "\n".join(lines)


def assign_splits(
    bases: Iterable[str], *, seed: int = 0, heldout_fraction: float = 0.1, val_fraction: float = 0.1
) -> dict[str, str]:
    """Each base emoji → ``"heldout"``, ``"val"`` or ``"test"``, fixed by ``seed``.

    The order is a keyed hash of the code points, so the assignment depends only on the seed
    and the set of emoji (not on file order, numpy or Python versions).

    Returns:
        ``{unified: split}``; ``heldout`` gets ``round(heldout_fraction * n)`` emoji, ``val``
        ``round(val_fraction * n)``, ``test`` the rest (those are the seen emoji of training).

    Raises:
        DataError: a fraction is negative or they leave nothing to test.
    """
    if not (heldout_fraction >= 0 and val_fraction >= 0 and heldout_fraction + val_fraction < 1):
        raise DataError(
            f"heldout_fraction={heldout_fraction} and val_fraction={val_fraction} must be >= 0 and leave "
            "emoji to test (their sum below 1)"
        )
    unique = sorted(set(bases))
    ranked = sorted(unique, key=lambda u: hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest())
    n_held = round(heldout_fraction * len(unique))
    n_val = round(val_fraction * len(unique))
    return {u: "heldout" if i < n_held else "val" if i < n_held + n_val else "test" for i, u in enumerate(ranked)}


def _read_member(tgz: Path, member: str) -> bytes:
    try:
        with tarfile.open(tgz, "r:gz") as archive:
            handle = archive.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{tgz} has no readable {member} ({exc}); is it the right npm tarball?") from exc


def _read_pngs(tgz: Path, vendor: str, wanted: set[str]) -> dict[str, bytes]:
    """The wanted 64-px PNGs of one vendor, in one streaming pass (members are read, never extracted)."""
    prefix = f"package/img/{vendor}/{IMAGE_SIZE}/"
    found: dict[str, bytes] = {}
    try:
        with gzip.open(tgz) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = member.name[len(prefix) :] if member.name.startswith(prefix) else None
                if name in wanted and member.isfile():
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[name] = handle.read()
            # tarfile takes a stream cut at a member boundary for the end of the archive; reading
            # the gzip stream to its end raises EOFError for such a truncated (unverified) tarball.
            while stream.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {tgz} ({exc}); delete it and fetch again") from exc
    return found


# --------------------------------------------------------------------------- writing


def _row(emoji: Emoji, vendor: str) -> dict[str, Any]:
    return {
        "id": f"{vendor}/{emoji.unified.lower()}",
        "image": f"images/{vendor}/{emoji.image}",
        "captions": captions_for(emoji),
        "group": emoji.unified,
        "attributes": {
            "vendor": vendor,
            "unified": emoji.unified,
            "category": emoji.category,
            "subcategory": emoji.subcategory,
            "name": emoji.name,
            "emoji": emoji.char,
        },
    }


def _check_vendors(vendors: Sequence[str], test_vendor: str) -> tuple[list[str], list[str]]:
    unknown = sorted(set(vendors) - set(VENDORS))
    if unknown:
        raise DataError(f"unknown vendor(s) {unknown}; choose from {list(VENDORS)}")
    if test_vendor not in VENDORS:
        raise DataError(f"unknown test vendor {test_vendor!r}; choose from {list(VENDORS)}")
    train = [v for v in dict.fromkeys(vendors) if v != test_vendor]
    if not train:
        raise DataError(
            f"vendors {list(vendors)} leave no training style besides the test vendor {test_vendor!r}; "
            "add another vendor"
        )
    return train, [*train, test_vendor]


def build_from_tarballs(
    out_dir: str | Path,
    tarballs: Mapping[str, str | Path],
    emojilib: str | Path,
    *,
    test_vendor: str = TEST_VENDOR,
    skin_tones: bool = False,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    val_fraction: float = 0.1,
    info: Mapping[str, Any] | None = None,
) -> EmojiDataset:
    """Write the split manifests and images from tarballs already on disk (no network).

    Layout: ``out_dir/<split>/images/<vendor>/<file>.png`` and ``out_dir/<split>/manifest.jsonl``
    (``id``, ``image`` relative to the manifest, ``captions``, ``group``, ``attributes``) for
    ``train``, ``val``, ``test`` and ``heldout``, plus ``out_dir/dataset.json``. ``out_dir``
    is written whole into a temporary sibling and renamed into place at the end, so an
    interrupted run leaves the previous contents (or nothing), never a half-written set.

    Args:
        out_dir: the directory to (re)write; it must not exist, be empty, or hold an emoji data set.
        tarballs: ``{vendor: emoji-datasource tarball}`` for the training vendors and ``test_vendor``.
        emojilib: the emojilib tarball.
        test_vendor: the drawing style kept out of training (val / test / heldout images).
        skin_tones: include the skin-tone variants as emoji of their own.
        seed: fixes which emoji are held out and which validate.
        heldout_fraction: share of emoji never trained on, in any style.
        val_fraction: share of emoji whose test-style drawings form the validation split.
        info: extra entries for ``dataset.json`` (e.g. package versions).

    Returns:
        The written :class:`EmojiDataset`.

    Raises:
        DataError: a tarball lacks the expected files, vendors are inconsistent, or ``out_dir``
            holds something else.
    """
    root = Path(out_dir).expanduser()
    train_vendors, _ = _check_vendors(list(tarballs), test_vendor)
    if test_vendor not in tarballs:
        raise DataError(f"no tarball for the test vendor {test_vendor!r}; got {sorted(tarballs)}")
    _check_target(root)
    keywords = json.loads(_read_member(Path(emojilib), EMOJILIB_MEMBER))
    emoji_json = json.loads(_read_member(Path(tarballs[test_vendor]), EMOJI_JSON_MEMBER))
    entries = read_emoji_entries(emoji_json, keywords, skin_tones=skin_tones)
    if not entries:
        raise DataError(f"{tarballs[test_vendor]}'s emoji.json lists no emoji")
    split_of = assign_splits(
        (e.base for e in entries), seed=seed, heldout_fraction=heldout_fraction, val_fraction=val_fraction
    )
    plan: dict[str, list[tuple[Emoji, str]]] = {split: [] for split in SPLITS}
    for emoji in entries:
        split = split_of[emoji.base]
        if split != "heldout":
            plan["train"].extend((emoji, v) for v in train_vendors if v in emoji.vendors)
        if test_vendor in emoji.vendors:
            plan[split].append((emoji, test_vendor))
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
    try:
        counts = _write_splits(staging, plan, tarballs)
        meta = {
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            **_params(train_vendors, test_vendor, skin_tones, seed, heldout_fraction, val_fraction),
            "splits": counts,
            **dict(info or {}),
        }
        (staging / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return EmojiDataset(root=root, info=meta)


def _params(
    train_vendors: Sequence[str],
    test_vendor: str,
    skin_tones: bool,
    seed: int,
    heldout_fraction: float,
    val_fraction: float,
) -> dict[str, Any]:
    return {
        "train_vendors": list(train_vendors),
        "test_vendor": test_vendor,
        "skin_tones": skin_tones,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "val_fraction": val_fraction,
        "image_size": IMAGE_SIZE,
    }


def _write_splits(
    staging: Path, plan: Mapping[str, list[tuple[Emoji, str]]], tarballs: Mapping[str, str | Path]
) -> dict[str, dict[str, int]]:
    wanted: dict[str, set[str]] = {}
    for pairs in plan.values():
        for emoji, vendor in pairs:
            wanted.setdefault(vendor, set()).add(emoji.image)
    pngs = {vendor: _read_pngs(Path(tarballs[vendor]), vendor, names) for vendor, names in wanted.items()}
    counts: dict[str, dict[str, int]] = {}
    for split, pairs in plan.items():
        split_dir = staging / split
        split_dir.mkdir()
        written: set[str] = set()
        rows = 0
        with (split_dir / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
            for emoji, vendor in pairs:
                data = pngs[vendor].get(emoji.image)
                if data is None:  # emoji.json says the vendor drew it, the tarball lacks the file
                    continue
                row = _row(emoji, vendor)
                image = split_dir / row["image"]
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(data)
                manifest.write(json.dumps(row, ensure_ascii=False) + "\n")
                written.add(emoji.unified)
                rows += 1
        counts[split] = {"records": rows, "emoji": len(written)}
    return counts


def _is_emoji_dataset(root: Path) -> bool:
    try:
        return json.loads((root / "dataset.json").read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(root: Path) -> None:
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not _is_emoji_dataset(root))):
        raise DataError(
            f"{root} exists and is not an emoji data set written by hivlp-milvus; "
            "choose a new or empty directory (it is replaced as a whole)"
        )


def _swap_into_place(staging: Path, root: Path) -> None:
    """Rename the finished directory over ``root``; the old one is removed only after the swap."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
    try:
        os.replace(staging, root)
    except OSError:
        if old is not None:
            os.replace(old, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _current(root: Path, params: Mapping[str, Any], packages: Mapping[str, str]) -> dict[str, Any] | None:
    if not _is_emoji_dataset(root):
        return None
    info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    same = info.get("version") == GENERATOR_VERSION and info.get("packages") == dict(packages)
    same = same and all(info.get(k) == v for k, v in params.items())
    complete = all((root / split / "manifest.jsonl").is_file() for split in SPLITS)
    return info if same and complete else None


def write_dataset(
    out_dir: str | Path,
    *,
    vendors: Sequence[str] = VENDORS,
    test_vendor: str = TEST_VENDOR,
    skin_tones: bool = False,
    tarballs: str | Path | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    val_fraction: float = 0.1,
    npm: str | None = None,
) -> EmojiDataset:
    """Fetch the pinned npm packages (cached) and write the emoji data set into ``out_dir``.

    A directory that already holds the same data set (same parameters and package versions) is
    reused as is.

    Args:
        out_dir: where the splits go (see :func:`build_from_tarballs` for the layout).
        vendors: drawing styles to use; ``test_vendor`` among them, the others are trained on.
        test_vendor: the style kept out of training.
        skin_tones: include skin-tone variants (about twice the images).
        tarballs: the tarball cache; put the ``.tgz`` files there by hand to work without a
            registry (default: :func:`hivlp_milvus.data.npm.default_cache_dir`).
        seed: fixes the held-out and validation emoji.
        heldout_fraction: share of emoji never trained on.
        val_fraction: share of emoji that validate.
        npm: the npm executable (default: ``npm`` on ``PATH``).

    Returns:
        The :class:`EmojiDataset` (``reused=True`` when nothing had to be written).

    Raises:
        DataError: bad vendors, npm missing or failing (the message says what to install or where
            to put the tarballs), a tarball that fails its integrity check, or an ``out_dir``
            holding something else.
    """
    root = Path(out_dir).expanduser()
    train_vendors, used = _check_vendors(vendors, test_vendor)
    packages = [EMOJILIB, *(DATASOURCES[v] for v in used)]
    versions = {p.name: p.version for p in packages}
    params = _params(train_vendors, test_vendor, skin_tones, seed, heldout_fraction, val_fraction)
    existing = _current(root, params, versions)
    if existing is not None:
        return EmojiDataset(root=root, info=existing, reused=True)
    _check_target(root)
    paths = fetch_tarballs(packages, tarballs, npm=npm)
    return build_from_tarballs(
        root,
        {v: paths[DATASOURCES[v].name] for v in used},
        paths[EMOJILIB.name],
        test_vendor=test_vendor,
        skin_tones=skin_tones,
        seed=seed,
        heldout_fraction=heldout_fraction,
        val_fraction=val_fraction,
        info={"packages": versions},
    )
