"""Vocab: train a domain WordPiece vocabulary and measure how well base and domain tokenizers fit.

    python -m pretrain.vocab --config configs/demo.yaml
    python -m pretrain.vocab --config configs/demo.yaml --set vocab.vocab_size=8000

Output (vocab artifact `v-...`):
- `tokenizer/`: the tokenizer the model trains with. With `mode: keep` it is the base model's own.
- `domain_tokenizer/`: a WordPiece vocabulary trained on the corpus train split (BERT normalisation
  and pre-tokenisation, `##` continuation pieces), loadable with `AutoTokenizer.from_pretrained`.
- metrics: fertility (tokens per whitespace-separated word) of both on the validation split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pretrain.artifacts import ArtifactStore, artifact_id
from pretrain.config import VocabConfig
from pretrain.errors import InputError
from pretrain.ingest import read_split

log = logging.getLogger(__name__)

STAGE = "vocab"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_fast_tokenizer(folder: Path):
    """A Hugging Face fast tokenizer from a folder; a clear error when the model has none."""
    from transformers import AutoTokenizer

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


def train_wordpiece(texts, cfg: VocabConfig, length: int | None = None) -> Tokenizer:
    """A BERT-style WordPiece tokenizer trained on an iterable of texts (or of lists of texts)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=cfg.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    # The trainer numbers its alphabet, and merges of equal count, in hash-map order, which changes from
    # run to run. WordPiece splits by the set of pieces, not their ids, so a sorted numbering makes the
    # artifact reproducible without changing any tokenisation.
    pieces = tokenizer.get_vocab()
    ordered = SPECIAL_TOKENS + sorted(p for p in pieces if p not in SPECIAL_TOKENS)
    tokenizer.model = models.WordPiece(
        vocab={piece: i for i, piece in enumerate(ordered)}, unk_token="[UNK]", continuing_subword_prefix="##"
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def save_as_transformers(tokenizer: Tokenizer, folder: Path, lowercase: bool) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=lowercase,
    )
    wrapped.save_pretrained(folder)


def fertility(backend: Tokenizer, texts: list[str]) -> float:
    """Tokens per whitespace-separated word, special tokens excluded."""
    words = sum(len(t.split()) for t in texts)
    tokens = sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
    return tokens / max(words, 1)


def stage_id(cfg: VocabConfig, *, corpus: str, base: str) -> str:
    return artifact_id(STAGE, cfg.model_dump(), inputs={"corpus": corpus, "base": base})


def run(cfg: VocabConfig, store: ArtifactStore, *, corpus: str, base: str) -> str:
    """Build (or find) the vocab artifact; returns its id."""
    aid = stage_id(cfg, corpus=corpus, base=base)
    if store.exists(aid):
        log.info("vocab %s: already built (cache hit)", aid)
        return aid
    log.info("vocab %s: config %s", aid, cfg.model_dump_json())
    corpus_dir, base_dir = store.local_dir(corpus), store.local_dir(base)
    base_tokenizer = load_fast_tokenizer(base_dir)
    n_train = store.manifest(corpus)["metrics"]["train_documents"]

    with store.build(STAGE, aid, config=cfg.model_dump(), inputs={"corpus": corpus, "base": base}) as build:
        domain = train_wordpiece(read_split(corpus_dir, "train"), cfg, length=n_train)
        if domain.get_vocab_size() <= len(SPECIAL_TOKENS):
            raise InputError(f"vocab: the corpus {corpus} gave an empty domain vocabulary; lower vocab.min_frequency")
        save_as_transformers(domain, build.dir / "domain_tokenizer", cfg.lowercase)
        # mode keep: the model trains with its own tokenizer; the domain vocabulary is a measurement.
        base_tokenizer.save_pretrained(build.dir / "tokenizer")

        validation = [t for batch in read_split(corpus_dir, "validation") for t in batch]
        base_backend = plain_backend(base_tokenizer)
        build.metrics.update(
            mode=cfg.mode,
            base_vocab_size=base_backend.get_vocab_size(),
            domain_vocab_size=domain.get_vocab_size(),
            model_vocab_size=base_backend.get_vocab_size(),
            validation_documents=len(validation),
            validation_words=sum(len(t.split()) for t in validation),
            fertility_base=round(fertility(base_backend, validation), 4),
            fertility_domain=round(fertility(domain, validation), 4),
        )
        log.info(
            "vocab %s: base %d -> domain WordPiece %d; fertility base %.3f -> domain %.3f tokens/word",
            aid, build.metrics["base_vocab_size"], build.metrics["domain_vocab_size"],
            build.metrics["fertility_base"], build.metrics["fertility_domain"],
        )  # fmt: skip
    return aid


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
