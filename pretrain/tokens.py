"""Tokens: tokenise the corpus once with the model's tokenizer into compact binary token streams.

    python -m pretrain.tokens --config configs/demo.yaml

Output (tokens artifact `t-...`): `train.bin` and `validation.bin`, each the documents' token ids
back to back with a [SEP] after every document (uint16 when the vocabulary fits, else uint32);
`train.words.bin` and `validation.words.bin`, one bit per token (packed), set where a token starts
a word as the tokenizer's pre-tokenizer splits words (from the fast tokenizer's word ids, so whole-word
masking works for any fast tokenizer, not only BERT's `##` convention); and `meta.json` (dtype,
special token ids, token and document counts). The pretrain stage memory-maps these and cuts them
into blocks; nothing is tokenised inside the training job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pretrain.artifacts import ArtifactStore, artifact_id
from pretrain.ingest import SPLITS, read_split
from pretrain.vocab import load_fast_tokenizer, plain_backend

log = logging.getLogger(__name__)

STAGE = "tokens"


def stage_id(cfg: None, *, corpus: str, vocab: str) -> str:
    return artifact_id(STAGE, {}, inputs={"corpus": corpus, "vocab": vocab})


def run(cfg: None, store: ArtifactStore, *, corpus: str, vocab: str) -> str:
    """Build (or find) the tokens artifact (the stage has no settings: cfg is None); returns its id."""
    aid = stage_id(cfg, corpus=corpus, vocab=vocab)
    if store.exists(aid):
        log.info("tokens %s: already built (cache hit)", aid)
        return aid
    corpus_dir, vocab_dir = store.local_dir(corpus), store.local_dir(vocab)
    tokenizer = load_fast_tokenizer(vocab_dir / "tokenizer")
    backend = plain_backend(tokenizer)
    vocab_size = backend.get_vocab_size()
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    special = {
        name: getattr(tokenizer, f"{name}_token_id")
        for name in ("cls", "sep", "mask", "pad", "unk")
    }
    missing = [name for name, value in special.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer in {vocab} has no {', '.join(missing)} token; masked-LM pretraining needs them")

    with store.build(STAGE, aid, config={}, inputs={"corpus": corpus, "vocab": vocab}) as build:
        meta = {"dtype": np.dtype(dtype).name, "vocab_size": vocab_size, "special_ids": special, "splits": {}}
        for split in SPLITS:
            meta["splits"][split] = _write_split(read_split(corpus_dir, split), backend, special["sep"], dtype, build.dir, split)
        (build.dir / "meta.json").write_text(json.dumps(meta, indent=2))
        total = sum(s["tokens"] for s in meta["splits"].values())
        build.metrics.update(
            dtype=meta["dtype"],
            vocab_size=vocab_size,
            train_tokens=meta["splits"]["train"]["tokens"],
            validation_tokens=meta["splits"]["validation"]["tokens"],
            bytes_per_token=round(sum(f.stat().st_size for f in build.dir.glob("*.bin")) / max(total, 1), 3),
        )
        log.info("tokens %s: %d train / %d validation tokens (%s)", aid, build.metrics["train_tokens"], build.metrics["validation_tokens"], meta["dtype"])
    return aid


def _word_starts(encoding) -> list[bool]:
    previous = object()
    starts = []
    for word in encoding.word_ids:
        starts.append(word is None or word != previous)
        previous = word
    return starts


def _write_split(batches, backend, sep_id: int, dtype, folder: Path, split: str) -> dict:
    tokens = documents = 0
    pending = np.zeros(0, dtype=bool)  # word-start bits not yet a whole byte
    with open(folder / f"{split}.bin", "wb") as ids_file, open(folder / f"{split}.words.bin", "wb") as words_file:
        for texts in batches:
            # encode_batch runs on all cores in Rust; one write per batch.
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            ids = [i for e in encodings for i in (*e.ids, sep_id)]
            ids_file.write(np.asarray(ids, dtype=dtype).tobytes())
            bits = np.concatenate([pending, [b for e in encodings for b in (*_word_starts(e), True)]])
            whole = len(bits) - len(bits) % 8
            words_file.write(np.packbits(bits[:whole]).tobytes())
            pending = bits[whole:]
            tokens += len(ids)
            documents += len(texts)
        words_file.write(np.packbits(pending).tobytes())
    return {"tokens": tokens, "documents": documents}


def load_meta(tokens_dir: Path) -> dict:
    return json.loads((tokens_dir / "meta.json").read_text())


def open_split(tokens_dir: Path, split: str) -> np.memmap:
    """The token stream of a split, memory-mapped (read-only)."""
    meta = load_meta(tokens_dir)
    return np.memmap(tokens_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


def word_starts(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Word-start flags of tokens [start, stop) from a packed `*.words.bin` array."""
    first, last = start // 8, (stop + 7) // 8
    bits = np.unpackbits(np.asarray(packed[first:last]))
    return bits[start - first * 8 : stop - first * 8].astype(bool)


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
