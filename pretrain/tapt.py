"""Task-adaptive pretraining (TAPT, Gururangan et al. 2020): continued masked-LM on the task's own train text.

    python -m pretrain.tapt --config C      # the four TAPT stages, each found in the store or built
    dapt run C --set evaluate.tapt.pretrain.max_steps=200      # TAPT on for one run of the whole chain

Four stages of the chain (`pretrain/chain.py`), on when `evaluate.tapt` is set, each a content-addressed
artifact built by the pipeline's own stage code:

    tapt-corpus   the task's train text as a corpus (ingest; test and validation texts never enter it)
    tapt-vocab    the starting model's own tokenizer (vocab, `keep`)
    tapt-tokens   the corpus tokenised with it (tokens)
    tapt          the starting model after masked-LM pretraining on it (pretrain, `evaluate.tapt.pretrain`)

The starting model is the adapted one (`start_from: adapted`, DAPT + TAPT) or the base (TAPT alone).
The evaluate stage is given the TAPT model and fine-tunes it like every other compared model, as
`adapted+tapt` or `base+tapt`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from pretrain import ingest, pretrain
from pretrain import tokens as tokens_stage
from pretrain import vocab as vocab_stage
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import EvaluateConfig, IngestConfig, PretrainConfig, VocabConfig
from pretrain.core.errors import UserError
from pretrain.data.io import expand_inputs
from pretrain.data.tasks import RECORD_FORMATS, file_format_or_none, hold_out_test, read_split

# The stages `python -m pretrain.tapt` runs, in order (their records are in `pretrain/chain.py`).
STAGES = ("tapt-corpus", "tapt-vocab", "tapt-tokens", "tapt")
# TAPT continues with the starting model's own tokenizer: an extended vocabulary is already part of
# the adapted model, and extending or re-initialising again would undo DAPT.
KEEP = VocabConfig(mode="keep")


def corpus_id(cfg: EvaluateConfig) -> str:
    """The id of the task's train text as a corpus (hashes the task files; reads them only for word lists and pairs)."""
    with _corpus_config(cfg) as settings:
        return ingest.stage_id(settings)


def build_corpus(cfg: EvaluateConfig, store: ArtifactStore) -> str:
    """Build (or find) the corpus of the task's train text, without labels; returns its id."""
    with _corpus_config(cfg) as settings:
        return _named(lambda: ingest.run(settings, store))


def vocab_id(cfg: None, *, corpus: str, base: str) -> str:
    return vocab_stage.stage_id(KEEP, corpus=corpus, base=base)


def build_vocab(cfg: None, store: ArtifactStore, *, corpus: str, base: str) -> str:
    """The starting model's tokenizer, measured on the task's text (a `keep` vocab artifact)."""
    return _named(lambda: vocab_stage.run(KEEP, store, corpus=corpus, base=base))


def tokens_id(cfg: None, *, corpus: str, vocab: str) -> str:
    return tokens_stage.stage_id(None, corpus=corpus, vocab=vocab)


def build_tokens(cfg: None, store: ArtifactStore, *, corpus: str, vocab: str) -> str:
    return _named(lambda: tokens_stage.run(None, store, corpus=corpus, vocab=vocab))


def model_id(cfg: PretrainConfig, *, base: str, vocab: str, tokens: str) -> str:
    return pretrain.stage_id(cfg, base=base, vocab=vocab, tokens=tokens)


def build_model(cfg: PretrainConfig, store: ArtifactStore, *, base: str, vocab: str, tokens: str) -> str:
    """The starting model `base` (any model artifact) after masked-LM pretraining on the task's text; a `pretrain` artifact."""
    return _named(lambda: pretrain.run(cfg, store, base=base, vocab=vocab, tokens=tokens))


def _named(build: Callable[[], str]) -> str:
    """`build()`, with a user mistake's message saying it happened in TAPT (its settings are under evaluate.tapt)."""
    try:
        return build()
    except UserError as e:
        raise type(e)(f"evaluate.tapt: {e} (TAPT settings are under evaluate.tapt)") from None


@contextlib.contextmanager
def _corpus_config(cfg: EvaluateConfig) -> Iterator[IngestConfig]:
    """The ingest settings that make the task's train text a corpus (valid inside the `with` block)."""
    task = cfg.task
    assert cfg.tapt is not None, "TAPT stages run only when evaluate.tapt is set"
    # With test_fraction the test split is part of the train files: it must not be pretrained on.
    plain = task.type != "token" and task.text_pair_field is None and task.test_fraction is None and all(
        isinstance(p, str) for p in task.train_files
    ) and all(file_format_or_none(p) in RECORD_FORMATS + ("csv", "tsv") for p in expand_inputs(task.train_files))
    settings = {"min_words": 1, "validation_fraction": cfg.tapt.validation_fraction}
    if plain:  # ingest reads the task files itself: the corpus' lineage names them
        yield IngestConfig(inputs=task.train_files, text_field=task.text_field, csv_delimiter=task.csv_delimiter, **settings)
        return
    # Word lists and sentence pairs become one document per example.
    rows = read_split(task, task.train_files, "train_files", notes=[])
    if task.test_fraction is not None:
        rows = hold_out_test(task, rows, notes=[])[0]
    if task.type == "token":
        texts = [" ".join(words) for words in rows.texts]
    elif rows.pairs is not None:
        texts = [f"{a}\n{b}" for a, b in zip(rows.texts, rows.pairs)]
    else:
        texts = rows.texts
    # The id hashes the file's content, not its name: the same texts give the same corpus from any folder.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "task_train_text.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        yield IngestConfig(inputs=[str(path)], **settings)


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(*STAGES)
