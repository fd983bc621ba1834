"""Task-adaptive pretraining (TAPT, Gururangan et al. 2020): continued masked-LM on the task's own train text.

Built from the pipeline's own stages, so every intermediate is a cached, content-addressed artifact:
the task's train text becomes a corpus (ingest), is tokenised with the adapted model's tokenizer
(tokens) with the starting model's own tokenizer, and the starting model (the adapted one for DAPT + TAPT, or the base) continues masked-LM
pretraining on it (pretrain, with the `evaluate.tapt.pretrain` settings). The evaluate stage then
fine-tunes the result like any other compared model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pretrain import base as base_stage
from pretrain import ingest, pretrain, tokens
from pretrain import vocab as vocab_stage
from pretrain.artifacts import ArtifactStore
from pretrain.config import BaseModelConfig, IngestConfig, TaptConfig, TaskConfig, VocabConfig
from pretrain.errors import UserError
from pretrain.io import expand_inputs
from pretrain.logs import get_logger
from pretrain.tasks import RECORD_FORMATS, file_format_or_none, hold_out_test, read_split

log = get_logger(__name__)


def model_name(cfg: TaptConfig) -> str:
    return f"{cfg.start_from}+tapt"


def build(cfg: TaptConfig, task: TaskConfig, store: ArtifactStore, *, base: str, adapted: str) -> str:
    """Build (or find) the TAPT model artifact; returns its id (a `pretrain` artifact)."""
    try:
        corpus = _corpus(cfg, task, store)
        start = base
        if cfg.start_from == "adapted":
            # The pretrain stage starts from a base-model artifact (a plain model folder); the adapted
            # model is imported as one, content-addressed like any base model.
            start = base_stage.run(BaseModelConfig(source=str(store.local_dir(adapted) / "model")), store)
        # TAPT continues with the starting model's own tokenizer (`keep`): an extended vocabulary is
        # already part of the adapted model, and extending or re-initialising again would undo DAPT.
        vocab = vocab_stage.run(VocabConfig(mode="keep"), store, corpus=corpus, base=start)
        token_stream = tokens.run(None, store, corpus=corpus, vocab=vocab)
        model = pretrain.run(cfg.pretrain, store, base=start, vocab=vocab, tokens=token_stream)
    except UserError as e:
        raise type(e)(f"evaluate.tapt: {e} (TAPT settings are under evaluate.tapt)") from None
    log.info("evaluate: TAPT model %s (%s, from %s)", model, model_name(cfg), start)
    return model


def _corpus(cfg: TaptConfig, task: TaskConfig, store: ArtifactStore) -> str:
    """The task's train text as a corpus artifact, without labels."""
    # With test_fraction the test split is part of the train files: it must not be pretrained on.
    plain = task.type != "token" and task.text_pair_field is None and task.test_fraction is None and all(
        isinstance(p, str) for p in task.train_files
    ) and all(file_format_or_none(p) in RECORD_FORMATS + ("csv", "tsv") for p in expand_inputs(task.train_files))
    settings = {"min_words": 1, "validation_fraction": cfg.validation_fraction}
    if plain:  # ingest reads the task files itself: the corpus' lineage names them
        return ingest.run(IngestConfig(inputs=task.train_files, text_field=task.text_field, csv_delimiter=task.csv_delimiter, **settings), store)
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
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "task_train_text.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        return ingest.run(IngestConfig(inputs=[str(path)], **settings), store)
