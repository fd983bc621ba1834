"""Vocabulary adaptation: choose domain WordPieces, extend the base tokenizer, initialise their embeddings.

Domain words fragment under a general vocabulary ("hydrochlorothiazide" into 5+ pieces), which wastes
sequence length and makes rare domain words hard to learn. `extend` mode adds the domain pieces that
save the most tokens on the corpus (frequency x (pieces under the base tokenizer - 1)) to the base
WordPiece vocabulary, so the tokenizer stays one WordPiece model (greedy longest match) that splits
every text consistently, and initialises each new embedding row, and its MLM output bias, as the
mean of the rows of the base pieces it replaces (Sachidananda et al. 2021). Old ids keep their rows,
so text that uses no new token gives exactly the base model's outputs.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from pretrain.errors import InputError

PREFIX = "##"


@dataclass(frozen=True)
class NewToken:
    """A token added to the base vocabulary: its id, and the base pieces its embedding starts from."""

    token: str
    id: int
    base_pieces: list[int]
    frequency: int
    score: int


def wordpiece_split(text: str, vocab: dict[str, int], continuation: bool, unk_id: int, max_chars: int = 100) -> list[int]:
    """Greedy longest-match-first WordPiece split of one word (as `tokenizers` does), as ids."""
    if len(text) > max_chars:
        return [unk_id]
    pieces, start = [], 0
    while start < len(text):
        end, found = len(text), None
        while start < end:
            piece = text[start:end]
            if start > 0 or continuation:
                piece = PREFIX + piece
            if piece in vocab:
                found = vocab[piece]
                break
            end -= 1
        if found is None:
            return [unk_id]
        pieces.append(found)
        start = end
    return pieces


def is_digits_or_punctuation(token: str) -> bool:
    text = token.removeprefix(PREFIX)
    return all(unicodedata.category(c)[0] in "NPS" for c in text)


def wordpiece_json(backend: Tokenizer, what: str) -> dict:
    data = json.loads(backend.to_str())
    if data["model"]["type"] != "WordPiece":
        raise InputError(
            f"vocab.mode=extend adds WordPiece pieces, but the {what} uses a {data['model']['type']} model; "
            "use vocab.mode: keep or replace with this base model"
        )
    return data


def choose_new_tokens(
    domain: Tokenizer, base: Tokenizer, train_texts, max_new_tokens: int, allow_digits_punctuation: bool, min_count: int = 1
) -> list[NewToken]:
    """The domain pieces that save the most base tokens on the corpus, best first."""
    base_model = wordpiece_json(base, "base tokenizer")["model"]
    base_vocab: dict[str, int] = base_model["vocab"]
    unk_id = base_vocab.get(base_model["unk_token"], 0)
    counts: Counter[int] = Counter()
    for texts in train_texts:
        for encoding in domain.encode_batch(texts, add_special_tokens=False):
            counts.update(encoding.ids)
    candidates = []
    for token, domain_id in domain.get_vocab().items():
        frequency = counts.get(domain_id, 0)
        if frequency < min_count or token in base_vocab or (token.startswith("[") and token.endswith("]")):
            continue
        if not allow_digits_punctuation and is_digits_or_punctuation(token):
            continue
        pieces = wordpiece_split(token.removeprefix(PREFIX), base_vocab, token.startswith(PREFIX), unk_id)
        if pieces == [unk_id]:
            continue  # the base cannot spell it at all: no pieces to start its embedding from
        score = frequency * (len(pieces) - 1)
        if score > 0:
            candidates.append((score, token, pieces, frequency))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    first_id = base.get_vocab_size(with_added_tokens=True)
    return [
        NewToken(token=token, id=first_id + i, base_pieces=pieces, frequency=frequency, score=score)
        for i, (score, token, pieces, frequency) in enumerate(candidates[:max_new_tokens])
    ]


def extend_backend(base: Tokenizer, new_tokens: list[NewToken]) -> Tokenizer:
    """The base WordPiece tokenizer with `new_tokens` added to its vocabulary under their ids."""
    data = wordpiece_json(base, "base tokenizer")
    vocab = data["model"]["vocab"]
    for new in new_tokens:
        vocab[new.token] = new.id
    return Tokenizer.from_str(json.dumps(data))


def save_model_init(folder: Path, mode: str, init: str, base_vocab_size: int, new_tokens: list[NewToken]) -> None:
    """`model_init.json` in the vocab artifact: how the pretrain stage builds its starting model."""
    spec = {"mode": mode, "init": init, "base_vocab_size": base_vocab_size, "new_tokens": [asdict(t) for t in new_tokens]}
    (folder / "model_init.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False))


def load_model_init(vocab_dir: Path) -> dict:
    path = vocab_dir / "model_init.json"
    return json.loads(path.read_text()) if path.is_file() else {"mode": "keep", "new_tokens": []}


@torch.no_grad()
def extend_embeddings(model, new_tokens: list[dict], init: str) -> None:
    """Add rows for `new_tokens` to a masked-LM model; with `subword_mean`, each is its base pieces' mean.

    The decoder stays tied to the input embeddings; the MLM output bias of a new token is likewise the
    mean of its pieces' biases. Rows of existing ids are untouched.
    """
    if not new_tokens:
        return
    old_rows = model.get_input_embeddings().weight.shape[0]
    expected = [old_rows + i for i in range(len(new_tokens))]
    if [t["id"] for t in new_tokens] != expected:
        raise InputError(
            f"the vocab artifact's new token ids start at {new_tokens[0]['id']}, but the model has {old_rows} "
            "embedding rows; the vocab artifact was built for a different base model"
        )
    model.resize_token_embeddings(old_rows + len(new_tokens), mean_resizing=init == "resize_default")
    if init != "subword_mean":
        return
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    bias = getattr(output, "bias", None) if output is not None else None
    for token in new_tokens:
        pieces = torch.tensor(token["base_pieces"])
        embeddings[token["id"]] = embeddings[pieces].mean(0)
        if bias is not None:
            bias[token["id"]] = bias[pieces].mean()


def pieces_per_word(backend: Tokenizer, texts: list[str]) -> np.ndarray:
    """For every word (as the tokenizer's pre-tokenizer splits words) of `texts`, its number of pieces."""
    counts = []
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        words = [w for w in encoding.word_ids if w is not None]
        if words:
            counts.append(np.bincount(words))
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
