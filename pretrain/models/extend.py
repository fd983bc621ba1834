"""Vocabulary adaptation: choose domain tokens, extend the base tokenizer, initialise their embeddings.

Domain words fragment under a general vocabulary ("hydrochlorothiazide" into 5+ pieces), which wastes
sequence length and makes rare domain words hard to learn. `extend` mode adds the domain tokens that
save the most tokens on the corpus (frequency x (pieces under the base tokenizer - 1)) to the base
tokenizer's own model, so it stays one tokenizer that splits every text consistently, and
initialises each new embedding row, and its MLM output bias, as the mean of the rows of the base
pieces it replaces (Sachidananda et al. 2021). Old ids keep their rows, so text that uses no new
token gives exactly the base model's outputs. Per tokenizer model:

- WordPiece (BERT, ELECTRA, DistilBERT): pieces of a domain WordPiece vocabulary (whole words and `##`
  continuations), added to the vocabulary; greedy longest match then prefers them.
- BPE (RoBERTa's and ModernBERT's byte-level BPE): whole domain words as the base pre-tokenizer cuts
  them (`Ġhydrochlorothiazide`), added to the vocabulary with `ignore_merges`, which takes a word that
  is in the vocabulary whole before applying merges. Words the merges already produce whole are
  unaffected; a base token its own merges never produce (rare: BPE training and encoding can
  disagree) would now be taken whole too, so `unreachable_base_tokens` counts them.
- Unigram (SentencePiece: XLM-R, DeBERTa-v3): whole domain words (`▁hydrochlorothiazide`) added to
  the vocabulary, each scored just above its best base segmentation, so Viterbi picks it for that word
  and a text whose best segmentation uses no new piece is segmented as before.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from pretrain.core.errors import InputError

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


def model_type(backend: Tokenizer) -> str:
    """The tokenizer's model: `WordPiece`, `BPE`, `Unigram`, `WordLevel`."""
    return json.loads(backend.to_str())["model"]["type"]


# Where a counted word's pieces are kept (for its embedding), the counter is pruned of words seen once
# when it holds this many: a bound on memory whatever the corpus size (a word needs min_token_count
# occurrences anyway, and a frequent word is counted again after a pruning).
_MAX_COUNTED_WORDS = 2_000_000


def choose_new_words(base: Tokenizer, train_texts, max_new_tokens: int, allow_digits_punctuation: bool, min_count: int = 1) -> list[NewToken]:
    """BPE and Unigram tokenizers: the whole words (as the base pre-tokenizer cuts them) that save the most base tokens, best first.

    A word is the base pieces of one pre-tokenized word joined (`Ġhydro` + `chlor` + ... for byte-level
    BPE, `▁hydro` + ... for SentencePiece), which is exactly the token that, added to the base model's
    vocabulary, stands for it. Its embedding starts from those pieces.
    """
    skip = set(base.get_added_tokens_decoder())  # special and added tokens: never part of a new word
    unk = json.loads(base.to_str())["model"].get("unk_id")
    if isinstance(unk, int):
        skip.add(unk)
    counts: Counter[str] = Counter()
    pieces_of: dict[str, tuple[int, ...]] = {}
    for texts in train_texts:
        for encoding in base.encode_batch(texts, add_special_tokens=False):
            positions = range(len(encoding.ids))
            for word, group in groupby(positions, key=lambda k: encoding.word_ids[k]):
                members = list(group)
                if word is None or len(members) < 2:
                    continue
                ids = tuple(encoding.ids[k] for k in members)
                if skip.intersection(ids):
                    continue
                token = "".join(encoding.tokens[k] for k in members)
                counts[token] += 1
                pieces_of.setdefault(token, ids)
        if len(counts) > _MAX_COUNTED_WORDS:
            for token in [t for t, n in counts.items() if n == 1]:
                del counts[token], pieces_of[token]
    vocab = base.get_vocab(with_added_tokens=True)
    candidates = []
    for word, frequency in counts.items():
        if frequency < min_count or word in vocab:
            continue
        pieces = pieces_of[word]
        if not allow_digits_punctuation and is_digits_or_punctuation(base.decode(list(pieces)).strip() or word):
            continue
        score = frequency * (len(pieces) - 1)
        candidates.append((score, word, list(pieces), frequency))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    first_id = base.get_vocab_size(with_added_tokens=True)
    return [
        NewToken(token=word, id=first_id + i, base_pieces=pieces, frequency=frequency, score=score)
        for i, (score, word, pieces, frequency) in enumerate(candidates[:max_new_tokens])
    ]


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
    """The base tokenizer with `new_tokens` added to its model's vocabulary under their ids (see the module docstring)."""
    data = json.loads(base.to_str())
    model = data["model"]
    if model["type"] == "WordPiece":
        for new in new_tokens:
            model["vocab"][new.token] = new.id
    elif model["type"] == "BPE":
        for new in new_tokens:
            model["vocab"][new.token] = new.id
        model["ignore_merges"] = True
    elif model["type"] == "Unigram":
        # A piece's id is its place in the list: ids taken by added tokens past the model's own pieces
        # (DeBERTa-v3's [MASK]) are filled with those tokens, which the added vocabulary matches first.
        pieces = model["vocab"]
        floor = min(score for _, score in pieces) - 10.0
        by_id = {i: token for token, i in base.get_vocab(with_added_tokens=True).items()}
        first = new_tokens[0].id if new_tokens else len(pieces)
        pieces += [[by_id.get(i, f"<unused{i}>"), floor] for i in range(len(pieces), first)]
        scores = [score for _, score in pieces]
        for new in new_tokens:
            # Just above the base split's score: Viterbi prefers the word to the pieces it replaces.
            pieces.append([new.token, sum(scores[i] for i in new.base_pieces) + UNIGRAM_MARGIN])
    else:
        raise InputError(f"vocab.mode=extend cannot add to a {model['type']} tokenizer; use vocab.mode: keep or replace with this base model")
    return Tokenizer.from_str(json.dumps(data))


