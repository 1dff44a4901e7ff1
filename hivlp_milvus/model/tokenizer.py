"""Text tokenizers: a WordPiece vocabulary trained from the captions, or a pretrained one by name.

The trained tokenizer is wrapped as ``transformers.PreTrainedTokenizerFast`` so it is saved with the
checkpoint (``tokenizer.json``) and reloaded by ``AutoTokenizer`` from that directory, offline.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hivlp_milvus.errors import CheckpointError, ConfigError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # [PAD] first so its id is 0, as BERT's padding_idx expects


def train_wordpiece(
    texts: Iterable[str], *, vocab_size: int, max_length: int, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a lower-casing BERT-style WordPiece tokenizer on captions, deterministically.

    The same captions always give the same vocabulary with the same ids (so every training worker
    that builds the model from the captions agrees, and a seeded model is reproducible). The
    ``tokenizers`` trainer alone is not deterministic (huggingface/tokenizers#1794: the ``##``
    continuation tokens get ids in hash-map order, and those ids break ties between merges), so
    every continuation token is registered up front in sorted order.

    Args:
        texts: the captions (any iterable of strings).
        vocab_size: the largest vocabulary to build; a small corpus yields fewer tokens, and the
            character alphabet (ASCII plus every character seen) is always kept even if larger.
        max_length: recorded as ``model_max_length`` (padding/truncation length of the model).
        min_frequency: minimum count of a merge to enter the vocabulary.

    Returns:
        A fast tokenizer adding ``[CLS] ... [SEP]`` and padding with ``[PAD]`` (id 0).

    Raises:
        ConfigError: ``texts`` is a single string, holds a non-string or no non-empty caption,
            or ``vocab_size`` is too small.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size} leaves no room beyond the {len(SPECIAL_TOKENS)} special tokens")
    captions = _captions(texts)
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # split on whitespace and punctuation
    alphabet = sorted(_characters(tokenizer, captions) | set(_BASE_ALPHABET))
    continuation = [f"##{char}" for char in alphabet]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + continuation,
        # Plain ASCII always gets its own ids, so a query with a digit or "!" the captions never
        # used does not turn into [UNK].
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    tokenizer = _unmark_special(tokenizer, keep=SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=max_length,
    )


_BASE_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def _captions(texts: Iterable[str]) -> list[str]:
    # Materialised: the alphabet pass and the trainer both read the captions.
    if isinstance(texts, str):
        raise ConfigError("texts must be a list (or iterable) of captions, not a single string")
    captions = []
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"texts must contain strings, got {type(text).__name__}")
        if text.strip():
            captions.append(text)
    if not captions:
        raise ConfigError("cannot train a WordPiece vocabulary: texts contained no non-empty caption")
    return captions


def _characters(tokenizer: Tokenizer, captions: list[str]) -> set[str]:
    words = (tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(c)) for c in captions)
    return {char for split in words for word, _ in split for char in word}


def _unmark_special(tokenizer: Tokenizer, keep: list[str]) -> Tokenizer:
    # The "##x" tokens were passed as special tokens only to fix their ids; as added tokens they
    # would be matched in raw text and dropped by decode(skip_special_tokens=True). They stay in
    # the WordPiece vocabulary, which is where they belong.
    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in keep]
    return Tokenizer.from_str(json.dumps(data))


def load_pretrained_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` for a hub name (passed through) or a local directory.

    Args:
        name_or_dir: a hub name such as ``"bert-base-uncased"`` or a local directory.

    Returns:
        The tokenizer.

    Raises:
        CheckpointError: it cannot be loaded (not found, no network, not a tokenizer directory).
    """
    try:
        return AutoTokenizer.from_pretrained(str(name_or_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load tokenizer {str(name_or_dir)!r}: {exc}") from exc
