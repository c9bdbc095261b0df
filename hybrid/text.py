"""Text to token ids and back to padded batches: the pure core shared by ingest, training and scoring.

Rows carry variable-length ``input_ids`` (no padding is stored); every batch is padded to its own
longest row (dynamic padding), so short sentences do not pay for the longest one in the data set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.errors import ConfigError

INPUT_IDS, ATTENTION_MASK, TEXT = "input_ids", "attention_mask", "text"


def offline() -> None:
    """Never reach for the Hugging Face hub: every model and tokenizer is a local directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """The fast tokenizer stored in the local directory ``path`` (cached per process).

    Raises:
        ConfigError: If ``path`` is not a directory holding a tokenizer.
    """
    offline()
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "vocab.txt").is_file():
        raise ConfigError(f"model.pretrained_dir: no tokenizer (tokenizer.json or vocab.txt) in {str(p)!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if not tokenizer.is_fast:
        raise ConfigError(f"model.pretrained_dir: the tokenizer in {str(p)!r} is not a fast tokenizer")
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int) -> list[np.ndarray]:
    """Token ids (with ``[CLS]``/``[SEP]``) of each text, truncated to ``max_length``, unpadded."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [np.asarray(ids, dtype=np.int32) for ids in encoded[INPUT_IDS]]


def pad_batch(
    sequences: Sequence[np.ndarray], *, pad_id: int, max_length: int | None = None, sep_id: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad (and optionally truncate) token id sequences to the longest one of the batch.

    Args:
        sequences: Token ids per row, each ending in ``[SEP]``.
        pad_id: Id written into padding positions.
        max_length: Truncate longer rows to this many tokens, ending them with ``sep_id`` again.
        sep_id: The separator id (required with ``max_length``).

    Returns:
        ``(input_ids, attention_mask)`` as int64 arrays of shape ``(rows, longest)``.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    width = int(lengths.max()) if len(lengths) else 0
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, (seq, n) in enumerate(zip(sequences, lengths, strict=True)):
        ids[i, :n] = seq[:n]
        mask[i, :n] = 1
        if max_length is not None and len(seq) > n:
            ids[i, n - 1] = sep_id
    return ids, mask