# The log-probability by which a new Unigram piece beats the base segmentation of its word.
UNIGRAM_MARGIN = 1e-3


def unreachable_base_tokens(base: Tokenizer) -> list[str]:
    """BPE: base tokens that the base's own merges never produce from their own text (the words `ignore_merges` would change)."""
    data = json.loads(base.to_str())
    if data["model"]["type"] != "BPE" or data["model"].get("ignore_merges"):
        return []
    added = set(base.get_vocab(with_added_tokens=True)) - set(base.get_vocab(with_added_tokens=False))
    model = base.model
    found = []
    for token in base.get_vocab(with_added_tokens=False):
        if token in added or len(token) < 2:
            continue
        if [t.value for t in model.tokenize(token)] != [token]:
            found.append(token)
    return sorted(found)


def changed_words(base: Tokenizer, extended: Tokenizer, texts: list[str], first_new_id: int) -> int:
    """Words of `texts` that the extended tokenizer splits differently from the base without using a new token (0 when faithful)."""
    changed = 0
    for old, new in zip(base.encode_batch(texts, add_special_tokens=False), extended.encode_batch(texts, add_special_tokens=False)):
        if old.ids == new.ids:
            continue
        old_words, new_words = _words(old), _words(new)
        if len(old_words) != len(new_words):
            continue  # different pre-tokenisation: not comparable word by word (not produced by extension)
        changed += sum(a != b and max(b) < first_new_id for a, b in zip(old_words, new_words))
    return changed


def _words(encoding) -> list[tuple[int, ...]]:
    words: dict[int, list[int]] = {}
    for i, word in zip(encoding.ids, encoding.word_ids):
        if word is not None:
            words.setdefault(word, []).append(i)
    return [tuple(ids) for _, ids in sorted(words.items())]


def save_model_init(folder: Path, mode: str, init: str, base_vocab_size: int, new_tokens: list[NewToken]) -> None:
    """`model_init.json` in the vocab artifact: how the pretrain stage builds its starting model."""
    spec = {"mode": mode, "init": init, "base_vocab_size": base_vocab_size, "new_tokens": [asdict(t) for t in new_tokens]}
    (folder / "model_init.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False))


def load_model_init(vocab_dir: Path) -> dict:
    path = vocab_dir / "model_init.json"
    return json.loads(path.read_text()) if path.is_file() else {"mode": "keep", "new_tokens": []}


@torch.no_grad()
def extend_embeddings(model, new_tokens: list[dict], init: str, head_of, base_vocab_size: int | None = None) -> None:
    """Give `new_tokens` embedding rows in a masked-LM model; with `subword_mean`, each is its base pieces' mean.

    New ids follow the base tokenizer's; a model with more embedding rows than its tokenizer has
    tokens (DeBERTa-v3, ModernBERT: padded to a round number) uses those spare rows first, and grows
    only past them. The decoder stays tied to the input embeddings; the MLM output bias of a new token
    is likewise the mean of its pieces' biases. Rows of existing ids are untouched. `head_of(model)`
    gives the model's encoder and vocabulary-sized output bias (`pretrain.training.mlm.mlm_head`; passed in, so that the
    vocab stage, which imports this module, does not depend on the training code).
    """
    if not new_tokens:
        return
    old_rows = model.get_input_embeddings().weight.shape[0]
    ids = [t["id"] for t in new_tokens]
    first = base_vocab_size if base_vocab_size is not None else ids[0]
    if ids != list(range(first, first + len(ids))) or first > old_rows:
        raise InputError(
            f"the vocab artifact's new token ids start at {ids[0]}, but the model has {old_rows} "
            "embedding rows; the vocab artifact was built for a different base model"
        )
    needed = ids[-1] + 1
    if needed > old_rows:
        output = model.get_output_embeddings()
        if output is None or output.weight.shape[0] == old_rows:
            model.resize_token_embeddings(needed, mean_resizing=init == "resize_default")
        else:
            # The output layer transformers reports is not vocabulary-sized (DeBERTa-v2's non-legacy head
            # multiplies by the word embeddings itself): resize the encoder's embeddings alone.
            head_of(model, check=False).encoder.resize_token_embeddings(needed, mean_resizing=init == "resize_default")
            model.config.vocab_size = needed
    bias = head_of(model, check=False).output_bias
    if bias is not None and bias.numel() < needed:
        bias = _grow(model, bias, needed)
    if init != "subword_mean":
        return
    embeddings = model.get_input_embeddings().weight
    for token in new_tokens:
        pieces = torch.tensor(token["base_pieces"])
        embeddings[token["id"]] = embeddings[pieces].mean(0)
        if bias is not None:
            bias[token["id"]] = bias[pieces].mean()


def _grow(model, bias: torch.nn.Parameter, size: int) -> torch.nn.Parameter:
    """Replace the vocabulary-sized output bias (which transformers did not resize) by one of `size` entries, zeros appended."""
    grown = torch.nn.Parameter(torch.cat([bias.data, bias.data.new_zeros(size - bias.numel())]))
    for name, parameter in list(model.named_parameters(remove_duplicate=False)):
        if parameter is bias:
            owner_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner_name), attribute, grown)
    return grown


def pieces_per_word(backend: Tokenizer, texts: list[str]) -> np.ndarray:
    """For every word (as the tokenizer's pre-tokenizer splits words) of `texts`, its number of pieces."""
    counts = []
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        words = [w for w in encoding.word_ids if w is not None]
        if words:
            counts.append(np.bincount(words))
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
