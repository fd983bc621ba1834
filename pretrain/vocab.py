"""Vocab: train a domain WordPiece vocabulary, build the model's tokenizer, measure how well base and domain tokenizers fit.

    python -m pretrain.vocab --config configs/demo.yaml
    python -m pretrain.vocab --config configs/demo.yaml --set vocab.vocab_size=8000

Output (vocab artifact `v-...`):
- `domain_tokenizer/`: a WordPiece vocabulary trained on the corpus train split (BERT normalisation
  and pre-tokenisation, `##` continuation pieces), loadable with `AutoTokenizer.from_pretrained`.
- `tokenizer/`: the tokenizer the model trains with: the base's own (`keep`), the base's extended with
  the domain tokens that save the most tokens (`extend`: domain WordPieces for a WordPiece base, whole
  domain words for a BPE or SentencePiece Unigram base; pretrain/models/extend.py), or the domain one (`replace`).
- `model_init.json`: how the pretrain stage builds its starting model (new rows and their base pieces).
- metrics on the validation split, for base, domain and model tokenizer: tokens per whitespace word,
  the share of words split into 3 or more pieces, the sequence-length saving, the most used added tokens.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import VocabConfig
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.core.progress import Progress, progress
from pretrain.data.formats import read_split
from pretrain.models.extend import (
    NewToken,
    changed_words,
    choose_new_tokens,
    choose_new_words,
    extend_backend,
    model_type,
    save_model_init,
    unreachable_base_tokens,
)
from pretrain.models.families import EXTENDABLE_TOKENIZERS, extend_problem
from pretrain.models.fast_tokenizers import load_fast_tokenizer, measure_fit, plain_backend
from pretrain.models.modelfiles import model_folder

log = get_logger(__name__)

STAGE = "vocab"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def stage_id(cfg: VocabConfig, *, corpus: str, base: str) -> str:
    return artifact_id(STAGE, cfg.model_dump(), inputs={"corpus": corpus, "base": base})


def _check_base(base_tokenizer, base_dir: Path, cfg: VocabConfig) -> None:
    model_config = json.loads((base_dir / "config.json").read_text())
    rows = model_config.get("vocab_size")
    size = len(base_tokenizer)
    if rows is not None and size > rows:
        raise InputError(
            f"base model {base_dir}: its tokenizer has {size:,} tokens but the model has {rows:,} embedding rows; "
            "the model cannot embed the tokenizer's ids: save the model with its own tokenizer"
        )
    if cfg.mode != "extend":
        return
    kind = model_type(base_tokenizer.backend_tokenizer)
    if kind not in EXTENDABLE_TOKENIZERS:
        raise InputError(extend_problem(base_dir, model_config.get("model_type")) or f"vocab.mode: extend cannot add to a {kind} tokenizer; use keep")
    if kind == "WordPiece":
        # Domain WordPieces are cut from the corpus as vocab.lowercase says; the base must cut words the same way.
        normalizer = json.loads(base_tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
        if normalizer.get("lowercase") is not None and normalizer["lowercase"] != cfg.lowercase:
            cased = "uncased" if normalizer["lowercase"] else "cased"
            raise InputError(f"vocab.lowercase is {cfg.lowercase} but the base tokenizer is {cased}; set vocab.lowercase: {not cfg.lowercase}")


def _wrap(backend: Tokenizer, like):
    """A transformers fast tokenizer around `backend`, with `like`'s special tokens and length limit."""
    from transformers import PreTrainedTokenizerFast

    # The same inputs as the base's (RoBERTa's takes no token_type_ids) and its beginning/end tokens where it has them.
    special = {name: getattr(like, name) for name in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=like.model_max_length,
        model_input_names=list(like.model_input_names),
        **{name: value for name, value in special.items() if value is not None},
    )


def _counted(batches: Iterator[list[str]], bar: Progress) -> Iterator[list[str]]:
    """The batches, counting their documents on `bar` as they are consumed."""
    for batch in batches:
        yield batch
        bar.update(len(batch))


