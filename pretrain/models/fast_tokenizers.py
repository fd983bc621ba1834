"""The fast tokenizer of a model folder: loading it (never building one), its plain Rust backend, and how
well a tokenizer fits a text (fertility). The vocab, tokens and assess stages and the library modules
that tokenize (the fine-tuning workers, export, predict, embed) all read tokenizers through here.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from pretrain.core.errors import InputError
from pretrain.models.extend import pieces_per_word


def load_fast_tokenizer(folder: Path):
    """A Hugging Face fast tokenizer from a folder; a clear error when the model has none."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json")):
        raise InputError(f"{folder}: no tokenizer files (tokenizer.json, vocab.txt or vocab.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: no usable tokenizer ({e})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{folder}: the tokenizer is not a fast (Rust `tokenizers`) tokenizer; this pipeline needs one for "
            "offsets and speed. Save the model with a tokenizer.json, e.g. AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    return tokenizer


def plain_backend(tokenizer) -> Tokenizer:
    """A copy of a fast tokenizer's Rust backend with padding and truncation off (they distort counts)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def measure_fit(name: str, backend: Tokenizer, texts: list[str]) -> dict:
    """How a tokenizer fits texts: tokens per whitespace word (fertility), share of words in 3+ pieces."""
    pieces = pieces_per_word(backend, texts)
    tokens = int(pieces.sum())
    return {
        f"fertility_{name}": round(tokens / max(sum(len(t.split()) for t in texts), 1), 4),
        f"split3_share_{name}": round(float((pieces >= 3).mean()) if len(pieces) else 0.0, 4),
        f"validation_tokens_{name}": tokens,
    }
