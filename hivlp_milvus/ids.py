"""Stable Milvus primary keys derived from the user's keys.

The same (modality, key) always maps to the same INT64, so re-ingesting a data set upserts the
rows it wrote before instead of duplicating them.
"""

from __future__ import annotations

import hashlib

MODALITIES = ("image", "text")


def row_id(key: str, modality: str) -> int:
    """The INT64 primary key of the row for ``key`` in ``modality`` ("image" or "text").

    The first 8 bytes of a BLAKE2b digest, masked to 63 bits so the id is a positive INT64.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    digest = hashlib.blake2b(f"{modality}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def text_key(record_id: str, caption_index: int) -> str:
    """The key of a record's ``caption_index``-th caption row."""
    return f"{record_id}#{caption_index}"