def run(cfg: VocabConfig, store: ArtifactStore, *, corpus: str, base: str) -> str:
    """Build (or find) the vocab artifact; returns its id. `base`: the model whose tokenizer it starts from
    (any model artifact: the base model; the adapted one for TAPT)."""
    started = time.time()
    aid = stage_id(cfg, corpus=corpus, base=base)
    if store.exists(aid):
        log.info("vocab %s: already built (cache hit)", aid)
        return aid
    log.info("vocab %s: config %s", aid, cfg.model_dump_json())
    corpus_dir, base_dir = store.local_dir(corpus), model_folder(store, base, "vocab: base")
    base_tokenizer = load_fast_tokenizer(base_dir)
    _check_base(base_tokenizer, base_dir, cfg)
    base_backend = plain_backend(base_tokenizer)
    n_train = store.manifest(corpus)["metrics"]["train_documents"]

    with store.build(STAGE, aid, config=cfg.model_dump(), inputs={"corpus": corpus, "base": base}, started=started) as build:
        with progress(n_train, "vocab: training the domain WordPiece", unit="doc") as bar:
            domain = train_wordpiece(_counted(read_split(corpus_dir, "train"), bar), cfg, length=n_train)
        if domain.get_vocab_size() <= len(SPECIAL_TOKENS):
            raise InputError(f"vocab: the corpus {corpus} gave an empty domain vocabulary; lower vocab.min_frequency")
        save_as_transformers(domain, build.dir / "domain_tokenizer", cfg.lowercase)

        new_tokens: list[NewToken] = []
        extension: dict = {}
        if cfg.mode == "keep":
            model_backend, model_tokenizer = base_backend, base_tokenizer
        elif cfg.mode == "extend":
            kind = model_type(base_backend)
            with progress(n_train, f"vocab: choosing domain {'pieces' if kind == 'WordPiece' else 'words'}", unit="doc") as bar:
                train = _counted(read_split(corpus_dir, "train"), bar)
                if kind == "WordPiece":
                    new_tokens = choose_new_tokens(domain, base_backend, train, cfg.max_new_tokens, cfg.allow_digits_punctuation, cfg.min_token_count)
                else:  # BPE, Unigram: whole words of the base's own pre-tokenisation
                    new_tokens = choose_new_words(base_backend, train, cfg.max_new_tokens, cfg.allow_digits_punctuation, cfg.min_token_count)
            if not new_tokens:
                what = f"piece of the {domain.get_vocab_size():,}-piece domain vocabulary" if kind == "WordPiece" else \
                    f"word seen at least {cfg.min_token_count} times (vocab.min_token_count)"
                raise InputError(f"vocab: no domain {what} would shorten the corpus under the base tokenizer; nothing to add (use vocab.mode: keep)")
            model_backend = extend_backend(base_backend, new_tokens)
            model_tokenizer = _wrap(model_backend, base_tokenizer)
            extension = {"extended_tokenizer_model": kind, "added_as": "pieces" if kind == "WordPiece" else "whole words"}
            if kind == "BPE":
                unreachable = unreachable_base_tokens(base_backend)
                extension["unreachable_base_tokens"] = len(unreachable)
                if unreachable:
                    log.warning("vocab: %d tokens of the base BPE vocabulary are never produced by its own merges (e.g. %s); as whole words "
                                "they are now taken whole (ignore_merges). Counted on validation as validation_words_changed.",
                                len(unreachable), ", ".join(map(repr, unreachable[:5])))  # fmt: skip
        else:  # replace
            model_backend = plain_backend(load_fast_tokenizer(build.dir / "domain_tokenizer"))
            model_tokenizer = load_fast_tokenizer(build.dir / "domain_tokenizer")
        model_tokenizer.save_pretrained(build.dir / "tokenizer")
        save_model_init(build.dir, cfg.mode, cfg.init, len(base_tokenizer), new_tokens)

        validation = [t for batch in read_split(corpus_dir, "validation") for t in batch]
        metrics = {
            "mode": cfg.mode,
            "base_vocab_size": len(base_tokenizer),
            "domain_vocab_size": domain.get_vocab_size(),
            "model_vocab_size": model_backend.get_vocab_size(),
            "added_tokens": len(new_tokens),
            "validation_documents": len(validation),
            "validation_words": sum(len(t.split()) for t in validation),
            **measure_fit("base", base_backend, validation),
            **measure_fit("domain", domain, validation),
            **measure_fit("model", model_backend, validation),
        }
        metrics.update(extension)
        if new_tokens:
            # Faithfulness: words split differently without using a new token (0 unless the base BPE has unreachable tokens).
            metrics["validation_words_changed"] = changed_words(base_backend, model_backend, validation, new_tokens[0].id)
        metrics["sequence_saving_percent"] = round(
            100 * (1 - metrics["validation_tokens_model"] / max(metrics["validation_tokens_base"], 1)), 2
        )
        if new_tokens:
            used = Counter(i for e in model_backend.encode_batch(validation, add_special_tokens=False) for i in e.ids)
            by_id = {t.id: t.token for t in new_tokens}
            top = sorted(((used[i], token) for i, token in by_id.items() if used[i]), key=lambda c: (-c[0], c[1]))[:30]
            metrics["top_added_tokens"] = [{"token": token, "count": count} for count, token in top]
        build.metrics.update(metrics)
        log.info(
            "vocab %s (%s): base %d -> domain WordPiece %d, model %d; tokens/word base %.3f, domain %.3f, model %.3f; "
            "sequences %.1f%% shorter",
            aid, cfg.mode, metrics["base_vocab_size"], metrics["domain_vocab_size"], metrics["model_vocab_size"],
            metrics["fertility_base"], metrics["fertility_domain"], metrics["fertility_model"], metrics["sequence_saving_percent"],
        )  # fmt: skip
    return aid


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
