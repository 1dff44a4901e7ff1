"""What describes an emoji: ``emoji.json`` entries + emojilib keywords → :class:`Emoji` → captions.

Pure functions over parsed JSON (no files, no network): :mod:`hivlp_milvus.data.emoji` reads the
packages and writes the data set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SKIN_TONES", "Emoji", "captions_for", "read_emoji_entries"]

SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
MAX_KEYWORDS = 3
# A keyword worth a caption: words, not emoticons (":D") or codes ("55b6", "3"); checked after _phrase.
_WORD = re.compile(r"^[a-z][a-z '-]*$")


@dataclass(frozen=True)
class Emoji:
    """One emoji (a skin-tone variant is an emoji of its own) and what describes it.

    Attributes:
        unified: its code points, e.g. ``"1F385-1F3FB"``: the relevance group of its drawings.
        base: ``unified`` of the emoji it varies (itself when not a variant): split assignment
            goes by ``base``, so a held-out emoji is held out with all its skin tones.
        name: the Unicode name in lower case (``"father christmas"``).
        cldr: the CLDR short name from emojilib (``"santa claus"``); ``name`` when unknown.
        keywords: emojilib keywords not already said by the names, in emojilib's order.
        category: e.g. ``"People & Body"``.
        subcategory: e.g. ``"person-fantasy"``.
        image: the PNG's file name inside ``img/VENDOR/64/``.
        vendors: vendors that have a drawing of it.
        tone: the skin tone words (``"light"``, ``"light and dark"``) of a variant, else ``None``.
    """

    unified: str
    base: str
    name: str
    cldr: str
    keywords: tuple[str, ...]
    category: str
    subcategory: str
    image: str
    vendors: frozenset[str]
    tone: str | None = None

    @property
    def char(self) -> str:
        """The emoji itself, as text."""
        return _char(self.unified)


# --------------------------------------------------------------------------- captions


def _phrase(words: str) -> str:
    words = words.replace("_s_", "'s ").replace("_", " ").replace("’", "'")
    return " ".join(words.split()).lower()


def _article(words: str) -> str:
    return "an" if words[:1] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def captions_for(emoji: Emoji) -> list[str]:
    """A few natural phrasings of what the emoji shows, from its names and keywords.

    Real queries name the thing ("father christmas"), call it by its emoji name ("the santa claus
    emoji"), say what it is for ("an emoji for christmas, holiday and xmas") or place it in its
    kind ("a person fantasy emoji: santa claus"); one caption of each (duplicates dropped).
    """
    tone = f", {emoji.tone} skin tone" if emoji.tone else ""
    kind = emoji.subcategory.replace("-", " ").lower()
    candidates = [
        f"{emoji.name}{tone}",
        f"the {emoji.cldr} emoji{tone}" if emoji.cldr != emoji.name else f"an emoji of {emoji.name}{tone}",
        f"an emoji for {_join(emoji.keywords[:MAX_KEYWORDS])}" if emoji.keywords else "",
        f"{_article(kind)} {kind} emoji: {emoji.cldr}{tone}" if kind else "",
    ]
    out: list[str] = []
    for caption in candidates:
        if caption and caption not in out:
            out.append(caption)
    return out


# --------------------------------------------------------------------------- package contents


def _char(unified: str) -> str:
    return "".join(chr(int(cp, 16)) for cp in unified.split("-"))


def _keyword_lookup(emojilib: Mapping[str, list[str]]) -> dict[str, list[str]]:
    # emojilib keys are characters; emoji.json's may differ in the variation selector FE0F.
    lookup: dict[str, list[str]] = {}
    for key, words in emojilib.items():
        lookup.setdefault(key, list(words))
        lookup.setdefault(key.replace("\ufe0f", ""), list(words))
    return lookup


def _keywords_for(entry: Mapping[str, Any], lookup: Mapping[str, list[str]]) -> list[str]:
    for unified in (entry.get("unified"), entry.get("non_qualified")):
        if unified:
            char = _char(unified)
            for key in (char, char.replace("\ufe0f", "")):
                if key in lookup:
                    return lookup[key]
    return []


def _split_keywords(words: list[str], name: str) -> tuple[str, tuple[str, ...]]:
    """emojilib's first keyword is the CLDR name; keep the rest that add a word the names lack."""
    cldr = _phrase(words[0]) if words else name
    said = set(name.split()) | set(cldr.split())
    kept: list[str] = []
    for raw in words[1:]:
        word = _phrase(raw)
        if _WORD.match(word) and not set(word.split()) <= said and word not in kept:
            kept.append(word)
    return cldr, tuple(kept)


def _vendors_of(entry: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(
        key.removeprefix("has_img_") for key, value in entry.items() if key.startswith("has_img_") and value
    )


def read_emoji_entries(
    emoji_json: Iterable[Mapping[str, Any]], emojilib: Mapping[str, list[str]], *, skin_tones: bool = False
) -> list[Emoji]:
    """``emoji.json`` entries (+ emojilib keywords) → :class:`Emoji` values, in emoji.json's order.

    Args:
        emoji_json: the parsed ``package/emoji.json`` of an emoji-datasource package.
        emojilib: the parsed ``emoji-en-US.json`` (character → keywords).
        skin_tones: also yield every skin-tone variant as an emoji of its own.

    Returns:
        The emoji; entries without a name, code points or image are left out.
    """
    lookup = _keyword_lookup(emojilib)
    out: list[Emoji] = []
    for entry in emoji_json:
        if not entry.get("unified") or not entry.get("name") or not entry.get("image"):
            continue
        name = _phrase(str(entry["name"]))
        cldr, keywords = _split_keywords(_keywords_for(entry, lookup), name)
        base = Emoji(
            unified=str(entry["unified"]).upper(),
            base=str(entry["unified"]).upper(),
            name=name,
            cldr=cldr,
            keywords=keywords,
            category=str(entry.get("category") or ""),
            subcategory=str(entry.get("subcategory") or ""),
            image=str(entry["image"]),
            vendors=_vendors_of(entry),
        )
        out.append(base)
        if not skin_tones:
            continue
        for tone_key, variant in (entry.get("skin_variations") or {}).items():
            tones = [SKIN_TONES.get(t.upper(), t.lower()) for t in str(tone_key).split("-")]
            out.append(
                Emoji(
                    unified=str(variant["unified"]).upper(),
                    base=base.unified,
                    name=name,
                    cldr=cldr,
                    keywords=keywords,
                    category=base.category,
                    subcategory=base.subcategory,
                    image=str(variant["image"]),
                    vendors=_vendors_of(variant),
                    tone=_join(list(dict.fromkeys(tones))),
                )
            )
    return out
